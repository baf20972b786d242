//! The same events as OCSF 1.3 Datastore Activity rows (class 6005), for Amazon Security
//! Lake's custom sources: a session's start is a Connect, each statement a Query (a Read,
//! Write, Update, Create or Delete where that is exact: a pgaudit READ, or the DynamoDB
//! operation), its end an Other; a refused login is a Connect that failed, and so is a
//! statement whose result was an error. What OCSF has no field for stays under `unmapped`
//! (a JSON string: Parquet has no free-form object).

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema};
use serde_json::{json, Map, Value};

use super::LakeError;

pub const OCSF_VERSION: &str = "1.3.0";
const CLASS_UID: i64 = 6005;

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn int(name: &str) -> Field {
    Field::new(name, DataType::Int32, true)
}

fn object(name: &str, fields: Vec<Field>) -> Field {
    Field::new(name, DataType::Struct(Fields::from(fields)), true)
}

/// The columns written: the class's fields dbtape fills, nested as OCSF nests them.
pub fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("time", DataType::Int64, false),
        int("activity_id"),
        text("activity_name"),
        int("category_uid"),
        text("category_name"),
        int("class_uid"),
        text("class_name"),
        Field::new("type_uid", DataType::Int64, true),
        text("type_name"),
        int("severity_id"),
        text("severity"),
        int("status_id"),
        text("status"),
        text("status_detail"),
        int("type_id"),
        text("type"),
        object(
            "metadata",
            vec![
                text("version"),
                text("uid"),
                text("log_name"),
                text("event_code"),
                object("product", vec![text("name"), text("vendor_name"), text("version")]),
            ],
        ),
        object("actor", vec![object("user", vec![text("name"), text("uid")]), object("session", vec![text("uid")])]),
        object("src_endpoint", vec![text("ip"), int("port"), text("uid")]),
        object("dst_endpoint", vec![text("hostname"), int("port"), text("svc_name")]),
        object("database", vec![text("name"), text("uid"), text("type"), int("type_id")]),
        object("query_info", vec![text("query_string"), text("uid")]),
        text("unmapped"),
    ]))
}

/// `host` and `port` of an address such as `10.0.0.7:51234` or `[::1]:5432`.
fn host_port(addr: &str) -> (String, Option<i64>) {
    let addr = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let addr = addr.split('/').next().unwrap_or_default();
    let addr = addr.rsplit_once('@').map_or(addr, |(_, host)| host);
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => {
            (host.trim_start_matches('[').trim_end_matches(']').to_string(), port.parse().ok())
        }
        _ => (addr.to_string(), None),
    }
}

/// The activity for a DynamoDB operation, where its name says exactly what it does.
fn dynamodb_activity(target: &str) -> (i64, &'static str) {
    let operation = target.rsplit('.').next().unwrap_or_default();
    match operation {
        "GetItem" | "BatchGetItem" | "Query" | "Scan" | "TransactGetItems" => (1, "Read"),
        "PutItem" | "BatchWriteItem" => (5, "Write"),
        "UpdateItem" | "UpdateTable" => (2, "Update"),
        "DeleteItem" | "DeleteTable" => (7, "Delete"),
        "CreateTable" => (6, "Create"),
        "ListTables" => (8, "List"),
        _ => (4, "Query"),
    }
}

