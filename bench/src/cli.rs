//! Command-line interface of `percore-bench`: clap-derived arguments in wrk2's
//! style, the `report merge|diff|plot` subcommands, cross-argument
//! validation, and the mapping of any argument error to ONE line on stderr
//! with exit code 2 (`--help`/`--version` print normally and exit 0).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::Error;
use crate::url::{parse_url, Target};
use crate::values::{
    parse_count, parse_cpu_list_arg, parse_duration, parse_header, parse_method, parse_usize_count,
    CpuList, Header,
};

/// Largest `--pipeline` depth accepted.
pub const MAX_PIPELINE: usize = 1024;

/// Exit code for bad arguments.
pub const EXIT_USAGE: i32 = 2;

/// `percore-bench [OPTIONS] URL` or `percore-bench report ...`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "percore-bench",
    version,
    about = "Open-loop HTTP load generator with coordinated-omission-free HdrHistogram latency reports",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// Offline report tools.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Load-run options (used when no subcommand is given).
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options of a load run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Target, `http://host[:port]/path?query` (host: IPv4, `[IPv6]` or name).
    #[arg(
        value_name = "URL",
        required = true,
        value_parser = parse_url,
        help = "Target, http://host[:port]/path?query (host: IPv4, [IPv6] or name)"
    )]
    pub url: Option<Target>,

    /// Worker threads [default: number of CPUs in --cpus, else of the process affinity mask]
    #[arg(short = 't', long, value_name = "N", value_parser = parse_usize_count)]
    pub threads: Option<usize>,

    /// Total connections, spread over the workers
    #[arg(short = 'c', long, value_name = "N", default_value = "64", value_parser = parse_usize_count)]
    pub connections: usize,

    /// Test duration (500ms, 30s, 2m, 1h; bare number = seconds)
    #[arg(short = 'd', long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Total requests per second, open loop (10k = 10000); absent = closed loop
    #[arg(short = 'R', long, value_name = "N", value_parser = parse_count)]
    pub rate: Option<u64>,

    /// Print the detailed latency percentile spectrum
    #[arg(long)]
    pub latency: bool,

    /// Extra request header 'Name: value' (repeatable)
    #[arg(short = 'H', long = "header", value_name = "'NAME: VALUE'", value_parser = parse_header)]
    pub headers: Vec<Header>,

    /// HTTP method [default: GET, or POST with --body]
    #[arg(short = 'm', long, value_name = "METHOD", value_parser = parse_method, conflicts_with = "mix")]
    pub method: Option<String>,

    /// Send this file's contents as the request body
    #[arg(long, value_name = "FILE", conflicts_with = "mix")]
    pub body: Option<PathBuf>,

    /// Per-request timeout
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Requests in flight per connection (HTTP/1.1 pipelining), 1..=1024
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_usize_count)]
    pub pipeline: usize,

    /// Pin workers to these CPUs, e.g. 0,2-5
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list_arg)]
    pub cpus: Option<CpuList>,

    /// Request mix file: lines `WEIGHT METHOD PATH [@bodyfile]`.
    #[arg(
        long,
        value_name = "FILE",
        help = "Request mix file: lines 'WEIGHT METHOD PATH [@bodyfile]'"
    )]
    pub mix: Option<PathBuf>,

    /// Write the corrected latency percentile distribution (.hgrm) here
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,

    /// Write per-second interval histograms (HdrHistogram log) here
    #[arg(long, value_name = "FILE")]
    pub hlog: Option<PathBuf>,

    /// Write the JSON summary here
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Warm-up before measuring (0 disables)
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Print only errors and warnings
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Offline tools for .hgrm / .hlog files
    #[command(subcommand)]
    Report(ReportCommand),
}

/// `report` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum ReportCommand {
    /// Sum all intervals of one or more .hlog files and print the distribution
    Merge {
        /// Interval logs to merge
        #[arg(value_name = "FILE.hlog", required = true)]
        files: Vec<PathBuf>,
        /// Write the merged distribution here instead of stdout
        #[arg(long, value_name = "OUT")]
        hgrm: Option<PathBuf>,
    },
    /// Compare two runs (.hgrm or .hlog) side by side with B/A ratios
    Diff {
        /// Baseline
        #[arg(value_name = "A")]
        a: PathBuf,
        /// Candidate
        #[arg(value_name = "B")]
        b: PathBuf,
    },
    /// Plot latency by percentile of one or more runs into an SVG
    Plot {
        /// .hgrm or .hlog files, one line each
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        /// Output SVG file
        #[arg(long, value_name = "OUT", required = true)]
        svg: PathBuf,
        /// Plot title
        #[arg(long, value_name = "T")]
        title: Option<String>,
    },
}

/// The highest `--rate` accepted: far more than one generator sends.
pub const MAX_RATE: u64 = 100_000_000;

