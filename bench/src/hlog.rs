//! HdrHistogram interval logs (`.hlog`): writing intervals with
//! hdrhistogram's `IntervalLogWriter` + `V2DeflateSerializer`, reading them
//! back with `IntervalLogIterator` + `Deserializer`, and merging (summing)
//! all intervals of one or more logs.
//!
//! Histograms hold MICROSECONDS; the log's "Interval_Max" column is written
//! in milliseconds (max value divisor 1000). Timestamps are seconds relative
//! to the log's BaseTime (= StartTime = the run's start).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriter, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

use crate::error::Error;

/// First comment line of every log written here.
pub const LOG_FORMAT_VERSION_LINE: &str = "#[Histogram log format version 1.3]";

/// Column legend line written after the header.
pub const LEGEND_LINE: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"";

/// One decoded interval.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Optional tag (no spaces, commas or newlines).
    pub tag: Option<String>,
    /// Start of the interval, relative to the log's BaseTime (or epoch if none).
    pub start: Duration,
    /// Interval length.
    pub length: Duration,
    /// The interval's histogram (µs).
    pub histogram: Histogram<u64>,
}

/// A whole decoded log.
#[derive(Debug, Clone, Default)]
pub struct HlogContents {
    /// `#[StartTime: ...]`, seconds since the epoch, if present.
    pub start_time: Option<Duration>,
    /// `#[BaseTime: ...]`, seconds since the epoch, if present.
    pub base_time: Option<Duration>,
    /// Intervals in file order.
    pub intervals: Vec<Interval>,
}

/// Streaming interval-log writer. It borrows the output and a serializer so
/// the engine can keep one open for the whole run:
///
/// ```no_run
/// # use percore_bench::hlog::HlogWriter;
/// # use hdrhistogram::{Histogram, serialization::V2DeflateSerializer};
/// # fn f(h: &Histogram<u64>) -> Result<(), percore_bench::Error> {
/// let mut file = std::fs::File::create("run.hlog").unwrap();
/// let mut ser = V2DeflateSerializer::new();
/// let mut log = HlogWriter::begin(&mut file, &mut ser, std::time::SystemTime::now())?;
/// log.write_interval(h, std::time::Duration::ZERO, std::time::Duration::from_secs(1), None)?;
/// # Ok(()) }
/// ```
pub struct HlogWriter<'a, W: Write> {
    inner: IntervalLogWriter<'a, 'a, W, V2DeflateSerializer>,
}

impl<'a, W: Write> HlogWriter<'a, W> {
    /// Write the header (format version, StartTime, BaseTime, legend) and
    /// return a writer for intervals. `start` becomes both StartTime and
    /// BaseTime, so interval timestamps are offsets from it.
    pub fn begin(
        out: &'a mut W,
        serializer: &'a mut V2DeflateSerializer,
        start: SystemTime,
    ) -> Result<Self, Error> {
        let op = "write hlog header";
        let secs = start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| Error::invalid(op, "start time is before the Unix epoch"))?
            .as_secs_f64();
        // The crate's builder writes its comments/StartTime/BaseTime before
        // anything else and offers no way to emit the (non-comment) legend, so
        // the four header lines are written here in the Java writer's order;
        // the builder then only adds its "#[MaxValueDivisor: 1000.000]" note.
        write!(
            out,
            "{LOG_FORMAT_VERSION_LINE}\n#[StartTime: {secs:.3} (seconds since epoch)]\n\
             #[BaseTime: {secs:.3} (seconds since epoch)]\n{LEGEND_LINE}\n"
        )
        .map_err(|e| Error::io(op, e))?;
        let inner = IntervalLogWriterBuilder::new()
            .with_max_value_divisor(1000.0)
            .begin_log_with(out, serializer)
            .map_err(|e| Error::io(op, e))?;
        Ok(HlogWriter { inner })
    }

    /// Append one interval: `start` is the offset from the log's start time.
    pub fn write_interval(
        &mut self,
        h: &Histogram<u64>,
        start: Duration,
        length: Duration,
        tag: Option<&str>,
    ) -> Result<(), Error> {
        let op = "write hlog interval";
        let tag = match tag {
            None => None,
            Some(t) => Some(Tag::new(t).ok_or_else(|| {
                Error::invalid(op, format!("tag '{t}' contains a space, comma or newline"))
            })?),
        };
        self.inner
            .write_histogram(h, start, length, tag)
            .map_err(|e| Error::histogram(op, e))
    }

    /// Append a `#` comment line.
    pub fn write_comment(&mut self, text: &str) -> Result<(), Error> {
        self.inner
            .write_comment(text)
            .map_err(|e| Error::io("write hlog comment", e))
    }
}

/// Write a complete log of `intervals` to `path`.
pub fn write_hlog_file(
    path: &Path,
    start: SystemTime,
    intervals: &[Interval],
) -> Result<(), Error> {
    let mut buf = Vec::new();
    {
        let mut ser = V2DeflateSerializer::new();
        let mut w = HlogWriter::begin(&mut buf, &mut ser, start)?;
        for i in intervals {
            w.write_interval(&i.histogram, i.start, i.length, i.tag.as_deref())?;
        }
    }
    std::fs::write(path, buf)
        .map_err(|e| Error::io(format!("write hlog file {}", path.display()), e))
}

