//! PostgreSQL's binary send formats (`*_send` in the server's sources), read back into the
//! text its output functions print. Every length and range is checked: the bytes come from
//! a client that may be hostile, so a value that does not decode is an error, never a panic.

use super::types::*;

/// A decoded value as PostgreSQL's output function prints it, and whether psql would take
/// it bare (a number) rather than in quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub text: String,
    pub bare: bool,
}

impl Decoded {
    fn bare(text: String) -> Self {
        Decoded { text, bare: true }
    }

    fn quoted(text: impl Into<String>) -> Self {
        Decoded { text: text.into(), bare: false }
    }
}

/// Why a value is shown as base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecoded {
    /// The decoders do not read this type.
    UnknownType,
    /// The bytes are not a valid value of the type.
    Invalid,
    /// Valid, but longer than a reviewer's line should hold (a numeric of a thousand digits).
    TooLong,
}

/// Digits a numeric may print on each side of its point before it is shown as base64: a
/// 16-byte value could otherwise ask for 130,000 of them.
const MAX_NUMERIC_DIGITS: usize = 1000;

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const POSTGRES_EPOCH_DAYS: i64 = 10_957;

fn be<const N: usize>(bytes: &[u8]) -> Result<[u8; N], Undecoded> {
    bytes.try_into().map_err(|_| Undecoded::Invalid)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Undecoded> {
        if self.rest.len() < n {
            return Err(Undecoded::Invalid);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, Undecoded> {
        Ok(i16::from_be_bytes(be(self.take(2)?)?))
    }

    fn u16(&mut self) -> Result<u16, Undecoded> {
        Ok(u16::from_be_bytes(be(self.take(2)?)?))
    }

    fn i32(&mut self) -> Result<i32, Undecoded> {
        Ok(i32::from_be_bytes(be(self.take(4)?)?))
    }

    fn u8(&mut self) -> Result<u8, Undecoded> {
        Ok(self.take(1)?[0])
    }

    fn end(&self) -> Result<(), Undecoded> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Undecoded::Invalid)
        }
    }
}

/// The value of type `oid` in binary format.
pub fn decode(oid: u32, bytes: &[u8]) -> Result<Decoded, Undecoded> {
    Ok(match oid {
        BOOL => match bytes {
            [0] => Decoded::bare("false".into()),
            [1] => Decoded::bare("true".into()),
            _ => return Err(Undecoded::Invalid),
        },
        INT2 => Decoded::bare(i16::from_be_bytes(be(bytes)?).to_string()),
        INT4 => Decoded::bare(i32::from_be_bytes(be(bytes)?).to_string()),
        INT8 => Decoded::bare(i64::from_be_bytes(be(bytes)?).to_string()),
        OID => Decoded::bare(u32::from_be_bytes(be(bytes)?).to_string()),
        FLOAT4 => float(f64::from(f32::from_be_bytes(be(bytes)?)), 6, f32::from_be_bytes(be(bytes)?).to_string()),
        FLOAT8 => {
            let v = f64::from_be_bytes(be(bytes)?);
            float(v, 15, v.to_string())
        }
        NUMERIC => numeric(bytes)?,
        TEXT | VARCHAR | BPCHAR | NAME | UNKNOWN | JSON => Decoded::quoted(utf8(bytes)?),
        JSONB => match bytes.split_first() {
            Some((1, text)) => Decoded::quoted(utf8(text)?),
            _ => return Err(Undecoded::Invalid),
        },
        BYTEA => {
            let mut text = String::with_capacity(2 + 2 * bytes.len());
            text.push_str("\\x");
            text.push_str(&crate::util::hex::hex(bytes));
            Decoded::quoted(text)
        }
        UUID => {
            let hex = crate::util::hex::hex(&be::<16>(bytes)?);
            Decoded::quoted(format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]))
        }
        DATE => Decoded::quoted(date(i32::from_be_bytes(be(bytes)?))),
        TIME => {
            let micros = i64::from_be_bytes(be(bytes)?);
            if !(0..=MICROS_PER_DAY).contains(&micros) {
                return Err(Undecoded::Invalid);
            }
            Decoded::quoted(clock(micros))
        }
        TIMESTAMP => Decoded::quoted(timestamp(i64::from_be_bytes(be(bytes)?), "")),
        TIMESTAMPTZ => Decoded::quoted(timestamp(i64::from_be_bytes(be(bytes)?), "+00")),
        INTERVAL => {
            let mut r = Reader { rest: bytes };
            let micros = i64::from_be_bytes(be(r.take(8)?)?);
            let (days, months) = (r.i32()?, r.i32()?);
            r.end()?;
            Decoded::quoted(interval(micros, days, months))
        }
        INET | CIDR => Decoded::quoted(inet(bytes, oid == CIDR)?),
        _ => match element_of(oid) {
            Some(element) => Decoded::quoted(array(element, bytes)?),
            None => return Err(Undecoded::UnknownType),
        },
    })
}

