//! The DynamoDB path end to end: the aws CLI and boto3 through dbtape to moto, which checks
//! every signature and policy, so only requests signed with the assumed role get through.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::dynamo::{brief, DynamoProxy, ALICE_KEY, ALICE_SECRET, BOB_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn target_arn(proxy: &DynamoProxy) -> String {
    proxy.services.get("MOTO_ROLE_ARN").to_string()
}

fn briefs(session: &[serde_json::Value]) -> Vec<String> {
    session.iter().map(brief).collect()
}

/// moto keeps its tables for as long as it runs: each test run uses its own names.
fn unique(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_operations_are_recorded_and_played() {
    let mut proxy = DynamoProxy::start("").await;
    let table = unique("books");
    let table = table.as_str();
    let key = format!("{ALICE_KEY}@audit-target");
    let item = r#"{"author":{"S":"Herbert"},"title":{"S":"Dune"},"year":{"N":"1965"}}"#;
    let dune = r#"{"author":{"S":"Herbert"},"title":{"S":"Dune"}}"#;
    let batch = r#"{"TABLE":[{"PutRequest":{"Item":{"author":{"S":"Le Guin"},"title":{"S":"Earthsea"}}}},{"PutRequest":{"Item":{"author":{"S":"Herbert"},"title":{"S":"Dune Messiah"}}}}]}"#.replace("TABLE", table);
    let batch = batch.as_str();
    let steps: Vec<(Vec<&str>, bool)> = vec![
        (
            vec![
                "dynamodb",
                "create-table",
                "--table-name",
                table,
                "--attribute-definitions",
                "AttributeName=author,AttributeType=S",
                "AttributeName=title,AttributeType=S",
                "--key-schema",
                "AttributeName=author,KeyType=HASH",
                "AttributeName=title,KeyType=RANGE",
                "--billing-mode",
                "PAY_PER_REQUEST",
                "--stream-specification",
                "StreamEnabled=true,StreamViewType=NEW_IMAGE",
            ],
            true,
        ),
        (vec!["dynamodb", "put-item", "--table-name", table, "--item", item], true),
        (vec!["dynamodb", "get-item", "--table-name", table, "--key", dune], true),
        (
            vec![
                "dynamodb",
                "query",
                "--table-name",
                table,
                "--key-condition-expression",
                "author = :a",
                "--expression-attribute-values",
                r#"{":a":{"S":"Herbert"}}"#,
            ],
            true,
        ),
        (
            vec![
                "dynamodb",
                "update-item",
                "--table-name",
                table,
                "--key",
                dune,
                "--update-expression",
                "SET pages = :p",
                "--expression-attribute-values",
                r#"{":p":{"N":"412"}}"#,
            ],
            true,
        ),
        (vec!["dynamodb", "batch-write-item", "--request-items", batch], true),
        (vec!["dynamodb", "scan", "--table-name", table], true),
        (
            vec!["dynamodb", "put-item", "--table-name", table, "--item", item, "--condition-expression", "attribute_not_exists(author)"],
            false,
        ),
        (vec!["dynamodb", "delete-item", "--table-name", table, "--key", dune], true),
        (vec!["dynamodbstreams", "list-streams", "--table-name", table], true),
    ];
    let mut outputs = Vec::new();
    for (args, should_succeed) in &steps {
        let (ok, out, err) = proxy.aws(&key, ALICE_SECRET, args).await;
        assert_eq!(ok, *should_succeed, "{args:?}: {out}{err}");
        outputs.push((out, err));
    }
    assert!(outputs[2].0.contains("\"1965\""), "get-item returns the item: {}", outputs[2].0);
    assert!(outputs[7].1.contains("ConditionalCheckFailedException"), "{}", outputs[7].1);
    assert!(outputs[9].0.contains("StreamArn"), "{}", outputs[9].0);
    proxy.stop().await;

    let sessions = proxy.sessions_of("alice");
    assert_eq!(sessions.len(), steps.len(), "one session per aws CLI process");
    let arn = target_arn(&proxy);
    let start = format!("start TDB00I audit-target {arn}");
    let expected: Vec<Vec<String>> = [
        // affected_records 0 is left out of the JSON, as Teleport leaves out empty fields.
        ("CreateTable", "result ok null "),
        ("PutItem", "result ok null "),
        ("GetItem", "result ok 1 "),
        ("Query", "result ok 1 Count 1, ScannedCount 1"),
        ("UpdateItem", "result ok null ConsumedCapacity 0.5"),
        ("BatchWriteItem", "result ok null ConsumedCapacity 1, UnprocessedItems 0"),
        ("Scan", "result ok 3 Count 3, ScannedCount 3"),
        ("PutItem", "result ConditionalCheckFailedException The conditional request failed"),
        ("DeleteItem", "result ok null "),
        ("ListStreams", "result ok null "),
    ]
    .iter()
    .map(|(op, result)| {
        let status = if result.contains("Conditional") { 400 } else { 200 };
        vec![start.clone(), format!("request TDY01I {op} {status}"), result.to_string(), "end".into()]
    })
    .collect();
    let got: Vec<Vec<String>> = sessions.iter().map(|s| briefs(s)).collect();
    assert_eq!(got, expected);
    // The request as sent, attribute values included, and the endpoint it went to.
    let put = &sessions[1][1];
    assert_eq!(put["body"], serde_json::json!({"TableName": table, "Item": serde_json::from_str::<serde_json::Value>(item).unwrap()}));
    assert_eq!(put["db_uri"], proxy.services.get("AWS_ENDPOINT"));
    assert_eq!((put["method"].as_str(), put["path"].as_str()), (Some("POST"), Some("/")));
    assert_eq!(sessions[9][1]["target"], "DynamoDBStreams_20120810.ListStreams");
    assert!(sessions[0][0]["user_agent"].as_str().unwrap().starts_with("aws-cli/"));

    let failed = proxy.play_text(sessions[7][0]["sid"].as_str().unwrap());
    let body_line = format!(r#"ddb> PutItem {table} {{"ConditionExpression":"attribute_not_exists(author)","Item":"#);
    assert!(failed.contains(&body_line), "{failed}");
    assert!(failed.contains("\n400 ConditionalCheckFailedException: The conditional request failed\n"), "{failed}");
    let query = proxy.play_text(sessions[3][0]["sid"].as_str().unwrap());
    assert!(query.contains("\n200 OK · Count 1, ScannedCount 1\n"), "{query}");
}

const BOTO3_SESSION: &str = r#"
import sys, boto3, botocore
ddb = boto3.client("dynamodb", endpoint_url=sys.argv[1], config=botocore.config.Config(retries={"max_attempts": 1}))
shelf = sys.argv[2]
ddb.create_table(TableName=shelf, AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                 KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
ddb.put_item(TableName=shelf, Item={"id": {"S": "1"}, "note": {"S": "first \u001b[2K line"}})
print(ddb.get_item(TableName=shelf, Key={"id": {"S": "1"}})["Item"]["note"]["S"] == "first \u001b[2K line")
try:
    ddb.put_item(TableName=shelf, Item={"id": {"S": "1"}}, ConditionExpression="attribute_not_exists(id)")
except ddb.exceptions.ConditionalCheckFailedException:
    print("conditional failed")
print(ddb.scan(TableName=shelf, ReturnConsumedCapacity="TOTAL")["Count"])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boto3_client_is_one_session_and_reads_back_in_order() {
    let mut proxy = DynamoProxy::start("").await;
    let shelf = unique("shelf");
    let (ok, out, err) = proxy.boto3("ddb", &format!("{ALICE_KEY}@audit-target"), ALICE_SECRET, BOTO3_SESSION, &[&shelf]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(out, "True\nconditional failed\n1\n");
    proxy.stop().await;
    let sessions = proxy.sessions_of("alice");
    assert_eq!(sessions.len(), 1, "boto3 keeps its connection alive");
    let s = &sessions[0];
    let ops: Vec<String> = briefs(s);
    let arn = target_arn(&proxy);
    assert_eq!(
        ops,
        vec![
            format!("start TDB00I audit-target {arn}"),
            "request TDY01I CreateTable 200".into(),
            "result ok null ".into(),
            "request TDY01I PutItem 200".into(),
            "result ok null ".into(),
            "request TDY01I GetItem 200".into(),
            "result ok 1 ".into(),
            "request TDY01I PutItem 400".into(),
            "result ConditionalCheckFailedException The conditional request failed".into(),
            "request TDY01I Scan 200".into(),
            "result ok 1 Count 1, ScannedCount 1, ConsumedCapacity 1".into(),
            "end".into(),
        ]
    );
    for pair in s[1..s.len() - 1].chunks(2) {
        assert_eq!(pair[1]["query_ei"], pair[0]["ei"], "each result names its request");
    }
    let play = proxy.play_text(s[0]["sid"].as_str().unwrap());
    assert!(s[0]["user_agent"].as_str().unwrap().starts_with("Boto3/"), "{}", s[0]["user_agent"]);

    // The same listener over TLS (client_tls.mode = "optional"), the certificate verified.
    let mut proxy = DynamoProxy::start("").await;
    let tls = format!("https://localhost:{}", proxy.addrs["ddb"].port());
    let script = "import sys, boto3\nprint(len(boto3.client('dynamodb', endpoint_url=sys.argv[2], verify=sys.argv[3]).list_tables()['TableNames']) >= 0)";
    let ca = format!("{}/ca.crt", proxy.services.get("CERTS"));
    let (ok, out, err) = proxy.boto3("ddb", &format!("{ALICE_KEY}@audit-target"), ALICE_SECRET, script, &[&tls, &ca]).await;
    assert!(ok && out.trim() == "True", "{out}{err}");
    proxy.stop().await;
    let tls_sessions = proxy.sessions_of("alice");
    assert_eq!(briefs(&tls_sessions[0])[1], "request TDY01I ListTables 200");
    assert!(play.contains("\n200 OK · 1 item\n"), "GetItem's item count: {play}");
    // The recorded escape sequence stays inert on a reviewer's screen.
    assert!(!play.contains('\u{1b}'), "{play:?}");
    let put_line = format!("ddb> PutItem {shelf} ") + r#"{"Item":{"id":{"S":"1"},"note":{"S":"first \u001b[2K line"}}}"#;
    assert!(play.contains(&put_line), "{play}");
}

/// SigV4 headers for a request to `/` of `host` with `body`, signed at `sign_time`; host,
/// content-type and x-amz-target are signed, the length is not.
fn sign_headers(host: &str, key_id: &str, secret: &str, sign_time: SystemTime, target: &str, body: &[u8]) -> Vec<(String, String)> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let identity = aws_credential_types::Credentials::new(key_id, secret, None, None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("dynamodb")
        .time(sign_time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let headers = [("host", host), ("content-type", "application/x-amz-json-1.0"), ("x-amz-target", target)];
    let signable = SignableRequest::new("POST", format!("http://{host}/"), headers.into_iter(), SignableBody::Bytes(body)).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.headers().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// One request signed by hand: `sign_time`, `secret` and a body that may differ from the
/// signed one. Returns (status, body).
async fn raw_request(
    addr: std::net::SocketAddr,
    key_id: &str,
    secret: &str,
    sign_time: SystemTime,
    target: &str,
    tamper: bool,
) -> (u16, String) {
    let host = addr.to_string();
    let body = br#"{"TableName":"books","Key":{"author":{"S":"Herbert"},"title":{"S":"Dune"}}}"#.to_vec();
    let signature = sign_headers(&host, key_id, secret, sign_time, target, &body);
    let mut sent = body.clone();
    if tamper {
        sent = String::from_utf8(sent).unwrap().replace("Dune", "Dusk").into_bytes();
    }
    let mut request = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-amz-json-1.0\r\nX-Amz-Target: {target}\r\nContent-Length: {}\r\nConnection: close\r\n",
        sent.len()
    );
    if !secret.is_empty() {
        for (name, value) in signature {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    request.push_str("\r\n");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    conn.write_all(&sent).await.unwrap();
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A signed ListTables head for `addr`, keep-alive, with `framing` (a Content-Length or
/// Transfer-Encoding line, say) and `extra` lines.
fn list_tables_head(addr: std::net::SocketAddr, body: &[u8], framing: &str, extra: &str) -> String {
    let host = addr.to_string();
    let target = "DynamoDB_20120810.ListTables";
    let key = format!("{ALICE_KEY}@audit-target");
    let mut head = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-amz-json-1.0\r\nX-Amz-Target: {target}\r\n{framing}{extra}"
    );
    for (name, value) in sign_headers(&host, &key, ALICE_SECRET, SystemTime::now(), target, body) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head + "\r\n"
}

/// Reads one response from a keep-alive connection: its head, and its body by its
/// Content-Length or chunks. Bytes past it stay in `buf`.
async fn read_response(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    async fn more(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await.expect("an answer").unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    let at = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        more(conn, buf).await;
    };
    let head = String::from_utf8(buf.drain(..at + 4).collect()).unwrap();
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if let Some(length) = lower.split("\r\n").find_map(|l| l.strip_prefix("content-length: ")) {
        let length: usize = length.trim().parse().unwrap();
        while buf.len() < length {
            more(conn, buf).await;
        }
        body = buf.drain(..length).collect();
    } else if lower.contains("transfer-encoding: chunked") {
        loop {
            let line_end = loop {
                if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                more(conn, buf).await;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            while buf.len() < line_end + 2 + size + 2 {
                more(conn, buf).await;
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    }
    (head, body)
}

/// The relay's HTTP/1.1: pipelined requests answered in order, chunked bodies, `Expect:
/// 100-continue`, HTTP/1.0, and requests whose length two readers could disagree on refused
/// before anything is forwarded or recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_answers_pipelined_chunked_and_expecting_requests_and_refuses_ambiguous_ones() {
    let mut proxy = DynamoProxy::start("").await;
    let addr = proxy.addrs["ddb"];
    let body = b"{}";
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Two requests in one write, the second one's body chunked.
    let mut pipelined = list_tables_head(addr, body, "Content-Length: 2\r\n", "").into_bytes();
    pipelined.extend_from_slice(body);
    pipelined.extend_from_slice(list_tables_head(addr, body, "Transfer-Encoding: chunked\r\n", "").as_bytes());
    pipelined.extend_from_slice(b"1\r\n{\r\n1;ext=1\r\n}\r\n0\r\n\r\n");
    conn.write_all(&pipelined).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        let (head, answer) = read_response(&mut conn, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(String::from_utf8_lossy(&answer).contains("TableNames"), "{}", String::from_utf8_lossy(&answer));
    }
    // Expect: 100-continue: the interim answer comes before the body is sent.
    conn.write_all(list_tables_head(addr, body, "Content-Length: 2\r\n", "Expect: 100-continue\r\n").as_bytes()).await.unwrap();
    let (interim, _) = read_response(&mut conn, &mut buf).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n"), "{interim}");
    conn.write_all(body).await.unwrap();
    let (head, _) = read_response(&mut conn, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    // Both lengths: refused, nothing forwarded, and the connection closed after the answer.
    let mut smuggled = list_tables_head(addr, body, "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "").into_bytes();
    smuggled.extend_from_slice(b"2\r\n{}\r\n0\r\n\r\n");
    conn.write_all(&smuggled).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await.expect("closed").unwrap();
    let refused = String::from_utf8_lossy(&[buf, rest].concat()).into_owned();
    assert!(refused.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{refused}");
    assert!(refused.contains("both Content-Length and Transfer-Encoding") && refused.contains("connection: close"), "{refused}");
    // HTTP/1.0: answered, then closed.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let old = list_tables_head(addr, body, "Content-Length: 2\r\n", "").replacen("HTTP/1.1", "HTTP/1.0", 1);
    conn.write_all(old.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await.expect("closed").unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.contains("TableNames"), "{answer}");
    // A head that is not HTTP: 400, closed.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"POST / HTTP/1.1\r\nBad Header\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await.expect("closed").unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400 Bad Request\r\n"), "{}", String::from_utf8_lossy(&answer));
    proxy.stop().await;
    // Every forwarded request is in a session, in order; the refused one is in none.
    let requests: Vec<String> = proxy.sessions_of("alice").iter().flatten().map(brief).filter(|b| b.starts_with("request ")).collect();
    assert_eq!(requests, vec!["request TDY01I ListTables 200"; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_signatures_are_verified_and_refusals_audited() {
    let mut proxy = DynamoProxy::start("").await;
    let addr = proxy.addrs["ddb"];
    let now = SystemTime::now();
    let get = "DynamoDB_20120810.GetItem";
    let alice = format!("{ALICE_KEY}@audit-target");
    let cases: Vec<(&str, (u16, String))> = vec![
        ("right", raw_request(addr, &alice, ALICE_SECRET, now, get, false).await),
        ("wrong secret", raw_request(addr, &alice, "not-alices-secret", now, get, false).await),
        ("tampered body", raw_request(addr, &alice, ALICE_SECRET, now, get, true).await),
        ("old", raw_request(addr, &alice, ALICE_SECRET, now - Duration::from_secs(6 * 60), get, false).await),
        ("bob's key, alice's secret", raw_request(addr, BOB_KEY, ALICE_SECRET, now, get, false).await),
        ("unknown key", raw_request(addr, "AKIANOBODY", ALICE_SECRET, now, get, false).await),
        ("unsigned", raw_request(addr, &alice, "", now, get, false).await),
        ("role not granted", raw_request(addr, &format!("{BOB_KEY}@audit-reader"), common::dynamo::BOB_SECRET, now, get, false).await),
        ("two roles, none chosen", raw_request(addr, ALICE_KEY, ALICE_SECRET, now, get, false).await),
        ("not DynamoDB", raw_request(addr, &alice, ALICE_SECRET, now, "AmazonSSM.GetParameter", false).await),
    ];
    let kind = |body: &str| {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        v["__type"].as_str().unwrap_or(body).rsplit('#').next().unwrap_or_default().to_string()
    };
    let got: Vec<(&str, u16, String)> = cases.iter().map(|(name, (status, body))| (*name, *status, kind(body))).collect();
    let want = vec![
        // Whatever DynamoDB (moto) makes of the key, the request reached it.
        ("right", cases[0].1 .0, kind(&cases[0].1 .1)),
        ("wrong secret", 400, "InvalidSignatureException".to_string()),
        ("tampered body", 400, "InvalidSignatureException".into()),
        ("old", 400, "InvalidSignatureException".into()),
        ("bob's key, alice's secret", 400, "InvalidSignatureException".into()),
        ("unknown key", 400, "UnrecognizedClientException".into()),
        ("unsigned", 400, "MissingAuthenticationTokenException".into()),
        ("role not granted", 400, "AccessDeniedException".into()),
        ("two roles, none chosen", 400, "AccessDeniedException".into()),
        ("not DynamoDB", 400, "UnknownOperationException".into()),
    ];
    assert_eq!(got, want);
    assert!(
        cases[0].1 .0 == 200 || ["ResourceNotFoundException", "ValidationException"].contains(&kind(&cases[0].1 .1).as_str()),
        "{:?}",
        cases[0].1
    );
    assert!(cases[3].1 .1.contains("Signature expired"), "{}", cases[3].1 .1);
    proxy.stop().await;

    // Each refusal is in the listener's refused-logins log, with who and why.
    let refused: Vec<String> = proxy
        .sessions()
        .into_iter()
        .flatten()
        .filter(|e| e["code"] == "TDB00W")
        .map(|e| format!("{}|{}", e["user"].as_str().unwrap_or_default(), e["error"].as_str().unwrap_or_default()))
        .collect();
    let expected_refusals = [
        "alice|InvalidSignatureException: the signature does not match the request",
        "alice|InvalidSignatureException: the signature does not match the request",
        "alice|InvalidSignatureException: signature expired",
        "bob|InvalidSignatureException: the signature does not match the request",
        "|UnrecognizedClientException: unknown access key id \"AKIANOBODY\"",
        "|MissingAuthenticationTokenException: the request is not signed",
        "bob|AccessDeniedException: user \"bob\" is not granted role \"audit-reader\" on database \"ddb\"",
        "alice|AccessDeniedException: user \"alice\" is granted several roles (audit-target, audit-reader)",
    ];
    assert_eq!(refused.len(), expected_refusals.len(), "{refused:#?}");
    for (got, want) in refused.iter().zip(expected_refusals) {
        assert!(got.starts_with(want), "{got} does not start with {want}");
    }
    // The refused operation got its own request event, TDY01E: it never reached AWS.
    let alice = proxy.sessions_of("alice");
    let last: Vec<String> = alice.last().unwrap().iter().map(brief).collect();
    assert_eq!(last[1..3], ["request TDY01E GetParameter 0".to_string(), "result UnknownOperationException dbtape forwards DynamoDB and DynamoDB Streams operations only; X-Amz-Target \"AmazonSSM.GetParameter\" is not one".to_string()]);
}

/// A TCP relay that keeps what clients send, to see the proxy's STS requests as sent.
async fn capturing_relay(upstream: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let keep = keep.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = vec![0u8; 16384];
                    loop {
                        let n = cr.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            let _ = sw.shutdown().await;
                            break;
                        }
                        keep.lock().unwrap().extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                let _ = tokio::join!(up, down);
            });
        }
    });
    (format!("http://{addr}"), seen)
}

const BOTO3_LOOP: &str = r#"
import sys, time, boto3, botocore
ddb = boto3.client("dynamodb", endpoint_url=sys.argv[1], config=botocore.config.Config(retries={"max_attempts": 1}))
table = sys.argv[2]
ddb.create_table(TableName=table, AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                 KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
for i in range(8):
    ddb.put_item(TableName=table, Item={"id": {"S": str(i)}})
    time.sleep(0.8)
print(ddb.scan(TableName=table)["Count"])
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_chain_with_external_id_and_tags_refresh_and_refusals() {
    let services = common::services::Services::load();
    let aws = services.get("AWS_ENDPOINT").to_string();
    let (sts, seen) = capturing_relay(aws.trim_start_matches("http://").to_string()).await;
    let chained = services.get("MOTO_CHAINED_ROLE_ARN").to_string();
    // Credentials last 15 minutes and count as stale 3 seconds after they are issued, so the
    // loop below runs across several refreshes.
    let extra = format!(
        r#"
[[databases]]
name = "chained"
protocol = "dynamodb"
listen = "127.0.0.1:0"
upstream = "{aws}"
db_type = "dynamodb"
[databases.auth]
method = "aws_iam"
[databases.aws]
region = "us-east-1"
assume_role_arn = "{hop}"
external_id = "{hop_ext}"
endpoint = "{sts}"
session_tags = {{ team = "audit", project = "dbtape" }}
session_duration = "15m"
refresh_before_expiry = "14m57s"
[[databases]]
name = "wrong-ext"
protocol = "dynamodb"
listen = "127.0.0.1:0"
upstream = "{aws}"
[databases.auth]
method = "aws_iam"
[databases.aws]
region = "us-east-1"
account_id = "{account}"
external_id = "not-the-external-id"
endpoint = "{aws}"
#alice#
[[users.grants]]
database = "chained"
db_users = ["{chained}"]
[[users.grants]]
database = "wrong-ext"
db_users = ["audit-target"]
"#,
        hop = services.get("MOTO_HOP_ROLE_ARN"),
        hop_ext = services.get("MOTO_HOP_EXTERNAL_ID"),
        account = services.get("MOTO_ACCOUNT_ID"),
    );
    let mut proxy = DynamoProxy::start(&extra).await;
    let (ok, out, err) = proxy.boto3("chained", ALICE_KEY, ALICE_SECRET, BOTO3_LOOP, &[&unique("chained")]).await;
    assert!(ok, "no request fails across credential refreshes: {out}{err}");
    assert_eq!(out.trim(), "8");
    let (ok, out, err) = proxy
        .boto3(
            "wrong-ext",
            ALICE_KEY,
            ALICE_SECRET,
            "import sys, boto3\nboto3.client('dynamodb', endpoint_url=sys.argv[1]).list_tables()",
            &[],
        )
        .await;
    assert!(!ok, "{out}");
    assert!(err.contains("AccessDeniedException") && err.contains("dbtape could not obtain credentials for role"), "{err}");
    proxy.stop().await;

    // From moto's side: the proxy's sessions, and who AWS says their credentials are.
    let data: serde_json::Value = reqwest_json(&format!("{aws}/moto-api/data.json")).await;
    let assumed = data["sts"]["AssumedRole"].as_array().unwrap();
    let of = |role: &str, session: &str| {
        assumed.iter().filter(|r| r["role_arn"] == role && r["session_name"] == session).cloned().collect::<Vec<_>>()
    };
    let hops = of(services.get("MOTO_HOP_ROLE_ARN"), "dbtape");
    let targets = of(&chained, "alice");
    assert!(hops.iter().all(|h| h["external_id"] == services.get("MOTO_HOP_EXTERNAL_ID")));
    assert!(!targets.is_empty());
    let last = targets.last().unwrap();
    let script = "import sys, boto3\nprint(boto3.client('sts', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3], aws_session_token=sys.argv[4]).get_caller_identity()['Arn'])";
    let mut cmd = services.python();
    cmd.args([
        "-c",
        script,
        &aws,
        last["access_key_id"].as_str().unwrap(),
        last["secret_access_key"].as_str().unwrap(),
        last["session_token"].as_str().unwrap(),
    ]);
    let (ok, out, err) = common::output(cmd).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("arn:aws:sts::{}:assumed-role/audit-chained/alice", services.get("MOTO_ACCOUNT_ID")));

    // As sent to STS: the hop with its external ID, the granted role with the user as the
    // session name and the session tags, and both within the one-hour chain limit.
    let sent = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    let bodies: Vec<&str> = sent.split("\r\n\r\n").filter(|b| b.starts_with("Action=AssumeRole")).collect();
    let hop_call = bodies.iter().find(|b| b.contains("RoleSessionName=dbtape")).expect("the hop's AssumeRole");
    assert!(hop_call.contains("ExternalId=hop-ext-456") && !hop_call.contains("Tags.member"), "{hop_call}");
    let role_calls: Vec<&&str> = bodies.iter().filter(|b| b.contains("RoleSessionName=alice")).collect();
    assert!(role_calls.len() >= 2, "credentials were refreshed during the loop: {} AssumeRole calls", role_calls.len());
    let role_call = role_calls[0];
    assert!(role_call.contains("Tags.member.1.Key=project") && role_call.contains("Tags.member.2.Value=audit"), "{role_call}");
    assert!(!role_call.contains("ExternalId") && role_call.contains("DurationSeconds=900"), "{role_call}");

    // In the events: the chained role's ARN on every event, and one session for the loop.
    let sessions = proxy.sessions_of("alice");
    let loop_session = sessions.iter().find(|s| s[0]["db_service"] == "chained").unwrap();
    assert!(loop_session.iter().all(|e| e["aws_role_arn"] == chained.as_str()));
    assert_eq!(loop_session.iter().filter(|e| e["code"] == "TDY01I").count(), 10);
    assert!(loop_session.iter().filter(|e| e["event"] == "db.session.result").all(|e| e["success"] == true));
    // The wrong external ID: refused by STS, audited with STS's reason, never sent to DynamoDB.
    let denied = sessions.iter().find(|s| s[0]["db_service"] == "wrong-ext").unwrap();
    let denied_briefs = briefs(denied);
    assert_eq!(denied_briefs[1], "request TDY01E ListTables 0");
    assert!(denied_briefs[2].starts_with("result AccessDeniedException STS AssumeRole for arn:aws:iam::"), "{}", denied_briefs[2]);
    assert!(denied_briefs[2].contains("AccessDenied"), "{}", denied_briefs[2]);
}

/// GET a JSON document with nothing but a socket (moto's state dump).
async fn reqwest_json(url: &str) -> serde_json::Value {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap();
    let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
    conn.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response);
    serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap()
}

/// Sends only a request head (no body) and reads the answer: dbtape must refuse from the
/// headers alone, without waiting for (or buffering) the body.
async fn head_only(addr: std::net::SocketAddr, extra_headers: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-amz-json-1.0\r\nX-Amz-Target: DynamoDB_20120810.BatchWriteItem\r\n{extra_headers}\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut response = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut response)).await.expect("answered without the body").unwrap();
    String::from_utf8_lossy(&response[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_or_unsigned_bodies_are_refused_before_they_are_read() {
    let mut proxy = DynamoProxy::start("").await;
    let addr = proxy.addrs["ddb"];
    // 16 MB announced, nothing signed: refused at once, the connection closed.
    let unsigned = head_only(addr, "Content-Length: 16000000\r\n").await;
    assert!(unsigned.starts_with("HTTP/1.1 400") && unsigned.contains("MissingAuthenticationTokenException"), "{unsigned}");
    assert!(unsigned.to_ascii_lowercase().contains("connection: close"), "{unsigned}");
    // A known key id but a body over max_request_bytes: 413 before anything is read.
    let auth = format!(
        "Content-Length: 17000000\r\nX-Amz-Date: 20260101T000000Z\r\nAuthorization: AWS4-HMAC-SHA256 Credential={ALICE_KEY}/20260101/us-east-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature={}\r\n",
        "0".repeat(64)
    );
    let large = head_only(addr, &auth).await;
    assert!(large.starts_with("HTTP/1.1 413") && large.contains("RequestEntityTooLarge"), "{large}");
    proxy.stop().await;
    let refused: Vec<String> = proxy
        .sessions()
        .into_iter()
        .flatten()
        .filter(|e| e["code"] == "TDB00W")
        .map(|e| e["error"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        refused,
        [
            "MissingAuthenticationTokenException: the request is not signed",
            "RequestEntityTooLarge: request body of 17000000 bytes is over the limit of 16842752"
        ]
    );
}

/// A TCP relay to the endpoint that closes each connection once it has been quiet for
/// `idle`, as load balancers in front of real endpoints do. Returns its address, the
/// connections it took and every byte clients sent.
async fn idle_closing_relay(upstream: String, idle: Duration) -> (String, Arc<std::sync::atomic::AtomicUsize>, Arc<Mutex<Vec<u8>>>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, seen) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
    let (count, keep) = (accepted.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (keep, upstream) = (keep.clone(), upstream.clone());
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let (mut up_buf, mut down_buf) = (vec![0u8; 65536], vec![0u8; 65536]);
                loop {
                    tokio::select! {
                        n = client.read(&mut up_buf) => match n {
                            Ok(n) if n > 0 => {
                                keep.lock().unwrap().extend_from_slice(&up_buf[..n]);
                                if server.write_all(&up_buf[..n]).await.is_err() { break }
                            }
                            _ => break,
                        },
                        n = server.read(&mut down_buf) => match n {
                            Ok(n) if n > 0 => if client.write_all(&down_buf[..n]).await.is_err() { break },
                            _ => break,
                        },
                        _ = tokio::time::sleep(idle) => break,
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), accepted, seen)
}

const BOTO3_LARGE_AND_IDLE: &str = r#"
import sys, time, boto3, botocore
ddb = boto3.client("dynamodb", endpoint_url=sys.argv[1], config=botocore.config.Config(retries={"max_attempts": 1}))
table = sys.argv[2]
ddb.create_table(TableName=table, AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                 KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
for i in range(3):
    ddb.put_item(TableName=table, Item={"id": {"S": str(i)}, "note": {"S": str(i) * 40000}})
scan = ddb.scan(TableName=table)
print(scan["Count"], sum(len(item["note"]["S"]) for item in scan["Items"]))
time.sleep(0.8)
print(len(ddb.get_item(TableName=table, Key={"id": {"S": "1"}})["Item"]["note"]["S"]))
time.sleep(0.8)
ddb.put_item(TableName=table, Item={"id": {"S": "3"}})
print(ddb.scan(TableName=table)["Count"])
"#;

/// A response too large to read ahead streams to the client, and an endpoint that closes
/// idle connections costs no request and sends none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_stream_and_endpoint_closing_idle_connections_loses_no_request() {
    let services = common::services::Services::load();
    let aws = services.get("AWS_ENDPOINT").to_string();
    let (relay, connections, seen) = idle_closing_relay(aws.trim_start_matches("http://").to_string(), Duration::from_millis(300)).await;
    let extra = format!(
        r#"
[[databases]]
name = "closing"
protocol = "dynamodb"
listen = "127.0.0.1:0"
upstream = "{relay}"
{aws_auth}
#alice#
[[users.grants]]
database = "closing"
db_users = ["audit-target"]
"#,
        aws_auth = common::dynamo::aws_iam_auth(&services),
    );
    let mut proxy = DynamoProxy::start(&extra).await;
    let key = format!("{ALICE_KEY}@audit-target");
    let (ok, out, err) = proxy.boto3("closing", &key, ALICE_SECRET, BOTO3_LARGE_AND_IDLE, &[&unique("large")]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(out, "3 120000\n40000\n4\n");
    proxy.stop().await;
    let sent = String::from_utf8_lossy(&seen.lock().unwrap()).to_ascii_lowercase();
    assert_eq!(sent.matches("\r\nx-amz-target: dynamodb_20120810.").count(), 8, "each request reached the endpoint once");
    assert!(connections.load(std::sync::atomic::Ordering::SeqCst) >= 3, "the relay closed idle connections, so dbtape opened new ones");
    let sessions = proxy.sessions_of("alice");
    assert_eq!(sessions.len(), 1);
    let ops = briefs(&sessions[0]);
    assert_eq!(ops.len(), 18, "{ops:?}");
    assert_eq!(ops[10], "result ok 3 Count 3, ScannedCount 3", "{ops:?}");
    assert_eq!(ops[16], "result ok 4 Count 4, ScannedCount 4", "{ops:?}");
    assert!(ops[1..17].chunks(2).all(|pair| pair[0].ends_with(" 200")), "{ops:?}");
}
