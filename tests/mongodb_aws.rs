//! MONGODB-AWS upstream logins, checked by a real SigV4 verifier: a stand-in server here
//! speaks just enough of the MongoDB wire protocol to run the SASL conversation, then does
//! what DocumentDB does with the client's answer: it sends the signed GetCallerIdentity
//! request to STS (moto, with signature checking on) and accepts the login only if STS does.

mod common;

use std::sync::{Arc, Mutex};

use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::proxy::{run_server, verifier, ALICE_PASSWORD};
use common::services::Services;

const STS_HOST: &str = "sts.amazonaws.com";

/// What the stand-in saw: the ARN STS vouched for, or STS's refusal.
#[derive(Default, Debug)]
struct Seen {
    callers: Vec<Result<String, String>>,
    commands: Vec<String>,
}

async fn read_msg<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<(i32, Document)> {
    let (request_id, op_code, doc) = common::mongo::raw::read(s).await?;
    assert_eq!(op_code, common::mongo::raw::OP_MSG, "the proxy speaks OP_MSG upstream");
    Some((request_id, doc))
}

async fn reply<S: tokio::io::AsyncWrite + Unpin>(s: &mut S, to: i32, doc: Document) {
    s.write_all(&common::mongo::raw::op_msg(7, to, &doc)).await.unwrap();
}

