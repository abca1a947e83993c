//! End-of-run results: the plain input struct the load engine fills
//! ([`RunResults`]), the JSON summary ([`Summary`], for `--json`), and the
//! human text summary (rates with a loud under-delivery warning, errors,
//! status codes, wrk2-style percentile tables).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::hgrm::{self, US_PER_MS};
use crate::hlog::Interval;

/// Achieved rate below this fraction of the target triggers the warning.
pub const RATE_WARN_FRACTION: f64 = 0.95;

/// Error counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// Connection could not be established.
    pub connect: u64,
    /// Request timed out (`--timeout`).
    pub timeout: u64,
    /// Connection reset / closed mid-response.
    pub reset: u64,
    /// Response could not be parsed.
    pub parse: u64,
    /// Anything else.
    pub other: u64,
}

impl ErrorCounts {
    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.reset + self.parse + self.other
    }

    /// The non-zero kinds as `connect 3, reset 1`.
    pub fn describe(&self) -> String {
        self.by_kind()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// (kind, count) pairs in a fixed order.
    pub fn by_kind(&self) -> [(&'static str, u64); 5] {
        [
            ("connect", self.connect),
            ("timeout", self.timeout),
            ("reset", self.reset),
            ("parse", self.parse),
            ("other", self.other),
        ]
    }
}

/// What the engine measured; everything the reports need.
#[derive(Debug, Clone)]
pub struct RunResults {
    /// Latency from each request's *intended* send time (µs): the
    /// coordinated-omission-corrected numbers.
    pub corrected: Histogram<u64>,
    /// Latency from the actual send time (µs): service time.
    pub uncorrected: Histogram<u64>,
    /// Open loop: how late each request went out after it was due and its connection had room
    /// for it (µs). This is the generator's own lag (its CPU was busy, or it slept past the due
    /// time), already part of `corrected`: a large one means the generator, not the server, fell
    /// behind. Waiting for the server (a full pipeline, a reconnect) is not counted. Empty for
    /// closed loop.
    pub send_lag: Histogram<u64>,
    /// Completed requests (responses received) in the measured window.
    pub requests: u64,
    /// From the start of the measured window (after warm-up) to the last of its responses, at
    /// least the window's length: the span `requests` took.
    pub duration: Duration,
    /// Requested total rate (`-R`), `None` for closed loop.
    pub target_rps: Option<f64>,
    /// Responses by HTTP status code.
    pub status: BTreeMap<u16, u64>,
    /// Failures by kind.
    pub errors: ErrorCounts,
    /// Generator CPU use: CPU seconds / (wall seconds × workers), 0..=1.
    pub generator_cpu: f64,
    /// Worker threads.
    pub workers: usize,
    /// Connections.
    pub connections: usize,
    /// Bytes read, if counted (shown in the text summary only).
    pub bytes_read: Option<u64>,
    /// Requests whose intended send time fell in the measured window:
    /// `requests + errors.total() + unsent`.
    pub intended: u64,
    /// Requests due in the window that were still unsent when the run ended (the
    /// generator or the server fell behind the schedule).
    pub unsent: u64,
    /// Connections re-established after a close or an error.
    pub reconnects: u64,
    /// Warm-up excluded before the measured window.
    pub warmup: Duration,
    /// Responses completed for warm-up requests (not in any count or histogram).
    pub warmup_requests: u64,
    /// Wall-clock time at the start of the measured window (the `.hlog` StartTime).
    pub start_time: SystemTime,
    /// Per-second corrected histograms from the window start (the `.hlog` intervals);
    /// their sum is `corrected`.
    pub intervals: Vec<Interval>,
}

/// Percentile summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// 50th percentile.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99.99th percentile.
    pub p9999: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl LatencyStats {
    /// From a µs histogram (zeros when empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        let at = |p| hgrm::value_at_percentile(h, p) as f64 / US_PER_MS;
        LatencyStats {
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            p999: at(99.9),
            p9999: at(99.99),
            max: if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / US_PER_MS
            },
            mean: h.mean() / US_PER_MS,
        }
    }
}

