//! Event timestamps as Teleport writes them.

use serde::{Serialize, Serializer};

/// Milliseconds since the Unix epoch, straight from the clock: events need no calendar
/// date here, and chrono's `Utc::now` computes one on every call.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// RFC 3339, UTC, millisecond precision: `2025-01-02T03:04:05.678Z`.
pub fn format_time(time_ms: i64) -> String {
    let mut buf = [0u8; 24];
    write_time(time_ms, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Formats without chrono's strftime machinery: this runs once per recorded event.
pub fn write_time(time_ms: i64, out: &mut [u8; 24]) {
    let secs = time_ms.div_euclid(1000);
    let millis = time_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let put = |out: &mut [u8; 24], at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            if let Some(slot) = out.get_mut(at + i) {
                *slot = b'0' + (v % 10) as u8;
            }
            v /= 10;
        }
    };
    *out = *b"0000-00-00T00:00:00.000Z";
    put(out, 0, year.clamp(0, 9999), 4);
    put(out, 5, month, 2);
    put(out, 8, day, 2);
    put(out, 11, sod / 3600, 2);
    put(out, 14, sod % 3600 / 60, 2);
    put(out, 17, sod % 60, 2);
    put(out, 20, millis, 3);
}

/// Howard Hinnant's days-to-civil conversion: (year, month, day) of a day counted from
/// 1970-01-01, in the proleptic Gregorian calendar, for any day an i32 can count.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub(super) struct TimeMs(pub(super) i64);

impl Serialize for TimeMs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 24];
        write_time(self.0, &mut buf);
        s.serialize_str(std::str::from_utf8(&buf).unwrap_or("1970-01-01T00:00:00.000Z"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    #[test]
    fn time_format_matches_chrono() {
        for ms in [0i64, 1, 999, 86_399_999, 951_782_400_000, 1_735_787_045_678, 4_102_444_800_123] {
            let chrono =
                DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()).unwrap_or_default();
            assert_eq!(format_time(ms), chrono, "ms={ms}");
        }
    }
}
