//! The MongoDB path against the real secantusdb server, driven by pymongo and by the
//! `mongodb` crate: logins, grants, compression, topology, events and playback.

mod common;

use common::mongo::{brief, raw, MongoProxy};
use common::proxy::ALICE_PASSWORD;

const CRUD: &str = r#"
import sys, pymongo
c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)
b = c.lib.books
b.drop()
b.insert_one({"_id": 1, "title": "Dune", "year": 1965})
b.insert_many([{"_id": i, "title": "Book %d" % i, "year": 2000 + i} for i in range(2, 7)])
print([d["_id"] for d in b.find({"year": {"$gt": 2002}}, batch_size=2).sort("_id", 1)])
print(b.update_many({"year": {"$gte": 2005}}, {"$set": {"new": True}}).modified_count)
print(b.delete_one({"_id": 2}).deleted_count)
print(list(b.aggregate([{"$match": {"new": True}}, {"$count": "n"}])))
try:
    c.lib.command("noSuchCommand")
except pymongo.errors.OperationFailure as e:
    print("failed", e.code)
print(c.topology_description.topology_type_name, [s for s in c.topology_description.server_descriptions()])
c.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymongo_crud_is_recorded_and_plays_back_as_mongosh() {
    let mut proxy = MongoProxy::start().await;
    // No directConnection: the server advertises a replica set, which the proxy rewrites.
    let (ok, out, err) = proxy.pymongo(CRUD, proxy.uri("alice", ALICE_PASSWORD, "")).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..5], ["[3, 4, 5, 6]", "2", "1", "[{'n': 2}]", "failed 59"], "{out}");
    let port = proxy.addr.port();
    assert_eq!(lines[5], format!("ReplicaSetWithPrimary [('127.0.0.1', {port})]"), "the driver left the proxy: {out}");
    proxy.stop().await;

    let sessions = proxy.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let events: Vec<String> = sessions[0].iter().map(brief).collect();
    assert_eq!(
        events,
        [
            "start TDB00I dbtape_app",
            "query drop lib",
            "result 0",
            "query insert lib",
            "result 1",
            "query insert lib",
            "result 5",
            "query find lib",
            "result 2",
            "query getMore lib",
            "result 2",
            "query getMore lib",
            "result 0",
            "query update lib",
            "result 2",
            "query delete lib",
            "result 1",
            "query aggregate lib",
            "result 1",
            "query noSuchCommand lib",
            "error 59 CommandNotFound",
            "query endSessions admin",
            "result 0",
            "end",
        ]
    );
    let start = &sessions[0][0];
    assert_eq!(start["user"], "alice");
    assert_eq!(start["db_protocol"], "mongodb");
    assert!(start["user_agent"].as_str().unwrap().contains("PyMongo"), "{start}");
    // The bulk insert's documents went as a document sequence (OP_MSG kind 1).
    let bulk = sessions[0][5]["db_query"].as_str().unwrap();
    assert!(bulk.contains(r#", Documents=[{"_id": {"$numberInt":"2"},"title": "Book 2","year": {"$numberInt":"2002"}}, {"#), "{bulk}");
    // Results name their query.
    assert_eq!(sessions[0][2]["query_ei"], sessions[0][1]["ei"]);
    let failed = &sessions[0][20];
    assert_eq!(failed["success"], false);
    assert!(failed["message"].as_str().unwrap().contains("noSuchCommand"), "{failed}");

    let sid = start["sid"].as_str().unwrap();
    let screen = proxy.play_text(sid);
    let body: Vec<&str> = screen.lines().filter(|l| !l.is_empty() && !l.starts_with("Session")).collect();
    assert_eq!(
        body,
        [
            "lib> db.books.drop()",
            "{ ok: 1 }",
            r#"lib> db.books.insertOne({ _id: 1, title: "Dune", year: 1965 })"#,
            "{ acknowledged: true, insertedCount: 1 }",
            r#"lib> db.books.insertMany([ { _id: 2, title: "Book 2", year: 2002 }, { _id: 3, title: "Book 3", year: 2003 }, { _id: 4, title: "Book 4", year: 2004 }, { _id: 5, title: "Book 5", year: 2005 }, { _id: 6, title: "Book 6", year: 2006 } ])"#,
            "{ acknowledged: true, insertedCount: 5 }",
            "lib> db.books.find({ year: { $gt: 2002 } }).sort({ _id: 1 })",
            "(2 documents returned)",
            "lib> it",
            "(2 documents returned)",
            "lib> it",
            "(0 documents returned)",
            "lib> db.books.updateMany({ year: { $gte: 2005 } }, { $set: { new: true } })",
            "{ acknowledged: true, modifiedCount: 2 }",
            "lib> db.books.deleteOne({ _id: 2 })",
            "{ acknowledged: true, deletedCount: 1 }",
            r#"lib> db.books.aggregate([ { $match: { new: true } }, { $count: "n" } ])"#,
            "(1 document returned)",
            "lib> db.runCommand({ noSuchCommand: 1 })",
            "MongoServerError[CommandNotFound]: no such command: 'noSuchCommand'",
        ],
        "{screen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leg_compression_with_zlib_zstd_and_snappy() {
    let mut proxy = MongoProxy::start().await;
    let script = r#"
import sys, pymongo
for comp in ["zlib", "zstd", "snappy"]:
    c = pymongo.MongoClient(sys.argv[1] + "&compressors=" + comp, serverSelectionTimeoutMS=5000)
    c.lib.comp.insert_one({"c": comp, "pad": "x" * 4000})
    n = c.lib.comp.count_documents({"c": comp})
    conn = c._topology.select_server(pymongo.read_preferences.ReadPreference.PRIMARY, "t").pool.conns[0]
    ctx = conn.compression_context
    print(comp, n, ctx.compressor_id if ctx else None)
    c.lib.comp.delete_many({"c": comp})
    c.close()
"#;
    let (ok, out, err) = proxy.pymongo(script, proxy.uri("alice", ALICE_PASSWORD, "")).await;
    assert!(ok, "{err}");
    // The driver negotiated each compressor with the proxy (ids 2, 3, 1) and used it.
    assert_eq!(out.lines().collect::<Vec<_>>(), ["zlib 1 2", "zstd 1 3", "snappy 1 1"], "{out}");
    proxy.stop().await;
    let sessions = proxy.sessions();
    assert_eq!(sessions.len(), 3);
    for session in &sessions {
        let events: Vec<String> = session.iter().map(brief).collect();
        assert_eq!(
            events[..5],
            ["start TDB00I dbtape_app", "query insert lib", "result 1", "query aggregate lib", "result 1"],
            "{events:?}"
        );
        assert!(session[1]["db_query"].as_str().unwrap().contains(&"x".repeat(4000)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_ungranted_databases_and_secrets() {
    let mut proxy = MongoProxy::start().await;
    let wrong = r#"
import sys, pymongo
c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)
try:
    c.lib.books.find_one()
except pymongo.errors.OperationFailure as e:
    print("refused", e.code)
"#;
    let (ok, out, err) = proxy.pymongo(wrong, proxy.uri("alice", "not-her-password", "&authMechanism=SCRAM-SHA-256")).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "refused 18");
    let (ok, out, err) = proxy.pymongo(wrong, proxy.uri("nobody", "whatever-password", "")).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "refused 18");

    let session = r#"
import sys, pymongo
c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)
try:
    c.secret.payroll.find_one()
except pymongo.errors.OperationFailure as e:
    print("denied", e.code)
print(c.lib.books.count_documents({}) >= 0)
c.admin.command("createUser", "eve", pwd="eve-hunter2-secret", roles=[])
c.admin.command("updateUser", "eve", pwd="eve-second-secret")
c.admin.command("dropUser", "eve")
c.close()
"#;
    let (ok, out, err) = proxy.pymongo(session, proxy.uri("alice", ALICE_PASSWORD, "")).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["denied 13", "True"]);
    proxy.stop().await;

    let sessions = proxy.sessions();
    let refused: Vec<&serde_json::Value> = sessions.iter().flatten().filter(|e| e["code"] == "TDB00W").collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert_eq!(refused[0]["user"], "alice");
    assert_eq!(refused[1]["user"], "nobody");
    assert!(refused[0]["error"].as_str().unwrap().contains("password authentication failed"), "{}", refused[0]);

    let session = sessions.iter().find(|s| s[0]["code"] == "TDB00I").unwrap();
    let events: Vec<String> = session.iter().map(brief).collect();
    assert_eq!(events[1], "denied find secret 13 Unauthorized", "{events:?}");
    assert!(events.contains(&"query createUser admin".to_string()), "{events:?}");
    let create = session.iter().find(|e| brief(e) == "query createUser admin").unwrap();
    assert!(create["db_query"].as_str().unwrap().contains(r#""pwd": "[REDACTED]""#), "{create}");
    assert_eq!(create["redacted"], true);
    // No secret anywhere in the recordings' bytes, compressed or exported.
    let export = common::dbtape_bin().args(["export", "--dir"]).arg(proxy.root.path().join("recordings")).output().unwrap();
    let text = String::from_utf8_lossy(&export.stdout);
    assert!(text.contains("createUser"));
    for secret in ["eve-hunter2-secret", "eve-second-secret", "not-her-password", ALICE_PASSWORD] {
        assert!(!text.contains(secret), "{secret} reached the export");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_upstream_password_refuses_the_login_and_says_why() {
    let mut proxy = MongoProxy::start().await;
    std::fs::remove_file(proxy.root.path().join("mongo-password")).unwrap();
    let script = r#"
import sys, pymongo
c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)
try:
    c.lib.books.find_one()
except pymongo.errors.OperationFailure as e:
    print("refused", e.code, e.details.get("errmsg"))
"#;
    let (ok, out, err) = proxy.pymongo(script, proxy.uri("alice", ALICE_PASSWORD, "")).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("refused 18 "), "{out}");
    assert!(out.contains("cannot read the upstream password"), "{out}");
    proxy.stop().await;
    let starts: Vec<serde_json::Value> = proxy.sessions().into_iter().flatten().filter(|e| e["code"] == "TDB00W").collect();
    assert_eq!(starts.len(), 1, "{starts:?}");
    let error = starts[0]["error"].as_str().unwrap();
    assert!(error.contains("cannot read the upstream password (databases.auth.password, file "), "{error}");
}

/// A MONGODB-X509 URI over TLS with `who`'s test certificate and key (pymongo wants them in
/// one PEM file).
fn x509_uri(proxy: &MongoProxy, who: &str) -> String {
    let certs = proxy.services.get("CERTS");
    let pem = proxy.root.path().join(format!("{who}.pem"));
    let mut both = std::fs::read(format!("{certs}/{who}.crt")).unwrap();
    both.extend(std::fs::read(format!("{certs}/{who}.key")).unwrap());
    std::fs::write(&pem, both).unwrap();
    format!(
        "mongodb://{}/lib?authMechanism=MONGODB-X509&authSource=%24external&tls=true&tlsCAFile={certs}/ca.crt&tlsCertificateKeyFile={}",
        proxy.addr,
        pem.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_login_over_tls() {
    let mut proxy = MongoProxy::start().await;
    let script = r#"
import sys, pymongo
c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)
c.lib.certs.insert_one({"who": "carol"})
print(c.lib.certs.count_documents({"who": "carol"}) >= 1)
c.lib.certs.delete_many({"who": "carol"})
c.close()
"#;
    let (ok, out, err) = proxy.pymongo(script, x509_uri(&proxy, "carol")).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "True");
    // A certificate from another CA is refused.
    let uri = x509_uri(&proxy, "mallory");
    let (ok, _, _) = proxy
        .pymongo("import sys, pymongo\npymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=3000).lib.certs.find_one()\n", uri)
        .await;
    assert!(!ok, "a rogue certificate logged in");
    proxy.stop().await;
    let sessions = proxy.sessions();
    let carol: Vec<String> = sessions.iter().find(|s| s[0]["code"] == "TDB00I").unwrap().iter().map(brief).collect();
    assert_eq!(carol[..3], ["start TDB00I dbtape_app", "query insert lib", "result 1"]);
    let starts: Vec<&serde_json::Value> = sessions.iter().flatten().filter(|e| e["event"] == "db.session.start").collect();
    assert_eq!(starts[0]["user"], "carol");
    assert!(starts.iter().any(|e| e["code"] == "TDB00W" && e["error"].as_str().unwrap_or_default().contains("not trusted")), "{starts:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_driver_works_through_the_proxy() {
    use mongodb::bson::doc;
    let mut proxy = MongoProxy::start().await;
    let client = mongodb::Client::with_uri_str(proxy.uri("alice", ALICE_PASSWORD, "")).await.unwrap();
    let books = client.database("lib").collection::<mongodb::bson::Document>("rust_books");
    books.drop().await.unwrap();
    books.insert_many((0..5).map(|i| doc! { "_id": i, "n": i })).await.unwrap();
    let n = books.count_documents(doc! { "n": { "$gte": 2 } }).await.unwrap();
    assert_eq!(n, 3);
    let mut cursor = books.find(doc! {}).batch_size(2).await.unwrap();
    let mut seen = 0;
    while cursor.advance().await.unwrap() {
        seen += 1;
    }
    assert_eq!(seen, 5);
    // The driver's shutdown waits for every cursor to be dropped.
    drop(cursor);
    let denied = client.database("secret").collection::<mongodb::bson::Document>("x").find_one(doc! {}).await;
    let code = match denied.unwrap_err().kind.as_ref() {
        mongodb::error::ErrorKind::Command(e) => e.code,
        other => panic!("{other:?}"),
    };
    assert_eq!(code, 13);
    client.shutdown().await;
    proxy.stop().await;
    let sessions = proxy.sessions();
    let events: Vec<String> = sessions.iter().flatten().map(brief).collect();
    for expected in
        ["query insert lib", "result 5", "query aggregate lib", "query find lib", "query getMore lib", "denied find secret 13 Unauthorized"]
    {
        assert!(events.iter().any(|e| e == expected), "{expected} missing from {events:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_recorded_and_end_only_their_connection() {
    let mut proxy = MongoProxy::start().await;
    // Logged in by pymongo, then raw bytes on the driver's own socket.
    let script = r#"
import sys, struct, pymongo
from pymongo.read_preferences import ReadPreference
def raw(client):
    client.lib.command("ping")
    return client._topology.select_server(ReadPreference.PRIMARY, "t").pool.conns[0].conn.get_conn
def reply_doc(sock):
    import bson
    head = sock.recv(16, 0x100)
    length = struct.unpack("<i", head[:4])[0]
    body = b""
    while len(body) < length - 16:
        body += sock.recv(length - 16 - len(body))
    return bson.decode(body[5:])
bad_bson = struct.pack("<I", 0) + b"\x00" + struct.pack("<i", 13) + b"\x02abc\x00\xff\xff\xff\x7f\x00"
a = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)
sock = raw(a)
sock.sendall(struct.pack("<iiii", 16 + len(bad_bson), 99, 0, 2013) + bad_bson)
r = reply_doc(sock)
print("bad bson:", r["code"], r["codeName"])
sock.sendall(struct.pack("<iiii", 16 + 4, 100, 0, 2001) + b"\x00\x00\x00\x00")
print("unknown opcode closes:", sock.recv(100) == b"")
b = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)
sock = raw(b)
sock.sendall(struct.pack("<iiii", 100_000_000, 101, 0, 2013))
print("oversized closes:", sock.recv(100) == b"")
c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000)
print("others carry on:", c.lib.command("ping")["ok"])
"#;
    let (ok, out, err) = proxy.pymongo(script, proxy.uri("alice", ALICE_PASSWORD, "&directConnection=true")).await;
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["bad bson: 9 FailedToParse", "unknown opcode closes: True", "oversized closes: True", "others carry on: 1.0"],
        "{out}"
    );
    proxy.stop().await;
    let malformed: Vec<serde_json::Value> =
        proxy.sessions().into_iter().flatten().filter(|e| e["event"] == "db.session.malformed_packet").collect();
    assert_eq!(malformed.len(), 3, "{malformed:#?}");
    let payloads: Vec<String> = malformed
        .iter()
        .map(|e| {
            use base64::Engine as _;
            String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(e["payload"].as_str().unwrap()).unwrap()).into_owned()
        })
        .collect();
    assert!(payloads.iter().any(|p| p.contains("unsupported opcode 2001")), "{payloads:?}");
    assert!(payloads.iter().any(|p| p.contains("message length 100000000")), "{payloads:?}");
    assert!(payloads.iter().any(|p| p.contains("abc")), "the bad BSON's own bytes: {payloads:?}");
    // Every recording still verifies.
    let verify = common::dbtape_bin()
        .args(["verify", "--all", "--dir"])
        .arg(proxy.root.path().join("recordings"))
        .arg("--public-key")
        .arg(proxy.root.path().join("key.pub"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_op_query_handshake_gets_an_op_reply_pointing_at_the_proxy() {
    let mut proxy = MongoProxy::start().await;
    let script = r#"
import sys, socket, struct, bson
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)))
query = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + bson.encode({"isMaster": 1, "client": {"driver": {"name": "legacy", "version": "1"}}})
s.sendall(struct.pack("<iiii", 16 + len(query), 42, 0, 2004) + query)
head = s.recv(16, socket.MSG_WAITALL)
length, _, response_to, opcode = struct.unpack("<iiii", head)
body = s.recv(length - 16, socket.MSG_WAITALL)
flags, cursor, start, count = struct.unpack("<iqii", body[:20])
reply = bson.decode(body[20:])
print(opcode, response_to, count, reply["ok"], reply.get("ismaster", reply.get("isWritablePrimary")), reply["me"] == sys.argv[1], reply["hosts"] == [sys.argv[1]])
"#;
    let (ok, out, err) = proxy.pymongo(script, proxy.addr.to_string()).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "1 42 1 1.0 True True True");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_stops_a_session_whose_recording_disk_is_full_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let status = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(status.success(), "mounting a tmpfs failed: this test needs root (CI runs as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let mut proxy = MongoProxy::start_recording_in(Some(mnt.join("recordings"))).await;
    // The client fills the disk itself once logged in, then keeps writing.
    let script = r#"
import os, sys, time, pymongo
c = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=5000, retryWrites=False)
c.lib.full.insert_one({"first": True})
st = os.statvfs(sys.argv[2])
with open(os.path.join(sys.argv[2], "filler"), "wb") as f:
    f.write(b"\0" * (st.f_bavail * st.f_frsize - 4096))
for i in range(2000):
    try:
        c.lib.full.insert_one({"i": i, "pad": os.urandom(2048).hex()})
    except pymongo.errors.OperationFailure as e:
        print("refused", e.code, e.details.get("codeName"))
        break
    except pymongo.errors.AutoReconnect:
        print("closed")
        break
    time.sleep(0.005)
else:
    print("never refused")
"#;
    let uri = proxy.uri("alice", ALICE_PASSWORD, "&directConnection=true");
    let (ok, out, err) = proxy.pymongo_with(script, &[&uri, mnt.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "refused 8000 AuditRecordingFailed");
    std::fs::remove_file(mnt.join("filler")).unwrap();
    proxy.stop().await;
}

/// Many short-lived driver clients (scripts, serverless functions) each open monitoring
/// connections and close them while dbtape holds an awaitable hello. Each must give back its
/// place (`server.max_pending_logins_per_source`, 64 by default) as it closes, not when the
/// wait would have ended: otherwise the places run out, new drivers' monitors are closed,
/// and they reconnect over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_that_closes_during_an_awaitable_hello_frees_its_place_at_once() {
    use mongodb::bson::doc;
    let mut proxy = MongoProxy::start().await;
    // A monitor: hello, then a second hello (the proxy takes it for a monitor).
    let monitor = || async {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let first = raw::command(&mut s, &doc! { "hello": 1, "$db": "admin" }).await.expect("first hello");
        raw::command(&mut s, &doc! { "hello": 1, "$db": "admin" }).await.map(|_| (s, first))
    };
    for _ in 0..80 {
        let (mut s, first) = monitor().await.expect("a monitor's second hello");
        let topology = first.get_document("topologyVersion").expect("the server has a topologyVersion").clone();
        // The proxy holds this one for up to 10 s; the monitor closes meanwhile.
        let awaitable = doc! { "hello": 1, "topologyVersion": topology, "maxAwaitTimeMS": 10_000i64, "$db": "admin" };
        tokio::io::AsyncWriteExt::write_all(&mut s, &raw::op_msg(8, 0, &awaitable)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        drop(s);
    }
    // 80 monitors came and went from one address within a second or two, more than its 64
    // places: a new one is still served, hello after hello.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    let served = loop {
        let served = match monitor().await {
            Some((mut s, _)) => raw::command(&mut s, &doc! { "hello": 1, "$db": "admin" }).await.is_some(),
            None => false,
        };
        if served || tokio::time::Instant::now() > deadline {
            break served;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(served, "a new monitor was closed: the closed ones still hold their places");
    proxy.stop().await;
}