/// The `--json` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Completed requests.
    pub requests: u64,
    /// Measured seconds: the window, or until its last response came if that was later.
    pub duration_s: f64,
    /// Achieved requests/s: `requests / duration_s`.
    pub rps: f64,
    /// Target requests/s; null for closed loop.
    pub target_rps: Option<f64>,
    /// Corrected latency (from intended send time).
    pub latency_ms: LatencyStats,
    /// Uncorrected latency (service time).
    pub service_time_ms: LatencyStats,
    /// Open loop: the generator's own lag behind its schedule (see [`RunResults::send_lag`]);
    /// zeros for closed loop.
    #[serde(default)]
    pub send_lag_ms: LatencyStats,
    /// Status code (as a string key) -> count.
    pub status: BTreeMap<String, u64>,
    /// Error kind -> count.
    pub errors: BTreeMap<String, u64>,
    /// Generator CPU fraction.
    pub generator_cpu: f64,
    /// Worker threads.
    pub workers: usize,
    /// Connections.
    pub connections: usize,
    /// Requests due in the measured window (`requests` + all errors + `unsent`).
    pub intended: u64,
    /// Requests due in the window but never sent.
    pub unsent: u64,
    /// Connections re-established.
    pub reconnects: u64,
    /// Seconds of warm-up excluded.
    pub warmup_s: f64,
}

impl RunResults {
    /// Achieved requests per second (0 for a zero-length run).
    pub fn achieved_rps(&self) -> f64 {
        let s = self.duration.as_secs_f64();
        if s > 0.0 {
            self.requests as f64 / s
        } else {
            0.0
        }
    }

    /// True when a target was set and less than 95% of it was achieved.
    pub fn under_target(&self) -> bool {
        self.target_rps
            .is_some_and(|t| t > 0.0 && self.achieved_rps() < RATE_WARN_FRACTION * t)
    }

    /// Build the JSON summary.
    pub fn summary(&self) -> Summary {
        Summary {
            requests: self.requests,
            duration_s: self.duration.as_secs_f64(),
            rps: self.achieved_rps(),
            target_rps: self.target_rps,
            latency_ms: LatencyStats::from_histogram(&self.corrected),
            service_time_ms: LatencyStats::from_histogram(&self.uncorrected),
            send_lag_ms: LatencyStats::from_histogram(&self.send_lag),
            status: self
                .status
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            errors: self
                .errors
                .by_kind()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            generator_cpu: if self.generator_cpu.is_finite() {
                self.generator_cpu
            } else {
                0.0
            },
            workers: self.workers,
            connections: self.connections,
            intended: self.intended,
            unsent: self.unsent,
            reconnects: self.reconnects,
            warmup_s: self.warmup.as_secs_f64(),
        }
    }

