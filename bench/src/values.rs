//! Parsers for individual command-line values: durations (`500ms`, `30s`,
//! `2m`, `1h`, bare seconds), counts with metric suffixes (`10k`), CPU lists
//! (`0,2-5`), request headers (`Name: value`) and HTTP method tokens. Each is
//! usable as a clap `value_parser` (returns `Result<T, String>`).

use std::time::Duration;

/// Largest CPU index accepted in a `--cpus` list (guards against `0-4294967295`).
pub const MAX_CPU_INDEX: usize = 65_535;

/// Parse a duration for the command line: a non-negative decimal number and a unit, one of
/// `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h` (`500ms`, `1.5s`, `2m`); a bare number means
/// seconds. `0` is allowed (callers decide if it is valid). At most `u64::MAX` nanoseconds
/// (584 years), so that adding it to an `Instant` cannot overflow.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_with(s, true)
}

/// [`parse_duration`], with a bare number (no unit) accepted as seconds or refused (a config
/// file, where `30` could mean anything).
pub fn parse_duration_with(s: &str, bare_is_seconds: bool) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let per_unit: u128 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" if bare_is_seconds => 1_000_000_000,
        "" => {
            return Err(format!(
                "{s:?} is not a duration: missing unit (ms, s, m, h)"
            ));
        }
        u => {
            return Err(format!(
                "{s:?} is not a duration: unknown unit {u:?} (ms, s, m, h)"
            ));
        }
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits_ok = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty()
        || !digits_ok(int)
        || !digits_ok(frac)
        || (num.contains('.') && frac.is_empty())
    {
        return Err(format!(
            "{s:?} is not a duration (try \"500ms\", \"10s\", \"2m\")"
        ));
    }
    let too_long = || format!("{s:?} is too long a duration");
    let int: u128 = int.parse().map_err(|_| too_long())?;
    let mut nanos = int.checked_mul(per_unit).ok_or_else(too_long)?;
    // Fraction digits beyond nanosecond precision are ignored.
    let mut scale = per_unit;
    for b in frac.bytes() {
        scale /= 10;
        nanos += u128::from(b - b'0') * scale;
    }
    let nanos = u64::try_from(nanos).map_err(|_| too_long())?;
    Ok(Duration::from_nanos(nanos))
}

/// Parse a count with an optional metric suffix, as wrk does: `100`, `10k`, `2M`, `1G`.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1_000u64),
        Some((i, 'm' | 'M')) => (&t[..i], 1_000_000),
        Some((i, 'g' | 'G')) => (&t[..i], 1_000_000_000),
        _ => (t, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid number '{s}': expected an unsigned integer with optional k/M/G suffix"
        ));
    }
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid number '{s}': too large"))
}

/// Like [`parse_count`] but into `usize`.
pub fn parse_usize_count(s: &str) -> Result<usize, String> {
    let n = parse_count(s)?;
    usize::try_from(n).map_err(|_| format!("invalid number '{s}': too large"))
}

/// Parse a CPU list such as `0,2-5,7` into a sorted, de-duplicated list.
/// Whitespace around items is ignored; empty items, reversed ranges and
/// indices above [`MAX_CPU_INDEX`] are errors.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    if s.trim().is_empty() {
        return Err("invalid CPU list '': expected e.g. 0,2-5".to_string());
    }
    let one = |item: &str| -> Result<usize, String> {
        let item = item.trim();
        if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "invalid CPU list '{s}': '{item}' is not a CPU number"
            ));
        }
        match item.parse::<usize>() {
            Ok(n) if n <= MAX_CPU_INDEX => Ok(n),
            _ => Err(format!(
                "invalid CPU list '{s}': CPU {item} is above {MAX_CPU_INDEX}"
            )),
        }
    };
    let mut cpus = Vec::new();
    for item in s.split(',') {
        match item.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (one(lo)?, one(hi)?);
                if lo > hi {
                    return Err(format!(
                        "invalid CPU list '{s}': range {lo}-{hi} is reversed"
                    ));
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(one(item)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// A parsed `--cpus` list (sorted, unique). A newtype so clap treats the
/// whole list as one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// [`parse_cpu_list`] wrapped in [`CpuList`], for clap.
pub fn parse_cpu_list_arg(s: &str) -> Result<CpuList, String> {
    parse_cpu_list(s).map(CpuList)
}

/// A request header given with `-H 'Name: value'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Field name (an RFC 9110 token), as written.
    pub name: String,
    /// Field value with surrounding whitespace removed.
    pub value: String,
}

/// RFC 9110 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parse `Name: value`. The name must be a token; the value may be empty but
/// must not contain control characters (CR/LF in particular).
pub fn parse_header(s: &str) -> Result<Header, String> {
    let Some((name, value)) = s.split_once(':') else {
        return Err(format!("invalid header '{s}': expected 'Name: value'"));
    };
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!(
            "invalid header '{s}': name '{name}' must be a non-empty token without spaces"
        ));
    }
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!(
            "invalid header '{name}': value contains control characters"
        ));
    }
    Ok(Header {
        name: name.to_string(),
        value: value.to_string(),
    })
}

/// Parse an HTTP method: a non-empty token (`GET`, `POST`, `PURGE`, ...).
pub fn parse_method(s: &str) -> Result<String, String> {
    if s.is_empty() || !s.bytes().all(is_tchar) {
        return Err(format!(
            "invalid method '{s}': must be a token like GET or POST"
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1 s"), Ok(Duration::from_secs(1)));
        for bad in [
            "",
            "s",
            "10x",
            "-1s",
            "99999999999999999999s",
            "1.s",
            ".5s",
            "2M",
            "1e3s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("18446744073709551615h").is_err());
        assert!(parse_duration("99999999999h").is_err());
        assert!(parse_duration_with("30", false).is_err());
        assert_eq!(
            parse_duration_with("30s", false),
            Ok(Duration::from_secs(30))
        );
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("100"), Ok(100));
        assert_eq!(parse_count("10k"), Ok(10_000));
        assert_eq!(parse_count("2M"), Ok(2_000_000));
        assert_eq!(parse_count("1G"), Ok(1_000_000_000));
        for bad in ["", "k", "-1", "1.5k", "1x", "99999999999999999999G"] {
            assert!(parse_count(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2-5"), Ok(vec![0, 2, 3, 4, 5]));
        assert_eq!(parse_cpu_list("5,1,3-4,1"), Ok(vec![1, 3, 4, 5]));
        assert_eq!(parse_cpu_list("7"), Ok(vec![7]));
        assert_eq!(parse_cpu_list(" 1 , 2 - 3 "), Ok(vec![1, 2, 3]));
        assert_eq!(parse_cpu_list("3-3"), Ok(vec![3]));
        for bad in [
            "",
            ",",
            "1,",
            "a",
            "1-",
            "-1",
            "5-2",
            "1-2-3",
            "0-99999999",
            "1;2",
            "+1",
        ] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("X-Test:  a b "),
            Ok(Header {
                name: "X-Test".into(),
                value: "a b".into()
            })
        );
        assert_eq!(parse_header("Empty:").map(|h| h.value), Ok(String::new()));
        assert_eq!(
            parse_header("Host: example.com:8080").map(|h| h.value),
            Ok("example.com:8080".into())
        );
        for bad in ["NoColon", ": v", "Bad Name: v", "X: a\r\nY: b", "X: \u{7f}"] {
            assert!(parse_header(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn methods() {
        assert_eq!(parse_method("POST"), Ok("POST".into()));
        assert!(parse_method("").is_err());
        assert!(parse_method("GE T").is_err());
    }
}
