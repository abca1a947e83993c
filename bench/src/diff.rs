//! `report diff A B`: side-by-side latency percentiles of two runs with the
//! ratio B/A, as a text table.

use std::fmt::Write as _;

use crate::dist::Distribution;

/// The rows of the diff table: (label, quantile); `None` means max.
pub const DIFF_POINTS: [(&str, Option<f64>); 6] = [
    ("50%", Some(0.5)),
    ("90%", Some(0.9)),
    ("99%", Some(0.99)),
    ("99.9%", Some(0.999)),
    ("99.99%", Some(0.9999)),
    ("max", None),
];

/// One line of the diff: values in ms and B/A (`None` when A is 0).
#[derive(Debug, Clone, PartialEq)]
pub struct DiffRow {
    /// Percentile label (`50%` ... `max`).
    pub label: &'static str,
    /// A's value in ms.
    pub a_ms: f64,
    /// B's value in ms.
    pub b_ms: f64,
    /// b_ms / a_ms.
    pub ratio: Option<f64>,
}

/// Compute the diff rows.
pub fn diff_rows(a: &Distribution, b: &Distribution) -> Vec<DiffRow> {
    DIFF_POINTS
        .iter()
        .map(|&(label, q)| {
            let pick = |d: &Distribution| q.map_or_else(|| d.max_ms(), |q| d.value_ms_at(q));
            let (a_ms, b_ms) = (pick(a), pick(b));
            DiffRow {
                label,
                a_ms,
                b_ms,
                ratio: (a_ms > 0.0).then(|| b_ms / a_ms),
            }
        })
        .collect()
}

/// Render the diff table. `a_name`/`b_name` head the columns.
///
/// ```text
/// Percentile      A (ms)      B (ms)     B/A
///        50%       1.240       1.310   1.056
/// ```
pub fn format_diff(a_name: &str, b_name: &str, a: &Distribution, b: &Distribution) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "A: {a_name}");
    let _ = writeln!(out, "B: {b_name}");
    let _ = writeln!(
        out,
        "{:>10} {:>12} {:>12} {:>8}",
        "Percentile", "A (ms)", "B (ms)", "B/A"
    );
    for r in diff_rows(a, b) {
        let ratio = r
            .ratio
            .map_or_else(|| "-".to_string(), |x| format!("{x:.3}"));
        let _ = writeln!(
            out,
            "{:>10} {:>12.3} {:>12.3} {:>8}",
            r.label, r.a_ms, r.b_ms, ratio
        );
    }
    if let (Some(ca), Some(cb)) = (a.total_count(), b.total_count()) {
        let _ = writeln!(out, "{:>10} {:>12} {:>12}", "count", ca, cb);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;

    fn dist(scale: u64) -> Distribution {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * scale).unwrap();
        }
        Distribution::Histogram(h)
    }

    #[test]
    fn ratios_and_table() {
        let (a, b) = (dist(1), dist(2));
        let rows = diff_rows(&a, &b);
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0].label, "50%");
        assert_eq!(rows[0].a_ms, 0.5);
        assert_eq!(rows[0].b_ms, 1.0);
        assert_eq!(rows[0].ratio, Some(2.0));
        assert_eq!(rows[5].label, "max");
        assert!((rows[5].ratio.unwrap() - 2.0).abs() < 0.01);
        let t = format_diff("a.hgrm", "b.hgrm", &a, &b);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A: a.hgrm");
        assert_eq!(lines[2], "Percentile       A (ms)       B (ms)      B/A");
        assert_eq!(lines[3], "       50%        0.500        1.000    2.000");
        assert!(lines[8].trim_start().starts_with("max"));
        assert_eq!(lines[9], "     count         1000         1000");
    }

    #[test]
    fn zero_baseline_has_no_ratio() {
        let a = Distribution::Histogram(Histogram::<u64>::new(3).unwrap());
        let rows = diff_rows(&a, &dist(1));
        assert!(rows.iter().all(|r| r.ratio.is_none()));
        assert!(format_diff("a", "b", &a, &dist(1)).contains(" -\n"));
    }
}
