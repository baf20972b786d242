//! Shared test helpers: session contexts, recorders in temp dirs, schema validation.
#![allow(dead_code)]

pub mod console;
pub mod dynamo;
pub mod mongo;
pub mod proxy;
pub mod serve;
pub mod services;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use dbtape::audit::{ConnectionMeta, DatabaseMeta, Protocol, ServerMeta, SessionContext, UserMeta};
use dbtape::recording::events::{EventStream, StreamEnd};
use dbtape::recording::{Recorder, RecorderConfig, RecordingStore};
use dbtape::signing::{public_key_path, Signer};

pub fn context(protocol: Protocol) -> SessionContext {
    SessionContext {
        sid: uuid::Uuid::new_v4().to_string(),
        cluster_name: "test-cluster".into(),
        user: UserMeta { user: "alice".into(), aws_role_arn: String::new() },
        database: DatabaseMeta {
            service: "orders".into(),
            protocol,
            uri: "db.internal:5432".into(),
            name: "app".into(),
            user: "reader".into(),
            labels: BTreeMap::from([("env".to_string(), "test".to_string())]),
            aws_region: String::new(),
            db_type: "self-hosted".into(),
        },
        server: ServerMeta {
            server_id: "host-1".into(),
            hostname: "host-1".into(),
            addr: "127.0.0.1:15432".into(),
            version: "0.1.0".into(),
        },
        connection: ConnectionMeta {
            local_addr: "127.0.0.1:15432".into(),
            remote_addr: "127.0.0.1:50000".into(),
            user_agent: "psql".into(),
        },
    }
}

pub struct TestRecorder {
    pub recorder: Recorder,
    pub dir: PathBuf,
    pub key_path: PathBuf,
}

impl TestRecorder {
    pub fn store(&self) -> RecordingStore {
        RecordingStore::new(&self.dir)
    }

    pub fn public_key(&self) -> ed25519_dalek::VerifyingKey {
        dbtape::signing::load_public_key(&public_key_path(&self.key_path)).unwrap()
    }
}

pub fn recorder(root: &Path, tweak: impl FnOnce(&mut RecorderConfig)) -> TestRecorder {
    let dir = root.join("recordings");
    let key_path = root.join("keys/signing.key");
    let signer = Arc::new(Signer::load_or_generate(&key_path).unwrap());
    let mut config = RecorderConfig::new(&dir);
    config.batch_interval = std::time::Duration::from_millis(20);
    tweak(&mut config);
    TestRecorder { recorder: Recorder::start(config, signer).unwrap(), dir, key_path }
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

pub fn read_lines(store: &RecordingStore, sid: &str) -> (Vec<Vec<u8>>, StreamEnd) {
    let mut lines = Vec::new();
    let mut stream = EventStream::open(store, sid, false).unwrap();
    let end = stream
        .for_each_event(|line| {
            lines.push(line.to_vec());
            Ok(true)
        })
        .unwrap();
    (lines, end)
}

fn validators() -> &'static HashMap<String, jsonschema::Validator> {
    static VALIDATORS: OnceLock<HashMap<String, jsonschema::Validator>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let mut map = HashMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let Some(event) = name.strip_suffix(".json") else { continue };
            let schema: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema", "{name}");
            let validator = jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{name}: {e}"));
            map.insert(event.to_string(), validator);
        }
        map
    })
}

/// Validates one event line against the schema for its `event` type.
pub fn assert_schema_valid(line: &[u8]) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_slice(line).unwrap();
    let event = value["event"].as_str().expect("event field");
    let validator = validators().get(event).unwrap_or_else(|| panic!("no schema for event type {event}"));
    let errors: Vec<String> = validator.iter_errors(&value).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "{event} fails its schema: {errors:?}\n{value}");
    value
}

/// Runs `cmd` off the async runtime: (success, stdout, stderr).
pub async fn output(mut cmd: std::process::Command) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .unwrap()
}

/// Events of every recording in `store`, sessions in start order, each checked against its
/// event type's schema.
pub fn sessions_in(store: &RecordingStore) -> Vec<Vec<serde_json::Value>> {
    let mut summaries: Vec<_> = store.summaries().unwrap().into_iter().map(Result::unwrap).collect();
    summaries.sort_by_key(|s| (s.start_ms, s.sid.clone()));
    summaries.iter().map(|s| read_lines(store, &s.sid).0.iter().map(|l| assert_schema_valid(l)).collect()).collect()
}

pub fn dbtape_bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_dbtape"))
}

/// The `[server]` and `[recording]` sections of an in-test proxy: a short shutdown grace and
/// recordings under `root`, flushed every 10 ms.
pub fn test_server_toml(root: &Path) -> String {
    format!(
        "[server]\nshutdown_grace = \"2s\"\n[recording]\ndir = \"{root}/recordings\"\nsigning_key = \"{root}/key\"\nbatch_interval = \"10ms\"\n",
        root = root.display()
    )
}

/// Writes `value` to `dir/name` and returns the config's reference to it,
/// `{ file = "…" }`. Tests hand secrets to in-process proxies this way, never through the
/// process environment, which other test threads read at the same time.
pub fn secret_file(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    format!("{{ file = \"{}\" }}", path.display())
}