    /// The human summary. `spectrum` (`--latency`) adds the detailed
    /// percentile distributions of both histograms.
    pub fn text_summary(&self, spectrum: bool) -> String {
        let mut out = String::new();
        let rps = self.achieved_rps();
        let _ = write!(
            out,
            "  {} requests in {:.2}s",
            self.requests,
            self.duration.as_secs_f64()
        );
        if let Some(b) = self.bytes_read {
            let _ = write!(out, ", {} read", format_bytes(b));
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  {} workers, {} connections, generator CPU {:.1}%",
            self.workers,
            self.connections,
            self.generator_cpu * 100.0
        );
        if self.warmup.is_zero() {
            let _ = writeln!(
                out,
                "  No warm-up: everything from the first request is measured"
            );
        } else {
            let _ = writeln!(
                out,
                "  Warm-up of {:.2}s excluded ({} responses not counted)",
                self.warmup.as_secs_f64(),
                self.warmup_requests
            );
        }
        if self.reconnects > 0 {
            let _ = writeln!(out, "  Reconnects: {}", self.reconnects);
        }
        match self.target_rps {
            Some(t) => {
                let _ = writeln!(out, "Requests/sec: {rps:>10.2} (target {t:.2})");
                if self.under_target() {
                    let pct = if t > 0.0 { 100.0 * rps / t } else { 0.0 };
                    let _ = writeln!(
                        out,
                        "!!! WARNING: ACHIEVED RATE {rps:.2} req/s IS ONLY {pct:.1}% OF THE TARGET {t:.2} req/s !!!"
                    );
                    let _ = writeln!(
                        out,
                        "!!! The generator or the server could not keep up; latencies are measured from the intended schedule. !!!"
                    );
                }
            }
            None => {
                let _ = writeln!(out, "Requests/sec: {rps:>10.2} (closed loop)");
            }
        }
        if self.unsent > 0 {
            let _ = writeln!(
                out,
                "!!! WARNING: {} of {} requests due in the window were never sent (schedule not kept) !!!",
                self.unsent, self.intended
            );
        }
        let total_errors = self.errors.total();
        if total_errors > 0 {
            let _ = writeln!(out, "  Errors: {total_errors} ({})", self.errors.describe());
        } else {
            let _ = writeln!(out, "  Errors: 0");
        }
        if !self.status.is_empty() {
            let codes: Vec<String> = self
                .status
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(out, "  Status: {}", codes.join(", "));
        }
        let non2xx: u64 = self
            .status
            .iter()
            .filter(|(k, _)| !(200..300).contains(*k))
            .map(|(_, v)| *v)
            .sum();
        if non2xx > 0 {
            let _ = writeln!(out, "  Non-2xx or 3xx responses: {non2xx}");
        }
        let _ = writeln!(out);
        out.push_str(&hgrm::format_short_table(
            &self.corrected,
            "Recorded Latency",
        ));
        let _ = writeln!(out);
        out.push_str(&hgrm::format_short_table(
            &self.uncorrected,
            "Uncorrected Latency (measured without taking delayed starts into account)",
        ));
        if self.target_rps.is_some() && !self.send_lag.is_empty() {
            let lag = LatencyStats::from_histogram(&self.send_lag);
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "  Send lag (the generator behind its own schedule; part of the recorded latency): \
                 p99 {:.2}ms, p99.9 {:.2}ms, max {:.2}ms",
                lag.p99, lag.p999, lag.max,
            );
        }
        if spectrum {
            let _ = writeln!(out, "\n  Detailed Percentile spectrum:");
            out.push_str(&hgrm::format_hgrm(&self.corrected));
            let _ = writeln!(out, "\n  Uncorrected Detailed Percentile spectrum:");
            out.push_str(&hgrm::format_hgrm(&self.uncorrected));
        }
        out
    }
}

fn format_bytes(b: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2}{}", units[i])
}