fn binary(doc: &Document, key: &str) -> Vec<u8> {
    match doc.get(key) {
        Some(mongodb::bson::Bson::Binary(b)) => b.bytes.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

/// Replays the client's signed request to STS, as the server side of MONGODB-AWS does.
async fn get_caller_identity(sts: &str, nonce: &[u8], answer: &Document) -> Result<String, String> {
    use base64::Engine as _;
    let body = "Action=GetCallerIdentity&Version=2011-06-15";
    let mut request = format!(
        "POST / HTTP/1.1\r\nHost: {STS_HOST}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Authorization: {}\r\nX-Amz-Date: {}\r\nX-MongoDB-Server-Nonce: {}\r\nX-MongoDB-GS2-CB-Flag: n\r\nConnection: close\r\n",
        body.len(),
        answer.get_str("a").unwrap(),
        answer.get_str("d").unwrap(),
        base64::engine::general_purpose::STANDARD.encode(nonce),
    );
    if let Ok(token) = answer.get_str("t") {
        request.push_str(&format!("X-Amz-Security-Token: {token}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let mut conn = TcpStream::connect(sts).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).unwrap_or_default().to_string();
    match (status.as_str(), response.split_once("<Arn>")) {
        ("200", Some((_, rest))) => Ok(rest.split("</Arn>").next().unwrap_or_default().to_string()),
        _ => Err(format!("STS answered {status}")),
    }
}

/// TLS as DocumentDB requires (and as dbtape insists on for IAM logins).
fn tls_acceptor(certs: &str) -> tokio_rustls::TlsAcceptor {
    let chain: Vec<_> =
        rustls_pemfile::certs(&mut std::fs::read(format!("{certs}/server.crt")).unwrap().as_slice()).map(Result::unwrap).collect();
    let key = rustls_pemfile::private_key(&mut std::fs::read(format!("{certs}/server.key")).unwrap().as_slice()).unwrap().unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn stand_in_server(listener: TcpListener, tls: tokio_rustls::TlsAcceptor, sts: String, seen: Arc<Mutex<Seen>>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let sts = sts.clone();
        let seen = seen.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Ok(mut s) = tls.accept(tcp).await else { return };
            let mut server_nonce = Vec::new();
            while let Some((id, cmd)) = read_msg(&mut s).await {
                let name = cmd.keys().next().cloned().unwrap_or_default();
                let answer = match name.as_str() {
                    "hello" | "isMaster" | "ismaster" => doc! {
                        "isWritablePrimary": true, "maxWireVersion": 21, "minWireVersion": 0,
                        "maxBsonObjectSize": 16777216, "maxMessageSizeBytes": 48000000, "ok": 1.0,
                    },
                    "saslStart" => {
                        assert_eq!(cmd.get_str("mechanism").unwrap(), "MONGODB-AWS");
                        assert_eq!(cmd.get_str("$db").unwrap(), "$external");
                        let first = Document::from_reader(binary(&cmd, "payload").as_slice()).unwrap();
                        assert_eq!(first.get_i32("p").unwrap(), 110);
                        server_nonce = binary(&first, "r");
                        assert_eq!(server_nonce.len(), 32);
                        server_nonce.extend((0..32u8).map(|i| i.wrapping_mul(37)));
                        let payload = doc! { "s": Binary { subtype: BinarySubtype::Generic, bytes: server_nonce.clone() }, "h": STS_HOST };
                        let mut bytes = Vec::new();
                        payload.to_writer(&mut bytes).unwrap();
                        doc! { "conversationId": 1, "done": false, "payload": Binary { subtype: BinarySubtype::Generic, bytes }, "ok": 1.0 }
                    }
                    "saslContinue" => {
                        let answer = Document::from_reader(binary(&cmd, "payload").as_slice()).unwrap();
                        let caller = get_caller_identity(&sts, &server_nonce, &answer).await;
                        let ok = caller.is_ok();
                        seen.lock().unwrap().callers.push(caller);
                        if ok {
                            doc! { "conversationId": 1, "done": true, "payload": Binary { subtype: BinarySubtype::Generic, bytes: vec![] }, "ok": 1.0 }
                        } else {
                            doc! { "ok": 0.0, "errmsg": "Authentication failed.", "code": 18, "codeName": "AuthenticationFailed" }
                        }
                    }
                    other => {
                        seen.lock().unwrap().commands.push(other.to_string());
                        doc! { "ok": 1.0 }
                    }
                };
                reply(&mut s, id, answer).await;
            }
        });
    }
}

async fn proxy_for(
    upstream: std::net::SocketAddr,
    certs: &str,
    db_user: &str,
    assume: &str,
    root: &std::path::Path,
    sts: &str,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let text = format!(
        r#"
{preamble}[[databases]]
name = "docdb"
protocol = "mongodb"
db_type = "documentdb"
listen = "127.0.0.1:0"
upstream = "mongodb://{upstream}"
[databases.upstream_tls]
ca = "{certs}/ca.crt"
[databases.auth]
method = "aws_iam"
[databases.aws]
region = "us-east-1"
endpoint = "{sts}"
{assume}
[[users]]
name = "alice"
scram_verifier = "{alice}"
[[users.grants]]
database = "docdb"
db_users = ["{db_user}"]
"#,
        preamble = common::test_server_toml(root),
        alice = verifier(ALICE_PASSWORD),
    );
    run_server(&text, root).await
}

/// One test, because the AWS credential chain reads the process environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_aws_logins_are_checked_by_sts_and_documentdb_users_are_role_arns() {
    let services = Services::load();
    let sts = services.get("AWS_ENDPOINT").trim_start_matches("http://").to_string();
    let role = services.get("MOTO_ROLE_ARN").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let certs = services.get("CERTS").to_string();
    tokio::spawn(stand_in_server(listener, tls_acceptor(&certs), sts.clone(), seen.clone()));
    services.use_proxy_aws_identity();

    // DocumentDB: the db_user is the role's ARN; the proxy assumes it (external ID from the
    // config) and proves that identity to the server.
    let root = tempfile::tempdir().unwrap();
    let (addr, stop, task) = proxy_for(upstream, &certs, &role, "external_id = \"ext-123\"", root.path(), &format!("http://{sts}")).await;
    assert_eq!(common::mongo::ping_as_alice(&services, addr).await, "1.0");
    let _ = stop.send(());
    task.await.unwrap();
    {
        let seen = seen.lock().unwrap();
        let arn = seen.callers.last().unwrap().as_ref().expect("STS refused the proxy's signature").clone();
        assert!(arn.contains(":assumed-role/audit-target/dbtape"), "{arn}");
        assert_eq!(seen.commands, ["ping"]);
    }
    let store = dbtape::recording::RecordingStore::new(root.path().join("recordings"));
    let summaries: Vec<_> = store.summaries().unwrap().into_iter().map(Result::unwrap).collect();
    let events = common::read_lines(&store, &summaries[0].sid).0;
    let start = common::assert_schema_valid(&events[0]);
    assert_eq!(start["code"], "TDB00I");
    assert_eq!(start["db_user"], role.as_str());
    assert_eq!(start["aws_role_arn"], role.as_str());
    assert_eq!(start["db_type"], "documentdb");

    // The same exchange signed with a wrong secret: STS refuses it, so the server does, and
    // the session's start is recorded as failed.
    // The credential chain reads the process environment; this is the only test in its
    // binary, so no other test reads it while it changes.
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let root = tempfile::tempdir().unwrap();
    let (addr, stop, task) =
        proxy_for(upstream, &certs, "arn:aws:iam::123456789012:user/proxy", "", root.path(), &format!("http://{sts}")).await;
    let out = common::mongo::ping_as_alice(&services, addr).await;
    assert_eq!(out, "failed 18");
    let _ = stop.send(());
    task.await.unwrap();
    let refused = seen.lock().unwrap().callers.last().unwrap().clone();
    assert_eq!(refused, Err("STS answered 403".into()));
    let store = dbtape::recording::RecordingStore::new(root.path().join("recordings"));
    let summaries: Vec<_> = store.summaries().unwrap().into_iter().map(Result::unwrap).collect();
    let starts: Vec<serde_json::Value> = summaries
        .iter()
        .flat_map(|s| common::read_lines(&store, &s.sid).0)
        .map(|l| common::assert_schema_valid(&l))
        .filter(|e| e["event"] == "db.session.start")
        .collect();
    assert!(starts.iter().any(|e| e["code"] == "TDB00W" && e["error"].as_str().unwrap().contains("AuthenticationFailed")), "{starts:#?}");
}
