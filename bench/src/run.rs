//! The command line put together: arguments to a [`LoadConfig`], the run with its live line,
//! the text summary and the report files; and [`main_cli`], which `src/main.rs` calls.
//!
//! Exit codes: 0 after a run (even one with errors: they are in the summary), 1 when the run or a
//! report file failed, 2 for bad arguments (one line on stderr).

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use crate::cli::{parse_from, CliExit, Command, RunArgs, EXIT_USAGE};
use crate::dist::Distribution;
use crate::error::Error;
use crate::load::{run_load_with, LoadConfig, Progress, RequestSpec};
use crate::mix::read_mix_file;
use crate::report::run_report;
use crate::summary::RunResults;
use crate::url::Target;

/// Exit code when a run or an output file failed.
pub const EXIT_FAILURE: i32 = 1;

/// Where to write the report files of a run; `None` skips one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportPaths {
    /// Corrected latency spectrum (`.hgrm`).
    pub hgrm: Option<PathBuf>,
    /// Per-second interval log (`.hlog`).
    pub hlog: Option<PathBuf>,
    /// JSON summary.
    pub json: Option<PathBuf>,
    /// Latency-by-percentile plot (corrected and service time).
    pub svg: Option<PathBuf>,
}

impl ReportPaths {
    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.hgrm, &self.hlog, &self.json, &self.svg]
            .into_iter()
            .flatten()
    }

    /// Fails unless every file can be written, before a run whose results would be lost: opens
    /// each for writing without truncating it, and removes the ones that did not exist before.
    pub fn check_writable(&self) -> Result<(), Error> {
        for p in self.all() {
            let existed = p.exists();
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
                .map_err(|e| Error::io(format!("open {} for writing", p.display()), e))?;
            if !existed {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(())
    }
}

/// Writes the report files named in `paths`. One that fails does not stop the others; the first
/// failure is returned.
pub fn write_reports(r: &RunResults, paths: &ReportPaths) -> Result<(), Error> {
    let mut first_err = None;
    let mut note = |res: Result<(), Error>| {
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
    };
    if let Some(p) = &paths.hgrm {
        note(crate::hgrm::write_hgrm_file(p, &r.corrected));
    }
    if let Some(p) = &paths.hlog {
        note(crate::hlog::write_hlog_file(p, r.start_time, &r.intervals));
    }
    if let Some(p) = &paths.json {
        note(r.summary().write_json_file(p));
    }
    if let Some(p) = &paths.svg {
        let runs = [
            (
                "corrected (from intended send)".to_string(),
                Distribution::Histogram(r.corrected.clone()),
            ),
            (
                "service time (from actual send)".to_string(),
                Distribution::Histogram(r.uncorrected.clone()),
            ),
        ];
        note(crate::plot::plot(
            &runs,
            "Latency by Percentile Distribution",
            p,
        ));
    }
    first_err.map_or(Ok(()), Err)
}

/// Resolves the target's host and port to one socket address.
pub fn resolve(target: &Target) -> Result<SocketAddr, Error> {
    let op = format!("resolve {}", target.host);
    (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| Error::io(op.clone(), e))?
        .next()
        .ok_or_else(|| Error::invalid(op, "no address found"))
}

fn read_body(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::io(format!("read body file {}", path.display()), e))
}

