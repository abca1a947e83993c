//! IMF-fixdate formatting for the `Date` response header (RFC 9110 §5.6.7).
//!
//! Owns: converting a `SystemTime` into the 29-byte form
//! `Sun, 06 Nov 1994 08:49:37 GMT`, and [`CachedDate`], which re-formats only
//! when the second changes (one per core/thread; it is not shared).
//!
//! Invariants: output is always exactly 29 ASCII bytes. Times before the Unix
//! epoch are clamped to the epoch, times after 9999-12-31T23:59:59Z to that
//! instant (a 4-digit year is all the format can carry). Gregorian calendar
//! via Howard Hinnant's `civil_from_days`; no leap seconds (Unix time has
//! none).
//!
//! Must not: allocate, read the clock itself (the caller passes `now`, so
//! the event loop can read it once per iteration), depend on chrono/time or
//! the local time zone.

use std::time::{SystemTime, UNIX_EPOCH};

const DAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];
/// 9999-12-31T23:59:59Z in Unix seconds.
const MAX_SECS: u64 = 253_402_300_799;

/// Whole seconds since the Unix epoch, clamped to the formattable range.
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(MAX_SECS)
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

fn two(out: &mut [u8], v: u64) {
    out[0] = b'0' + (v / 10) as u8;
    out[1] = b'0' + (v % 10) as u8;
}

fn format_secs(secs: u64) -> [u8; 29] {
    let days = secs / 86_400;
    let sod = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    // 1970-01-01 was a Thursday; index 0 is Sunday.
    out[0..3].copy_from_slice(DAYS[((days + 4) % 7) as usize]);
    two(&mut out[5..7], d);
    out[8..11].copy_from_slice(MONTHS[(m - 1) as usize]);
    two(&mut out[12..14], y / 100);
    two(&mut out[14..16], y % 100);
    two(&mut out[17..19], sod / 3600);
    two(&mut out[20..22], sod / 60 % 60);
    two(&mut out[23..25], sod % 60);
    out
}

/// Format `t` as an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn format_imf_fixdate(t: SystemTime) -> [u8; 29] {
    format_secs(unix_secs(t))
}

/// The formatted current date, re-formatted only when the second changes.
#[derive(Clone, Debug)]
pub struct CachedDate {
    secs: u64,
    buf: [u8; 29],
}

impl CachedDate {
    /// A cache holding the epoch; the first `get` fills it.
    pub fn new() -> Self {
        CachedDate {
            secs: 0,
            buf: format_secs(0),
        }
    }

    /// The IMF-fixdate of `now` (to the second).
    pub fn get(&mut self, now: SystemTime) -> &[u8; 29] {
        let secs = unix_secs(now);
        if secs != self.secs {
            self.secs = secs;
            self.buf = format_secs(secs);
        }
        &self.buf
    }
}

impl Default for CachedDate {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::{CachedDate, format_imf_fixdate};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn known_timestamps() {
        let cases: &[(u64, &[u8; 29])] = &[
            (0, b"Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, b"Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, b"Tue, 29 Feb 2000 00:00:00 GMT"),
            (951_868_799, b"Tue, 29 Feb 2000 23:59:59 GMT"),
            (978_307_199, b"Sun, 31 Dec 2000 23:59:59 GMT"),
            (1_234_567_890, b"Fri, 13 Feb 2009 23:31:30 GMT"),
            (1_709_208_000, b"Thu, 29 Feb 2024 12:00:00 GMT"),
            (2_147_483_647, b"Tue, 19 Jan 2038 03:14:07 GMT"),
            (4_107_542_400, b"Mon, 01 Mar 2100 00:00:00 GMT"),
            (4_107_542_399, b"Sun, 28 Feb 2100 23:59:59 GMT"),
            (253_402_300_799, b"Fri, 31 Dec 9999 23:59:59 GMT"),
        ];
        for (secs, want) in cases {
            assert_eq!(
                &format_imf_fixdate(at(*secs)),
                *want,
                "{secs}: {}",
                String::from_utf8_lossy(&format_imf_fixdate(at(*secs)))
            );
        }
    }

    #[test]
    fn clamps_out_of_range() {
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(
            &format_imf_fixdate(before),
            b"Thu, 01 Jan 1970 00:00:00 GMT"
        );
        let far = at(253_402_300_799 + 1_000_000);
        assert_eq!(&format_imf_fixdate(far), b"Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn sub_second_is_truncated() {
        let t = at(784_111_777) + Duration::from_millis(999);
        assert_eq!(&format_imf_fixdate(t), b"Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn every_day_for_a_few_centuries_is_consistent() {
        // Days advance by one, weekdays cycle, month/day strings stay valid.
        let mut prev = format_imf_fixdate(at(0));
        for day in 1..(400 * 366) {
            let cur = format_imf_fixdate(at(day * 86_400 + 43_200));
            assert_ne!(cur[0..3], prev[0..3]);
            assert!(cur.iter().all(u8::is_ascii));
            assert_eq!(&cur[25..], b" GMT");
            prev = cur;
        }
    }

    #[test]
    fn cached_date_updates_once_per_second() {
        let mut c = CachedDate::new();
        assert_eq!(c.get(at(784_111_777)), b"Sun, 06 Nov 1994 08:49:37 GMT");
        let t = at(784_111_777) + Duration::from_millis(500);
        assert_eq!(c.get(t), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(c.get(at(784_111_778)), b"Sun, 06 Nov 1994 08:49:38 GMT");
        assert_eq!(
            c.get(SystemTime::UNIX_EPOCH),
            b"Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }
}
