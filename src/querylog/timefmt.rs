//! Times for `cloudpc querylog pull` and durations in the config: RFC 3339 (UTC) output,
//! `--since` parsing, `"24h"`-style durations. The calendar and unit arithmetic is `jiff`'s.
//!
//! `--since` takes either a duration back from now (`90s`, `30m`, `1h`, `7d`, `2w`) or an RFC 3339
//! time (`2026-11-26T10:00:00Z`, `2026-11-26T11:00:00+01:00`, or a date `2026-11-26` = midnight UTC).

use jiff::civil::{Date, Time};
use jiff::tz::Offset;
use jiff::{Span, SpanRelativeTo, Timestamp};

/// Why a `--since` value was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--since {0:?}: expected a duration like 30m, 1h, 7d or an RFC 3339 time like 2026-11-26T10:00:00Z")]
pub struct SinceError(pub String);

/// `2026-11-26T16:52:56.123Z` (milliseconds shown when `with_ms`). Times outside the years
/// -9999..=9999 are shown clamped to that range.
pub fn format_rfc3339(unix_ms: i64, with_ms: bool) -> String {
    let ms = unix_ms.clamp(
        Timestamp::MIN.as_millisecond(),
        Timestamp::MAX.as_millisecond(),
    );
    let ts = Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH);
    if with_ms {
        format!("{ts:.3}")
    } else {
        format!("{ts:.0}")
    }
}

/// True when `clock` starts with a full `HH:MM:SS`: RFC 3339 requires the seconds, which the
/// ISO 8601 forms `jiff` also reads may leave out.
fn has_seconds(clock: &str) -> bool {
    let b = clock.as_bytes();
    b.len() >= 8
        && b[2] == b':'
        && b[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
}

/// Parses an RFC 3339 time (or a bare `YYYY-MM-DD` date, midnight UTC) to Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    match s.find(['T', 't', ' ']) {
        None if s.len() == 10 => {
            let d: Date = s.parse().ok()?;
            let ts = Offset::UTC
                .to_timestamp(d.to_datetime(Time::midnight()))
                .ok()?;
            Some(ts.as_millisecond())
        }
        None => None,
        Some(i) if has_seconds(&s[i + 1..]) => {
            let ts: Timestamp = s.parse().ok()?;
            Some(ts.as_millisecond())
        }
        Some(_) => None,
    }
}

/// Parses a duration such as `30s`, `15m`, `90min`, `1h`, `7d`, `2w` (days are 24 hours,
/// weeks 7 days) to milliseconds. Negative durations and months or years are refused.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    // jiff also reads ISO 8601 durations (`PT1H`) and signs; keep to `<number><unit>` words.
    if !s.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let span: Span = s.parse().ok()?;
    if span.is_negative() {
        return None;
    }
    let d = span.to_duration(SpanRelativeTo::days_are_24_hours()).ok()?;
    i64::try_from(d.as_millis()).ok()
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

    #[test]
    fn every_documented_duration_form_parses() {
        for (s, ms) in [
            ("30m", 1_800_000),
            ("90min", 5_400_000),
            ("1h", 3_600_000),
            ("24h", 86_400_000),
            ("3600s", 3_600_000),
            ("7d", 7 * 86_400_000),
            ("2w", 14 * 86_400_000),
        ] {
            assert_eq!(parse_duration_ms(s), Some(ms), "{s}");
        }
        for s in ["1mo", "1y", "PT1H", "-1h", "h", ""] {
            assert_eq!(parse_duration_ms(s), None, "{s}");
        }
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
