//! Events against hand-written examples of Teleport's codes and field names, and against
//! the JSON Schemas in schemas/.

mod common;

use std::collections::BTreeMap;

use common::{assert_schema_valid, block_on, read_lines, recorder};
use dbtape::audit::{
    AuditEvent, ConnectionMeta, DatabaseMeta, EventBody, EventType, Protocol, ServerMeta, SessionContext, Status, UserMeta,
};
use dbtape::recording::AuditPort;
use serde_json::json;

const UID: &str = "0b7e6f7c-1a2b-4c3d-8e9f-0123456789ab";
const SID: &str = "5d2f8a90-3c4b-4d5e-9f60-abcdef012345";
const TIME_MS: i64 = 1_735_787_045_678; // 2025-01-02T03:04:05.678Z

fn ctx(protocol: Protocol) -> SessionContext {
    SessionContext {
        sid: SID.into(),
        cluster_name: "c1".into(),
        user: UserMeta { user: "alice".into(), aws_role_arn: String::new() },
        database: DatabaseMeta {
            service: "pg1".into(),
            protocol,
            uri: "pg.example:5432".into(),
            name: "app".into(),
            user: "reader".into(),
            labels: BTreeMap::new(),
            aws_region: String::new(),
            db_type: "self-hosted".into(),
        },
        server: ServerMeta {
            server_id: "host-uuid".into(),
            hostname: "proxy-1".into(),
            addr: "10.0.0.5:5432".into(),
            version: "0.1.0".into(),
        },
        connection: ConnectionMeta { local_addr: "10.0.0.5:5432".into(), remote_addr: "10.0.0.9:51000".into(), user_agent: "psql".into() },
    }
}

fn render(ctx: &SessionContext, index: u64, body: &EventBody) -> serde_json::Value {
    let event = AuditEvent { index, uid: uuid::Uuid::parse_str(UID).unwrap(), time_ms: TIME_MS, context: ctx, body, notes: None };
    let line = serde_json::to_vec(&event).unwrap();
    assert_schema_valid(&line)
}

/// The fields every Postgres event shares in these examples.
fn base(ei: u64, event: &str, code: &str) -> serde_json::Map<String, serde_json::Value> {
    let value = json!({
        "ei": ei, "event": event, "uid": UID, "code": code, "time": "2025-01-02T03:04:05.678Z",
        "cluster_name": "c1", "user": "alice", "sid": SID, "db_service": "pg1", "db_protocol": "postgres",
        "db_uri": "pg.example:5432", "db_name": "app", "db_user": "reader", "db_type": "self-hosted"
    });
    match value {
        serde_json::Value::Object(map) => map,
        _ => unreachable!(),
    }
}

fn with(mut map: serde_json::Map<String, serde_json::Value>, extra: serde_json::Value) -> serde_json::Value {
    if let serde_json::Value::Object(extra) = extra {
        map.extend(extra);
    }
    serde_json::Value::Object(map)
}

#[test]
fn query_event_matches_the_teleport_example() {
    // events-and-recordings.md §2 gives this shape for db.session.query.
    let got = render(&ctx(Protocol::Postgres), 3, &EventBody::Query { query: "SELECT 1;".into(), parameters: vec![], db_name: None });
    let expected = with(base(3, "db.session.query", "TDB02I"), json!({"db_query": "SELECT 1;", "success": true}));
    assert_eq!(got, expected);
}

