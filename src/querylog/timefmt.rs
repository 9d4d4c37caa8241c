//! Times for `cloudpc querylog pull`: RFC 3339 (UTC) output and `--since` parsing.
//!
//! `--since` takes either a duration back from now (`90s`, `30m`, `1h`, `7d`, `2w`) or an RFC 3339
//! time (`2026-11-26T10:00:00Z`, `2026-11-26T11:00:00+01:00`, or a date `2026-11-26` = midnight UTC).

/// Why a `--since` value was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--since {0:?}: expected a duration like 30m, 1h, 7d or an RFC 3339 time like 2026-11-26T10:00:00Z")]
pub struct SinceError(pub String);

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `2026-11-26T16:52:56.123Z` (milliseconds shown when `with_ms`).
pub fn format_rfc3339(unix_ms: i64, with_ms: bool) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, (sod / 60) % 60, sod % 60);
    if with_ms {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{ms:03}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    }
}

fn num(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses an RFC 3339 time (or a bare date) to Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut dp = date.split('-');
    let (y, m, d) = (num(dp.next()?)?, num(dp.next()?)?, num(dp.next()?)?);
    if dp.next().is_some() || date.len() != 10 || !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let dim = match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if d > dim {
        return None;
    }
    let day_ms = days_from_civil(i64::from(y), m, d) * 86_400_000;
    let Some(rest) = rest else {
        return Some(day_ms);
    };
    // Time, optional fraction, then Z or ±HH:MM.
    let (clock, offset_ms) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else {
        let i = rest.rfind(['+', '-'])?;
        let (c, off) = (&rest[..i], &rest[i..]);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut op = off[1..].split(':');
        let (oh, om) = (num(op.next()?)?, num(op.next()?)?);
        if op.next().is_some() || oh > 23 || om > 59 {
            return None;
        }
        (c, sign * i64::from(oh * 3600 + om * 60) * 1000)
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (clock, None),
    };
    let mut tp = hms.split(':');
    let (hh, mm, ss) = (num(tp.next()?)?, num(tp.next()?)?, num(tp.next()?)?);
    if tp.next().is_some() || hms.len() != 8 || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let ms = match frac {
        Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
            let f3: String = f.chars().chain("000".chars()).take(3).collect();
            i64::from(num(&f3)?)
        }
        Some(_) => return None,
        None => 0,
    };
    Some(day_ms + i64::from(hh * 3600 + mm * 60 + ss) * 1000 + ms - offset_ms)
}

/// Parses `30s`, `15m`, `1h`, `7d`, `2w` to milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().ok()?;
    let unit_ms: i64 = match unit {
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

/// The Unix millisecond `--since` stands for, given the current time.
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, SinceError> {
    if let Some(d) = parse_duration_ms(s) {
        return Ok(now_ms.saturating_sub(d));
    }
    parse_rfc3339(s).ok_or_else(|| SinceError(s.chars().take(64).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_times_parse_and_format() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-11-26T16:52:56Z"),
            Some(1_795_711_976_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-26T17:52:56.5+01:00"),
            Some(1_795_711_976_500)
        );
        assert_eq!(parse_rfc3339("2026-11-26"), Some(1_795_651_200_000));
        assert_eq!(
            format_rfc3339(1_795_711_976_500, true),
            "2026-11-26T16:52:56.500Z"
        );
    }

    #[test]
    fn bad_times_are_refused() {
        for s in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2026-11-26T25:00:00Z",
            "2026-11-26T10:00:00",
            "2026-11-26T10:00Z",
            "1h30",
            "-1h",
        ] {
            assert!(parse_since(s, 0).is_err(), "{s}");
        }
    }

    #[test]
    fn durations_count_back_from_now() {
        assert_eq!(parse_since("1h", 10_000_000), Ok(10_000_000 - 3_600_000));
        assert_eq!(parse_since("7d", 0), Ok(-7 * 86_400_000));
        assert_eq!(parse_duration_ms("99999999999999999999d"), None);
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(ms in 0i64..253_402_300_799_000) {
            prop_assert_eq!(parse_rfc3339(&format_rfc3339(ms, true)), Some(ms));
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,40}") {
            let _ = parse_since(&s, 0);
        }
    }
}