/// The load configuration the arguments describe (reads body and mix files, resolves the host).
pub fn config_from_args(args: &RunArgs) -> Result<LoadConfig, Error> {
    let target = args
        .url
        .as_ref()
        .ok_or_else(|| Error::invalid("check arguments", "a URL is required"))?;
    let addr = resolve(target)?;
    let requests = match &args.mix {
        Some(mix) => read_mix_file(mix)?
            .into_iter()
            .map(|e| {
                Ok(RequestSpec {
                    body: match &e.body_file {
                        Some(f) => read_body(f)?,
                        None => Vec::new(),
                    },
                    method: e.method,
                    path: e.path,
                    weight: e.weight,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?,
        None => vec![RequestSpec {
            method: args.effective_method().to_string(),
            path: target.path_and_query.clone(),
            body: match &args.body {
                Some(f) => read_body(f)?,
                None => Vec::new(),
            },
            weight: 1,
        }],
    };
    let cfg = LoadConfig {
        addr,
        host: target.host_header.clone(),
        requests,
        headers: args.headers.clone(),
        rate: args.rate,
        connections: args.connections,
        duration: args.duration,
        warmup: args.warmup,
        cpus: args.cpus.as_ref().map(|c| c.0.clone()),
        threads: args.threads,
        pipeline: args.pipeline,
        timeout: args.timeout,
    };
    let workers = cfg.worker_cpus()?.len();
    if cfg.connections < workers {
        return Err(Error::invalid(
            "check arguments",
            format!(
                "--connections ({}) must be >= threads ({workers})",
                cfg.connections
            ),
        ));
    }
    Ok(cfg)
}

/// The `percore-bench` program; returns the exit code.
pub fn main_cli() -> i32 {
    main_with_args(std::env::args_os())
}

/// [`main_cli`] with explicit arguments (argv\[0\] first).
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match parse_from(args) {
        Ok(c) => c,
        Err(e) => return print_exit(&e),
    };
    match cli.command {
        Some(Command::Report(cmd)) => {
            let stdout = std::io::stdout();
            match run_report(&cmd, &mut stdout.lock()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("percore-bench: {e}");
                    EXIT_FAILURE
                }
            }
        }
        None => run_cli(&cli.run),
    }
}

fn print_exit(e: &CliExit) -> i32 {
    if e.code == 0 {
        print!("{}", e.message);
    } else {
        eprintln!("{}", e.message);
    }
    e.code
}

fn run_cli(args: &RunArgs) -> i32 {
    let cfg = match config_from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("percore-bench: {e}");
            return EXIT_USAGE;
        }
    };
    let paths = ReportPaths {
        hgrm: args.hgrm.clone(),
        hlog: args.hlog.clone(),
        json: args.json.clone(),
        svg: None,
    };
    if let Err(e) = paths.check_writable() {
        eprintln!("percore-bench: {e}");
        return EXIT_USAGE;
    }
    let live = !args.quiet && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let url = args.url.as_ref().map(|u| u.to_string()).unwrap_or_default();
    if !args.quiet {
        let schedule = match cfg.rate {
            Some(r) => format!("open loop at {r} req/s"),
            None => "closed loop".to_string(),
        };
        println!(
            "Running {:.1}s test @ {url} ({schedule}, warm-up {:.1}s)",
            cfg.duration.as_secs_f64(),
            cfg.warmup.as_secs_f64()
        );
        let workers = cfg.worker_cpus().map(|c| c.len()).unwrap_or(0);
        println!(
            "  {workers} threads and {} connections, pipeline {}",
            cfg.connections, cfg.pipeline
        );
        let _ = std::io::stdout().flush();
    }
    let mut shown = false;
    let mut on_progress = |p: &Progress| {
        if live {
            eprint!("\r\x1b[K{}", p.line());
            let _ = std::io::stderr().flush();
            shown = true;
        }
    };
    let results = run_load_with(cfg, &mut on_progress);
    if shown {
        eprintln!();
    }
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            eprintln!("percore-bench: {e}");
            return EXIT_FAILURE;
        }
    };
    if args.quiet {
        // Only the warnings.
        for line in results.text_summary(false).lines() {
            if line.starts_with("!!!") {
                eprintln!("{line}");
            }
        }
        if results.errors.total() > 0 {
            let kinds = results.errors.describe();
            eprintln!(
                "percore-bench: {} errors ({})",
                results.errors.total(),
                kinds
            );
        }
    } else {
        print!("{}", results.text_summary(args.latency));
    }
    if let Err(e) = write_reports(&results, &paths) {
        eprintln!("percore-bench: {e}");
        return EXIT_FAILURE;
    }
    // A run that got not a single response measured nothing: say so in the exit status, so
    // that a script does not take a dead target's empty report for a result.
    if results.requests == 0 {
        eprintln!(
            "percore-bench: no response in the measured window ({} errors: {})",
            results.errors.total(),
            results.errors.describe()
        );
        return EXIT_FAILURE;
    }
    0
}
