//! Request-mix files (`--mix FILE`) and the deterministic weighted picker.
//!
//! # Format
//!
//! One request kind per line:
//!
//! ```text
//! # WEIGHT METHOD PATH [@BODYFILE]
//! 90 GET  /index.html
//! 9  GET  /search?q=rust
//! 1  POST /api/items @item.json
//! ```
//!
//! * `WEIGHT` is a positive integer; a kind is picked `WEIGHT / sum(WEIGHT)`
//!   of the time.
//! * `METHOD` is an HTTP method token.
//! * `PATH` is the request target (path plus optional `?query`), starting
//!   with `/`; it must not contain spaces.
//! * `@BODYFILE` (optional) names a file whose bytes are sent as the body;
//!   a relative name is resolved against the mix file's directory by
//!   [`read_mix_file`].
//! * Fields are separated by spaces or tabs; `#` starts a comment (at the
//!   start of a line or after whitespace); blank lines are ignored.
//!
//! # Picking
//!
//! [`MixPicker`] walks a precomputed schedule produced by smooth weighted
//! round-robin, so every window of `sum(WEIGHT)` picks contains each kind
//! exactly `WEIGHT` times, well interleaved, with no random numbers. Large
//! weight sums are scaled down to [`MAX_SCHEDULE_SLOTS`] slots (each kind
//! keeps at least one). Give each connection its own start offset to avoid
//! lock-step.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::values::is_tchar;

/// Largest schedule table built by [`MixPicker::new`].
pub const MAX_SCHEDULE_SLOTS: usize = 10_000;

/// One line of a mix file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixEntry {
    /// Relative weight (> 0).
    pub weight: u32,
    /// HTTP method.
    pub method: String,
    /// Path plus query, starting with `/`.
    pub path: String,
    /// Body file, as written (or resolved by [`read_mix_file`]).
    pub body_file: Option<PathBuf>,
    /// 1-based line number in the mix file.
    pub line: usize,
}

/// Parse mix-file text. `name` is used in error messages.
pub fn parse_mix(text: &str, name: &str) -> Result<Vec<MixEntry>, Error> {
    let op = format!("parse mix file {name}");
    let mut entries = Vec::new();
    let mut total: u64 = 0;
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let err = |why: String| Error::parse(op.clone(), Some(line_no), why);
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() < 3 {
            return Err(err(format!(
                "expected 'WEIGHT METHOD PATH [@bodyfile]', got '{line}'"
            )));
        }
        if fields.len() > 4 {
            return Err(err(format!(
                "too many fields (paths must not contain spaces): '{line}'"
            )));
        }
        let weight: u32 = match fields[0].parse() {
            Ok(0) => return Err(err("weight must be > 0".into())),
            Ok(w) => w,
            Err(_) => {
                return Err(err(format!(
                    "weight '{}' is not a positive integer",
                    fields[0]
                )));
            }
        };
        let method = fields[1];
        if !method.bytes().all(is_tchar) {
            return Err(err(format!("'{method}' is not an HTTP method")));
        }
        let path = fields[2];
        if !path.starts_with('/') {
            return Err(err(format!("path '{path}' must start with '/'")));
        }
        if path.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(err("path contains control characters".into()));
        }
        let body_file = match fields.get(3) {
            None => None,
            Some(b) => match b.strip_prefix('@') {
                Some(f) if !f.is_empty() => Some(PathBuf::from(f)),
                _ => {
                    return Err(err(format!("fourth field '{b}' must be @bodyfile")));
                }
            },
        };
        total += u64::from(weight);
        entries.push(MixEntry {
            weight,
            method: method.to_string(),
            path: path.to_string(),
            body_file,
            line: line_no,
        });
    }
    if entries.is_empty() || total == 0 {
        return Err(Error::parse(op, None, "no request lines"));
    }
    Ok(entries)
}

fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'#' && (i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t') {
            return &line[..i];
        }
    }
    line
}