fn utf8(bytes: &[u8]) -> Result<String, Undecoded> {
    std::str::from_utf8(bytes).map(str::to_string).map_err(|_| Undecoded::Invalid)
}

/// As float8out and float4out print with extra_float_digits ≥ 1 (the default since
/// PostgreSQL 12): the shortest text that reads back exactly, in exponent form outside
/// `1e-4 ≤ |v| < 10^digits`.
fn float(v: f64, digits: i32, shortest: String) -> Decoded {
    if v.is_nan() {
        return Decoded::quoted("NaN");
    }
    if v.is_infinite() {
        return Decoded::quoted(if v > 0.0 { "Infinity" } else { "-Infinity" });
    }
    // Rust's `{:e}` gives the same shortest digits as `shortest`: `1.5e-7`, which
    // PostgreSQL writes `1.5e-07`.
    let scientific = if digits == 6 { format!("{:e}", v as f32) } else { format!("{v:e}") };
    let (mantissa, exp) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if v == 0.0 || (-4..digits).contains(&exp) {
        return Decoded::bare(shortest);
    }
    let sign = if exp < 0 { '-' } else { '+' };
    Decoded::bare(format!("{mantissa}e{sign}{:02}", exp.abs()))
}

/// numeric_send: digit count, weight (of the first base-10000 digit), sign, display scale,
/// then the digits.
fn numeric(bytes: &[u8]) -> Result<Decoded, Undecoded> {
    let mut r = Reader { rest: bytes };
    let count = usize::try_from(r.i16()?).map_err(|_| Undecoded::Invalid)?;
    let weight = i64::from(r.i16()?);
    let sign = r.u16()?;
    let scale = usize::try_from(r.i16()?).map_err(|_| Undecoded::Invalid)?;
    let digits = (0..count).map(|_| r.u16()).collect::<Result<Vec<u16>, _>>()?;
    r.end()?;
    match sign {
        0xC000 => return Ok(Decoded::quoted("NaN")),
        0xD000 => return Ok(Decoded::quoted("Infinity")),
        0xF000 => return Ok(Decoded::quoted("-Infinity")),
        0x0000 | 0x4000 => {}
        _ => return Err(Undecoded::Invalid),
    }
    if digits.iter().any(|&d| d >= 10_000) || scale > 0x3FFF {
        return Err(Undecoded::Invalid);
    }
    if scale > MAX_NUMERIC_DIGITS || weight > (MAX_NUMERIC_DIGITS / 4) as i64 {
        return Err(Undecoded::TooLong);
    }
    // Base-10000 digit at power `p` (10000^p) of the value.
    let digit_at = |p: i64| -> u16 {
        let index = weight - p;
        usize::try_from(index).ok().and_then(|i| digits.get(i)).copied().unwrap_or(0)
    };
    let mut text = String::with_capacity(8 + 4 * (weight.max(0) as usize + 1) + scale);
    if sign == 0x4000 {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&digit_at(weight).to_string());
        for p in (0..weight).rev() {
            text.push_str(&format!("{:04}", digit_at(p)));
        }
    }
    if scale > 0 {
        text.push('.');
        let mut fraction = String::with_capacity(scale + 4);
        let mut p = -1;
        while fraction.len() < scale {
            fraction.push_str(&format!("{:04}", digit_at(p)));
            p -= 1;
        }
        fraction.truncate(scale);
        text.push_str(&fraction);
    }
    Ok(Decoded::bare(text))
}

/// `YYYY-MM-DD`, and whether the year is before Christ (PostgreSQL has no year 0).
fn calendar_date(days_since_2000: i64) -> (String, bool) {
    let (year, month, day) = crate::audit::time::civil_from_days(days_since_2000 + POSTGRES_EPOCH_DAYS);
    let (year, bc) = if year <= 0 { (1 - year, true) } else { (year, false) };
    (format!("{year:04}-{month:02}-{day:02}"), bc)
}

fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        days => {
            let (text, bc) = calendar_date(i64::from(days));
            if bc {
                format!("{text} BC")
            } else {
                text
            }
        }
    }
}

