//! Binary parameters read as values: asyncpg, psycopg 3 (binary and pipeline modes) and
//! tokio-postgres insert a row of every decoded type through dbtape into the real
//! PostgreSQL; `play`, `export` and `search` must show exactly the values sent, and what the
//! server itself prints for them, while the recorded parameters stay base64 as before.

mod common;

use common::proxy::{Proxy, ALICE_PASSWORD};

const TABLE: &str = "CREATE TEMP TABLE every_type (b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, n numeric, \
     t text, vc varchar, bc char(3), nm name, by bytea, u uuid, d date, tm time, ts timestamp, tz timestamptz, \
     iv interval, j json, jb jsonb, ip inet, net cidr, o oid, ia int4[], ta text[])";

/// The columns as PostgreSQL's own output functions print them, in UTC (`inet::text` adds
/// a /32 that inet's output does not, hence `format`).
const AS_TEXT: &str = "SELECT ARRAY[b::text, i2::text, i4::text, i8::text, f4::text, f8::text, n::text, t, vc, bc::text, \
     nm::text, by::text, u::text, d::text, tm::text, ts::text, tz::text, iv::text, j::text, jb::text, format('%s', ip), net::text, \
     o::text, ia::text, ta::text] FROM every_type";

/// What a reviewer is shown for the row every driver inserts.
const SHOWN: [&str; 25] = [
    "true",
    "-3",
    "41",
    "9000000000",
    "1.5",
    "-2.25",
    "123456.780",
    "'zebrafish''s'",
    "'v'",
    "'abc'",
    "'nm'",
    "'\\x00ff'",
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
    "'2026-12-04'",
    "'12:34:56.5'",
    "'2026-12-04 01:02:03.25'",
    "'2026-12-04 01:02:03+00'",
    "'3 days 04:05:06.5'",
    "'{\"a\": 1}'",
    "'{\"k\": 0}'",
    "'10.0.0.1'",
    "'10.0.0.0/8'",
    "12",
    "'{1,NULL,3}'",
    "'{\"a b\",c}'",
];

fn insert_statement(placeholder: impl Fn(usize) -> String) -> String {
    let values: Vec<String> = (1..=25).map(placeholder).collect();
    format!("INSERT INTO every_type VALUES ({})", values.join(", "))
}

/// A shown literal without its quotes: what the server prints for the value.
fn unquoted(shown: &str) -> String {
    match shown.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        Some(inner) => inner.replace("''", "'"),
        None => shown.to_string(),
    }
}

