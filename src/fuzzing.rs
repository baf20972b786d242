//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_corpus.rs`, which replays
//! the committed corpora on every test run. Each takes arbitrary bytes; a panic is a finding.

use std::path::Path;

pub use crate::proxy::dynamodb::fuzz::request as dynamodb_request;
pub use crate::proxy::http1::fuzz::message as http1_message;
pub use crate::proxy::mongodb::fuzz::message as mongodb_message;
pub use crate::proxy::postgres::fuzz::{messages as postgres_messages, redaction as postgres_redaction};
pub use crate::proxy::tls_stream::fuzz::{session as tls_stream, Setup as TlsStreamSetup};

/// SCRAM-SHA-256 messages from a hostile peer, split at NUL bytes: a verifier to parse, then
/// a client-first and client-final for the server side, then a server-first and
/// server-final for the client side.
pub fn scram(data: &[u8]) {
    use crate::auth::scram::{ClientExchange, ServerExchange, Verifier};
    let mut parts = data.split(|&b| b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
    let mut next = || parts.next().unwrap_or_default();
    let _ = Verifier::parse(&next());
    let verifier = Verifier::stand_in(&[1; 32], "fuzz", 4096);
    if let Ok((server, _first)) = ServerExchange::start(verifier, &next()) {
        let _ = server.finish(&next());
    }
    let Ok((mut client, _)) = ClientExchange::start("password") else { return };
    let server_first = next();
    // Real work only for cheap iteration counts: the cap itself is tested in unit tests.
    let cheap = server_first.split(',').find_map(|f| f.strip_prefix("i=")).and_then(|i| i.parse::<u32>().ok()).is_none_or(|i| i <= 64);
    if cheap && client.respond(&server_first).is_ok() {
        let _ = client.verify_final(&next());
    }
}

/// A type and a value from a hostile client through the parameter decoders: the first byte
/// picks one of the decoded types (or, past them, takes the next four bytes as any OID).
/// Whatever the bytes, what a reviewer is shown holds no control character and stays
/// within a bound of the value's size.
pub fn pg_parameters(data: &[u8]) {
    use crate::statement::parameters::{readable_value, types::decoded_types};
    use base64::Engine as _;
    let Some((&pick, rest)) = data.split_first() else { return };
    let known: Vec<u32> = decoded_types().collect();
    let (oid, value) = match known.get(usize::from(pick)) {
        Some(&oid) => (oid, rest),
        None if rest.len() >= 4 => (u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]), &rest[4..]),
        None => (0, rest),
    };
    let bound = 8 * value.len() + 8192;
    let binary = readable_value(&base64::engine::general_purpose::STANDARD.encode(value), 1, oid);
    let text = readable_value(&String::from_utf8_lossy(value), 0, oid);
    let null = readable_value("NULL", crate::statement::parameters::NULL_FORMAT, oid);
    for shown in [&binary, &text, &null] {
        assert!(!shown.chars().any(char::is_control), "a control character reaches the reviewer: {shown:?}");
        assert!(shown.len() <= bound, "{} bytes shown for {} sent", shown.len(), value.len());
    }
}

/// Arbitrary bytes as a recording file: the scanner (recovery, `ls`) and `verify` must
/// report, never fail.
pub fn recording(data: &[u8]) {
    thread_local! {
        static DIR: Option<std::path::PathBuf> = {
            let dir = std::env::temp_dir().join(format!("dbtape-fuzz-{}", std::process::id()));
            std::fs::create_dir_all(&dir).ok().map(|()| dir)
        };
    }
    let sid = "00000000-0000-4000-8000-000000000000";
    DIR.with(|dir| {
        let Some(dir) = dir else { return };
        let store = crate::recording::RecordingStore::new(dir);
        let path = store.recording_path(sid);
        if std::fs::write(&path, data).is_err() {
            return;
        }
        let _ = crate::recording::scan::scan_recording(&path, sid);
        let _ = crate::recording::verify::verify_recording(&store, sid, None);
        if let Ok(mut stream) = crate::recording::events::EventStream::open(&store, sid, false) {
            let _ = stream.for_each_event(|_| Ok(true));
        }
    });
    // The same bytes as one event line, as export reads it: its leading `ei`, and the
    // statement fields derived from it.
    let _ = crate::recording::format::leading_ei(data);
    let _ = crate::statement::enrich::Enricher::new().enriched(data);
}

