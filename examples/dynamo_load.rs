//! The load `scripts/bench dynamodb` drives: CLIENTS concurrent clients, each on its own
//! keep-alive connection, doing 40% GetItem and 20% Query over PRELOADED items and 40%
//! PutItem, every request SigV4-signed as an SDK signs it, for SECONDS. Prints
//! `requests=<n> seconds=<s> p99_us=<p99> errors=<n>`. With `--storm`, each request goes on
//! a new connection, as the aws CLI sends each call.
//!
//!   cargo run --release --example dynamo_load -- URL KEY_ID SECRET CLIENTS SECONDS [--preload|--storm]

use std::time::{Duration, Instant, SystemTime};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const PRELOADED: u64 = 1_000;
const TABLE: &str = "bench";

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

struct Client {
    host: String,
    key_id: String,
    secret: String,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(host: &str, key_id: &str, secret: &str) -> Result<Client, Box<dyn std::error::Error>> {
        let tcp = tokio::net::TcpStream::connect(host).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Client { host: host.to_string(), key_id: key_id.to_string(), secret: secret.to_string(), sender })
    }

    /// One request; returns the status code.
    async fn call(&mut self, operation: &str, body: String) -> Result<u16, Box<dyn std::error::Error>> {
        let target = format!("DynamoDB_20120810.{operation}");
        let identity = aws_credential_types::Credentials::new(&self.key_id, &self.secret, None, None, "load").into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("dynamodb")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()?
            .into();
        let headers = [("host", self.host.as_str()), ("content-type", "application/x-amz-json-1.0"), ("x-amz-target", target.as_str())];
        let uri = format!("http://{}/", self.host);
        let signable = SignableRequest::new("POST", uri.as_str(), headers.into_iter(), SignableBody::Bytes(body.as_bytes()))?;
        let (instructions, _) = sign(signable, &params)?.into_parts();
        let mut request = http::Request::post("/")
            .header("host", &self.host)
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amz-target", &target)
            .header("content-length", body.len())
            .body(Full::new(Bytes::from(body)))?;
        for (name, value) in instructions.headers() {
            request.headers_mut().insert(http::HeaderName::from_bytes(name.as_bytes())?, http::HeaderValue::from_str(value)?);
        }
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    }
}

fn item(id: u64) -> String {
    format!(r#"{{"pk":{{"S":"p{}"}},"sk":{{"N":"{id}"}},"name":{{"S":"item {id}"}},"qty":{{"N":"{}"}}}}"#, id % 50, id % 97)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: dynamo_load URL KEY_ID SECRET CLIENTS SECONDS [--preload]";
    let host = args.get(1).ok_or(usage)?.trim_start_matches("http://").trim_end_matches('/').to_string();
    let key_id = args.get(2).ok_or(usage)?.clone();
    let secret = args.get(3).ok_or(usage)?.clone();
    let clients: usize = args.get(4).map_or(Ok(8), |a| a.parse())?;
    let seconds: u64 = args.get(5).map_or(Ok(10), |a| a.parse())?;
    if args.iter().any(|a| a == "--preload") {
        let mut client = Client::connect(&host, &key_id, &secret).await?;
        let create = format!(
            r#"{{"TableName":"{TABLE}","BillingMode":"PAY_PER_REQUEST","AttributeDefinitions":[{{"AttributeName":"pk","AttributeType":"S"}},{{"AttributeName":"sk","AttributeType":"N"}}],"KeySchema":[{{"AttributeName":"pk","KeyType":"HASH"}},{{"AttributeName":"sk","KeyType":"RANGE"}}]}}"#
        );
        let status = client.call("CreateTable", create).await?;
        println!("create table: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        for id in 0..PRELOADED {
            let status = client.call("PutItem", format!(r#"{{"TableName":"{TABLE}","Item":{}}}"#, item(id))).await?;
            if status != 200 {
                return Err(format!("preload PutItem answered {status}").into());
            }
        }
        println!("preloaded {PRELOADED}");
        return Ok(());
    }
    let storm = args.iter().any(|a| a == "--storm");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let (host, key_id, secret) = (host.clone(), key_id.clone(), secret.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&host, &key_id, &secret).await.map_err(|e| e.to_string())?;
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (worker as u64 + 1);
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let r = next(&mut state);
                let id = r % PRELOADED;
                let (operation, body) = match r % 5 {
                    0 | 1 => ("GetItem", format!(r#"{{"TableName":"{TABLE}","Key":{{"pk":{{"S":"p{}"}},"sk":{{"N":"{id}"}}}}}}"#, id % 50)),
                    2 => (
                        "Query",
                        format!(
                            r#"{{"TableName":"{TABLE}","KeyConditionExpression":"pk = :p AND sk < :s","ExpressionAttributeValues":{{":p":{{"S":"p{}"}},":s":{{"N":"{}"}}}},"Limit":5}}"#,
                            id % 50,
                            id
                        ),
                    ),
                    _ => ("PutItem", format!(r#"{{"TableName":"{TABLE}","Item":{}}}"#, item(PRELOADED + r % 100_000))),
                };
                let t = Instant::now();
                if storm {
                    client = Client::connect(&host, &key_id, &secret).await.map_err(|e| e.to_string())?;
                }
                match client.call(operation, body).await {
                    Ok(200) => latencies.push(t.elapsed().as_micros() as u64),
                    Ok(_) => errors += 1,
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok::<_, String>((latencies, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await??;
        all.extend(latencies);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let p99 = all.get(all.len() * 99 / 100).copied().unwrap_or(0);
    println!("requests={} seconds={elapsed:.3} p99_us={p99} errors={errors}", all.len());
    Ok(())
}
