//! The load `scripts/bench mongo` drives: CLIENTS concurrent clients, each on its own
//! connection, doing 80% `find_one` by a random `_id` among PRELOADED documents and 20%
//! `insert_one`, for SECONDS. Prints `ops=<n> seconds=<s> p99_us=<p99>`. With `--storm`,
//! each client opens a new driver client (its connections, handshake and login) for every
//! operation, a `find_one`, and closes it: a connection storm. `--create-user NAME PASSWORD`
//! creates a root user on a server that does not require logins yet, for the bench's paths
//! to log in as.
//!
//!   cargo run --release --example mongo_load -- URI CLIENTS SECONDS [--preload | --storm]
//!   cargo run --release --example mongo_load -- URI 1 1 --create-user NAME PASSWORD

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use mongodb::options::ClientOptions;

const PRELOADED: i64 = 10_000;

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let uri = args.get(1).ok_or("usage: mongo_load URI CLIENTS SECONDS [--preload]")?.clone();
    let clients: usize = args.get(2).map_or(Ok(8), |a| a.parse())?;
    let seconds: u64 = args.get(3).map_or(Ok(10), |a| a.parse())?;
    let mut options = ClientOptions::parse(&uri).await?;
    options.max_pool_size = Some(1);
    if let Some(at) = args.iter().position(|a| a == "--create-user") {
        let (Some(name), Some(password)) = (args.get(at + 1), args.get(at + 2)) else {
            return Err("--create-user needs NAME and PASSWORD".into());
        };
        let client = mongodb::Client::with_options(options.clone())?;
        let roles = vec![doc! { "role": "root", "db": "admin" }];
        client.database("admin").run_command(doc! { "createUser": name, "pwd": password, "roles": roles }).await?;
        println!("created {name}");
        return Ok(());
    }
    if args.iter().any(|a| a == "--preload") {
        let client = mongodb::Client::with_options(options.clone())?;
        let coll = client.database("bench").collection::<Document>("items");
        coll.drop().await?;
        let docs: Vec<Document> = (0..PRELOADED).map(|i| doc! { "_id": i, "name": format!("item {i}"), "qty": i % 97 }).collect();
        coll.insert_many(docs).await?;
        println!("preloaded {PRELOADED}");
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    if args.iter().any(|a| a == "--storm") {
        return storm(options, clients, deadline, seconds).await;
    }
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let client = mongodb::Client::with_options(options.clone())?;
        tasks.push(tokio::spawn(async move {
            let coll = client.database("bench").collection::<Document>("items");
            let inserts = client.database("bench").collection::<Document>(&format!("inserts_{worker}"));
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (worker as u64 + 1);
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let r = next(&mut state);
                let started = Instant::now();
                if r % 10 < 8 {
                    let id = (r >> 8) as i64 % PRELOADED;
                    coll.find_one(doc! { "_id": id }).await?;
                } else {
                    inserts.insert_one(doc! { "w": worker as i64, "n": n as i64, "payload": "x".repeat(64) }).await?;
                }
                latencies.push(started.elapsed().as_micros() as u64);
                n += 1;
            }
            client.shutdown().await;
            Ok::<_, mongodb::error::Error>(latencies)
        }));
    }
    report(tasks, seconds).await
}

async fn storm(options: ClientOptions, clients: usize, deadline: Instant, seconds: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let options = options.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (worker as u64 + 1);
            while Instant::now() < deadline {
                let started = Instant::now();
                let client = mongodb::Client::with_options(options.clone())?;
                let id = (next(&mut state) >> 8) as i64 % PRELOADED;
                client.database("bench").collection::<Document>("items").find_one(doc! { "_id": id }).await?;
                client.shutdown().await;
                latencies.push(started.elapsed().as_micros() as u64);
            }
            Ok::<_, mongodb::error::Error>(latencies)
        }));
    }
    report(tasks, seconds).await
}

type Latencies = tokio::task::JoinHandle<Result<Vec<u64>, mongodb::error::Error>>;

/// Waits for every client and prints `ops=<n> seconds=<s> p99_us=<p99>`.
async fn report(tasks: Vec<Latencies>, seconds: u64) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64().max(seconds as f64);
    all.sort_unstable();
    let p99 = all.get(all.len() * 99 / 100).copied().unwrap_or(0);
    println!("ops={} seconds={elapsed:.2} p99_us={p99}", all.len());
    Ok(())
}
