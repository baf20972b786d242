//! Entry point for the `dynamodb_request` fuzz target: the Authorization header parser and
//! the signature check over arbitrary requests, the cached signer against `aws-sigv4`, the
//! `X-Amz-Date` parser against chrono's, and the response summariser.

use std::time::{Duration, SystemTime};

use crate::aws::sigv4_verify::{payload_sha256, verify, Authorization, SignedRequest};

pub fn request(data: &[u8]) {
    let Some((head, body)) = split_at_blank_line(data) else { return };
    let Ok(head) = std::str::from_utf8(head) else { return };
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let (method, path) = first.split_once(' ').unwrap_or(("POST", "/"));
    let headers: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim(), v.trim())).collect();
    let hash = payload_sha256(body);
    super::upstream::assert_signers_agree(data, &hash);
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("x-amz-date") {
            assert_dates_parse_as_chrono_does(value);
        }
    }
    let request = SignedRequest { method, path_and_query: path, headers: headers.clone(), payload_sha256: &hash };
    if let Some((_, value)) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("authorization")) {
        if let Ok(auth) = Authorization::parse(value) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
            let _ = verify(&auth, &request, "fuzz-secret", now, &Default::default());
        }
    }
    for status in [200, 400] {
        let captured = super::summary::Captured {
            head: body.to_vec(),
            tail: body.to_vec(),
            total: body.len() as u64,
            complete: true,
            gzip: body.first() == Some(&0x1f),
        };
        let _ = super::summary::summarize(status, &captured, 4096);
    }
}

/// The hand-written `X-Amz-Date` parser accepts only what chrono's accepts, as the same time.
fn assert_dates_parse_as_chrono_does(text: &str) {
    if let Some(ours) = crate::aws::sigv4_verify::parse_amz_date(text) {
        let chrono = chrono::NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%SZ").ok().map(|t| t.and_utc().timestamp());
        let secs = ours.duration_since(SystemTime::UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_secs()).ok());
        assert_eq!(secs, chrono, "X-Amz-Date {text:?} parsed differently");
    }
}

fn split_at_blank_line(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = memchr::memmem::find(data, b"\r\n\r\n")?;
    Some((&data[..at], &data[at + 4..]))
}