fn line_of(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Decode a whole interval log held in memory. `name` is used in errors.
pub fn read_hlog(bytes: &[u8], name: &str) -> Result<HlogContents, Error> {
    let op = format!("read hlog {name}");
    let mut out = HlogContents::default();
    let mut deserializer = Deserializer::new();
    let mut offset = 0usize;
    for entry in IntervalLogIterator::new(bytes) {
        let entry = entry.map_err(|e| {
            let hdrhistogram::serialization::interval_log::LogIteratorError::ParseError {
                offset: at,
            } = e;
            Error::parse(&op, Some(line_of(bytes, at)), "not an interval log line")
        })?;
        match entry {
            LogEntry::StartTime(t) => out.start_time = Some(t),
            LogEntry::BaseTime(t) => out.base_time = Some(t),
            LogEntry::Interval(ilh) => {
                let encoded = ilh.encoded_histogram();
                // locate the line for error messages
                let line = find_line(bytes, encoded, &mut offset);
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| Error::parse(&op, line, format!("bad base64: {e}")))?;
                let histogram: Histogram<u64> =
                    deserializer.deserialize(&mut raw.as_slice()).map_err(|e| {
                        Error::parse(&op, line, format!("bad histogram payload: {e:?}"))
                    })?;
                out.intervals.push(Interval {
                    tag: ilh.tag().map(|t| t.as_str().to_string()),
                    start: ilh.start_timestamp(),
                    length: ilh.duration(),
                    histogram,
                });
            }
        }
    }
    Ok(out)
}

/// Line number of the next occurrence of `needle` at or after `*from`.
fn find_line(bytes: &[u8], needle: &str, from: &mut usize) -> Option<usize> {
    let n = needle.as_bytes();
    if n.is_empty() || *from >= bytes.len() {
        return None;
    }
    let pos = bytes[*from..]
        .windows(n.len())
        .position(|w| w == n)
        .map(|p| p + *from)?;
    *from = pos + n.len();
    Some(line_of(bytes, pos))
}

/// Read and decode an interval log file.
pub fn read_hlog_file(path: &Path) -> Result<HlogContents, Error> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io(format!("read hlog file {}", path.display()), e))?;
    read_hlog(&bytes, &path.display().to_string())
}

/// Sum of histograms into a new auto-resizing histogram (µs, 3 significant
/// digits unless the first input says otherwise). `None` for no inputs.
pub fn merge_histograms<'h>(
    hists: impl IntoIterator<Item = &'h Histogram<u64>>,
) -> Result<Option<Histogram<u64>>, Error> {
    let mut merged: Option<Histogram<u64>> = None;
    for h in hists {
        let m = match &mut merged {
            Some(m) => m,
            None => {
                let mut m = Histogram::<u64>::new_with_bounds(
                    h.low(),
                    h.high().max(2 * h.low()),
                    h.sigfig(),
                )
                .map_err(|e| Error::histogram("merge histograms", format!("{e:?}")))?;
                m.auto(true);
                merged.insert(m)
            }
        };
        m.add(h)
            .map_err(|e| Error::histogram("merge histograms", format!("{e:?}")))?;
    }
    Ok(merged)
}

/// Merge all intervals of all given logs into one histogram. Errors when no
/// file has any interval.
pub fn merge_hlog_files(paths: &[impl AsRef<Path>]) -> Result<Histogram<u64>, Error> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(read_hlog_file(p.as_ref())?.intervals);
    }
    merge_untagged(&all, "merge hlog files")
}