impl Summary {
    /// Pretty JSON text.
    pub fn to_json(&self) -> Result<String, Error> {
        serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            op: "serialize JSON summary".into(),
            source,
        })
    }

    /// Write pretty JSON (plus newline) to `path`.
    pub fn write_json_file(&self, path: &Path) -> Result<(), Error> {
        let mut s = self.to_json()?;
        s.push('\n');
        std::fs::write(path, s)
            .map_err(|e| Error::io(format!("write JSON summary {}", path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(target: Option<f64>, requests: u64) -> RunResults {
        let mut c = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut u = c.clone();
        for v in 1..=1000u64 {
            c.record(v * 10).unwrap();
            u.record(v * 5).unwrap();
        }
        RunResults {
            corrected: c,
            uncorrected: u.clone(),
            send_lag: u,
            requests,
            duration: Duration::from_secs(10),
            target_rps: target,
            status: BTreeMap::from([(200, requests.saturating_sub(3)), (503, 3)]),
            errors: ErrorCounts {
                timeout: 2,
                reset: 1,
                ..Default::default()
            },
            generator_cpu: 0.25,
            workers: 2,
            connections: 16,
            bytes_read: Some(3 * 1024 * 1024),
            intended: requests + 3,
            unsent: 0,
            reconnects: 0,
            warmup: Duration::from_secs(2),
            warmup_requests: 7,
            start_time: SystemTime::UNIX_EPOCH,
            intervals: Vec::new(),
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let s = results(Some(100.0), 1000).summary();
        let v: serde_json::Value = serde_json::from_str(&s.to_json().unwrap()).unwrap();
        assert_eq!(v["requests"], 1000);
        assert_eq!(v["duration_s"], 10.0);
        assert_eq!(v["rps"], 100.0);
        assert_eq!(v["target_rps"], 100.0);
        // highest equivalent values of 5000, 9000, 9900, 9990, 10000 µs
        assert_eq!(v["latency_ms"]["p50"], 5.003);
        assert_eq!(v["latency_ms"]["p90"], 9.007);
        assert_eq!(v["latency_ms"]["p99"], 9.903);
        assert_eq!(v["latency_ms"]["p999"], 9.991);
        assert_eq!(v["latency_ms"]["p9999"], 10.007);
        assert_eq!(v["latency_ms"]["max"], 10.007);
        assert!(v["latency_ms"]["mean"].as_f64().unwrap() > 4.9);
        assert_eq!(v["service_time_ms"]["p50"], 2.501);
        assert_eq!(v["status"]["200"], 997);
        assert_eq!(v["status"]["503"], 3);
        assert_eq!(v["errors"]["timeout"], 2);
        assert_eq!(v["errors"]["connect"], 0);
        assert_eq!(v["errors"].as_object().unwrap().len(), 5);
        assert_eq!(v["generator_cpu"], 0.25);
        assert_eq!(v["workers"], 2);
        assert_eq!(v["connections"], 16);
        // closed loop -> null; and it round-trips
        let closed = results(None, 1000).summary();
        let text = closed.to_json().unwrap();
        assert!(text.contains("\"target_rps\": null"));
        let back: Summary = serde_json::from_str(&text).unwrap();
        assert_eq!(back, closed);
    }

    #[test]
    fn text_summary_warns_loudly_when_under_target() {
        let ok = results(Some(100.0), 960).text_summary(false);
        assert!(!ok.contains("WARNING"), "{ok}");
        let low = results(Some(100.0), 940).text_summary(false);
        assert!(low.contains("!!! WARNING: ACHIEVED RATE 94.00 req/s IS ONLY 94.0% OF THE TARGET 100.00 req/s !!!"), "{low}");
        assert!(low.contains("Errors: 3 (timeout 2, reset 1)"));
        assert!(low.contains("Status: 200: 937, 503: 3"));
        assert!(low.contains("Non-2xx or 3xx responses: 3"));
        assert!(low.contains("940 requests in 10.00s, 3.00MB read"));
        assert!(low.contains(" 50.000%    5.00ms"));
        assert!(low.contains("Uncorrected Latency"));
        assert!(!low.contains("Detailed Percentile spectrum"));
        let closed = results(None, 940).text_summary(true);
        assert!(closed.contains("(closed loop)") && !closed.contains("WARNING"));
        assert!(closed.contains("Detailed Percentile spectrum:"));
        assert!(closed.contains("#[Buckets ="));
    }

    #[test]
    fn zero_duration_and_empty_histograms_do_not_panic() {
        let mut r = results(Some(0.0), 0);
        r.status.clear();
        r.duration = Duration::ZERO;
        r.corrected = Histogram::new(3).unwrap();
        r.uncorrected = Histogram::new(3).unwrap();
        r.generator_cpu = f64::NAN;
        let s = r.summary();
        assert_eq!(s.rps, 0.0);
        assert_eq!(s.latency_ms.max, 0.0);
        assert!(s.to_json().is_ok());
        assert!(r.text_summary(true).contains("0 requests"));
        let p = std::env::temp_dir().join(format!("sum-{}.json", std::process::id()));
        s.write_json_file(&p).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().ends_with("}\n"));
        std::fs::remove_file(&p).unwrap();
    }
}