/// Read and parse a mix file, resolving relative `@bodyfile` names against
/// the mix file's directory. Body files are not read here.
pub fn read_mix_file(path: &Path) -> Result<Vec<MixEntry>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("read mix file {}", path.display()), e))?;
    let mut entries = parse_mix(&text, &path.display().to_string())?;
    let dir = path.parent().unwrap_or(Path::new(""));
    for e in &mut entries {
        if let Some(b) = &e.body_file {
            if b.is_relative() {
                e.body_file = Some(dir.join(b));
            }
        }
    }
    Ok(entries)
}

/// Deterministic weighted picker over the indices of a weight list.
#[derive(Debug, Clone)]
pub struct MixPicker {
    schedule: Vec<u32>,
    pos: usize,
}

impl MixPicker {
    /// Build a picker for `weights` (index `i` is picked with weight
    /// `weights[i]`). Zero weights are never picked. Errors when all are zero.
    pub fn new(weights: &[u32]) -> Result<Self, Error> {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if total == 0 {
            return Err(Error::invalid("build request mix", "all weights are zero"));
        }
        let slots = scaled_slots(weights, total);
        // Smooth weighted round-robin over the slot counts.
        let n: i64 = slots.iter().map(|&s| s as i64).sum();
        let mut current = vec![0i64; slots.len()];
        let mut schedule = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let mut best = 0usize;
            for (i, &s) in slots.iter().enumerate() {
                current[i] += s as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= n;
            schedule.push(best as u32);
        }
        Ok(MixPicker { schedule, pos: 0 })
    }

    /// Build a picker for the entries of a mix file.
    pub fn for_entries(entries: &[MixEntry]) -> Result<Self, Error> {
        Self::new(&entries.iter().map(|e| e.weight).collect::<Vec<_>>())
    }

    /// Same schedule, starting `offset` slots in (e.g. a connection index
    /// times a stride), so connections do not all send the same kind at once.
    pub fn with_offset(mut self, offset: usize) -> Self {
        self.pos = offset % self.schedule.len();
        self
    }

    /// Number of slots in one full cycle of the schedule.
    pub fn cycle_len(&self) -> usize {
        self.schedule.len()
    }

    /// The index to use for the next request.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> usize {
        let i = self.schedule[self.pos] as usize;
        self.pos += 1;
        if self.pos == self.schedule.len() {
            self.pos = 0;
        }
        i
    }
}

