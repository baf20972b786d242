//! The review console in a real browser: Debian's Chromium driven through chromedriver
//! (WebDriver), over recordings made through the real PostgreSQL (psql), MongoDB (pymongo)
//! and DynamoDB (the aws CLI) paths. Each test asserts what the page shows and keeps a
//! screenshot in `target/console-screenshots/`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::console::{Console, OidcProvider, ANA_PASSWORD};
use common::proxy::{Proxy, ALICE_PASSWORD};
use fantoccini::{Client, ClientBuilder, Locator};

struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Chromium, headless, through a chromedriver of its own. The console's certificate is
    /// signed by the test CA, which this fresh profile does not know, so certificate errors
    /// are ignored for it alone.
    async fn start() -> Browser {
        // The WebDriver client's TLS stack wants a process-wide crypto provider; chromedriver
        // itself is plain HTTP on loopback.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver, installed by scripts/services)");
        let profile = tempfile::tempdir().unwrap();
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--ignore-certificate-errors", "--window-size=1400,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let caps = caps.as_object().unwrap().clone();
        let mut last = None;
        for _ in 0..50 {
            match ClientBuilder::rustls().unwrap().capabilities(caps.clone()).connect(&format!("http://127.0.0.1:{port}")).await {
                Ok(client) => return Browser { client, driver, _profile: profile },
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("chromedriver did not start a session: {last:?}");
    }

    async fn login(&self, console: &Console, name: &str, password: &str) {
        self.client.goto(&format!("https://localhost:{}/login", console.port)).await.unwrap();
        self.client.find(Locator::Id("name")).await.unwrap().send_keys(name).await.unwrap();
        self.client.find(Locator::Id("password")).await.unwrap().send_keys(password).await.unwrap();
        self.client.find(Locator::Id("submit")).await.unwrap().click().await.unwrap();
        self.wait_for_text("h1", "Sessions").await;
    }

    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits (at most 20 s) until the element's text contains `expected`.
    async fn wait_for_text(&self, css: &str, expected: &str) -> String {
        let mut text = String::new();
        for _ in 0..200 {
            text = self.text(css).await;
            if text.contains(expected) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{css} never showed {expected:?}; it shows:\n{text}");
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const HOSTILE: &str = "SELECT '<script>document.title=\"pwned\"</script>' AS zebra, '<img src=x onerror=\"document.title=1\">' AS b, '<a hx-get=\"/logout\" href=\"javascript:alert(2)\">x</a>' AS c, 'red\u{1b}[31m\u{202e}evil' AS d";

/// A MongoDB session and a DynamoDB session recorded by proxies of their own, copied into
/// the PostgreSQL proxy's folder; returns their signing keys' public halves.
async fn other_protocols(proxy: &Proxy) -> Vec<std::path::PathBuf> {
    let recordings = proxy.root.path().join("recordings");
    let mut mongo = common::mongo::MongoProxy::start_recording_in(Some(recordings.clone())).await;
    let script = "import sys, pymongo\nc = pymongo.MongoClient(sys.argv[1])\nc.lib.books.insert_one({'_id': 7, 'title': 'Dune'})\nprint(c.lib.books.find_one({'_id': 7}))\nc.lib.books.delete_many({})\n";
    let (ok, out, err) = mongo.pymongo(script, mongo.uri("alice", ALICE_PASSWORD, "")).await;
    assert!(ok, "{out}{err}");
    mongo.stop().await;
    let mongo_key = dbtape::signing::public_key_path(&mongo.root.path().join("key"));

    let mut dynamo = common::dynamo::DynamoProxy::start("").await;
    let key = format!("{}@audit-target", common::dynamo::ALICE_KEY);
    let (ok, out, err) = dynamo.aws(&key, common::dynamo::ALICE_SECRET, &["dynamodb", "list-tables"]).await;
    assert!(ok, "{out}{err}");
    dynamo.stop().await;
    for entry in std::fs::read_dir(dynamo.store.dir()).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), recordings.join(entry.file_name())).unwrap();
        }
    }
    let dynamo_key = dbtape::signing::public_key_path(&dynamo.root.path().join("key"));
    // Keep the proxies' folders (and keys) alive for the test's length.
    std::mem::forget(mongo);
    std::mem::forget(dynamo);
    vec![mongo_key, dynamo_key]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_reviews_all_three_protocols_in_chromium() {
    let mut proxy = Proxy::start().await;
    let (_, out, err) = proxy
        .psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-c".into(), HOSTILE.into(), "-c".into(), "SELECT 1/0".into()])
        .await;
    assert!(out.contains("pwned") && err.contains("division by zero"), "{out}{err}");
    let trusted = other_protocols(&proxy).await;
    proxy.stop().await;
    let pg_sid = proxy.sessions().iter().find(|s| !s.is_empty() && s[0]["db_protocol"] == "postgres").unwrap()[0]["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let console = Console::start_trusting(&proxy, &trusted);
    let browser = Browser::start().await;
    browser.login(&console, "ana", ANA_PASSWORD).await;

    // The sessions page lists all three protocols, each verified.
    let list = browser.wait_for_text("#sessions", &pg_sid).await;
    for protocol in ["postgres", "mongodb", "dynamodb"] {
        assert!(list.contains(protocol), "{protocol} missing:\n{list}");
    }
    assert!(!list.contains("TAMPERED") && !list.contains("untrusted"), "{list}");
    browser.screenshot("sessions").await;

    // Filtered on the server, the filter in the URL.
    browser.client.goto(&format!("https://localhost:{}/sessions?protocol=mongodb", console.port)).await.unwrap();
    let mongo_only = browser.wait_for_text("#sessions", "mongodb").await;
    assert!(!mongo_only.contains(&pg_sid) && !mongo_only.contains("dynamodb"), "{mongo_only}");

    // Search, and jump to the hit: the player opens at that event.
    browser.client.goto(&format!("https://localhost:{}/search?text=zebra", console.port)).await.unwrap();
    browser.wait_for_text("#hits", "<script>document.title").await;
    browser.screenshot("search").await;
    browser.client.find(Locator::Css("a.hit")).await.unwrap().click().await.unwrap();
    let screen = browser.wait_for_text("#screen", "zebra").await;
    assert!(screen.contains("postgres=> SELECT '<script>document.title=\"pwned\"</script>'"), "{screen}");
    assert!(browser.text("#integrity").await.contains("verified"));

    // Hostile text is inert: shown as text, no element made of it, no script of it ran.
    let title = browser.client.title().await.unwrap();
    assert!(title.starts_with("Session ") && !title.contains("pwned"), "{title}");
    for css in ["#screen script", "#screen img", "#screen a", "#screen [hx-get]"] {
        assert!(browser.client.find_all(Locator::Css(css)).await.unwrap().is_empty(), "{css} exists in the player");
    }
    assert!(screen.contains("\\u{202e}") && !screen.contains('\u{202e}'), "the bidi override is visible: {screen}");
    browser.screenshot("postgres-player").await;

    // Step through, then the event's JSON on demand.
    browser.client.find(Locator::Css(".json-button")).await.unwrap().click().await.unwrap();
    // The player opened at the hit: its first step is the statement.
    let json = browser.wait_for_text("#event-json", "zebra").await;
    assert!(json.contains(&pg_sid), "{json}");
    assert!(json.contains("red\\u001b[31m\\u202eevil") && !json.contains('\u{202e}'), "the event's JSON is shown escaped: {json}");

    // MongoDB and DynamoDB sessions play as mongosh and DynamoDB lines.
    for (protocol, expected) in [("mongodb", "db.books.insertOne"), ("dynamodb", "ListTables")] {
        browser.client.goto(&format!("https://localhost:{}/sessions?protocol={protocol}", console.port)).await.unwrap();
        browser.wait_for_text("#sessions", protocol).await;
        browser.client.find(Locator::Css("#sessions a.sid")).await.unwrap().click().await.unwrap();
        browser.client.find(Locator::Id("play")).await.unwrap().click().await.unwrap();
        browser.wait_for_text("#screen", expected).await;
        browser.screenshot(&format!("{protocol}-player")).await;
    }
    browser.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_psql_session_is_followed_and_a_tampered_one_is_marked() {
    let mut proxy = Proxy::start().await;
    // A finished session, to be tampered with.
    let (ok, out, err) =
        proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-c".into(), "SELECT 'to be altered'".into()]).await;
    assert!(ok, "{out}{err}");
    let mut done_sid = None;
    for _ in 0..100 {
        done_sid = proxy.store.summaries().unwrap().into_iter().flatten().find(|s| s.state.as_str() == "sealed").map(|s| s.sid);
        if done_sid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done_sid = done_sid.expect("the finished session's sealed recording");
    // A live one: psql reading statements as the test writes them.
    let mut live = Command::new("psql")
        .arg(proxy.conninfo("alice", ""))
        .args(["-X", "-q"])
        .env("PGPASSWORD", ALICE_PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = live.stdin.as_mut().unwrap();
    std::io::Write::write_all(stdin, b"SELECT 'first of the live session';\n").unwrap();
    std::io::Write::flush(stdin).unwrap();
    let mut live_sid = None;
    for _ in 0..100 {
        live_sid = proxy.store.summaries().unwrap().into_iter().flatten().find(|s| s.sid != done_sid).map(|s| s.sid);
        if live_sid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live_sid = live_sid.expect("the live session's recording");
    let console = Console::start(&proxy);
    let browser = Browser::start().await;
    browser.login(&console, "ana", ANA_PASSWORD).await;
    browser.client.goto(&format!("https://localhost:{}/sessions/{live_sid}", console.port)).await.unwrap();
    browser.wait_for_text("#screen", "first of the live session").await;
    let stdin = live.stdin.as_mut().unwrap();
    std::io::Write::write_all(stdin, b"SELECT 'typed while the auditor watched';\n").unwrap();
    std::io::Write::flush(stdin).unwrap();
    browser.wait_for_text("#screen", "typed while the auditor watched").await;
    browser.screenshot("live-follow").await;
    drop(live.stdin.take());
    live.wait().unwrap();

    // Altered after sealing: marked on the list and on its page.
    let path = proxy.store.recording_path(&done_sid);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
    browser.client.goto(&format!("https://localhost:{}/sessions", console.port)).await.unwrap();
    let list = browser.wait_for_text("#sessions", "TAMPERED").await;
    let row = list.lines().find(|l| l.contains(&done_sid)).unwrap_or_default();
    assert!(row.contains("TAMPERED"), "{list}");
    browser.screenshot("tampered").await;
    browser.client.goto(&format!("https://localhost:{}/sessions/{done_sid}", console.port)).await.unwrap();
    browser.wait_for_text("#integrity", "TAMPERED").await;
    browser.stop().await;
    proxy.stop().await;
}

/// Logs in at the OIDC provider's own pages (its development login form takes any name and
/// password), then grants the console's request if the provider asks.
async fn sso_login(browser: &Browser, console: &Console, who: &str) {
    browser.client.goto(&format!("https://localhost:{}/login", console.port)).await.unwrap();
    let button = browser.client.find(Locator::Id("oidc")).await.unwrap();
    assert_eq!(button.text().await.unwrap(), "Log in with Test IdP");
    browser.screenshot("oidc-login-page").await;
    button.click().await.unwrap();
    let login = browser.client.wait().for_element(Locator::Css("input[name=login]")).await.unwrap();
    assert!(browser.client.current_url().await.unwrap().as_str().starts_with("https://localhost:"), "at the provider");
    login.send_keys(who).await.unwrap();
    browser.client.find(Locator::Css("input[name=password]")).await.unwrap().send_keys("any password").await.unwrap();
    browser.client.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    // The consent page, the first time this client asks for these scopes.
    for _ in 0..100 {
        let url = browser.client.current_url().await.unwrap();
        if url.port() == Some(console.port) {
            return;
        }
        if let Ok(button) = browser.client.find(Locator::Css("button[type=submit]")).await {
            let _ = button.click().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser.screenshot("oidc-stuck").await;
    let url = browser.client.current_url().await.unwrap();
    panic!("the provider never sent the browser back to the console; at {url}:\n{}", browser.text("body").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewers_log_in_through_a_real_oidc_provider() {
    let mut proxy = Proxy::start().await;
    let (ok, out, err) = proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-c".into(), "SELECT 42".into()]).await;
    assert!(ok, "{out}{err}");
    proxy.stop().await;
    let certs = proxy.services.get("CERTS").to_string();
    let port = common::console::free_port();
    let provider = OidcProvider::start(&certs, &format!("https://localhost:{port}/login/oidc/callback"));
    let extra = provider.review_config(proxy.root.path(), &certs, port);
    let mut console = Console::start_with(&proxy, &[], port, &extra);

    // olga is in the auditors' group at the provider: she becomes an auditor, and the
    // sessions page shows her name as the provider gave it.
    let browser = Browser::start().await;
    sso_login(&browser, &console, "olga").await;
    browser.wait_for_text("h1", "Sessions").await;
    assert_eq!(browser.text(".who").await, "olga@example.com");
    browser.wait_for_text("#sessions", "postgres").await;
    browser.screenshot("oidc-olga-sessions").await;
    browser.stop().await;

    // pete is known to the provider but is no reviewer here: refused, and the refusal kept.
    let browser = Browser::start().await;
    sso_login(&browser, &console, "pete").await;
    let refusal = browser.wait_for_text("main", "did not log you in").await;
    assert!(refusal.contains("\"pete@example.com\" is not a reviewer"), "{refusal}");
    browser.screenshot("oidc-pete-refused").await;
    // A made-up callback (no login begun in this browser) is refused too.
    browser.client.goto(&format!("https://localhost:{port}/login/oidc/callback?code=stolen&state=guess")).await.unwrap();
    let forged = browser.wait_for_text("main", "did not log you in").await;
    assert!(forged.contains("expired or was not started in this browser"), "{forged}");
    browser.stop().await;
    console.stop();

    let (ok, out, err) = console.dbtape(&["export", "--event", "session.recording.access"]);
    assert!(ok, "{err}");
    let access: Vec<serde_json::Value> = out.lines().map(|l| common::assert_schema_valid(l.as_bytes())).collect();
    let login = access.iter().find(|e| e["action"] == "login" && e["success"] == true).expect("olga's login is recorded");
    assert_eq!(login["user"], "olga@example.com");
    let detail = login["message"].as_str().unwrap();
    assert!(detail.contains(&provider.issuer) && detail.contains("subject olga"), "{detail}");
    let refused: Vec<&str> = access.iter().filter(|e| e["success"] == false).filter_map(|e| e["message"].as_str()).collect();
    assert!(refused.iter().any(|d| d.contains("is not a reviewer of this console for \"pete@example.com\"")), "{refused:?}");
    assert!(refused.iter().any(|d| d.contains("not started in this browser")), "{refused:?}");
}