/// Arbitrary bytes as a segment file, as a bucket could hand one to a review: listing,
/// reading, verifying and replaying what it claims to hold, and start-up recovery closing
/// it, must report, never fail or allocate without bound.
pub fn segment(data: &[u8]) {
    thread_local! {
        static DIR: Option<std::path::PathBuf> = {
            let dir = std::env::temp_dir().join(format!("dbtape-fuzz-segment-{}", std::process::id()));
            std::fs::create_dir_all(crate::recording::segment::segments_dir(&dir)).ok().map(|()| dir)
        };
    }
    DIR.with(|dir| {
        let Some(dir) = dir else { return };
        let path = crate::recording::segment::segments_dir(dir).join("segment-fuzz.dseg");
        if std::fs::write(&path, data).is_err() {
            return;
        }
        for _ in 0..2 {
            // A fresh store each time: its index must learn the file from scratch.
            let store = crate::recording::RecordingStore::new(dir);
            for sid in store.session_ids().unwrap_or_default().into_iter().take(16) {
                let _ = store.read_summary(&sid);
                let _ = store.read_manifest(&sid);
                let _ = crate::recording::verify::verify_recording(&store, &sid, None);
                if let Ok(mut stream) = crate::recording::events::EventStream::open(&store, &sid, false) {
                    let _ = stream.for_each_event(|_| Ok(true));
                }
            }
            let _ = store.segments();
            let _ = crate::recording::segment::close_crashed(dir);
        }
    });
}

/// Arbitrary text as `dbtape.toml`: every problem is a config error, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = crate::config::Config::parse(text, Path::new("/nonexistent/dbtape-fuzz/dbtape.toml"));
}

/// The shape with each placeholder made a literal of its kind again (`7`, `7.5`, `'v'`);
/// quoted identifiers, copied verbatim into shapes, are left as they are.
fn swap_placeholders(shape: &str) -> String {
    let mut out = String::with_capacity(shape.len());
    let mut in_identifier = false;
    let mut chars = shape.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' {
            in_identifier = !in_identifier;
        }
        let kind = if c == '?' && !in_identifier { chars.peek().copied() } else { None };
        match kind {
            Some('i') => out.push('7'),
            Some('f') => out.push_str("7.5"),
            Some('s') => out.push_str("'v'"),
            _ => {
                out.push(c);
                continue;
            }
        }
        chars.next();
    }
    out
}

/// The classification cache's key: two statements of one shape (the fuzzed one, and the
/// same with every literal swapped for another of its kind) must shape alike, parse alike and
/// get the same class, tables and fingerprint. Otherwise one could be cached as the other.
pub fn statement_shape(data: &[u8]) {
    use crate::statement::classify::classify_postgres;
    use crate::statement::shape::postgres_shape;
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let Some(shape) = postgres_shape(sql) else { return };
    let variant = swap_placeholders(&shape);
    assert_eq!(postgres_shape(&variant).as_deref(), Some(shape.as_str()), "{sql:?} and {variant:?}");
    let (original, swapped) = (classify_postgres(sql), classify_postgres(&variant));
    assert_eq!(original.unparsed, swapped.unparsed, "{sql:?} and {variant:?} parse differently");
    if !original.unparsed {
        assert_eq!(
            (original.classes, original.tables, original.fingerprint),
            (swapped.classes, swapped.tables, swapped.fingerprint),
            "{sql:?} and {variant:?}"
        );
    }
}

/// The PROXY protocol header parser, on bytes a stranger (or a broken balancer) sends first.
/// The first byte picks the version. A header found must lie within the bytes given, parse
/// the same from exactly its own bytes, and every shorter prefix of it must ask for more,
/// never past its end: the reader relies on that not to swallow the database protocol's
/// first bytes.
pub fn proxy_header(data: &[u8]) {
    use crate::server::proxy_protocol::{parse, Parsed, ProxyProtocol};
    let Some((&first, bytes)) = data.split_first() else { return };
    let version = if first & 1 == 0 { ProxyProtocol::V1 } else { ProxyProtocol::V2 };
    let Ok(Parsed::Done { header, len }) = parse(version, bytes) else { return };
    assert!(len <= bytes.len() && len <= crate::server::proxy_protocol::V2_MAX);
    assert_eq!(parse(version, &bytes[..len]), Ok(Parsed::Done { header, len }));
    for cut in 0..len {
        let prefix = parse(version, &bytes[..cut]);
        let asks = match prefix {
            Ok(Parsed::Need(need)) => need,
            _ => 0,
        };
        assert!(asks > cut && asks <= len, "a {cut}-byte prefix of a {len}-byte header gave {prefix:?}");
    }
}
