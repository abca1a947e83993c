//! HdrHistogram percentile-distribution text (`.hgrm`): the writer (exactly
//! as HdrHistogram_c's `hdr_percentiles_print(h, f, 5, 1000.0, CLASSIC)`
//! prints it, which is what wrk2 prints under "Detailed Percentile
//! spectrum"), wrk2's short "Latency Distribution" table, and a parser that
//! reads `.hgrm` text back into rows (used by `report diff`/`plot` and tests).
//!
//! Histograms given to this module hold values in MICROSECONDS; the text
//! shows milliseconds (value scale 1000).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::error::Error;

/// Percentile ticks per half distance used by wrk2 and HdrHistogram's tools.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Microseconds per millisecond: the output value scale.
pub const US_PER_MS: f64 = 1000.0;

/// The percentiles of wrk2's short latency table.
pub const SHORT_PERCENTILES: [f64; 8] = [50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 99.999, 100.0];

/// One row of a percentile distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PercentileRow {
    /// Value in milliseconds (highest equivalent value of the bucket).
    pub value_ms: f64,
    /// Percentile as a fraction, 0.0 ..= 1.0.
    pub percentile: f64,
    /// Count of values at or below this row's value.
    pub total_count: u64,
}

/// A parsed `.hgrm` file: rows plus whatever footer fields were present.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hgrm {
    /// Rows in file order (non-decreasing percentile).
    pub rows: Vec<PercentileRow>,
    /// `#[Mean = ...]` in ms.
    pub mean_ms: Option<f64>,
    /// `StdDeviation = ...` in ms.
    pub stddev_ms: Option<f64>,
    /// `#[Max = ...]` in ms.
    pub max_ms: Option<f64>,
    /// `Total count = ...`.
    pub total_count: Option<u64>,
    /// `#[Buckets = ...]`.
    pub buckets: Option<u64>,
    /// `SubBuckets = ...`.
    pub sub_buckets: Option<u64>,
}

/// Sub-bucket count of a histogram with `sigfig` significant digits
/// (HdrHistogram's `2^ceil(log2(2 * 10^sigfig))`).
pub fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest = 2u64 * 10u64.pow(u32::from(sigfig.min(5)));
    let magnitude = 64 - (largest - 1).leading_zeros();
    1u64 << magnitude.max(1)
}

/// The rows HdrHistogram's percentile iterator visits, values divided by
/// `value_scale` (1000.0 turns microseconds into milliseconds).
///
/// This is HdrHistogram_c's `hdr_percentile_iter_next`: starting at 0%, a row
/// is emitted at the first recorded bucket whose cumulative percentile
/// reaches the next reporting level; the level then advances by
/// `100 / (ticks * 2^(floor(log2(100 / (100 - level))) + 1))`. The bucket
/// holding the last recorded value yields at most one such row, and a final
/// row at 100% (the max bucket) ends the distribution.
pub fn percentile_rows(
    h: &Histogram<u64>,
    ticks_per_half_distance: u32,
    value_scale: f64,
) -> Vec<PercentileRow> {
    let total = h.len();
    let ticks = f64::from(ticks_per_half_distance.max(1));
    let mut rows = Vec::new();
    let mut level = 0.0_f64;
    let mut cumulative = 0u64;
    let mut last_value = 0u64;
    for v in h.iter_recorded() {
        let count = v.count_at_value();
        cumulative += count;
        let value = h.highest_equivalent(v.value_iterated_to());
        last_value = value;
        let current = 100.0 * cumulative as f64 / total as f64;
        // Like the C iterator, the bucket that completes the count yields at
        // most one row before the closing 100% row (this also bounds the
        // loop: the level only approaches 100 asymptotically).
        let last_bucket = cumulative >= total;
        while level <= current {
            rows.push(PercentileRow {
                value_ms: value as f64 / value_scale,
                percentile: level / 100.0,
                total_count: cumulative,
            });
            let exp = ((100.0 / (100.0 - level)).ln() / 2f64.ln()) as i64 + 1;
            let half_distance = 2f64.powi(exp.clamp(0, 62) as i32);
            level += 100.0 / (ticks * half_distance);
            if last_bucket {
                break;
            }
        }
    }
    rows.push(PercentileRow {
        value_ms: last_value as f64 / value_scale,
        percentile: 1.0,
        total_count: cumulative,
    });
    rows
}