#[test]
fn session_start_and_denial() {
    let c = ctx(Protocol::Postgres);
    let got = render(&c, 0, &EventBody::SessionStart { status: Status::ok(), postgres_pid: Some(4242), upstream_reused: None });
    let server = json!({
        "namespace": "default", "server_id": "host-uuid", "server_hostname": "proxy-1", "server_addr": "10.0.0.5:5432",
        "server_version": "0.1.0", "addr.local": "10.0.0.5:5432", "addr.remote": "10.0.0.9:51000", "user_agent": "psql",
    });
    let mut expected = with(base(0, "db.session.start", "TDB00I"), server.clone());
    expected["success"] = json!(true);
    expected["postgres_pid"] = json!(4242);
    assert_eq!(got, expected);

    let denied = render(
        &c,
        0,
        &EventBody::SessionStart {
            status: Status::failed("access denied", "user alice may not use db_user admin"),
            postgres_pid: None,
            upstream_reused: None,
        },
    );
    let mut expected = with(base(0, "db.session.start", "TDB00W"), server);
    expected["success"] = json!(false);
    expected["error"] = json!("access denied");
    expected["message"] = json!("user alice may not use db_user admin");
    assert_eq!(denied, expected);
}

#[test]
fn session_end_carries_start_and_stop() {
    let start = chrono::DateTime::from_timestamp_millis(TIME_MS - 60_000).unwrap();
    let stop = chrono::DateTime::from_timestamp_millis(TIME_MS).unwrap();
    let got = render(&ctx(Protocol::Postgres), 9, &EventBody::SessionEnd { session_start: start, session_stop: stop });
    let expected = with(
        base(9, "db.session.end", "TDB01I"),
        json!({"addr.local": "10.0.0.5:5432", "addr.remote": "10.0.0.9:51000",
               "session_start": "2025-01-02T03:03:05.678Z", "session_stop": "2025-01-02T03:04:05.678Z"}),
    );
    assert_eq!(got, expected);
}

#[test]
fn failed_query_changes_type_and_code() {
    let got = render(
        &ctx(Protocol::Postgres),
        4,
        &EventBody::QueryFailed {
            query: "DROP TABLE x".into(),
            parameters: vec![],
            db_name: Some("other".into()),
            status: Status::failed("access denied", ""),
        },
    );
    let mut expected =
        with(base(4, "db.session.query.failed", "TDB02W"), json!({"db_query": "DROP TABLE x", "success": false, "error": "access denied"}));
    expected["db_name"] = json!("other");
    assert_eq!(got, expected);
}

#[test]
fn results_success_and_error() {
    let c = ctx(Protocol::Postgres);
    assert_eq!(
        render(&c, 5, &EventBody::Result { status: Status::ok(), affected_records: 3, query_ei: None }),
        with(base(5, "db.session.result", "TDB10I"), json!({"success": true, "affected_records": 3}))
    );
    // Zero is omitted, as Go's omitempty does.
    assert_eq!(
        render(&c, 6, &EventBody::Result { status: Status::ok(), affected_records: 0, query_ei: None }),
        with(base(6, "db.session.result", "TDB10I"), json!({"success": true}))
    );
    let err = "ERROR: column \"x\" does not exist (SQLSTATE 42703)";
    assert_eq!(
        render(&c, 7, &EventBody::Result { status: Status::failed(err, ""), affected_records: 0, query_ei: None }),
        with(base(7, "db.session.result", "TDB10I"), json!({"success": false, "error": err}))
    );
}