/// Slot counts per weight: the weights themselves when they sum to at most
/// [`MAX_SCHEDULE_SLOTS`], else a largest-remainder apportionment of that
/// many slots in which every non-zero weight keeps at least one slot.
fn scaled_slots(weights: &[u32], total: u64) -> Vec<u64> {
    let max = MAX_SCHEDULE_SLOTS as u64;
    if total <= max {
        return weights.iter().map(|&w| u64::from(w)).collect();
    }
    let nonzero = weights.iter().filter(|&&w| w > 0).count() as u64;
    // Slots left after the guaranteed one per non-zero weight.
    let budget = max.saturating_sub(nonzero);
    let mut slots = Vec::with_capacity(weights.len());
    let mut rems = Vec::with_capacity(weights.len());
    let mut used = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        let exact = u128::from(w) * u128::from(budget);
        let base = (exact / u128::from(total)) as u64;
        let rem = (exact % u128::from(total)) as u64;
        let guaranteed = u64::from(w > 0);
        slots.push(base + guaranteed);
        used += base;
        rems.push((rem, i));
    }
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in rems.iter().take(budget.saturating_sub(used) as usize) {
        if weights[i] > 0 {
            slots[i] += 1;
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# a comment
90 GET /index.html

9\tGET /search?q=rust#not-a-comment   # trailing comment
1 POST /api/items @item.json
";

    #[test]
    fn parses_sample() {
        let m = parse_mix(SAMPLE, "m.txt").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].weight, 90);
        assert_eq!(m[0].line, 2);
        assert_eq!(m[1].path, "/search?q=rust#not-a-comment");
        assert_eq!(m[2].method, "POST");
        assert_eq!(m[2].body_file, Some(PathBuf::from("item.json")));
        assert_eq!(m[2].line, 5);
    }

    #[test]
    fn errors_carry_line_numbers() {
        let cases = [
            ("1 GET /\n0 GET /x\n", 2, "weight must be > 0"),
            ("x GET /\n", 1, "weight"),
            ("\n\n1 GET\n", 3, "expected"),
            ("1 GET index\n", 1, "must start with '/'"),
            ("1 G@T /\n", 1, "not an HTTP method"),
            ("1 GET / body\n", 1, "@bodyfile"),
            ("1 GET / @\n", 1, "@bodyfile"),
            ("1 GET /a b @c\n", 1, "too many"),
            ("1 GET / @a extra\n", 1, "too many"),
            ("-1 GET /\n", 1, "weight"),
            ("99999999999 GET /\n", 1, "weight"),
        ];
        for (text, line, frag) in cases {
            let e = parse_mix(text, "m").unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("line {line}:")) && msg.contains(frag),
                "{text:?}: {msg}"
            );
        }
        assert!(parse_mix("# only comments\n\n", "m").is_err());
    }

    #[test]
    fn reads_file_and_resolves_body() {
        let dir = std::env::temp_dir().join(format!("mix-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("mix.txt");
        std::fs::write(&f, "1 POST /a @body.bin\n1 POST /b @/abs/body\n").unwrap();
        let m = read_mix_file(&f).unwrap();
        assert_eq!(m[0].body_file, Some(dir.join("body.bin")));
        assert_eq!(m[1].body_file, Some(PathBuf::from("/abs/body")));
        assert!(read_mix_file(&dir.join("missing.txt")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn picker_is_exact_per_cycle_and_interleaved() {
        let mut p = MixPicker::new(&[5, 3, 2]).unwrap();
        assert_eq!(p.cycle_len(), 10);
        let picks: Vec<usize> = (0..20).map(|_| p.next()).collect();
        for cycle in picks.chunks(10) {
            let count = |k| cycle.iter().filter(|&&x| x == k).count();
            assert_eq!((count(0), count(1), count(2)), (5, 3, 2));
        }
        // smooth: the heaviest kind never appears more than twice in a row here
        assert!(!picks.windows(3).any(|w| w.iter().all(|&x| x == 0)));
        // deterministic
        let mut q = MixPicker::new(&[5, 3, 2]).unwrap();
        assert_eq!(picks, (0..20).map(|_| q.next()).collect::<Vec<_>>());
        // offset shifts the schedule
        let mut r = MixPicker::new(&[5, 3, 2]).unwrap().with_offset(13);
        assert_eq!(r.next(), picks[3]);
    }

    #[test]
    fn picker_zero_and_large_weights() {
        assert!(MixPicker::new(&[]).is_err());
        assert!(MixPicker::new(&[0, 0]).is_err());
        let mut p = MixPicker::new(&[0, 1]).unwrap();
        assert!((0..10).all(|_| p.next() == 1));

        let p = MixPicker::new(&[u32::MAX, 1, u32::MAX / 2]).unwrap();
        assert!(p.cycle_len() <= MAX_SCHEDULE_SLOTS);
        let mut p2 = p.clone();
        let picks: Vec<usize> = (0..p.cycle_len()).map(|_| p2.next()).collect();
        let c1 = picks.iter().filter(|&&x| x == 1).count();
        let c0 = picks.iter().filter(|&&x| x == 0).count();
        let c2 = picks.iter().filter(|&&x| x == 2).count();
        assert_eq!(c1, 1, "tiny weight keeps one slot");
        assert!((c0 as f64 / c2 as f64 - 2.0).abs() < 0.01, "{c0} {c2}");
    }
}