/// Value (same units as the histogram) at `percentile` (0..=100), with
/// HdrHistogram_c / wrk2 semantics: the highest equivalent value of the first
/// bucket whose cumulative count reaches `round(p/100 * total)` (at least 1).
/// Returns 0 for an empty histogram.
pub fn value_at_percentile(h: &Histogram<u64>, percentile: f64) -> u64 {
    let p = percentile.clamp(0.0, 100.0);
    let wanted = (((p / 100.0) * h.len() as f64) + 0.5) as u64;
    let wanted = wanted.max(1);
    let mut total = 0u64;
    for v in h.iter_recorded() {
        total += v.count_at_value();
        if total >= wanted {
            return h.highest_equivalent(v.value_iterated_to());
        }
    }
    0
}

/// The full percentile distribution text of `h` (values in µs, printed in ms),
/// byte-for-byte in HdrHistogram_c's CLASSIC format with 5 ticks per half
/// distance:
///
/// ```text
///        Value   Percentile   TotalCount 1/(1-Percentile)
///
///        0.921     0.000000            1         1.00
/// ...
///        7.624     1.000000        39700          inf
/// #[Mean    =        1.268, StdDeviation   =        0.544]
/// #[Max     =        7.624, Total count    =        39700]
/// #[Buckets =           27, SubBuckets     =         2048]
/// ```
pub fn format_hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let prec = usize::from(h.sigfig());
    let _ = write!(
        out,
        "{:>12} {:>12} {:>12} {:>12}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for r in percentile_rows(h, TICKS_PER_HALF_DISTANCE, US_PER_MS) {
        let inverted = 1.0 / (1.0 - r.percentile);
        let _ = writeln!(
            out,
            "{:12.prec$} {:12.6} {:12} {:12.2}",
            r.value_ms, r.percentile, r.total_count, inverted
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / US_PER_MS,
        h.stdev() / US_PER_MS
    );
    let max = if h.is_empty() { 0 } else { h.max() };
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        max as f64 / US_PER_MS,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    );
    out
}

/// Write [`format_hgrm`] to a file.
pub fn write_hgrm_file(path: &std::path::Path, h: &Histogram<u64>) -> Result<(), Error> {
    std::fs::write(path, format_hgrm(h))
        .map_err(|e| Error::io(format!("write hgrm file {}", path.display()), e))
}

/// wrk2's `format_time_us`: a µs amount with 2 decimals in us, ms, s or m.
pub fn format_time_us(us: f64) -> String {
    let (mut amt, scale, base, units): (f64, f64, &str, [&str; 2]) = if us >= 1_000_000.0 {
        (us / 1_000_000.0, 60.0, "s", ["m", "h"])
    } else {
        (us, 1000.0, "us", ["ms", "s"])
    };
    let mut unit = base;
    // wrk2 steps at most one unit up, once the amount reaches 85% of the scale.
    if amt >= scale * 0.85 {
        amt /= scale;
        unit = units[0];
    }
    format!("{amt:.2}{unit}")
}

/// wrk2's `print_units(n, format_time_us, width)`: right-aligned so that the
/// numbers line up whether the unit has one or two letters.
fn format_units_aligned(us: f64, width: usize) -> String {
    let msg = format_time_us(us);
    let b = msg.as_bytes();
    let mut pad = 2usize;
    if b.last().is_some_and(u8::is_ascii_alphabetic) {
        pad -= 1;
    }
    if b.len() >= 2 && b[b.len() - 2].is_ascii_alphabetic() {
        pad -= 1;
    }
    let w = width - pad;
    format!("{msg:>w$}{}", &"  "[..pad])
}

/// wrk2's short table for a µs histogram:
///
/// ```text
///   Latency Distribution (HdrHistogram - Recorded Latency)
///  50.000%    1.24ms
///  ...
/// 100.000%    7.62ms
/// ```
pub fn format_short_table(h: &Histogram<u64>, description: &str) -> String {
    let mut out = format!("  Latency Distribution (HdrHistogram - {description})\n");
    for p in SHORT_PERCENTILES {
        let v = value_at_percentile(h, p) as f64;
        let _ = writeln!(out, "{p:7.3}%{}", format_units_aligned(v, 10));
    }
    out
}

fn is_header(fields: &[&str]) -> bool {
    fields.len() >= 3 && fields[0] == "Value" && fields[1] == "Percentile"
}

