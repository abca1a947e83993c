//! The `percore` command line: parses arguments with clap and runs a subcommand.
//!
//! Every failure is one line on stderr and a non-zero exit status: 2 for bad arguments, 1 for
//! everything else (address in use, unsupported kernel, bad config). Nothing here panics on input.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use percore_bench::values::parse_duration;
use percore_runtime::cpus::{CpuSelection, parse_cpu_list};

/// percore: a thread-per-core io_uring HTTP/1.1 server.
#[derive(Parser, Debug)]
#[command(name = "percore", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Server + load generator + HDR latency report, on the embedded default config (~30 s).
    Demo(DemoArgs),
    /// Show the effective configuration.
    Config(ConfigArgs),
    /// Talk to a running server's admin API.
    Ctl(CtlArgs),
}

/// Arguments of `percore config`.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// `print`: the effective config (file + defaults) as TOML.
    #[arg(value_parser = ["print"])]
    pub action: String,
    /// Config file (default: the embedded defaults).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// Arguments of `percore ctl`.
#[derive(Args, Debug, Clone)]
pub struct CtlArgs {
    /// Admin API address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// Bearer token of the admin API.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print the raw JSON instead of readable output.
    #[arg(long)]
    pub json: bool,
    /// What to do: status, config, metrics, reload, rollback (to snapshot `arg`), drain.
    #[arg(
        help = "status | config | metrics | reload | rollback [N] | drain",
        value_parser = ["status", "config", "metrics", "reload", "rollback", "drain"]
    )]
    pub action: String,
    /// Snapshot number for `rollback` (default: the previous one).
    pub arg: Option<u64>,
}

/// Arguments of `percore demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Measured open-loop run length.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub duration: std::time::Duration,
    /// Capacity probe length (closed loop).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub probe: std::time::Duration,
    /// Open-loop rate as a fraction of the probed capacity.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.6,
        allow_negative_numbers = true,
        value_parser = parse_fraction
    )]
    pub fraction: f64,
    /// Generator connections.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 64)]
    pub connections: usize,
    /// Report folder (default `reports/demo-<unix time>`).
    #[arg(
        long,
        value_name = "DIR",
        help = "Report folder (default reports/demo-<unix time>)"
    )]
    pub out: Option<std::path::PathBuf>,
}

/// Arguments of `percore serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on (repeatable). Port 0 picks a free port. Default 127.0.0.1:8080.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// CPUs to run shards on, e.g. `0,2-5` (default: every CPU this process may use).
    #[arg(long, value_name = "LIST", conflicts_with = "shards")]
    pub cpus: Option<String>,
    /// Number of shards, on the first CPUs of the affinity mask.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Take the listening sockets from the running server (hot restart) instead of binding.
    #[arg(long)]
    pub upgrade: bool,
    /// Unix socket for hot-restart handoffs (default $XDG_RUNTIME_DIR/percore/control-PORT.sock
    /// for the first --listen port, else /run/percore/control-PORT.sock as root, else
    /// ./control-PORT.sock; none on port 0).
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<std::path::PathBuf>,
    /// Write the serving process's pid here.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<std::path::PathBuf>,
    /// Absolute deadline for a request head (e.g. `10s`, `500ms`); then 408. Also how long a new
    /// connection may stay silent
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub header_timeout: Option<std::time::Duration>,
    /// Keep-alive idle timeout (e.g. `75s`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keepalive_timeout: Option<std::time::Duration>,
    /// Body inactivity timeout (e.g. `30s`); then 408.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub body_timeout: Option<std::time::Duration>,
    /// How long a drain (SIGTERM) waits for in-flight requests before closing them (e.g. `30s`,
    /// `2m`; a bare number is seconds; default: the config's `server.drain_timeout`, 30 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<std::time::Duration>,
    /// How long a drain (SIGTERM) keeps accepting new connections before it refuses them (e.g.
    /// `1s`, `0s`; default: the config's `server.drain_accept`, 1 s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_accept: Option<std::time::Duration>,
    /// Config file (TOML); without one the embedded defaults apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Validate the config (and flags) and exit: 0 when valid, 1 with `file:line: field: error`.
    #[arg(long)]
    pub check: bool,
    /// Admin API address (default from the config, 127.0.0.1:9090; port 0 picks one).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Poll this many microseconds before a shard with nothing to do sleeps (lower latency at
    /// low load, at the cost of a busy CPU).
    #[arg(long, value_name = "MICROS", default_value_t = 0)]
    pub idle_spin_us: u64,
}

impl ServeArgs {
    /// The CPU selection the flags ask for.
    pub fn cpu_selection(&self) -> Result<CpuSelection, String> {
        if let Some(list) = &self.cpus {
            return parse_cpu_list(list)
                .map(CpuSelection::List)
                .map_err(|e| e.to_string());
        }
        if let Some(n) = self.shards {
            return Ok(CpuSelection::Count(n));
        }
        Ok(CpuSelection::All)
    }
}

/// Parses a fraction in (0, 1].
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("{s:?} is not a fraction in (0, 1]")),
    }
}

/// A command-line argument that cannot be used (exit status 2, like a parse error).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Runs the command line; returns the process exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                print!("{e}");
                return 0;
            }
            eprintln!(
                "percore: {} (see percore --help)",
                percore_bench::cli::clap_error_line(&e)
            );
            return 2;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => crate::serve::run(args),
        Command::Config(a) => crate::control::print_config(a.config.as_deref()),
        Command::Ctl(a) => crate::control::ctl(&a),
        Command::Demo(a) => crate::demo::run(crate::demo::DemoOptions {
            probe: a.probe,
            duration: a.duration,
            fraction: a.fraction,
            connections: a.connections,
            out: a.out,
            ..crate::demo::DemoOptions::default()
        })
        .map(|_| ()),
    };
    match result {
        Ok(()) => 0,
        Err(e) if e.is::<UsageError>() => {
            eprintln!("percore: {e} (see percore --help)");
            2
        }
        Err(e) => {
            eprintln!("percore: {e}");
            1
        }
    }
}
