//! `dbtape lake verify`: the signed recordings are the authority. Every event they hold must
//! be in the lake exactly once, with the same content; every row of the lake must be an
//! event they hold.

use std::collections::HashMap;

use serde_json::Value;

use super::LakeError;
use crate::recording::events::EventStream;
use crate::recording::RecordingStore;
use crate::replay::export::{matching_sessions, ExportFilter};

#[derive(Debug, Default, serde::Serialize)]
pub struct LakeReport {
    pub objects: u64,
    pub rows: u64,
    pub events: u64,
    /// `sid/ei` of events the lake lacks.
    pub missing: Vec<String>,
    /// `sid/ei` of events the lake holds more than once.
    pub duplicated: Vec<String>,
    /// `sid/ei` whose row differs from the recorded event.
    pub different: Vec<String>,
    /// `sid/ei` of rows no recording here holds.
    pub unknown: Vec<String>,
}

impl LakeReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.duplicated.is_empty() && self.different.is_empty() && self.unknown.is_empty()
    }
}

/// Every row of every object under `<prefix>events/` (only `host`'s objects, if given):
/// `(sid, ei) → [event_json]`.
pub async fn read_lake(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    host: Option<&str>,
) -> Result<(u64, HashMap<(String, u64), Vec<String>>), LakeError> {
    let mut rows: HashMap<(String, u64), Vec<String>> = HashMap::new();
    let mut objects = 0;
    let mut pages = client.list_objects_v2().bucket(bucket).prefix(format!("{prefix}events/")).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| LakeError::Upload(crate::s3::request_error("ListObjectsV2", prefix, &e).to_string()))?;
        for object in page.contents() {
            let Some(key) = object.key() else { continue };
            let name = key.rsplit('/').next().unwrap_or_default();
            if !key.ends_with(".parquet") || host.is_some_and(|host| !name.starts_with(&format!("{host}-"))) {
                continue;
            }
            let body = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| LakeError::Upload(crate::s3::request_error("GetObject", key, &e).to_string()))?;
            let bytes = body.body.collect().await.map_err(|e| LakeError::Upload(format!("{key}: {e}")))?.into_bytes();
            objects += 1;
            for (sid, ei, json) in super::table::read_rows(bytes.to_vec()).map_err(|e| LakeError::Parquet(format!("{key}: {e}")))? {
                rows.entry((sid, ei)).or_default().push(json);
            }
        }
    }
    Ok((objects, rows))
}

/// Compares the lake's rows with the recordings (events at or after `since_ms` and at or
/// before `until_ms`).
pub fn compare(
    store: &RecordingStore,
    mut rows: HashMap<(String, u64), Vec<String>>,
    objects: u64,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
) -> Result<LakeReport, LakeError> {
    let in_range = |json: &str| {
        crate::recording::events::peek_time_ms(json.as_bytes())
            .is_none_or(|t| since_ms.is_none_or(|s| t >= s) && until_ms.is_none_or(|u| t <= u))
    };
    let mut report = LakeReport { objects, rows: rows.values().map(|v| v.len() as u64).sum(), ..LakeReport::default() };
    let filter = ExportFilter { since_ms, until_ms, raw: true, ..ExportFilter::default() };
    let mut warnings = Vec::new();
    for session in matching_sessions(store, &filter, &mut warnings).map_err(|e| LakeError::Recordings(e.to_string()))? {
        let sid = session.sid.clone();
        let mut stream = EventStream::open(store, &sid, false).map_err(|e| LakeError::Recordings(format!("{sid}: {e}")))?;
        stream
            .for_each_event(|line| {
                let Ok(recorded) = serde_json::from_slice::<Value>(line) else { return Ok(true) };
                if !in_range(std::str::from_utf8(line).unwrap_or_default()) {
                    return Ok(true);
                }
                let ei = recorded.get("ei").and_then(Value::as_u64).unwrap_or(u64::MAX);
                report.events += 1;
                let name = format!("{sid}/{ei}");
                match rows.remove(&(sid.clone(), ei)) {
                    None => report.missing.push(name),
                    Some(copies) => {
                        if copies.len() > 1 {
                            report.duplicated.push(name.clone());
                        }
                        if copies.iter().any(|json| !holds(json, &recorded)) {
                            report.different.push(name);
                        }
                    }
                }
                Ok(true)
            })
            .map_err(|e| LakeError::Recordings(format!("{sid}: {e}")))?;
    }
    for ((sid, ei), copies) in rows {
        if copies.iter().any(|json| in_range(json)) {
            report.unknown.push(format!("{sid}/{ei}"));
        }
    }
    report.unknown.sort();
    Ok(report)
}

/// Whether a row's event holds every field of the recorded event, unchanged (the row adds
/// the fields `export` derives).
fn holds(row_json: &str, recorded: &Value) -> bool {
    let Ok(row) = serde_json::from_str::<Value>(row_json) else { return false };
    match recorded.as_object() {
        Some(fields) => fields.iter().all(|(key, value)| row.get(key) == Some(value)),
        None => false,
    }
}
