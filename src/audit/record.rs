//! The read side: an event as stored, with every field optional, so that players and
//! exporters accept recordings written by older or newer versions of dbtape.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct RecordedEvent {
    pub ei: u64,
    pub event: String,
    pub uid: String,
    pub code: String,
    pub time: String,
    pub cluster_name: String,
    pub user: String,
    pub sid: String,
    pub success: Option<bool>,
    pub error: String,
    pub message: String,
    pub db_service: String,
    pub db_protocol: String,
    pub db_uri: String,
    pub db_name: String,
    pub db_user: String,
    pub db_query: Option<String>,
    pub db_query_parameters: Vec<String>,
    pub affected_records: u64,
    pub query_ei: Option<u64>,
    pub session_start: String,
    pub session_stop: String,
    pub statement_name: String,
    pub portal_name: String,
    pub query: String,
    pub parameters: Vec<String>,
    pub parameter_formats: Vec<i16>,
    pub parameter_types: Vec<u32>,
    pub function_oid: Option<u32>,
    pub function_args: Vec<String>,
    pub payload: String,
    pub status_code: Option<u32>,
    pub method: String,
    pub path: String,
    pub raw_query: String,
    pub target: String,
    pub body: Option<serde_json::Value>,
    pub lost_events: Option<u64>,
    #[serde(rename = "addr.remote")]
    pub addr_remote: String,
    #[serde(default)]
    pub lost_from: Option<String>,
    #[serde(default)]
    pub lost_until: Option<String>,
}

impl RecordedEvent {
    /// Milliseconds since the epoch, if `time` parses.
    pub fn time_ms(&self) -> Option<i64> {
        chrono::DateTime::parse_from_rfc3339(&self.time).ok().map(|t| t.timestamp_millis())
    }
}
