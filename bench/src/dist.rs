//! A latency distribution from either a live histogram (µs) or percentile
//! rows read from a `.hgrm` file, with one query interface in milliseconds;
//! also loads one from a `.hgrm` or `.hlog` file for `report diff`/`plot`.

use std::path::Path;

use hdrhistogram::Histogram;

use crate::error::Error;
use crate::hgrm::{self, Hgrm, PercentileRow, TICKS_PER_HALF_DISTANCE, US_PER_MS};
use crate::hlog;

/// Where a distribution's numbers come from.
#[derive(Debug, Clone)]
pub enum Distribution {
    /// A histogram of microsecond values (exact queries).
    Histogram(Histogram<u64>),
    /// Rows parsed from a `.hgrm` text (queries snap to the rows).
    Rows(Hgrm),
}

impl Distribution {
    /// Latency in ms at quantile `q` (0..=1).
    pub fn value_ms_at(&self, q: f64) -> f64 {
        match self {
            Distribution::Histogram(h) => {
                hgrm::value_at_percentile(h, q * 100.0) as f64 / US_PER_MS
            }
            Distribution::Rows(r) => hgrm::rows_value_at(&r.rows, q).unwrap_or(0.0),
        }
    }

    /// Maximum latency in ms.
    pub fn max_ms(&self) -> f64 {
        match self {
            Distribution::Histogram(h) if h.is_empty() => 0.0,
            Distribution::Histogram(h) => h.max() as f64 / US_PER_MS,
            Distribution::Rows(r) => r
                .max_ms
                .or_else(|| r.rows.last().map(|x| x.value_ms))
                .unwrap_or(0.0),
        }
    }

    /// Number of recorded values, when known.
    pub fn total_count(&self) -> Option<u64> {
        match self {
            Distribution::Histogram(h) => Some(h.len()),
            Distribution::Rows(r) => r
                .total_count
                .or_else(|| r.rows.last().map(|x| x.total_count)),
        }
    }

    /// Percentile rows (5 ticks per half distance for histograms).
    pub fn rows(&self) -> Vec<PercentileRow> {
        match self {
            Distribution::Histogram(h) => {
                hgrm::percentile_rows(h, TICKS_PER_HALF_DISTANCE, US_PER_MS)
            }
            Distribution::Rows(r) => r.rows.clone(),
        }
    }
}

/// Load a `.hlog` (its untagged intervals merged) or `.hgrm` file. Other extensions
/// are sniffed: an interval-log header line means hlog, else hgrm.
pub fn load_distribution(path: &Path) -> Result<Distribution, Error> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("read {name}"), e))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let is_hlog = match ext.as_deref() {
        Some("hlog") => true,
        Some("hgrm") => false,
        _ => {
            let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned();
            head.contains("#[Histogram log format") || head.contains("\"StartTimestamp\"")
        }
    };
    if is_hlog {
        let log = hlog::read_hlog(&bytes, &name)?;
        let merged = hlog::merge_untagged(&log.intervals, &format!("load {name}"))?;
        Ok(Distribution::Histogram(merged))
    } else {
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::parse(format!("parse hgrm {name}"), None, "not UTF-8 text"))?;
        Ok(Distribution::Rows(hgrm::parse_hgrm(&text, &name)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_and_rows_agree_on_key_points() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v * 10).unwrap();
        }
        let d1 = Distribution::Histogram(h.clone());
        let d2 = Distribution::Rows(hgrm::parse_hgrm(&hgrm::format_hgrm(&h), "x").unwrap());
        for q in [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            let (a, b) = (d1.value_ms_at(q), d2.value_ms_at(q));
            // The file has rows only at its percentile steps: the answer snaps to the first row
            // that covers the quantile, never to one below it.
            assert!(b >= a - 0.0005 && (b - a) / a < 0.002, "q={q} {a} {b}");
        }
        assert_eq!(d1.max_ms(), d2.max_ms());
        assert_eq!(d1.total_count(), Some(10_000));
        assert_eq!(d2.total_count(), Some(10_000));
        assert_eq!(d1.rows().len(), d2.rows().len());
    }

    #[test]
    fn load_by_extension_and_sniffing() {
        let dir = std::env::temp_dir().join(format!("dist-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        h.record(1500).unwrap();
        h.record(2500).unwrap();
        std::fs::write(dir.join("a.hgrm"), hgrm::format_hgrm(&h)).unwrap();
        std::fs::write(dir.join("a.txt"), hgrm::format_hgrm(&h)).unwrap();
        let iv = vec![hlog::Interval {
            tag: None,
            start: std::time::Duration::ZERO,
            length: std::time::Duration::from_secs(1),
            histogram: h.clone(),
        }];
        hlog::write_hlog_file(&dir.join("a.hlog"), std::time::SystemTime::now(), &iv).unwrap();
        std::fs::copy(dir.join("a.hlog"), dir.join("b.log")).unwrap();
        assert!(matches!(
            load_distribution(&dir.join("a.hgrm")).unwrap(),
            Distribution::Rows(_)
        ));
        assert!(matches!(
            load_distribution(&dir.join("a.txt")).unwrap(),
            Distribution::Rows(_)
        ));
        match load_distribution(&dir.join("b.log")).unwrap() {
            Distribution::Histogram(m) => assert_eq!(m, h),
            other => panic!("{other:?}"),
        }
        assert!(load_distribution(&dir.join("missing.hgrm")).is_err());
        std::fs::write(dir.join("bin.hgrm"), [0xff, 0xfe]).unwrap();
        assert!(load_distribution(&dir.join("bin.hgrm")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
