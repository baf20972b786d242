//! `--since` / `--until` values: a duration ago ("24h", "90m"), an RFC 3339 time, or a date.

/// `--since` and `--until` as milliseconds; both ends are included wherever a range is
/// applied.
pub fn time_range(since: Option<&str>, until: Option<&str>) -> Result<(Option<i64>, Option<i64>), super::ReviewError> {
    let now = chrono::Utc::now().timestamp_millis();
    let parse = |flag: &str, text: Option<&str>| {
        text.map(|t| parse_when(t, now)).transpose().map_err(|m| super::ReviewError::Usage(format!("{flag}: {m}")))
    };
    Ok((parse("--since", since)?, parse("--until", until)?))
}

pub fn parse_when(text: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(now_ms - i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        if let Some(t) = date.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    Err(format!("{text:?} is not a time: write a duration ago (\"24h\"), an RFC 3339 time (2026-01-02T03:04:05Z) or a date (2026-01-02)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_forms() {
        assert_eq!(parse_when("1h", 10_000_000), Ok(10_000_000 - 3_600_000));
        assert_eq!(parse_when("1970-01-02", 0), Ok(86_400_000));
        assert_eq!(parse_when("1970-01-01T00:00:01Z", 0), Ok(1000));
        assert!(parse_when("yesterday-ish", 0).is_err());
    }
}
