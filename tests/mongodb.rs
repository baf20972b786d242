//! The MongoDB path against the real secantusdb server, driven by pymongo and by the
//! `mongodb` crate: logins, grants, compression, topology, events and playback.

mod common;

use common::mongo::{brief, MongoProxy};
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