impl RunArgs {
    /// Cross-argument checks clap cannot express.
    pub fn validate(&self) -> Result<(), Error> {
        let op = "check arguments";
        let bad = |why: String| Err(Error::invalid(op, why));
        if self.url.is_none() {
            return bad("a URL is required".into());
        }
        if self.connections == 0 {
            return bad("--connections must be at least 1".into());
        }
        if self.threads == Some(0) {
            return bad("--threads must be at least 1".into());
        }
        let threads = self.threads.or(self.cpus.as_ref().map(|c| c.0.len()));
        if let Some(t) = threads {
            if self.connections < t {
                return bad(format!(
                    "--connections ({}) must be >= threads ({t})",
                    self.connections
                ));
            }
        }
        if self.rate == Some(0) {
            return bad("--rate must be > 0 (omit it for a closed loop)".into());
        }
        if self.rate.is_some_and(|r| r > MAX_RATE) {
            return bad(format!(
                "--rate above {MAX_RATE} requests/s is more than one generator can send"
            ));
        }
        // One descriptor per connection, and a few for the process itself.
        if let Some(limit) = percore_runtime::sys::open_files_limit() {
            if self.connections as u64 + 32 > limit {
                return bad(format!(
                    "--connections {} needs as many open files; the limit is {limit} (ulimit -n)",
                    self.connections
                ));
            }
        }
        if !(1..=MAX_PIPELINE).contains(&self.pipeline) {
            return bad(format!("--pipeline must be between 1 and {MAX_PIPELINE}"));
        }
        if self.duration.is_zero() {
            return bad("--duration must be > 0".into());
        }
        if self.timeout.is_zero() {
            return bad("--timeout must be > 0".into());
        }
        Ok(())
    }

    /// Method to use without a mix file: `-m`, else POST with `--body`, else GET.
    pub fn effective_method(&self) -> &str {
        match (&self.method, &self.body) {
            (Some(m), _) => m,
            (None, Some(_)) => "POST",
            (None, None) => "GET",
        }
    }
}

/// How parsing ended when it did not produce a [`Cli`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliExit {
    /// Process exit code (0 for help/version, 2 for errors).
    pub code: i32,
    /// Text to print (help text, or one error line).
    pub message: String,
}

impl CliExit {
    /// Print the message (stdout for code 0, stderr otherwise) and exit.
    pub fn exit(&self) -> ! {
        if self.code == 0 {
            print!("{}", self.message);
        } else {
            eprintln!("{}", self.message);
        }
        std::process::exit(self.code)
    }
}

/// One error line for a clap error (`percore-bench: ... (see --help)`), or the
/// full help/version text with exit code 0.
pub fn clap_exit(err: &clap::Error) -> CliExit {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => CliExit {
            code: 0,
            message: err.render().to_string(),
        },
        _ => CliExit {
            code: EXIT_USAGE,
            message: format!("percore-bench: {} (see --help)", clap_error_line(err)),
        },
    }
}

/// A clap error as one line: its message with what clap puts on the lines below it (the
/// missing arguments, a tip, the rest of a value that held a line break), without the usage
/// text. For a command line that names no subcommand, says that one is needed.
pub fn clap_error_line(err: &clap::Error) -> String {
    if err.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "a subcommand is required".to_string();
    }
    let rendered = err.render().to_string();
    let message = rendered.split("\nUsage:").next().unwrap_or_default();
    let mut line = String::new();
    for part in message.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let part = part.strip_prefix("error: ").unwrap_or(part);
        if part.starts_with("For more information") {
            continue;
        }
        if !line.is_empty() {
            line.push_str(if part.starts_with("tip:") { "; " } else { " " });
        }
        line.push_str(part);
    }
    if line.is_empty() {
        "invalid arguments".to_string()
    } else {
        line
    }
}

/// One error line for a validation error, exit code 2.
pub fn validation_exit(err: &Error) -> CliExit {
    CliExit {
        code: EXIT_USAGE,
        message: format!("percore-bench: {err}"),
    }
}

/// Parse and validate `args` (including argv\[0\]).
pub fn parse_from<I, T>(args: I) -> Result<Cli, CliExit>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| clap_exit(&e))?;
    if cli.command.is_none() {
        cli.run.validate().map_err(|e| validation_exit(&e))?;
    }
    Ok(cli)
}