/// The OCSF row for an exported event, or `None` for one that is not an activity of its
/// own (a result, a Bind, an Execute: their statement is already a row).
pub fn row(event: &Value, server_id: &str) -> Option<Value> {
    let text_of = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or_default();
    let kind = text_of("event");
    let statement = [text_of("db_query"), text_of("query")].into_iter().find(|s| !s.is_empty()).unwrap_or_default().to_string();
    let (activity_id, activity_name, query) = match kind {
        "db.session.start" => (3, "Connect", None),
        "db.session.end" => (99, "Other", None),
        "db.session.query" | "db.session.query.failed" | "db.session.postgres.statements.parse" => {
            let read = event.get("db_statement_class").and_then(Value::as_str) == Some("READ");
            if read {
                (1, "Read", Some(statement))
            } else {
                (4, "Query", Some(statement))
            }
        }
        "db.session.dynamodb.request" => {
            let (id, name) = dynamodb_activity(text_of("target"));
            let body = event.get("body").map(Value::to_string).unwrap_or_default();
            (id, name, Some(format!("{} {body}", text_of("target")).trim_end().to_string()))
        }
        _ => return None,
    };
    let failed = event.get("success") == Some(&Value::Bool(false)) || text_of("code").ends_with('W') || text_of("code").ends_with('E');
    let protocol = text_of("db_protocol");
    let (db_type, db_type_id) = match protocol {
        "postgres" => ("PostgreSQL", 1),
        "mongodb" => ("MongoDB", 6),
        "dynamodb" => ("DynamoDB", 6),
        _ => ("Other", 99),
    };
    let time = event
        .get("time")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())?;
    let sid = text_of("sid");
    let mut src = Map::new();
    match event.get("addr.remote").and_then(Value::as_str).filter(|a| !a.is_empty()) {
        Some(addr) => {
            let (ip, port) = host_port(addr);
            src.insert("ip".into(), json!(ip));
            if let Some(port) = port {
                src.insert("port".into(), json!(port));
            }
        }
        // Only a session's start and end carry the client's address; a statement names its
        // session, whose Connect row has it.
        None => {
            src.insert("uid".into(), json!(sid));
        }
    }
    let (db_host, db_port) = host_port(text_of("db_uri"));
    let db_name = [text_of("db_name"), text_of("db_service")].into_iter().find(|s| !s.is_empty()).unwrap_or_default();
    let mut unmapped = Map::new();
    for key in [
        "sid",
        "event",
        "code",
        "cluster_name",
        "db_service",
        "db_user",
        "db_statement_class",
        "db_query_fingerprint",
        "aws_role_arn",
        "error",
    ] {
        if let Some(value) = event.get(key).filter(|v| v.as_str() != Some("")) {
            unmapped.insert(key.into(), value.clone());
        }
    }
    for key in ["ei", "db_tables", "affected_records"] {
        if let Some(value) = event.get(key) {
            unmapped.insert(key.into(), value.clone());
        }
    }
    unmapped.insert("server_id".into(), json!(server_id));
    let mut row = json!({
        "time": time,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "category_uid": 6,
        "category_name": "Application Activity",
        "class_uid": CLASS_UID,
        "class_name": "Datastore Activity",
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": format!("Datastore Activity: {activity_name}"),
        "severity_id": 1,
        "severity": "Informational",
        "status_id": if failed { 2 } else { 1 },
        "status": if failed { "Failure" } else { "Success" },
        "type_id": 1,
        "type": "Database",
        "metadata": {
            "version": OCSF_VERSION,
            "uid": text_of("uid"),
            "log_name": kind,
            "event_code": text_of("code"),
            "product": {"name": "dbtape", "vendor_name": "dbtape", "version": env!("CARGO_PKG_VERSION")},
        },
        "actor": {"user": {"name": text_of("user")}, "session": {"uid": sid}},
        "src_endpoint": Value::Object(src),
        "dst_endpoint": {"hostname": db_host, "svc_name": text_of("db_service")},
        "database": {"name": db_name, "uid": text_of("db_service"), "type": db_type, "type_id": db_type_id},
        "unmapped": Value::Object(unmapped).to_string(),
    });
    if let Some(port) = db_port {
        row["dst_endpoint"]["port"] = json!(port);
    }
    if !text_of("aws_role_arn").is_empty() {
        row["actor"]["user"]["uid"] = json!(text_of("aws_role_arn"));
    }
    if failed && !text_of("error").is_empty() {
        row["status_detail"] = json!(text_of("error"));
    }
    if let Some(query) = query {
        // The query's own id (OCSF wants a uid or a name): where it is recorded.
        let ei = event.get("ei").and_then(Value::as_u64).unwrap_or_default();
        row["query_info"] = json!({ "query_string": query, "uid": format!("{sid}/{ei}") });
    }
    Some(row)
}

