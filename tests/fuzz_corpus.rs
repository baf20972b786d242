//! The smoke pass of the fuzz targets that every test run makes: each committed corpus input
//! (seeds, and whatever `scripts/fuzz` added or found) goes through its target's entry
//! point on the stable toolchain. A crash found once stays a regression test.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} crashes", path.display());
        inputs += 1;
    }
    assert!(inputs > 0, "{target} has no corpus");
}

#[test]
fn postgres_messages_corpus() {
    replay("postgres_messages", dbtape::fuzzing::postgres_messages);
}

#[test]
fn postgres_redaction_corpus() {
    replay("postgres_redaction", dbtape::fuzzing::postgres_redaction);
}

#[test]
fn scram_corpus() {
    replay("scram", dbtape::fuzzing::scram);
}

#[test]
fn recording_corpus() {
    replay("recording", dbtape::fuzzing::recording);
    remove_scratch("dbtape-fuzz");
}

/// The folder a target writes its inputs to, named by the process, goes with the test.
fn remove_scratch(prefix: &str) {
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{prefix}-{}", std::process::id())));
}

#[test]
fn segment_corpus() {
    replay("segment", dbtape::fuzzing::segment);
    remove_scratch("dbtape-fuzz-segment");
}

#[test]
fn config_corpus() {
    replay("config", dbtape::fuzzing::config);
}

#[test]
fn dynamodb_request_corpus() {
    replay("dynamodb_request", dbtape::fuzzing::dynamodb_request);
}

#[test]
fn http1_message_corpus() {
    replay("http1_message", dbtape::fuzzing::http1_message);
}

#[test]
fn mongodb_message_corpus() {
    replay("mongodb_message", dbtape::fuzzing::mongodb_message);
}

// A throwaway test CA and server key, made for fuzzing alone.
static TLS_SETUP: std::sync::LazyLock<dbtape::fuzzing::TlsStreamSetup> = std::sync::LazyLock::new(|| {
    dbtape::fuzzing::TlsStreamSetup::from_pem(
        include_bytes!("../fuzz/tls/ca.crt"),
        include_bytes!("../fuzz/tls/server.crt"),
        include_bytes!("../fuzz/tls/server.key"),
    )
    .unwrap()
});

#[test]
fn tls_stream_corpus() {
    replay("tls_stream", |data| dbtape::fuzzing::tls_stream(&TLS_SETUP, data));
}

#[test]
fn pg_parameters_corpus() {
    replay("pg_parameters", dbtape::fuzzing::pg_parameters);
}

#[test]
fn statement_shape_corpus() {
    replay("statement_shape", dbtape::fuzzing::statement_shape);
}

#[test]
fn proxy_header_corpus() {
    replay("proxy_header", dbtape::fuzzing::proxy_header);
}
