//! `percore demo`: the README's first command. Starts the server on half of the CPUs (at least
//! one) and the load generator on the rest, probes capacity briefly in closed loop, runs open loop
//! at a fraction of it (latency measured from each request's intended send time), prints the
//! latency spectrum and writes `.hgrm`, `.hlog`, JSON and SVG into a report folder it names.

use std::{path::PathBuf, time::Duration};

use percore_bench::{LoadConfig, ReportPaths, run_load_with};
use percore_runtime::cpus::{CpuSelection, allowed_cpus, format_cpu_list};

use crate::serve::{ServeOptions, start};

/// Options of `percore demo`.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Length of the capacity probe (closed loop).
    pub probe: Duration,
    /// Length of the measured open-loop run.
    pub duration: Duration,
    /// Open-loop rate as a fraction of the probed capacity.
    pub fraction: f64,
    /// Connections of the generator.
    pub connections: usize,
    /// Report folder; default `reports/demo-<unix time>`.
    pub out: Option<PathBuf>,
    /// Path requested.
    pub path: String,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            probe: Duration::from_secs(5),
            duration: Duration::from_secs(20),
            fraction: 0.6,
            connections: 64,
            out: None,
            path: "/".into(),
        }
    }
}

/// Splits the allowed CPUs: server first half (at least one), generator the rest (or the same CPU
/// when there is only one).
pub fn split_cpus(cpus: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let half = cpus.len().div_ceil(2).max(1);
    let server = cpus[..half.min(cpus.len())].to_vec();
    let load = if cpus.len() > half {
        cpus[half..].to_vec()
    } else {
        server.clone()
    };
    (server, load)
}

/// Send lag (p99.9, ms) from which the demo says the generator fell behind.
const LAG_WARN_MS: f64 = 1.0;

/// Runs the demo; returns the report folder.
pub fn run(opts: DemoOptions) -> Result<PathBuf, Box<dyn std::error::Error>> {
    if !(opts.fraction > 0.0 && opts.fraction <= 1.0) {
        return Err(format!("--fraction must be in (0, 1], got {}", opts.fraction).into());
    }
    let (server_cpus, gen_cpus) = split_cpus(&allowed_cpus());
    let server = start(ServeOptions {
        listen: vec!["127.0.0.1:0".parse().expect("valid address")],
        cpus: CpuSelection::List(server_cpus.clone()),
        // Nobody but the demo's own load generator connects: its drain need not keep accepting.
        drain_accept: Duration::ZERO,
        ..ServeOptions::default()
    })?;
    let addr = server.addrs()[0];
    println!(
        "percore demo: server on http://{addr} (cpus {}), load generator on cpus {}",
        format_cpu_list(&server_cpus),
        format_cpu_list(&gen_cpus)
    );
    let live = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = |p: &percore_bench::Progress| {
        if live {
            eprint!("\r{}   ", p.line());
        }
    };
    let mut cfg = LoadConfig::new(addr, opts.path.clone());
    cfg.cpus = Some(gen_cpus.clone());
    cfg.connections = opts.connections;
    cfg.duration = opts.probe;
    cfg.warmup = Duration::from_secs(1);
    println!(
        "percore demo: probing capacity for {:?} (closed loop, {} connections) ...",
        opts.probe, opts.connections
    );
    let probe = run_load_with(cfg.clone(), &mut progress)?;
    if live {
        eprintln!();
    }
    let capacity = probe.achieved_rps();
    if capacity < 1.0 {
        return Err("the capacity probe completed no request".into());
    }
    let rate = ((capacity * opts.fraction) as u64).max(1);
    println!(
        "percore demo: capacity {:.0} requests/s; open loop at {:.0}% = {rate} requests/s for {:?} ...",
        capacity,
        opts.fraction * 100.0,
        opts.duration
    );
    cfg.rate = Some(rate);
    cfg.duration = opts.duration;
    cfg.warmup = Duration::from_secs(2);
    let result = run_load_with(cfg, &mut progress)?;
    if live {
        eprintln!();
    }
    println!("{}", result.text_summary(true));
    // The generator shares the machine with the server: when it cannot keep its own schedule,
    // say so, since the recorded latency then includes its lag.
    let lag = percore_bench::LatencyStats::from_histogram(&result.send_lag);
    if lag.p999 >= LAG_WARN_MS {
        println!(
            "percore demo: the load generator fell behind its own schedule (send lag p99.9 {:.1} ms, \
             max {:.1} ms); the recorded latency includes that lag. A lower --fraction avoids it.",
            lag.p999, lag.max
        );
    }
    let out = opts.out.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("reports/demo-{t}"))
    });
    std::fs::create_dir_all(&out)?;
    let paths = ReportPaths {
        hgrm: Some(out.join("latency.hgrm")),
        hlog: Some(out.join("latency.hlog")),
        json: Some(out.join("summary.json")),
        svg: Some(out.join("latency.svg")),
    };
    percore_bench::write_reports(&result, &paths)?;
    server.drain(Duration::from_secs(5));
    server.wait()?;
    println!(
        "percore demo: reports in {}/ (latency.hgrm, latency.hlog, summary.json, latency.svg)",
        out.display()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_are_split_in_halves() {
        assert_eq!(split_cpus(&[0]), (vec![0], vec![0]));
        assert_eq!(split_cpus(&[0, 1]), (vec![0], vec![1]));
        assert_eq!(split_cpus(&[0, 1, 2]), (vec![0, 1], vec![2]));
        assert_eq!(split_cpus(&[2, 3, 4, 5]), (vec![2, 3], vec![4, 5]));
    }
}