/// The untagged intervals of a log, merged. A tag marks a series of its own (as HdrHistogram's
/// HistogramLogProcessor reads a log: the untagged intervals unless a tag is asked for); adding
/// it to the untagged ones would count the same requests twice. `op` names the operation in the
/// error for a log without untagged intervals.
pub fn merge_untagged(intervals: &[Interval], op: &str) -> Result<Histogram<u64>, Error> {
    let untagged = intervals.iter().filter(|i| i.tag.is_none());
    merge_histograms(untagged.map(|i| &i.histogram))?.ok_or_else(|| {
        let mut tags: Vec<&str> = intervals.iter().filter_map(|i| i.tag.as_deref()).collect();
        tags.sort_unstable();
        tags.dedup();
        let why = if tags.is_empty() {
            "the logs contain no interval histograms".to_string()
        } else {
            format!(
                "the logs contain no untagged interval histograms, only tagged ones ({})",
                tags.join(", ")
            )
        };
        Error::invalid(op, why)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(seed: u64, n: u64) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut x = seed | 1;
        for _ in 0..n {
            // xorshift for spread values
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            h.record(x % 5_000_000 + 1).unwrap();
        }
        h
    }

    fn intervals(seed: u64, n: usize) -> Vec<Interval> {
        (0..n)
            .map(|i| Interval {
                tag: None,
                start: Duration::from_secs(i as u64),
                length: Duration::from_secs(1),
                histogram: hist(seed + i as u64, 1000 + 100 * i as u64),
            })
            .collect()
    }

    fn write(intervals: &[Interval]) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut ser = V2DeflateSerializer::new();
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let mut w = HlogWriter::begin(&mut buf, &mut ser, start).unwrap();
        for i in intervals {
            w.write_interval(&i.histogram, i.start, i.length, i.tag.as_deref())
                .unwrap();
        }
        buf
    }

    #[test]
    fn header_and_lines_are_standard() {
        let buf = write(&intervals(7, 2));
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#[Histogram log format version 1.3]");
        assert_eq!(
            lines[1],
            "#[StartTime: 1700000000.250 (seconds since epoch)]"
        );
        assert_eq!(
            lines[2],
            "#[BaseTime: 1700000000.250 (seconds since epoch)]"
        );
        assert_eq!(lines[3], LEGEND_LINE);
        assert_eq!(lines[4], "#[MaxValueDivisor: 1000.000]");
        let fields: Vec<&str> = lines[5].split(',').collect();
        assert_eq!(fields[0], "0.000");
        assert_eq!(fields[1], "1.000");
        let h0 = hist(7, 1000);
        assert_eq!(fields[2], format!("{:.3}", h0.max() as f64 / 1000.0));
        // V2 deflate payloads start with cookie 0x1c849304 -> base64 "HISTFA"
        assert!(fields[3].starts_with("HISTF"), "{}", fields[3]);
        assert!(lines[6].starts_with("1.000,1.000,"));
    }

    #[test]
    fn roundtrip_equals_originals() {
        let mut orig = intervals(42, 5);
        orig[2].tag = Some("worker-2".into());
        let buf = write(&orig);
        let back = read_hlog(&buf, "mem").unwrap();
        assert_eq!(back.intervals.len(), 5);
        let st = Duration::from_millis(1_700_000_000_250);
        assert_eq!(back.start_time, Some(st));
        assert_eq!(back.base_time, Some(st));
        for (a, b) in orig.iter().zip(&back.intervals) {
            assert_eq!(a.histogram, b.histogram);
            assert_eq!(a.histogram.len(), b.histogram.len());
            assert_eq!(a.start, b.start);
            assert_eq!(a.length, b.length);
            assert_eq!(a.tag, b.tag);
        }
    }

    #[test]
    fn merge_two_logs_equals_sum() {
        let dir = std::env::temp_dir().join(format!("hlog-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (intervals(1, 3), intervals(100, 4));
        let (pa, pb) = (dir.join("a.hlog"), dir.join("b.hlog"));
        let start = SystemTime::now();
        write_hlog_file(&pa, start, &a).unwrap();
        write_hlog_file(&pb, start, &b).unwrap();
        let merged = merge_hlog_files(&[&pa, &pb]).unwrap();
        let mut expected = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for i in a.iter().chain(&b) {
            expected.add(&i.histogram).unwrap();
        }
        assert_eq!(merged, expected);
        assert_eq!(merged.len(), expected.len());
        assert_eq!(merged.max(), expected.max());
        // empty log -> error, missing file -> error
        let pe = dir.join("empty.hlog");
        write_hlog_file(&pe, start, &[]).unwrap();
        assert!(merge_hlog_files(&[&pe]).is_err());
        assert!(merge_hlog_files(&[dir.join("nope.hlog")]).is_err());
        // Tagged intervals are series of their own: not added to the untagged ones.
        let mut tagged = a.clone();
        tagged.extend(a.iter().cloned().map(|mut i| {
            i.tag = Some("svc".into());
            i
        }));
        let pt = dir.join("tagged.hlog");
        write_hlog_file(&pt, start, &tagged).unwrap();
        assert_eq!(merge_hlog_files(&[&pt, &pb]).unwrap(), expected);
        let only: Vec<Interval> = tagged.into_iter().filter(|i| i.tag.is_some()).collect();
        write_hlog_file(&pt, start, &only).unwrap();
        let e = merge_hlog_files(&[&pt]).unwrap_err().to_string();
        assert!(e.contains("only tagged ones (svc)"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let e = read_hlog(b"#c\nnot a log line\n", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = read_hlog(b"0.000,1.000,1.0,!!!notbase64\n", "x").unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
        let e = read_hlog(b"#c\n0.000,1.000,1.0,AAAA\n", "x").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert_eq!(read_hlog(b"", "x").unwrap().intervals.len(), 0);
        // bad tag is rejected
        let mut buf = Vec::new();
        let mut ser = V2DeflateSerializer::new();
        let mut w = HlogWriter::begin(&mut buf, &mut ser, SystemTime::now()).unwrap();
        let h = hist(1, 10);
        assert!(w
            .write_interval(&h, Duration::ZERO, Duration::from_secs(1), Some("a b"))
            .is_err());
    }
}