/// Parse and validate the process arguments; on failure print and exit
/// (code 0 for --help/--version, 2 otherwise).
pub fn parse_or_exit() -> Cli {
    parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Cli, CliExit> {
        parse_from(std::iter::once("percore-bench").chain(args.split_whitespace()))
    }

    #[test]
    fn defaults() {
        let cli = parse("http://127.0.0.1:8080/").unwrap();
        let r = &cli.run;
        assert!(cli.command.is_none());
        assert_eq!(r.url.as_ref().unwrap().port, 8080);
        assert_eq!(r.threads, None);
        assert_eq!(r.connections, 64);
        assert_eq!(r.duration, Duration::from_secs(10));
        assert_eq!(r.rate, None);
        assert_eq!(r.timeout, Duration::from_secs(2));
        assert_eq!(r.pipeline, 1);
        assert_eq!(r.warmup, Duration::from_secs(2));
        assert!(!r.latency && !r.quiet);
        assert_eq!(r.effective_method(), "GET");
    }

    #[test]
    fn wrk2_style_options() {
        let cli = parse(
            "-t2 -c 100 -d 30s -R 10k --latency -H X-A:1 -H X-B:2 -m PUT --body b.json \
             --timeout 500ms --pipeline 4 --cpus 0,2-3 --hgrm o.hgrm --hlog o.hlog \
             --json o.json --warmup 0 --quiet http://[::1]:81/x?y=1",
        )
        .unwrap();
        let r = cli.run;
        assert_eq!(r.threads, Some(2));
        assert_eq!(r.connections, 100);
        assert_eq!(r.duration, Duration::from_secs(30));
        assert_eq!(r.rate, Some(10_000));
        assert!(r.latency && r.quiet);
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.headers[1].name, "X-B");
        assert_eq!(r.effective_method(), "PUT");
        assert_eq!(r.timeout, Duration::from_millis(500));
        assert_eq!(r.pipeline, 4);
        assert_eq!(r.cpus, Some(CpuList(vec![0, 2, 3])));
        assert_eq!(r.warmup, Duration::ZERO);
        assert_eq!(r.url.unwrap().host_header, "[::1]:81");
        assert_eq!(r.hgrm, Some(PathBuf::from("o.hgrm")));
        let body = parse("--body x http://h/").unwrap();
        assert_eq!(body.run.effective_method(), "POST");
    }

    #[test]
    fn report_subcommands() {
        match parse("report merge a.hlog b.hlog --hgrm out.hgrm")
            .unwrap()
            .command
        {
            Some(Command::Report(ReportCommand::Merge { files, hgrm })) => {
                assert_eq!(files.len(), 2);
                assert_eq!(hgrm, Some(PathBuf::from("out.hgrm")));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("report diff a.hgrm b.hlog").unwrap().command,
            Some(Command::Report(ReportCommand::Diff { .. }))
        ));
        match parse("report plot a.hgrm b.hgrm --svg o.svg --title T")
            .unwrap()
            .command
        {
            Some(Command::Report(ReportCommand::Plot { files, svg, title })) => {
                assert_eq!(files.len(), 2);
                assert_eq!(svg, PathBuf::from("o.svg"));
                assert_eq!(title.as_deref(), Some("T"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse("report plot a.hgrm").unwrap_err().code, 2);
        assert_eq!(parse("report merge").unwrap_err().code, 2);
        assert_eq!(parse("report diff a").unwrap_err().code, 2);
    }

    #[test]
    fn errors_are_one_line_exit_2() {
        for args in [
            "",
            "-c x http://h/",
            "-d 10q http://h/",
            "https://h/",
            "-H NoColon http://h/",
            "--cpus 3-1 http://h/",
            "--bogus http://h/",
            "-c 1 -t 2 http://h/",
            "-c 2 --cpus 0-3 http://h/",
            "-R 0 http://h/",
            "-R 10G http://h/",
            "-c 99999999999 http://h/",
            "--pipeline 0 http://h/",
            "--pipeline 1025 http://h/",
            "-d 0 http://h/",
            "--timeout 0 http://h/",
            "-t 0 http://h/",
            "--mix m.txt -m POST http://h/",
            "http://h/ http://other/",
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.code, 2, "{args}: {}", e.message);
            assert_eq!(e.message.lines().count(), 1, "{args}: {}", e.message);
            assert!(e.message.starts_with("percore-bench: "), "{}", e.message);
        }
        let e = parse("-c 1 -t 2 http://h/").unwrap_err();
        assert_eq!(
            e.message,
            "percore-bench: check arguments: --connections (1) must be >= threads (2)"
        );
        let e = parse("-c x http://h/").unwrap_err();
        assert!(e.message.contains("--connections"), "{}", e.message);
        assert!(e.message.contains("invalid number 'x'"), "{}", e.message);
        // What clap lists below its first line is kept: here, the missing argument.
        let e = parse("report plot a.hgrm").unwrap_err();
        assert!(e.message.contains("--svg"), "{}", e.message);
        let e = parse("report").unwrap_err();
        assert_eq!(
            e.message,
            "percore-bench: a subcommand is required (see --help)"
        );
    }

    #[test]
    fn help_and_version_exit_0() {
        for args in [
            "--help",
            "-h",
            "--version",
            "-V",
            "report --help",
            "report plot --help",
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.code, 0, "{args}");
            assert!(e.message.lines().count() >= 1);
        }
        let help = parse("--help").unwrap_err().message;
        for opt in [
            "--threads",
            "--rate",
            "--cpus",
            "--mix",
            "--hlog",
            "--warmup",
            "URL",
        ] {
            assert!(help.contains(opt), "{opt}");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