/// `HH:MM:SS` and the fraction PostgreSQL prints: trailing zeros dropped.
fn clock(micros: i64) -> String {
    let (seconds, fraction) = (micros / 1_000_000, micros % 1_000_000);
    let mut text = format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60);
    push_fraction(&mut text, fraction);
    text
}

fn push_fraction(text: &mut String, fraction: i64) {
    if fraction != 0 {
        let digits = format!("{fraction:06}");
        text.push('.');
        text.push_str(digits.trim_end_matches('0'));
    }
}

fn timestamp(micros: i64, zone: &str) -> String {
    match micros {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        micros => {
            let (days, time) = (micros.div_euclid(MICROS_PER_DAY), micros.rem_euclid(MICROS_PER_DAY));
            let (date, bc) = calendar_date(days);
            format!("{date} {}{zone}{}", clock(time), if bc { " BC" } else { "" })
        }
    }
}

/// interval_out in the default `postgres` style: `1 year 2 mons -3 days +04:05:06.5`.
fn interval(micros: i64, days: i32, months: i32) -> String {
    match (micros, days, months) {
        (i64::MIN, i32::MIN, i32::MIN) => return "-infinity".into(),
        (i64::MAX, i32::MAX, i32::MAX) => return "infinity".into(),
        _ => {}
    }
    let mut text = String::new();
    let mut is_zero = true;
    let mut is_before = false;
    let mut part = |value: i64, unit: &str, text: &mut String| {
        if value == 0 {
            return;
        }
        let space = if is_zero { "" } else { " " };
        let plus = if is_before && value > 0 { "+" } else { "" };
        let plural = if value != 1 { "s" } else { "" };
        text.push_str(&format!("{space}{plus}{value} {unit}{plural}"));
        is_before = value < 0;
        is_zero = false;
    };
    part(i64::from(months / 12), "year", &mut text);
    part(i64::from(months % 12), "mon", &mut text);
    part(i64::from(days), "day", &mut text);
    if is_zero || micros != 0 {
        let abs = micros.unsigned_abs();
        let sign = if micros < 0 {
            "-"
        } else if is_before {
            "+"
        } else {
            ""
        };
        let seconds = abs / 1_000_000;
        text.push_str(&format!(
            "{}{sign}{:02}:{:02}:{:02}",
            if is_zero { "" } else { " " },
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        ));
        push_fraction(&mut text, (abs % 1_000_000) as i64);
    }
    text
}

/// inet_send: family (2 for IPv4, 3 for IPv6), prefix bits, is-cidr flag, length, address.
fn inet(bytes: &[u8], cidr: bool) -> Result<String, Undecoded> {
    let mut r = Reader { rest: bytes };
    let (family, bits, _flag, len) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?);
    let address = r.take(usize::from(len))?;
    r.end()?;
    let (text, max_bits) = match (family, address.len()) {
        (2, 4) => (std::net::Ipv4Addr::from(be::<4>(address)?).to_string(), 32),
        (3, 16) => (std::net::Ipv6Addr::from(be::<16>(address)?).to_string(), 128),
        _ => return Err(Undecoded::Invalid),
    };
    if bits > max_bits {
        return Err(Undecoded::Invalid);
    }
    Ok(if cidr || bits != max_bits { format!("{text}/{bits}") } else { text })
}

/// array_send: dimensions, null flag, element type, each dimension's size and lower bound,
/// then each element as a length (-1 for NULL) and its bytes. One dimension at most.
fn array(element: u32, bytes: &[u8]) -> Result<String, Undecoded> {
    let mut r = Reader { rest: bytes };
    let dimensions = r.i32()?;
    let _has_nulls = r.i32()?;
    let element_type = u32::from_be_bytes(be(r.take(4)?)?);
    if element_type != element {
        return Err(Undecoded::Invalid);
    }
    match dimensions {
        0 => {
            r.end()?;
            return Ok("{}".into());
        }
        1 => {}
        // Several dimensions are valid, but not read here: shown as base64.
        2..=6 => return Err(Undecoded::UnknownType),
        _ => return Err(Undecoded::Invalid),
    }
    let size = r.i32()?;
    let lower = r.i32()?;
    // Each element takes at least its 4-byte length, so a size the bytes cannot hold is a
    // lie, refused before anything is allocated for it.
    let size = usize::try_from(size).map_err(|_| Undecoded::Invalid)?;
    if size > r.rest.len() / 4 {
        return Err(Undecoded::Invalid);
    }
    let mut text = String::new();
    if lower != 1 {
        let upper = i64::from(lower) + size as i64 - 1;
        text.push_str(&format!("[{lower}:{upper}]="));
    }
    text.push('{');
    for i in 0..size {
        if i > 0 {
            text.push(',');
        }
        let len = r.i32()?;
        if len < 0 {
            text.push_str("NULL");
            continue;
        }
        let item = r.take(usize::try_from(len).map_err(|_| Undecoded::Invalid)?)?;
        let item = decode(element, item).map_err(|_| Undecoded::Invalid)?.text;
        push_array_item(&item, &mut text);
    }
    r.end()?;
    text.push('}');
    Ok(text)
}