/// The rows for a day's events. A statement whose result (in the same events) failed is a
/// failed activity, with the server's error as its `status_detail`.
pub fn rows(events: &[Value], server_id: &str) -> Vec<Value> {
    let failed: std::collections::HashMap<(&str, u64), &str> = events
        .iter()
        .filter(|e| e.get("event").and_then(Value::as_str) == Some("db.session.result") && e.get("success") == Some(&Value::Bool(false)))
        .filter_map(|e| {
            let sid = e.get("sid")?.as_str()?;
            Some(((sid, e.get("query_ei")?.as_u64()?), e.get("error").and_then(Value::as_str).unwrap_or_default()))
        })
        .collect();
    events
        .iter()
        .filter_map(|event| {
            let mut row = row(event, server_id)?;
            let at =
                (event.get("sid").and_then(Value::as_str).unwrap_or_default(), event.get("ei").and_then(Value::as_u64).unwrap_or(u64::MAX));
            if let Some(error) = failed.get(&at) {
                row["status_id"] = json!(2);
                row["status"] = json!("Failure");
                if !error.is_empty() {
                    row["status_detail"] = json!(error);
                }
            }
            Some(row)
        })
        .collect()
}

/// The rows as one Parquet object (zstd, sorted by time), Security Lake's layout for a class.
pub fn parquet_object(rows: &mut [Value]) -> Result<Vec<u8>, LakeError> {
    let bad = |e: &dyn std::fmt::Display| LakeError::Parquet(format!("ocsf: {e}"));
    rows.sort_by_key(|r| r.get("time").and_then(Value::as_i64).unwrap_or_default());
    let mut decoder = arrow_json::ReaderBuilder::new(schema()).build_decoder().map_err(|e| bad(&e))?;
    decoder.serialize(rows).map_err(|e| bad(&e))?;
    let batch = decoder.flush().map_err(|e| bad(&e))?.ok_or_else(|| LakeError::Parquet("ocsf: no rows".into()))?;
    super::table::write_parquet(&batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_connects_and_refusals_map_to_their_activities() {
        let start = json!({"event": "db.session.start", "code": "TDB00I", "time": "2026-12-04T01:02:03.004Z", "uid": "u", "sid": "s",
            "user": "alice", "db_protocol": "postgres", "db_uri": "db.internal:5432", "db_service": "pg", "success": true, "addr.remote": "10.1.2.3:50000"});
        let row = row(&start, "proxy-1").unwrap();
        assert_eq!(
            (row["activity_id"].as_i64(), row["type_uid"].as_i64(), row["time"].as_i64()),
            (Some(3), Some(600503), Some(1_796_346_123_004))
        );
        assert_eq!(row["src_endpoint"], json!({"ip": "10.1.2.3", "port": 50000}));
        assert_eq!(row["dst_endpoint"], json!({"hostname": "db.internal", "port": 5432, "svc_name": "pg"}));
        let refused = json!({"event": "db.session.start", "code": "TDB00W", "time": "2026-12-04T01:02:03.004Z", "sid": "s", "success": false,
            "error": "no such user", "db_protocol": "postgres"});
        assert_eq!((row_status(&refused), refused_detail(&refused)), (2, "no such user".to_string()));
        let read = json!({"event": "db.session.query", "time": "2026-12-04T01:02:03.004Z", "sid": "s", "db_protocol": "postgres",
            "db_query": "SELECT 1", "db_statement_class": "READ", "ei": 3});
        let read_row = super::row(&read, "p").unwrap();
        assert_eq!((read_row["activity_id"].as_i64(), read_row["query_info"]["query_string"].as_str()), (Some(1), Some("SELECT 1")));
        assert!(read_row["unmapped"].as_str().unwrap().contains("\"ei\":3"));
        let put = json!({"event": "db.session.dynamodb.request", "time": "2026-12-04T01:02:03.004Z", "sid": "s", "db_protocol": "dynamodb",
            "target": "DynamoDB_20120810.PutItem", "body": {"TableName": "t"}});
        assert_eq!(super::row(&put, "p").unwrap()["activity_id"], 5);
        assert!(super::row(&json!({"event": "db.session.result", "time": "2026-12-04T01:02:03.004Z"}), "p").is_none());
    }

    fn row_status(event: &Value) -> i64 {
        row(event, "p").unwrap()["status_id"].as_i64().unwrap()
    }

    fn refused_detail(event: &Value) -> String {
        row(event, "p").unwrap()["status_detail"].as_str().unwrap().to_string()
    }

    #[test]
    fn rows_encode_to_parquet() {
        let event = json!({"event": "db.session.query", "time": "2026-12-04T01:02:03.004Z", "sid": "s", "db_protocol": "mongodb", "db_query": "OpMsg(...)"});
        let mut rows = vec![row(&event, "p").unwrap()];
        assert!(!parquet_object(&mut rows).unwrap().is_empty());
    }
}