/// The exported INSERT Bind's derived values, and its recorded (base64) parameters.
fn insert_bind(proxy: &Proxy) -> (serde_json::Value, Vec<String>, String) {
    let sessions = proxy.sessions();
    assert_eq!(sessions.len(), 1);
    let sid = sessions[0][0]["sid"].as_str().unwrap().to_string();
    let out = common::dbtape_bin().args(["export", "--dir"]).arg(proxy.store.dir()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let parse = exported
        .iter()
        .find(|e| {
            e["event"] == "db.session.postgres.statements.parse" && e["query"].as_str().unwrap().starts_with("INSERT INTO every_type")
        })
        .unwrap_or_else(|| panic!("no INSERT parse in {exported:#?}"));
    let statement = parse["statement_name"].as_str().unwrap();
    let parse_ei = parse["ei"].as_u64().unwrap();
    let bind = exported
        .iter()
        .find(|e| {
            e["event"] == "db.session.postgres.statements.bind" && e["statement_name"] == statement && e["ei"].as_u64().unwrap() > parse_ei
        })
        .unwrap()
        .clone();
    let shown: Vec<String> = bind["parameter_values"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    (bind, shown, sid)
}

/// Everything a reviewer sees of the insert agrees with what was sent and with the server.
fn assert_readable(proxy: &Proxy, server_text: &[String], shown_values: &[&str]) -> serde_json::Value {
    let (bind, shown, sid) = insert_bind(proxy);
    assert_eq!(shown, shown_values, "export's parameter_values");
    assert_eq!(server_text.len(), shown.len());
    for (shown, server) in shown.iter().zip(server_text) {
        // jsonb is printed normalised; what was sent is shown as sent.
        let same_json = || serde_json::from_str::<serde_json::Value>(&unquoted(shown)).ok() == serde_json::from_str(server).ok();
        assert!(&unquoted(shown) == server || (server.starts_with('{') && same_json()), "{shown} shown, the server prints {server}");
    }
    let play = proxy_play(proxy, &sid);
    let numbered: Vec<String> = shown_values.iter().enumerate().map(|(i, v)| format!("${} = {v}", i + 1)).collect();
    assert!(play.contains(&format!("({})\nSUCCESS\n(1 row affected)", numbered.join(", "))), "{play}");
    // A value sent in binary is found by free-text search.
    // A reviewer's config: the recordings folder and the key that signs them.
    let config = proxy.root.path().join("review.toml");
    let text = format!("[recording]\ndir = \"{0}/recordings\"\nsigning_key = \"{0}/key\"\n", proxy.root.path().display());
    std::fs::write(&config, text).unwrap();
    let out = common::dbtape_bin().args(["search", "--text", "zebrafish", "--config"]).arg(&config).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.contains(&format!("{}  bind", bind["ei"])) && table.contains("$8 = 'zebrafish''s'"), "{table}");
    bind
}

fn proxy_play(proxy: &Proxy, sid: &str) -> String {
    let out = common::dbtape_bin().args(["play", sid, "--format", "text", "--dir"]).arg(proxy.store.dir()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

/// Runs a Python driver script with argv: port, password. Its last stdout line is the
/// server's text of the row, as JSON.
async fn python(proxy: &Proxy, script: &str) -> Vec<String> {
    let mut cmd = proxy.services.python();
    cmd.args(["-c", script, &proxy.addr.port().to_string(), ALICE_PASSWORD]);
    let (ok, stdout, stderr) = common::output(cmd).await;
    assert!(ok, "{stderr}");
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

const PYTHON_VALUES: &str = r#"
import datetime, decimal, ipaddress, json, sys, uuid
VALUES = [True, -3, 41, 9000000000, 1.5, -2.25, decimal.Decimal("123456.780"), "zebrafish's", "v", "abc", "nm",
          b"\x00\xff", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), datetime.date(2026, 12, 4),
          datetime.time(12, 34, 56, 500000), datetime.datetime(2026, 12, 4, 1, 2, 3, 250000),
          datetime.datetime(2026, 12, 4, 1, 2, 3, tzinfo=datetime.timezone.utc),
          datetime.timedelta(days=3, hours=4, minutes=5, seconds=6.5), '{"a": 1}', '{"k": 0}',
          ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Network("10.0.0.0/8"), 12, [1, None, 3], ["a b", "c"]]
PORT, PASSWORD = int(sys.argv[1]), sys.argv[2]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_values_are_shown_as_sent() {
    let mut proxy = Proxy::start().await;
    let script = format!(
        r#"{PYTHON_VALUES}
import asyncio, asyncpg
async def main():
    conn = await asyncpg.connect(host="127.0.0.1", port=PORT, user="alice", password=PASSWORD, database="postgres", ssl=False)
    await conn.execute("SET TimeZone = 'UTC'")
    await conn.execute({TABLE:?})
    await conn.execute({insert:?}, *VALUES)
    assert await conn.fetchval("SELECT $1::text IS NULL AND $2::text = 'NULL'", None, "NULL")
    print(json.dumps(await conn.fetchval({AS_TEXT:?})))
    await conn.close()
asyncio.run(main())
"#,
        insert = insert_statement(|i| format!("${i}")),
    );
    let server_text = python(&proxy, &script).await;
    proxy.stop().await;
    let bind = assert_readable(&proxy, &server_text, &SHOWN);
    // The recorded parameters are as before: base64 of the bytes sent.
    assert_eq!(bind["parameters"][2], "AAAAKQ==");
    assert_eq!(bind["parameters"][7], "emVicmFmaXNoJ3M=");
    assert!(bind["parameter_formats"].as_array().unwrap().iter().all(|f| f == 1));
    // asyncpg declares no types: they came from the server's ParameterDescription.
    let events = &proxy.sessions()[0];
    let parse = events.iter().find(|e| e["query"].as_str().is_some_and(|q| q.starts_with("INSERT INTO every_type"))).unwrap();
    assert_eq!(bind["statement_name"], parse["statement_name"]);
    let play = proxy_play(&proxy, events[0]["sid"].as_str().unwrap());
    assert!(play.contains("($1 = NULL, $2 = 'NULL')"), "{play}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_binary_and_pipeline_values_are_shown_as_sent() {
    for pipeline in [false, true] {
        let mut proxy = Proxy::start().await;
        let script = format!(
            r#"{PYTHON_VALUES}
import contextlib, psycopg
from psycopg.types.json import Json, Jsonb
from psycopg.types.numeric import Int2, Int4, Int8, Float4, Oid
VALUES[1:6] = [Int2(-3), Int4(41), Int8(9000000000), Float4(1.5), -2.25]
VALUES[18:20] = [Json({{"a": 1}}), Jsonb({{"k": 0}})]
VALUES[22] = Oid(12)
with psycopg.connect(host="127.0.0.1", port=PORT, user="alice", password=PASSWORD, dbname="postgres", sslmode="disable") as conn:
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute({TABLE:?})
    with conn.pipeline() if {pipeline} else contextlib.nullcontext():
        cur = conn.cursor(binary=True)
        cur.execute({insert:?}, VALUES)
    print(json.dumps(conn.execute({AS_TEXT:?}).fetchone()[0]))
"#,
            pipeline = if pipeline { "True" } else { "False" },
            insert = insert_statement(|_| "%b".to_string()),
        );
        let server_text = python(&proxy, &script).await;
        proxy.stop().await;
        let bind = assert_readable(&proxy, &server_text, &SHOWN);
        // psycopg declares its types in Parse: the unnamed statement's own.
        assert_eq!(bind["statement_name"], "", "pipeline: {pipeline}");
        assert_eq!(bind["parameter_types"][1], 21, "int2, as declared");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_values_are_shown_as_sent() {
    let mut proxy = Proxy::start().await;
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(proxy.addr.port()).user("alice").password(ALICE_PASSWORD).dbname("postgres");
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client.batch_execute(&format!("SET TimeZone = 'UTC'; {TABLE}")).await.unwrap();
    // tokio-postgres has no numeric or interval type of its own and sends cidr as inet:
    // those three go as text, the rest in binary.
    let insert = insert_statement(|i| match i {
        7 => "$7::text::numeric".into(),
        18 => "$18::text::interval".into(),
        22 => "$22::text::cidr".into(),
        i => format!("${i}"),
    });
    // Prepared without types: the server's ParameterDescription gives them.
    let statement = client.prepare(&insert).await.unwrap();
    let date = chrono::NaiveDate::from_ymd_opt(2026, 12, 4).unwrap();
    let (ts, tz) = (date.and_hms_milli_opt(1, 2, 3, 250).unwrap(), date.and_hms_opt(1, 2, 3).unwrap().and_utc());
    let id = uuid::Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
    let (json, jsonb) = (serde_json::json!({"a": 1}), serde_json::json!({"k": 0}));
    let ip: std::net::IpAddr = "10.0.0.1".parse().unwrap();
    let (ints, texts) = (vec![Some(1i32), None, Some(3)], vec!["a b".to_string(), "c".to_string()]);
    let values: [&(dyn tokio_postgres::types::ToSql + Sync); 25] = [
        &true,
        &-3i16,
        &41i32,
        &9_000_000_000i64,
        &1.5f32,
        &-2.25f64,
        &"123456.780",
        &"zebrafish's",
        &"v",
        &"abc",
        &"nm",
        &vec![0u8, 0xff],
        &id,
        &date,
        &chrono::NaiveTime::from_hms_milli_opt(12, 34, 56, 500).unwrap(),
        &ts,
        &tz,
        &"3 days 04:05:06.5",
        &json,
        &jsonb,
        &ip,
        &"10.0.0.0/8",
        &12u32,
        &ints,
        &texts,
    ];
    client.execute(&statement, &values).await.unwrap();
    // A privileged statement (DDL) with a parameter: `report` lists it with its value.
    client.execute("CREATE TEMP TABLE made_from AS SELECT $1::int8 AS v", &[&77_000_000_123i64]).await.unwrap();
    let row = client.query_one(AS_TEXT, &[]).await.unwrap();
    let server_text: Vec<String> = row.get(0);
    drop(client);
    let _ = driver.await;
    proxy.stop().await;
    let mut shown = SHOWN;
    // serde_json writes JSON compactly.
    (shown[6], shown[18], shown[19]) = ("'123456.780'", "'{\"a\":1}'", "'{\"k\":0}'");
    let bind = assert_readable(&proxy, &server_text, &shown);
    assert_eq!(bind["parameter_formats"][6], 1, "tokio-postgres sends even text in binary");
    assert_eq!(bind["parameter_types"][6], 25);
    let config = proxy.root.path().join("review.toml");
    let out = common::dbtape_bin().args(["report", "--config"]).arg(&config).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        report.contains("DDL") && report.contains("CREATE TEMP TABLE made_from AS SELECT $1::int8 AS v ($1 = 77000000123)"),
        "{report}"
    );
}
