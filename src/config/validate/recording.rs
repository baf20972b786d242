//! `[recording]`.

use std::path::Path;
use std::time::Duration;

use super::super::model::{RawConfig, RecordingSection};
use super::super::{FsyncPolicy, RecordingMode};
use super::{resolve, Issues};

pub(super) fn check_recording(raw: &RawConfig, base: &Path, issues: &mut Issues<'_>) -> RecordingSection {
    let r = &raw.recording;
    let mode = match r.mode.as_str() {
        "strict" => RecordingMode::Strict,
        "best_effort" => RecordingMode::BestEffort,
        other => {
            issues.add(
                "recording.mode",
                format!("{other:?} is not a mode"),
                "use \"strict\" (the default: a recording failure stops the session) or \"best_effort\"",
            );
            RecordingMode::Strict
        }
    };
    let fsync = match r.fsync.as_str() {
        "always" => FsyncPolicy::Always,
        "batch" => FsyncPolicy::Batch,
        "never" => FsyncPolicy::Never,
        other => {
            issues.add(
                "recording.fsync",
                format!("{other:?} is not an fsync policy"),
                "use \"always\", \"batch\" (the default) or \"never\"",
            );
            FsyncPolicy::Batch
        }
    };
    let batch_interval = bounded_duration(
        issues,
        "recording.batch_interval",
        &r.batch_interval,
        (Duration::from_millis(1), Duration::from_secs(60)),
        Duration::from_millis(200),
        ("use a duration between 1ms and 60s, e.g. \"200ms\"", "write a duration such as \"200ms\" or \"1s\""),
    );
    if !(4096..=crate::config::MAX_FRAME_TARGET_BYTES).contains(&r.frame_target_bytes) {
        issues.add(
            "recording.frame_target_bytes",
            format!("{} is out of range", r.frame_target_bytes),
            "use a size between 4096 and 33554432 bytes; the default is 262144",
        );
    }
    if !(1024..=crate::config::MAX_QUERY_BYTES_LIMIT).contains(&r.max_query_bytes) {
        issues.add(
            "recording.max_query_bytes",
            format!("{} is out of range", r.max_query_bytes),
            "use a size between 1024 and 2097152 bytes; the default is 1048576",
        );
    }
    if r.max_backlog_bytes < 1024 * 1024 {
        issues.add(
            "recording.max_backlog_bytes",
            format!("{} is too small", r.max_backlog_bytes),
            "use at least 1048576 bytes; the default is 268435456 (256 MiB)",
        );
    }
    for (i, pattern) in r.redact_patterns.iter().enumerate() {
        if let Err(e) = crate::config::redact_pattern(pattern) {
            issues.add(
                format!("recording.redact_patterns[{i}]"),
                format!("is not a regular expression: {e}"),
                "fix the pattern (Rust regex syntax) or remove it",
            );
        }
    }
    if !(1..=19).contains(&r.zstd_level) {
        issues.add("recording.zstd_level", format!("{} is out of range", r.zstd_level), "use a zstd level from 1 to 19; the default is 1");
    }
    for (i, key) in r.trusted_keys.iter().enumerate() {
        let path = resolve(base, key);
        if let Err(e) = crate::signing::load_public_key(&path) {
            issues.add(
                format!("recording.trusted_keys[{i}]"),
                format!("{e}"),
                "name a public key file another instance wrote (its signing_key with .pub appended, also published as keys/<server_id>.pub in the bucket), or remove the entry",
            );
        }
    }
    let segments = check_segments(&r.segments, issues);
    if r.dir.as_os_str().is_empty() {
        issues.add("recording.dir", "is empty", "name the folder recordings are written to, e.g. \"recordings\"");
    }
    RecordingSection {
        dir: resolve(base, &r.dir),
        mode,
        fsync,
        batch_interval,
        signing_key: resolve(base, &r.signing_key),
        frame_target_bytes: r.frame_target_bytes,
        zstd_level: r.zstd_level,
        max_query_bytes: r.max_query_bytes,
        redact_patterns: r.redact_patterns.clone(),
        max_backlog_bytes: r.max_backlog_bytes,
        min_free_bytes: r.min_free_bytes,
        trusted_keys: r.trusted_keys.iter().map(|k| resolve(base, k)).collect(),
        segments,
    }
}

fn check_segments(s: &super::super::model::RawSegments, issues: &mut Issues<'_>) -> Option<crate::config::SegmentSettings> {
    if !(1024..=1024 * 1024).contains(&s.max_session_bytes) {
        issues.add(
            "recording.segments.max_session_bytes",
            format!("{} is out of range", s.max_session_bytes),
            "use a size between 1024 and 1048576 bytes; the default is 65536",
        );
    }
    if !(64 * 1024..=1024 * 1024 * 1024).contains(&s.max_segment_bytes) {
        issues.add(
            "recording.segments.max_segment_bytes",
            format!("{} is out of range", s.max_segment_bytes),
            "use a size between 65536 and 1073741824 bytes; the default is 16777216 (16 MiB)",
        );
    }
    let max_age = bounded_duration(
        issues,
        "recording.segments.max_age",
        &s.max_age,
        (Duration::from_secs(1), Duration::from_secs(24 * 3600)),
        Duration::from_secs(60),
        ("use a duration between 1s and 24h; the default is \"1m\"", "write a duration such as \"1m\" or \"30s\""),
    );
    s.enabled.then_some(crate::config::SegmentSettings {
        max_session_bytes: s.max_session_bytes,
        max_segment_bytes: s.max_segment_bytes,
        max_age,
    })
}

/// A duration setting within `range`; out of range or unreadable, an issue naming `key`
/// (with `fixes`: what to write when out of range, and when unreadable) and `default`.
fn bounded_duration(
    issues: &mut Issues<'_>,
    key: &str,
    text: &str,
    range: (Duration, Duration),
    default: Duration,
    fixes: (&str, &str),
) -> Duration {
    match humantime::parse_duration(text) {
        Ok(d) if d >= range.0 && d <= range.1 => d,
        Ok(_) => {
            issues.add(key.to_string(), format!("{text:?} is out of range"), fixes.0);
            default
        }
        Err(e) => {
            issues.add(key.to_string(), format!("{text:?}: {e}"), fixes.1);
            default
        }
    }
}
