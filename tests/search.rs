//! The auditor's questions across recordings made through the real PostgreSQL path, answered
//! by `dbtape search` (the real binary), with hits read back from the signed recordings.

mod common;

use common::proxy::{Proxy, ALICE_PASSWORD, BOB_PASSWORD};

struct Review {
    config: std::path::PathBuf,
}

impl Review {
    /// A reviewer's config: the proxy's recordings folder and its signing key.
    fn new(proxy: &Proxy) -> Review {
        let config = proxy.root.path().join("review.toml");
        let text = format!("[recording]\ndir = \"{0}/recordings\"\nsigning_key = \"{0}/key\"\n", proxy.root.path().display());
        std::fs::write(&config, text).unwrap();
        Review { config }
    }

    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = common::dbtape_bin().args(args).arg("--config").arg(&self.config).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// The hits of a search, as the recorded events.
    fn search(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut all = vec!["search", "--format", "json"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.run(&all);
        assert!(ok, "{args:?}: {err}");
        out.lines().map(|l| common::assert_schema_valid(l.as_bytes())).collect()
    }

    fn queries(&self, args: &[&str]) -> Vec<String> {
        self.search(args).iter().map(|e| e["db_query"].as_str().unwrap_or_default().to_string()).collect()
    }
}

async fn psql(proxy: &Proxy, user: &str, password: &str, statements: &[String]) -> (bool, String) {
    let mut args = Vec::new();
    for s in statements {
        args.push("-c".to_string());
        args.push(s.clone());
    }
    let (ok, out, err) = proxy.psql(proxy.conninfo(user, ""), Some(password), args).await;
    (ok, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditors_questions_are_answered_from_the_recordings() {
    let mut proxy = Proxy::start().await;
    // bob logs in through dbtape as the `reporting` role.
    let direct = format!(
        "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}/ca.crt",
        proxy.services.get("PG_PORT"),
        proxy.services.get("CERTS")
    );
    let role = format!(
        "DO $$ BEGIN CREATE ROLE reporting LOGIN PASSWORD '{}'; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        proxy.services.get("PG_PASSWORD")
    );
    let made = std::process::Command::new("psql")
        .arg(&direct)
        .args(["-X", "-q", "-c", &role])
        .env("PGPASSWORD", proxy.services.get("PG_PASSWORD"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let t = format!("payments_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let o = format!("orders_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let alice_one: Vec<String> = vec![
        format!("CREATE TABLE {o} (id int)"),
        format!("INSERT INTO {o} VALUES (1)"),
        format!("TRUNCATE {o}"),
        format!("DROP TABLE {o}"),
    ];
    let alice_two: Vec<String> = vec![
        format!("CREATE TABLE {t} (id int, amount int)"),
        format!("INSERT INTO {t} VALUES (1, 100), (2, 200)"),
        format!("SELECT amount FROM {t} WHERE id = 1"),
        format!("SELECT amount FROM {t} WHERE id = 2"),
        format!("GRANT SELECT ON {t} TO reporting"),
        "SET application_name = 'nightly audit'".to_string(),
    ];
    assert!(psql(&proxy, "alice", ALICE_PASSWORD, &alice_one).await.0);
    assert!(psql(&proxy, "alice", ALICE_PASSWORD, &alice_two).await.0);
    let bob = vec![
        format!("SELECT sum(amount) FROM {t}"),
        "SELECT * FROM no_such_table_here".to_string(),
        "SELECT 4711042 AS account".to_string(),
    ];
    let (_, said) = psql(&proxy, "bob", BOB_PASSWORD, &bob).await;
    assert!(said.contains("no_such_table_here"), "{said}");
    let (ok, _) = psql(&proxy, "mallory", "guess", &["SELECT 1".to_string()]).await;
    assert!(!ok);
    proxy.stop().await;
    let review = Review::new(&proxy);

    // Who ran DROP or TRUNCATE, and when.
    let destructive = review.queries(&["--regex", "(?i)^\\s*(drop|truncate)\\b", "--event", "db.session.query"]);
    assert_eq!(destructive, [format!("TRUNCATE {o}"), format!("DROP TABLE {o}")]);
    let ddl = review.search(&["--class", "DDL"]);
    assert!(ddl.iter().all(|e| e["user"] == "alice"), "{ddl:?}");
    assert_eq!(ddl.len(), 3, "two CREATE TABLEs and a DROP: {ddl:?}");
    // Every statement alice ran, today.
    let alice = review.queries(&["--user", "alice", "--event", "db.session.query", "--since", "1h"]);
    assert_eq!(alice, [alice_one.clone(), alice_two.clone()].concat());
    assert!(review.queries(&["--user", "alice", "--until", "2020-01-01"]).is_empty());
    // Failed logins and failed queries.
    let refused = review.search(&["--failed", "--event", "db.session.start"]);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["user"], "mallory");
    assert_eq!(refused[0]["code"], "TDB00W");
    let failed = review.search(&["--failed", "--user", "bob"]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["event"], "db.session.result");
    assert!(failed[0]["error"].as_str().unwrap().contains("no_such_table_here"), "{failed:?}");
    // Every query touching the payments table, whoever ran it.
    let touching = review.search(&["--table", &t, "--event", "db.session.query"]);
    let who: Vec<(&str, &str)> = touching.iter().map(|e| (e["user"].as_str().unwrap(), e["db_query"].as_str().unwrap())).collect();
    assert_eq!(who.len(), 6, "{who:?}");
    assert_eq!(who.last().unwrap(), &("bob", format!("SELECT sum(amount) FROM {t}").as_str()));
    // Words and phrases.
    assert_eq!(review.queries(&["--text", &format!("amount {t} \"id = 2\"")]), [format!("SELECT amount FROM {t} WHERE id = 2")]);
    assert_eq!(review.queries(&["--text", "\"nightly audit\""]), ["SET application_name = 'nightly audit'"]);
    // Long numbers and SQL's noise words are not in the index; the read-back finds them.
    assert_eq!(review.queries(&["--text", "4711042", "--event", "db.session.query"]), ["SELECT 4711042 AS account"]);
    assert_eq!(review.queries(&["--text", "\"4711042 as account\"", "--event", "db.session.query"]), ["SELECT 4711042 AS account"]);
    assert!(review.queries(&["--text", "\"account as 4711042\"", "--event", "db.session.query"]).is_empty(), "word order counts");
    assert_eq!(review.search(&["--class", "MISC_SET", "--user", "alice"]).len(), 1);
    assert_eq!(review.search(&["--class", "ROLE"]).len(), 1, "the GRANT");
    // Statements of one shape, with different constants.
    let fingerprint = dbtape::statement::classify::classify_postgres(&format!("SELECT amount FROM {t} WHERE id = 7")).fingerprint;
    assert_eq!(review.search(&["--fingerprint", &fingerprint]).len(), 2);
    let (ok, shapes, err) = review.run(&["search", "--shapes", "--format", "json", "--table", &t, "--event", "db.session.query"]);
    assert!(ok, "{err}");
    let shapes: Vec<serde_json::Value> = serde_json::from_str(&shapes).unwrap();
    assert_eq!(shapes[0]["count"], 2, "the two SELECTs by id are one shape: {shapes:?}");
    assert_eq!(shapes[0]["fingerprint"], fingerprint.as_str());
    assert_eq!(shapes.len(), 5, "{shapes:?}");
    // The exported events carry each statement's class, tables and fingerprint, derived from
    // the signed statement; --raw gives them exactly as recorded.
    let (ok, exported, err) = review.run(&["export", "--user", "alice", "--event", "db.session.query"]);
    assert!(ok, "{err}");
    let exported: Vec<serde_json::Value> = exported.lines().map(|l| common::assert_schema_valid(l.as_bytes())).collect();
    let classes: Vec<&str> = exported.iter().map(|e| e["db_statement_class"].as_str().unwrap()).collect();
    assert_eq!(classes, ["DDL", "WRITE", "WRITE", "DDL", "DDL", "WRITE", "READ", "READ", "ROLE", "MISC_SET"]);
    assert_eq!(exported[6]["db_tables"], serde_json::json!([t]));
    assert_eq!(exported[7]["db_query_fingerprint"], fingerprint.as_str());
    assert_eq!(touching.last().unwrap()["db_statement_class"], "READ", "search prints the same fields");
    let (ok, raw, _) = review.run(&["export", "--raw", "--user", "alice", "--event", "db.session.query"]);
    assert!(ok);
    assert_eq!(raw.lines().count(), 10);
    assert!(!raw.contains("db_statement_class"), "{raw}");
    // Count only, and the table for people.
    let (ok, count, _) = review.run(&["search", "--count", "--user", "alice", "--event", "db.session.query"]);
    assert!(ok);
    assert_eq!(count.trim(), "10");
    let (ok, table, _) = review.run(&["search", "--table", &t, "--user", "bob"]);
    assert!(ok);
    // Each hit as `play` shows it: psql's prompt and the statement.
    assert!(table.contains("[READ] postgres=> SELECT sum(amount)"), "{table}");

    // The review summary: per user and database, statements by class, refusals, errors,
    // and the privileged statements themselves.
    let (ok, out, err) = review.run(&["report", "--since", "1h", "--format", "json"]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let row = |user: &str| rows.iter().find(|r| r["user"] == user && r["db"] == "pg").unwrap_or_else(|| panic!("{user}: {out}"));
    let alice = row("alice");
    assert_eq!((alice["sessions"].as_u64(), alice["statements"].as_u64()), (Some(2), Some(10)), "{alice}");
    assert_eq!(alice["by_class"]["DDL"], 3);
    assert_eq!(alice["by_class"]["ROLE"], 1);
    assert_eq!(alice["by_class"]["WRITE"], 3);
    assert_eq!(alice["privileged_count"], 4);
    assert!(alice["privileged"].as_array().unwrap().iter().any(|p| p["statement"] == format!("GRANT SELECT ON {t} TO reporting")));
    assert_eq!(row("bob")["errors"], 1);
    assert_eq!(row("mallory")["refused_logins"], 1);
    let (ok, text, _) = review.run(&["report", "--since", "1h", "--user", "alice"]);
    assert!(ok);
    assert!(text.starts_with("alice on pg: 2 session(s), 10 statement(s)"), "{text}");

    // Play from a hit: the session from that event on.
    let hit = &review.search(&["--text", "truncate"])[0];
    let (sid, ei) = (hit["sid"].as_str().unwrap(), hit["ei"].as_u64().unwrap().to_string());
    let (ok, screen, err) = review.run(&["play", sid, "--from", &ei, "--format", "text"]);
    assert!(ok, "{err}");
    assert!(screen.contains(&format!("TRUNCATE {o}")) && screen.contains(&format!("DROP TABLE {o}")), "{screen}");
    assert!(!screen.contains(&format!("INSERT INTO {o}")), "earlier events are skipped: {screen}");

    // An index rebuilt from scratch answers the same.
    let before = review.search(&["--table", &t]);
    let (ok, out, err) = review.run(&["index", "rebuild"]);
    assert!(ok, "{err}");
    assert!(out.contains("recording(s)"), "{out}");
    assert_eq!(review.search(&["--table", &t]), before);
    let (ok, out, err) = review.run(&["index", "verify"]);
    assert!(ok, "{out}{err}");

    // A forged index entry (an innocent SELECT claimed to be a DROP) is never printed.
    let innocent = review.search(&["--text", "\"id = 1\""]);
    let (sid, ei) = (innocent[0]["sid"].as_str().unwrap().to_string(), innocent[0]["ei"].as_u64().unwrap());
    forge_index_entry(&proxy.root.path().join("recordings/index"), &sid, ei, "drop table everything");
    let (ok, out, err) = review.run(&["search", "--format", "json", "--text", "drop", "--event", "db.session.query"]);
    assert!(ok, "{err}");
    let printed: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(printed.len(), 1, "only the real DROP: {out}");
    assert_eq!(printed[0]["db_query"], format!("DROP TABLE {o}"));
    assert!(err.contains("does not match the recorded event"), "{err}");
    // A recording altered after it was signed shows none of its hits.
    let bobs = review.search(&["--user", "bob"]);
    let bob_sid = bobs[0]["sid"].as_str().unwrap().to_string();
    let path = proxy.root.path().join(format!("recordings/{bob_sid}.dbt"));
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    let (ok, out, err) = review.run(&["search", "--format", "json", "--user", "bob"]);
    assert!(ok, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains(&format!("recording {bob_sid} fails verification")), "{err}");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    // Recordings the index does not cover are reported; a search covers them again.
    std::fs::remove_dir_all(proxy.root.path().join("recordings/index")).unwrap();
    let (ok, out, _) = review.run(&["index", "verify"]);
    assert!(!ok);
    assert!(out.lines().filter(|l| l.ends_with("NOT INDEXED")).count() >= 4, "{out}");
    assert_eq!(review.queries(&["--text", "truncate", "--event", "db.session.query"]), [format!("TRUNCATE {o}")]);
    let (ok, out, err) = review.run(&["index", "verify"]);
    assert!(ok, "{out}{err}");
}

/// Writes a document into the index directly, as someone with write access to the folder
/// could.
fn forge_index_entry(dir: &std::path::Path, sid: &str, ei: u64, text: &str) {
    let index = tantivy::Index::open_in_dir(dir).unwrap();
    let schema = index.schema();
    let field = |name: &str| schema.get_field(name).unwrap();
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(1, 20_000_000).unwrap();
    let mut doc = tantivy::TantivyDocument::default();
    doc.add_text(field("sid"), sid);
    doc.add_u64(field("ei"), ei);
    doc.add_i64(field("time_s"), chrono::Utc::now().timestamp());
    doc.add_text(field("event"), "db.session.query");
    doc.add_text(field("text"), text);
    writer.add_document(doc).unwrap();
    writer.commit().unwrap();
}