#[test]
fn postgres_extended_protocol_events() {
    let c = ctx(Protocol::Postgres);
    assert_eq!(
        render(&c, 1, &EventBody::PostgresParse { statement_name: "s1".into(), query: "SELECT $1".into() }),
        with(base(1, "db.session.postgres.statements.parse", "TPG00I"), json!({"statement_name": "s1", "query": "SELECT $1"}))
    );
    assert_eq!(
        render(
            &c,
            2,
            &EventBody::PostgresBind {
                statement_name: "s1".into(),
                portal_name: String::new(),
                parameters: vec!["42".into(), "AAEC".into()],
                parameter_formats: vec![0, 1],
                parameter_types: Some(std::sync::Arc::from([23u32, 17])),
            }
        ),
        with(
            base(2, "db.session.postgres.statements.bind", "TPG01I"),
            json!({"statement_name": "s1", "portal_name": "", "parameters": ["42", "AAEC"], "parameter_formats": [0, 1], "parameter_types": [23, 17]})
        )
    );
    assert_eq!(
        render(&c, 3, &EventBody::PostgresExecute { portal_name: String::new() }),
        with(base(3, "db.session.postgres.statements.execute", "TPG02I"), json!({"portal_name": ""}))
    );
    assert_eq!(
        render(&c, 4, &EventBody::PostgresClose { statement_name: "s1".into(), portal_name: String::new() }),
        with(base(4, "db.session.postgres.statements.close", "TPG03I"), json!({"statement_name": "s1", "portal_name": ""}))
    );
    assert_eq!(
        render(&c, 5, &EventBody::PostgresFunctionCall { function_oid: 1598, function_args: vec!["AQ==".into()] }),
        with(base(5, "db.session.postgres.function", "TPG04I"), json!({"function_oid": 1598, "function_args": ["AQ=="]}))
    );
    assert_eq!(
        render(&c, 6, &EventBody::MalformedPacket { payload: vec![0, 1, 2, 255] }),
        with(base(6, "db.session.malformed_packet", "TDB06I"), json!({"payload": "AAEC/w=="}))
    );
}

#[test]
fn dynamodb_request_has_no_status_block() {
    let mut c = ctx(Protocol::DynamoDb);
    c.database.service = "ddb".into();
    c.database.uri = "https://dynamodb.us-east-1.amazonaws.com".into();
    c.database.name = String::new();
    c.database.user = "audit-target".into();
    c.database.aws_region = "us-east-1".into();
    c.database.db_type = "dynamodb".into();
    let body = EventBody::DynamoDbRequest {
        status_code: 200,
        path: "/".into(),
        raw_query: String::new(),
        method: "POST".into(),
        target: "DynamoDB_20120810.GetItem".into(),
        body: dbtape::audit::JsonBody::from_value(&json!({"TableName": "t", "Key": {"pk": {"S": "a"}}})),
        uri: Some("https://dynamodb.us-east-1.amazonaws.com".into()),
        failed: false,
    };
    let got = render(&c, 2, &body);
    assert_eq!(
        got,
        json!({
            "ei": 2, "event": "db.session.dynamodb.request", "uid": UID, "code": "TDY01I", "time": "2025-01-02T03:04:05.678Z",
            "cluster_name": "c1", "user": "alice", "sid": SID, "db_service": "ddb", "db_protocol": "dynamodb",
            "db_uri": "https://dynamodb.us-east-1.amazonaws.com", "db_user": "audit-target",
            "status_code": 200, "path": "/", "method": "POST", "target": "DynamoDB_20120810.GetItem",
            "body": {"TableName": "t", "Key": {"pk": {"S": "a"}}}
        })
    );
    let failed = EventBody::DynamoDbRequest {
        status_code: 0,
        path: "/".into(),
        raw_query: String::new(),
        method: "POST".into(),
        target: "DynamoDB_20120810.GetItem".into(),
        body: None,
        uri: None,
        failed: true,
    };
    let got = render(&c, 3, &failed);
    assert_eq!(got["code"], "TDY01E");
    assert_eq!(got["status_code"], 0);
    assert!(got.get("success").is_none());
}

#[test]
fn every_event_type_has_a_schema_and_round_trips_its_name() {
    for kind in EventType::ALL {
        assert_eq!(EventType::parse(kind.as_str()), Some(*kind));
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas").join(format!("{}.json", kind.as_str()));
        assert!(path.is_file(), "missing schema {}", path.display());
    }
}

