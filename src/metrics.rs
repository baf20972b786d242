//! Counters for the admin listener's `/metrics` (Prometheus text format). One `Metrics` per
//! process, owned by the recorder and handed to whoever counts: plain relaxed atomics, so
//! counting costs a session nothing it would notice.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::audit::Protocol;

/// Upper bounds of the recording write latency buckets, in seconds.
const LATENCY_BOUNDS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0];

#[derive(Default)]
struct PerProtocol {
    sessions: AtomicU64,
    active: AtomicI64,
    queries: AtomicU64,
    failed_queries: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    protocols: [PerProtocol; 3],
    refused_low_disk: AtomicU64,
    events_written: AtomicU64,
    bytes_written: AtomicU64,
    write_failures: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BOUNDS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    upload_backlog: AtomicU64,
    uploads: AtomicU64,
    upload_failures: AtomicU64,
    bytes_uploaded: AtomicU64,
}

fn index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Postgres => 0,
        Protocol::MongoDb => 1,
        // The console's access recordings never pass through the proxy's metrics.
        Protocol::DynamoDb | Protocol::Review | Protocol::Proxy => 2,
    }
}

impl Metrics {
    pub fn session_opened(&self, protocol: Protocol) {
        let p = &self.protocols[index(protocol)];
        p.sessions.fetch_add(1, Relaxed);
        p.active.fetch_add(1, Relaxed);
    }

    pub fn session_sealed(&self, protocol: Protocol) {
        self.protocols[index(protocol)].active.fetch_sub(1, Relaxed);
    }

    pub fn queries(&self, protocol: Protocol, queries: u64, failed: u64) {
        let p = &self.protocols[index(protocol)];
        if queries > 0 {
            p.queries.fetch_add(queries, Relaxed);
        }
        if failed > 0 {
            p.failed_queries.fetch_add(failed, Relaxed);
        }
    }

    pub fn refused_low_disk(&self) {
        self.refused_low_disk.fetch_add(1, Relaxed);
    }

    pub fn written(&self, events: u64, bytes: u64) {
        self.events_written.fetch_add(events, Relaxed);
        self.bytes_written.fetch_add(bytes, Relaxed);
    }

    pub fn write_failed(&self) {
        self.write_failures.fetch_add(1, Relaxed);
    }

    /// One group commit of the writer: compression, writes and fsync.
    pub fn write_latency(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(i) = LATENCY_BOUNDS.iter().position(|b| seconds <= *b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub fn upload_backlog(&self, pending: usize) {
        self.upload_backlog.store(pending as u64, Relaxed);
    }

    pub fn uploaded(&self, bytes: u64) {
        self.uploads.fetch_add(1, Relaxed);
        self.bytes_uploaded.fetch_add(bytes, Relaxed);
    }

    pub fn upload_failed(&self) {
        self.upload_failures.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let protocols = [Protocol::Postgres, Protocol::MongoDb, Protocol::DynamoDb];
        let mut family = |name: &str, kind: &str, help: &str, read: &dyn Fn(&PerProtocol) -> i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for protocol in protocols {
                let _ = writeln!(out, "{name}{{protocol=\"{protocol}\"}} {}", read(&self.protocols[index(protocol)]));
            }
        };
        family("dbtape_sessions_total", "counter", "Sessions opened (and recorded).", &|p| p.sessions.load(Relaxed) as i64);
        family("dbtape_sessions_active", "gauge", "Sessions whose recording is still open.", &|p| p.active.load(Relaxed));
        family("dbtape_queries_total", "counter", "Queries and commands recorded.", &|p| p.queries.load(Relaxed) as i64);
        family("dbtape_failed_queries_total", "counter", "Recorded queries that failed or were denied.", &|p| {
            p.failed_queries.load(Relaxed) as i64
        });
        let mut single = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        single(
            "dbtape_sessions_refused_low_disk_total",
            "counter",
            "Sessions refused because the recording disk was under recording.min_free_bytes.",
            self.refused_low_disk.load(Relaxed),
        );
        single("dbtape_recorded_events_total", "counter", "Events written to recordings.", self.events_written.load(Relaxed));
        single("dbtape_recorded_bytes_total", "counter", "Bytes written to recordings.", self.bytes_written.load(Relaxed));
        single(
            "dbtape_recording_write_failures_total",
            "counter",
            "Recording writes or fsyncs that failed.",
            self.write_failures.load(Relaxed),
        );
        single("dbtape_upload_backlog", "gauge", "Sealed recordings waiting for their upload to S3.", self.upload_backlog.load(Relaxed));
        single("dbtape_uploads_total", "counter", "Recordings whose upload S3 confirmed.", self.uploads.load(Relaxed));
        single(
            "dbtape_upload_failures_total",
            "counter",
            "Upload attempts that failed (retried later).",
            self.upload_failures.load(Relaxed),
        );
        single("dbtape_uploaded_bytes_total", "counter", "Bytes of recordings uploaded.", self.bytes_uploaded.load(Relaxed));
        let name = "dbtape_recording_write_seconds";
        let _ = writeln!(out, "# HELP {name} Duration of the writer's group commits (compress, write, fsync).\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BOUNDS.iter().zip(&self.latency_buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.latency_sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_prometheus_text_format() {
        let m = Metrics::default();
        m.session_opened(Protocol::MongoDb);
        m.session_opened(Protocol::MongoDb);
        m.session_sealed(Protocol::MongoDb);
        m.queries(Protocol::MongoDb, 5, 1);
        m.write_latency(Duration::from_micros(700));
        m.write_latency(Duration::from_secs(5));
        let text = m.render();
        assert!(text.contains("dbtape_sessions_total{protocol=\"mongodb\"} 2\n"), "{text}");
        assert!(text.contains("dbtape_sessions_active{protocol=\"mongodb\"} 1\n"), "{text}");
        assert!(text.contains("dbtape_queries_total{protocol=\"mongodb\"} 5\n"), "{text}");
        assert!(text.contains("dbtape_failed_queries_total{protocol=\"mongodb\"} 1\n"), "{text}");
        assert!(text.contains("dbtape_recording_write_seconds_bucket{le=\"0.0005\"} 0\n"), "{text}");
        assert!(text.contains("dbtape_recording_write_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("dbtape_recording_write_seconds_bucket{le=\"2\"} 1\n"), "{text}");
        assert!(text.contains("dbtape_recording_write_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("dbtape_recording_write_seconds_count 2\n"), "{text}");
    }
}