fn parse_row(fields: &[&str]) -> Result<PercentileRow, String> {
    if !(3..=4).contains(&fields.len()) {
        return Err(format!(
            "expected 'Value Percentile TotalCount [1/(1-Percentile)]', got {} fields",
            fields.len()
        ));
    }
    let value_ms: f64 = fields[0]
        .parse()
        .map_err(|_| format!("value '{}' is not a number", fields[0]))?;
    let percentile: f64 = fields[1]
        .parse()
        .map_err(|_| format!("percentile '{}' is not a number", fields[1]))?;
    let total_count: u64 = fields[2]
        .parse()
        .map_err(|_| format!("total count '{}' is not an unsigned integer", fields[2]))?;
    if let Some(inv) = fields.get(3) {
        let ok = inv.parse::<f64>().is_ok() || inv.eq_ignore_ascii_case("inf");
        if !ok {
            return Err(format!("1/(1-Percentile) '{inv}' is not a number"));
        }
    }
    if !value_ms.is_finite() || value_ms < 0.0 {
        return Err(format!(
            "value '{}' must be a finite number >= 0",
            fields[0]
        ));
    }
    if !(0.0..=1.0).contains(&percentile) {
        return Err(format!("percentile '{}' is outside 0..1", fields[1]));
    }
    Ok(PercentileRow {
        value_ms,
        percentile,
        total_count,
    })
}

fn parse_footer(line: &str, hgrm: &mut Hgrm) -> Result<(), String> {
    let inner = line
        .trim_start_matches("#[")
        .trim_end()
        .trim_end_matches(']');
    for part in inner.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        let float = || {
            v.parse::<f64>()
                .map_err(|_| format!("{k} '{v}' is not a number"))
        };
        let int = || {
            v.parse::<u64>()
                .map_err(|_| format!("{k} '{v}' is not an integer"))
        };
        match k {
            "Mean" => hgrm.mean_ms = Some(float()?),
            "StdDeviation" => hgrm.stddev_ms = Some(float()?),
            "Max" => hgrm.max_ms = Some(float()?),
            "Total count" => hgrm.total_count = Some(int()?),
            "Buckets" => hgrm.buckets = Some(int()?),
            "SubBuckets" => hgrm.sub_buckets = Some(int()?),
            _ => {}
        }
    }
    Ok(())
}