#[test]
fn the_audit_port_numbers_events_from_zero_and_seals_with_an_end_event() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = recorder(tmp.path(), |_| {});
    let mut c = ctx(Protocol::Postgres);
    c.sid = uuid::Uuid::new_v4().to_string();
    let sid = c.sid.clone();
    let port = AuditPort::new(rec.recorder.open(c).unwrap());
    block_on(async {
        let port = port.begin(Some(7)).await.unwrap();
        port.emit(EventBody::Query { query: "SELECT 1".into(), parameters: vec![], db_name: None }).await.unwrap();
        port.emit(EventBody::Result { status: Status::ok(), affected_records: 1, query_ei: None }).await.unwrap();
        port.end().await.unwrap();
    });
    let (lines, _) = read_lines(&rec.store(), &sid);
    let events: Vec<serde_json::Value> = lines.iter().map(|l| assert_schema_valid(l)).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["db.session.start", "db.session.query", "db.session.result", "db.session.end"]);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["ei"], i as u64);
        let time = e["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == 24, "{time}");
        assert_eq!(uuid::Uuid::parse_str(e["uid"].as_str().unwrap()).unwrap().get_version_num(), 4);
    }
    assert_eq!(events[3]["session_start"].as_str().map(str::len), Some(24));
}

#[test]
fn the_recorders_spliced_json_equals_the_plain_serialisation() {
    let mut c = ctx(Protocol::Postgres);
    c.database.labels = BTreeMap::from([("env".to_string(), "prod".to_string()), ("team".to_string(), "a\"b".to_string())]);
    c.database.aws_region = "eu-west-1".into();
    c.user.aws_role_arn = "arn:aws:iam::123456789012:role/x".into();
    let fixed = dbtape::audit::fixed_fields_json(&c);
    let t = chrono::DateTime::from_timestamp_millis(TIME_MS).unwrap();
    let bodies = vec![
        EventBody::SessionStart { status: Status::ok(), postgres_pid: Some(1), upstream_reused: None },
        EventBody::SessionStart { status: Status::failed("denied \"x\"", "m"), postgres_pid: None, upstream_reused: None },
        EventBody::SessionEnd { session_start: t, session_stop: t },
        EventBody::Query { query: "SELECT '\u{e9}\n\t\\'".into(), parameters: vec!["p".into()], db_name: None },
        EventBody::Query { query: "find".into(), parameters: vec![], db_name: Some("shop".into()) },
        EventBody::QueryFailed { query: "x".into(), parameters: vec![], db_name: None, status: Status::failed("no", "") },
        EventBody::Result { status: Status::ok(), affected_records: 5, query_ei: Some(3) },
        EventBody::MalformedPacket { payload: vec![1, 2, 3] },
        EventBody::PostgresParse { statement_name: "s".into(), query: "q".into() },
        EventBody::PostgresBind {
            statement_name: "s".into(),
            portal_name: "p".into(),
            parameters: vec![],
            parameter_formats: vec![],
            parameter_types: None,
        },
        EventBody::PostgresExecute { portal_name: String::new() },
        EventBody::PostgresClose { statement_name: "s".into(), portal_name: String::new() },
        EventBody::PostgresFunctionCall { function_oid: 7, function_args: vec!["a".into()] },
        EventBody::RecordingGap {
            lost_events: 3,
            error: "disk full".into(),
            lost_from_ms: Some(TIME_MS - 5),
            lost_until_ms: Some(TIME_MS - 1),
        },
    ];
    for body in &bodies {
        let event = AuditEvent { index: 9, uid: uuid::Uuid::parse_str(UID).unwrap(), time_ms: TIME_MS, context: &c, body, notes: None };
        // As the recorder stores it (compact unless the event overrides a session field) and
        // as readers give it back.
        let mut spliced = Vec::new();
        if body.overrides_session_fields() {
            event.write_json(&mut spliced);
        } else {
            let mut compact = Vec::new();
            event.write_compact(&mut compact);
            dbtape::recording::compact::splice_fixed_fields(&compact, &fixed, &mut spliced);
        }
        let plain = serde_json::to_vec(&event).unwrap();
        let a: serde_json::Value = serde_json::from_slice(&spliced).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(a, b, "{body:?}");
        assert_schema_valid(&spliced);
        assert!(spliced.starts_with(b"{\"ei\":9,\"event\":\""), "event type stays near the front for fast filtering");
    }
}
