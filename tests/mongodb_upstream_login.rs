//! The upstream SCRAM login's first step rides in the hello (`speculativeAuthenticate`),
//! and falls back to saslStart with a server that does not take it. A stand-in server here
//! checks the proof with dbtape's own SCRAM server side and counts what it was sent; pymongo
//! drives the client side through dbtape.

mod common;

use std::sync::{Arc, Mutex};

use dbtape::auth::scram::{ServerExchange, Verifier};
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use common::proxy::{run_server, verifier, ALICE_PASSWORD};
use common::services::Services;

const UPSTREAM_USER: &str = "app";
const UPSTREAM_PASSWORD: &str = "upstream-secret-7";

/// What the stand-in saw of dbtape's logins.
#[derive(Default, Debug)]
struct Seen {
    speculative_taken: usize,
    sasl_starts: usize,
    logins: usize,
    commands: Vec<String>,
}

fn payload(doc: &Document) -> String {
    match doc.get("payload") {
        Some(mongodb::bson::Bson::Binary(b)) => String::from_utf8(b.bytes.clone()).unwrap(),
        other => panic!("payload: {other:?}"),
    }
}

fn sasl_reply(payload: String, done: bool) -> Document {
    doc! { "conversationId": 1, "done": done, "payload": Binary { subtype: BinarySubtype::Generic, bytes: payload.into_bytes() }, "ok": 1.0 }
}

async fn stand_in(listener: TcpListener, takes_speculative: bool, seen: Arc<Mutex<Seen>>) {
    let verifier = Verifier::generate(UPSTREAM_PASSWORD, 4096).unwrap();
    loop {
        let Ok((mut s, _)) = listener.accept().await else { return };
        let (seen, verifier) = (seen.clone(), verifier.clone());
        tokio::spawn(async move {
            let mut exchange: Option<ServerExchange> = None;
            while let Some((id, _, cmd)) = common::mongo::raw::read(&mut s).await {
                let name = cmd.keys().next().cloned().unwrap_or_default();
                let mut answer = match name.as_str() {
                    "hello" | "isMaster" | "ismaster" => doc! {
                        "isWritablePrimary": true, "maxWireVersion": 21, "minWireVersion": 0,
                        "maxBsonObjectSize": 16777216, "maxMessageSizeBytes": 48000000, "ok": 1.0,
                    },
                    "saslStart" => {
                        seen.lock().unwrap().sasl_starts += 1;
                        assert_eq!(cmd.get_str("$db").unwrap(), "admin");
                        let (started, first) = ServerExchange::start(verifier.clone(), &payload(&cmd)).unwrap();
                        exchange = Some(started);
                        sasl_reply(first, false)
                    }
                    "saslContinue" => match exchange.take().map(|e| e.finish(&payload(&cmd))) {
                        Some(Ok(last)) => {
                            seen.lock().unwrap().logins += 1;
                            sasl_reply(last, true)
                        }
                        _ => doc! { "ok": 0.0, "errmsg": "Authentication failed.", "code": 18, "codeName": "AuthenticationFailed" },
                    },
                    other => {
                        seen.lock().unwrap().commands.push(other.to_string());
                        doc! { "ok": 1.0 }
                    }
                };
                if let Ok(speculative) = cmd.get_document("speculativeAuthenticate") {
                    assert_eq!(speculative.get_str("mechanism").unwrap(), "SCRAM-SHA-256");
                    assert_eq!(speculative.get_str("db").unwrap(), "admin");
                    if takes_speculative {
                        let (started, first) = ServerExchange::start(verifier.clone(), &payload(speculative)).unwrap();
                        exchange = Some(started);
                        seen.lock().unwrap().speculative_taken += 1;
                        answer.insert("speculativeAuthenticate", sasl_reply(first, false));
                    }
                }
                s.write_all(&common::mongo::raw::op_msg(7, id, &answer)).await.unwrap();
            }
        });
    }
}

/// One login through dbtape to a stand-in that does or does not take the speculative step.
async fn login_through_dbtape(services: &Services, takes_speculative: bool) -> Seen {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    tokio::spawn(stand_in(listener, takes_speculative, seen.clone()));
    let root = tempfile::tempdir().unwrap();
    let password = common::secret_file(root.path(), "upstream-password", UPSTREAM_PASSWORD);
    let text = format!(
        r#"
{preamble}[[databases]]
name = "mongo"
protocol = "mongodb"
listen = "127.0.0.1:0"
upstream = "mongodb://{upstream}"
[databases.upstream_tls]
mode = "disable"
[databases.auth]
password = {password}
[[users]]
name = "alice"
scram_verifier = "{alice}"
[[users.grants]]
database = "mongo"
db_users = ["{UPSTREAM_USER}"]
"#,
        preamble = common::test_server_toml(root.path()),
        alice = verifier(ALICE_PASSWORD),
    );
    let (addr, stop, task) = run_server(&text, root.path()).await;
    assert_eq!(common::mongo::ping_as_alice(services, addr).await, "1.0");
    let _ = stop.send(());
    task.await.unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_login_rides_in_the_hello_and_falls_back_to_sasl_start() {
    let services = Services::load();

    let speculative = login_through_dbtape(&services, true).await;
    assert_eq!(speculative.logins, 1, "{speculative:?}");
    assert_eq!((speculative.speculative_taken, speculative.sasl_starts), (1, 0), "{speculative:?}");
    assert_eq!(speculative.commands, ["ping"]);

    let fallback = login_through_dbtape(&services, false).await;
    assert_eq!(fallback.logins, 1, "{fallback:?}");
    assert_eq!((fallback.speculative_taken, fallback.sasl_starts), (0, 1), "{fallback:?}");
    assert_eq!(fallback.commands, ["ping"]);
}