/// Parse `.hgrm` text (values in ms). When a `Value Percentile TotalCount`
/// header is present, text before it is ignored and parsing stops at the
/// first non-row line after the rows (so saved wrk2 output works); without a
/// header every non-blank, non-`#` line must be a row. `name` is used in
/// error messages.
pub fn parse_hgrm(text: &str, name: &str) -> Result<Hgrm, Error> {
    let op = format!("parse hgrm {name}");
    let lines: Vec<&str> = text.lines().collect();
    let header_at = lines
        .iter()
        .position(|l| is_header(&l.split_whitespace().collect::<Vec<_>>()));
    let start = header_at.map_or(0, |i| i + 1);
    let mut hgrm = Hgrm::default();
    for (idx, raw) in lines.iter().enumerate().skip(start) {
        let line_no = idx + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("#[") {
            parse_footer(line, &mut hgrm).map_err(|e| Error::parse(&op, Some(line_no), e))?;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let numeric_start = fields[0].parse::<f64>().is_ok();
        if header_at.is_some() && !numeric_start && !hgrm.rows.is_empty() {
            break; // trailing text after the spectrum (e.g. rest of wrk2 output)
        }
        let row = parse_row(&fields).map_err(|e| Error::parse(&op, Some(line_no), e))?;
        if let Some(prev) = hgrm.rows.last() {
            if row.percentile < prev.percentile
                || row.total_count < prev.total_count
                || row.value_ms < prev.value_ms
            {
                return Err(Error::parse(
                    &op,
                    Some(line_no),
                    "rows must be non-decreasing in value, percentile and count",
                ));
            }
        }
        hgrm.rows.push(row);
    }
    if hgrm.rows.is_empty() {
        return Err(Error::parse(op, None, "no percentile rows found"));
    }
    Ok(hgrm)
}

/// Value (ms) at quantile `q` (0..=1) from rows: the first row whose `TotalCount` reaches
/// `q` of all values, counted as [`value_at_percentile`] counts in a histogram, else the last
/// row. The count, not the printed percentile: a row's percentile is the level the iteration
/// reached, which can run ahead of the values it covers. `None` for no rows.
pub fn rows_value_at(rows: &[PercentileRow], q: f64) -> Option<f64> {
    let total = rows.last()?.total_count;
    let wanted = ((q.clamp(0.0, 1.0) * total as f64 + 0.5) as u64).max(1);
    rows.iter()
        .find(|r| r.total_count >= wanted)
        .or(rows.last())
        .map(|r| r.value_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn sub_buckets_match_hdr() {
        assert_eq!(sub_bucket_count(1), 32);
        assert_eq!(sub_bucket_count(2), 256);
        assert_eq!(sub_bucket_count(3), 2048);
        assert_eq!(sub_bucket_count(4), 32768);
    }

    /// Golden output: HdrHistogram_c's `hdr_percentiles_print(h, stdout, 5,
    /// 1000.0, CLASSIC)` (wrk2's vendored copy, compiled and run) for 1..=10 ms
    /// recorded once each in a (1, 60_000_000, 3) histogram. Only the Max
    /// line differs from wrk2's 2014 copy, which printed the max bucket's
    /// lowest equivalent value (10.000); current HdrHistogram_c, Java and
    /// this code print the highest equivalent value, matching the 100% row.
    #[test]
    fn hgrm_golden_small() {
        let h = hist((1..=10).map(|ms| ms * 1000));
        let text = format_hgrm(&h);
        let expected = "       Value   Percentile   TotalCount 1/(1-Percentile)

       1.000     0.000000            1         1.00
       1.000     0.100000            1         1.11
       2.000     0.200000            2         1.25
       3.001     0.300000            3         1.43
       4.001     0.400000            4         1.67
       5.003     0.500000            5         2.00
       6.003     0.550000            6         2.22
       6.003     0.600000            6         2.50
       7.003     0.650000            7         2.86
       7.003     0.700000            7         3.33
       8.003     0.750000            8         4.00
       8.003     0.775000            8         4.44
       8.003     0.800000            8         5.00
       9.007     0.825000            9         5.71
       9.007     0.850000            9         6.67
       9.007     0.875000            9         8.00
       9.007     0.887500            9         8.89
       9.007     0.900000            9        10.00
      10.007     0.912500           10        11.43
      10.007     1.000000           10          inf
#[Mean    =        5.502, StdDeviation   =        2.874]
#[Max     =       10.007, Total count    =           10]
#[Buckets =           16, SubBuckets     =         2048]
";
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn rows_shape_many_values() {
        let h = hist(1..=100_000);
        let rows = percentile_rows(&h, 5, 1000.0);
        // 0%, then 5 ticks in each of the first halves: 10%, 20%, ... 50%
        assert_eq!(rows[0].percentile, 0.0);
        assert!((rows[1].percentile - 0.1).abs() < 1e-12);
        assert!((rows[5].percentile - 0.5).abs() < 1e-12);
        assert!((rows[6].percentile - 0.55).abs() < 1e-12);
        let last = rows.last().unwrap();
        assert_eq!(last.percentile, 1.0);
        assert_eq!(last.total_count, 100_000);
        assert_eq!(last.value_ms, h.max() as f64 / 1000.0);
        assert!(rows.windows(2).all(|w| w[0].percentile <= w[1].percentile));
        assert!(rows.windows(2).all(|w| w[0].value_ms <= w[1].value_ms));
    }

    #[test]
    fn hgrm_roundtrips_through_parser() {
        let h = hist((1..=5000).map(|i| i * 37 % 20_000 + 50));
        let text = format_hgrm(&h);
        let parsed = parse_hgrm(&text, "t").unwrap();
        let rows = percentile_rows(&h, 5, 1000.0);
        assert_eq!(parsed.rows.len(), rows.len());
        for (a, b) in parsed.rows.iter().zip(&rows) {
            assert!((a.value_ms - b.value_ms).abs() < 0.0005);
            assert!((a.percentile - b.percentile).abs() < 1e-6);
            assert_eq!(a.total_count, b.total_count);
        }
        assert_eq!(parsed.total_count, Some(5000));
        assert_eq!(parsed.sub_buckets, Some(2048));
        assert_eq!(
            parsed.max_ms,
            Some((h.max() as f64 / 1000.0 * 1000.0).round() / 1000.0)
        );
        assert!(parsed.mean_ms.is_some() && parsed.stddev_ms.is_some());
    }

    #[test]
    fn empty_histogram_does_not_panic() {
        let h = hist([]);
        let text = format_hgrm(&h);
        assert!(text.contains("       0.000     1.000000            0          inf"));
        assert_eq!(value_at_percentile(&h, 50.0), 0);
        assert!(format_short_table(&h, "x").contains("100.000%"));
    }

    #[test]
    fn parses_saved_wrk2_output_and_java_rows() {
        let text = "Running 10s test @ http://127.0.0.1:80/
  Latency Distribution (HdrHistogram - Recorded Latency)
 50.000%    1.24ms

  Detailed Percentile spectrum:
       Value   Percentile   TotalCount 1/(1-Percentile)

       0.921     0.000000            1         1.00
       1.217     0.100000         4003         1.11
       7.624     1.000000        39700          inf
#[Mean    =        1.268, StdDeviation   =        0.544]
#[Max     =        7.624, Total count    =        39700]
#[Buckets =           27, SubBuckets     =         2048]
----------------------------------------------------------
  39700 requests in 10.00s, 13.95MB read
Requests/sec:   3969.72
";
        let h = parse_hgrm(text, "wrk2.txt").unwrap();
        assert_eq!(h.rows.len(), 3);
        assert_eq!(h.total_count, Some(39700));
        assert_eq!(h.buckets, Some(27));
        assert_eq!(h.max_ms, Some(7.624));
        // Java's format: wider percentile, no last column on the 100% row
        let java = "       Value     Percentile TotalCount 1/(1-Percentile)\n\n\
                    1.000 0.000000000000          1           1.00\n\
                    2.000 1.000000000000          2\n";
        let j = parse_hgrm(java, "java").unwrap();
        assert_eq!(j.rows[1].total_count, 2);
        // By count, as in a histogram of {1, 2}: the median is the first value.
        assert_eq!(rows_value_at(&j.rows, 0.5), Some(1.0));
        assert_eq!(rows_value_at(&j.rows, 0.75), Some(2.0));
        assert_eq!(rows_value_at(&j.rows, 0.0), Some(1.0));
    }

    #[test]
    fn parse_errors_have_line_numbers() {
        let cases = [
            ("", "no percentile rows"),
            ("1.0 0.5\n", "line 1"),
            ("1.0 x 3\n", "line 1"),
            ("1.0 0.5 3\n0.5 0.6 4\n", "line 2"),
            ("1.0 1.5 3\n", "outside"),
            ("1.0 0.5 -3\n", "line 1"),
            (
                "Value Percentile TotalCount\n1.0 0.5 3\n2.0 0.4 4\n",
                "line 3",
            ),
            (
                "Value Percentile TotalCount\n1.0 0.5 3\n2.0 zz 4\n",
                "line 3",
            ),
            ("NaN 0.5 3\n", "finite"),
        ];
        for (text, frag) in cases {
            let e = parse_hgrm(text, "f").unwrap_err().to_string();
            assert!(e.contains(frag), "{text:?}: {e}");
        }
    }

    #[test]
    fn wrk2_units_and_short_table() {
        assert_eq!(format_time_us(849.0), "849.00us");
        assert_eq!(format_time_us(850.0), "0.85ms");
        assert_eq!(format_time_us(1240.0), "1.24ms");
        assert_eq!(format_time_us(999_999.0), "1000.00ms");
        assert_eq!(format_time_us(1_500_000.0), "1.50s");
        assert_eq!(format_time_us(54_000_000.0), "0.90m");
        let h = hist([1000, 2000, 3000, 4000]);
        let t = format_short_table(&h, "Recorded Latency");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "  Latency Distribution (HdrHistogram - Recorded Latency)"
        );
        assert_eq!(lines[1], " 50.000%    2.00ms");
        assert_eq!(lines[8], "100.000%    4.00ms");
        assert_eq!(lines.len(), 9);
        let s = hist([500]);
        assert_eq!(
            format_short_table(&s, "x").lines().nth(1),
            Some(" 50.000%  500.00us")
        );
        let s = hist([2_000_000]);
        assert_eq!(
            format_short_table(&s, "x").lines().nth(1),
            Some(" 50.000%    2.00s ")
        );
    }

    #[test]
    fn wrk2_value_at_percentile_rounds_like_c() {
        let h = hist(1..=10);
        assert_eq!(value_at_percentile(&h, 50.0), 5);
        assert_eq!(value_at_percentile(&h, 0.0), 1);
        assert_eq!(value_at_percentile(&h, 100.0), 10);
        assert_eq!(value_at_percentile(&h, 94.0), 9); // round(9.4) = 9
        assert_eq!(value_at_percentile(&h, 95.0), 10); // round(9.5) = 10
    }
}