/// An element as array_out writes it: in double quotes, with `"` and `\` escaped, when it
/// is empty, is `NULL`, or holds a space or one of `{}",\`.
fn push_array_item(item: &str, out: &mut String) {
    let needs_quotes = item.is_empty()
        || item.eq_ignore_ascii_case("null")
        || item.chars().any(|c| matches!(c, '{' | '}' | '"' | ',' | '\\') || c.is_ascii_whitespace());
    if !needs_quotes {
        out.push_str(item);
        return;
    }
    out.push('"');
    for c in item.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(oid: u32, bytes: &[u8]) -> String {
        decode(oid, bytes).unwrap().text
    }

    #[test]
    fn numbers() {
        assert_eq!(text(INT2, &(-7i16).to_be_bytes()), "-7");
        assert_eq!(text(INT8, &i64::MIN.to_be_bytes()), "-9223372036854775808");
        assert_eq!(text(FLOAT8, &1.5f64.to_be_bytes()), "1.5");
        assert_eq!(text(FLOAT8, &1e20f64.to_be_bytes()), "1e+20");
        assert_eq!(text(FLOAT8, &1.25e-7f64.to_be_bytes()), "1.25e-07");
        assert_eq!(text(FLOAT8, &123456789012345.0f64.to_be_bytes()), "123456789012345");
        assert_eq!(text(FLOAT4, &0.1f32.to_be_bytes()), "0.1");
        assert_eq!(text(FLOAT4, &1234567.0f32.to_be_bytes()), "1.234567e+06");
        assert_eq!(decode(FLOAT8, &f64::NAN.to_be_bytes()).unwrap(), Decoded::quoted("NaN"));
        assert_eq!(decode(INT4, &[0, 0, 1]), Err(Undecoded::Invalid));
    }

    fn numeric_bytes(weight: i16, sign: u16, scale: i16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        b.extend_from_slice(&weight.to_be_bytes());
        b.extend_from_slice(&sign.to_be_bytes());
        b.extend_from_slice(&scale.to_be_bytes());
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics() {
        assert_eq!(text(NUMERIC, &numeric_bytes(1, 0x4000, 3, &[12, 3456, 7800])), "-123456.780");
        assert_eq!(text(NUMERIC, &numeric_bytes(-1, 0, 6, &[12])), "0.001200");
        assert_eq!(text(NUMERIC, &numeric_bytes(2, 0, 0, &[1])), "100000000");
        assert_eq!(text(NUMERIC, &numeric_bytes(0, 0, 0, &[])), "0");
        assert_eq!(decode(NUMERIC, &numeric_bytes(0, 0, 0, &[10_000])), Err(Undecoded::Invalid));
        assert_eq!(decode(NUMERIC, &numeric_bytes(i16::MAX, 0, 0, &[1])), Err(Undecoded::TooLong));
    }

    #[test]
    fn times() {
        assert_eq!(text(DATE, &0i32.to_be_bytes()), "2000-01-01");
        assert_eq!(text(DATE, &9834i32.to_be_bytes()), "2026-12-04");
        assert_eq!(text(DATE, &(-730_485i32).to_be_bytes()), "0001-01-01 BC");
        assert_eq!(text(DATE, &i32::MAX.to_be_bytes()), "infinity");
        let ts = (9834i64 * MICROS_PER_DAY + 3_723_500_000).to_be_bytes();
        assert_eq!(text(TIMESTAMP, &ts), "2026-12-04 01:02:03.5");
        assert_eq!(text(TIMESTAMPTZ, &ts), "2026-12-04 01:02:03.5+00");
        assert_eq!(text(TIMESTAMP, &(-1i64).to_be_bytes()), "1999-12-31 23:59:59.999999");
        assert_eq!(text(TIME, &45_296_000_001i64.to_be_bytes()), "12:34:56.000001");
        assert_eq!(decode(TIME, &(-1i64).to_be_bytes()), Err(Undecoded::Invalid));
    }

    fn interval_bytes(micros: i64, days: i32, months: i32) -> Vec<u8> {
        [&micros.to_be_bytes()[..], &days.to_be_bytes(), &months.to_be_bytes()].concat()
    }

    #[test]
    fn intervals_print_as_interval_out() {
        assert_eq!(text(INTERVAL, &interval_bytes(14_706_500_000, 3, 14)), "1 year 2 mons 3 days 04:05:06.5");
        assert_eq!(text(INTERVAL, &interval_bytes(7_380_000_000, -1, 0)), "-1 days +02:03:00");
        assert_eq!(text(INTERVAL, &interval_bytes(0, 0, 0)), "00:00:00");
        assert_eq!(text(INTERVAL, &interval_bytes(-1_000_000, 1, 1)), "1 mon 1 day -00:00:01");
        // PostgreSQL 17's infinite intervals.
        assert_eq!(text(INTERVAL, &interval_bytes(i64::MIN, i32::MIN, i32::MIN)), "-infinity");
        assert_eq!(text(INTERVAL, &interval_bytes(i64::MAX, i32::MAX, i32::MAX)), "infinity");
        assert_eq!(text(INTERVAL, &interval_bytes(i64::MIN, 0, 0)), "-2562047788:00:54.775808");
    }

    #[test]
    fn text_uuid_bytea_json_inet() {
        assert_eq!(decode(TEXT, "é'x".as_bytes()).unwrap(), Decoded::quoted("é'x"));
        assert_eq!(decode(TEXT, &[0xff]), Err(Undecoded::Invalid));
        assert_eq!(text(BYTEA, &[0, 0xab]), "\\x00ab");
        assert_eq!(text(UUID, &[0x12; 16]), "12121212-1212-1212-1212-121212121212");
        assert_eq!(text(JSONB, b"\x01{\"k\": 0}"), "{\"k\": 0}");
        assert_eq!(decode(JSONB, b"\x02{}"), Err(Undecoded::Invalid));
        assert_eq!(text(INET, &[2, 32, 0, 4, 10, 0, 0, 1]), "10.0.0.1");
        assert_eq!(text(INET, &[2, 8, 0, 4, 10, 0, 0, 0]), "10.0.0.0/8");
        assert_eq!(text(CIDR, &[2, 32, 1, 4, 10, 0, 0, 1]), "10.0.0.1/32");
        let mut v6 = vec![3, 64, 1, 16, 0x20, 0x01, 0x0d, 0xb8];
        v6.extend_from_slice(&[0; 12]);
        assert_eq!(text(CIDR, &v6), "2001:db8::/64");
        assert_eq!(decode(INET, &[2, 33, 0, 4, 10, 0, 0, 1]), Err(Undecoded::Invalid));
        assert_eq!(decode(600, &[0; 16]), Err(Undecoded::UnknownType));
    }

    fn array_bytes(element: u32, lower: i32, items: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&element.to_be_bytes());
        b.extend_from_slice(&(items.len() as i32).to_be_bytes());
        b.extend_from_slice(&lower.to_be_bytes());
        for item in items {
            match item {
                Some(bytes) => {
                    b.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                    b.extend_from_slice(bytes);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn arrays() {
        let ints = array_bytes(INT4, 1, &[Some(&1i32.to_be_bytes()), None, Some(&(-3i32).to_be_bytes())]);
        assert_eq!(text(1007, &ints), "{1,NULL,-3}");
        let texts = array_bytes(TEXT, 0, &[Some(b"a b"), Some(b"null"), Some(b"q\"\\"), Some(b""), Some(b"plain")]);
        assert_eq!(text(1009, &texts), "[0:4]={\"a b\",\"null\",\"q\\\"\\\\\",\"\",plain}");
        assert_eq!(text(1001, &array_bytes(BYTEA, 1, &[Some(&[1])])), "{\"\\\\x01\"}");
        assert_eq!(decode(1007, &array_bytes(TEXT, 1, &[])), Err(Undecoded::Invalid), "element type must match");
        let mut lying = array_bytes(INT4, 1, &[]);
        lying[12..16].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(decode(1007, &lying), Err(Undecoded::Invalid));
        let empty = [&0i32.to_be_bytes()[..], &0i32.to_be_bytes(), &INT4.to_be_bytes()].concat();
        assert_eq!(text(1007, &empty), "{}");
    }
}
