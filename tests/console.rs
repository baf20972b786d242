//! The web review console (`dbtape review`, the real binary) over recordings made through the
//! real PostgreSQL path with psql, driven over HTTPS by curl: pages, the player's API, search,
//! export, what a reviewer may not do, hostile recorded text, a tampered recording, and every
//! look recorded as a signed `session.recording.access` event.

mod common;

use common::console::{assert_security_headers, field, Console, ANA_PASSWORD, RUI_PASSWORD};
use common::proxy::{Proxy, ALICE_PASSWORD};

/// What a recorded statement may contain to attack a reviewer's page.
const HOSTILE: &str = "SELECT '<script>document.title=\"pwned\"</script>' AS zebra, '<img src=x onerror=alert(1)>' AS b, '<a hx-get=\"/logout\" href=\"javascript:alert(2)\">x</a>' AS c, '\u{1b}[31mred\u{202e}evil' AS d";

/// Records alice's hostile statement and a failing one, stops the proxy (sealing the
/// recording) and returns the session's id.
async fn record_sessions(proxy: &mut Proxy) -> String {
    let (_, out, err) = proxy
        .psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-c".into(), HOSTILE.into(), "-c".into(), "SELECT 1/0".into()])
        .await;
    assert!(out.contains("pwned") && err.contains("division by zero"), "{out}{err}");
    proxy.stop().await;
    let sessions = proxy.sessions();
    let session = sessions.iter().rev().find(|s| !s.is_empty()).unwrap_or_else(|| panic!("no session recorded: {out}{err}"));
    let sid = session[0]["sid"].as_str().unwrap().to_string();
    sid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_lists_plays_searches_and_exports_and_every_look_is_recorded() {
    let mut proxy = Proxy::start().await;
    let sid = record_sessions(&mut proxy).await;
    let console = Console::start(&proxy);

    let (jar, login) = console.login("ana", ANA_PASSWORD);
    assert_eq!(login.status, 303, "{}", login.body);
    assert!(login.headers.contains("location: /sessions"));
    assert!(
        login.headers.contains("__host-dbtape-review=") && login.headers.contains("httponly") && login.headers.contains("samesite=strict")
    );

    let list = console.get(&jar, "/sessions?user=alice&protocol=postgres");
    assert_eq!(list.status, 200);
    assert_security_headers(&list);
    assert!(list.body.contains(&sid), "{}", list.body);
    assert!(list.body.contains("class=\"integrity ok\"") && list.body.contains(">verified<"), "{}", list.body);
    let nobody = console.get(&jar, "/sessions?user=nobody");
    assert!(!nobody.body.contains(&sid) && nobody.body.contains("No sessions match"));

    let page = console.get(&jar, &format!("/sessions/{sid}"));
    assert_eq!(page.status, 200);
    assert_security_headers(&page);
    assert!(page.body.contains("id=\"player\"") && page.body.contains(">verified<"), "{}", page.body);

    // The player's steps: what `play` prints, recorded text as JSON text.
    let steps = console.get(&jar, &format!("/api/sessions/{sid}/steps?from=0&limit=50"));
    assert_eq!(steps.status, 200, "{}", steps.body);
    let steps: serde_json::Value = serde_json::from_str(&steps.body).unwrap();
    let texts: Vec<&str> = steps["steps"].as_array().unwrap().iter().map(|s| s["text"].as_str().unwrap()).collect();
    let all = texts.join("\n");
    assert!(all.contains("postgres=> SELECT '<script>document.title"), "{all}");
    assert!(all.contains("division by zero"), "{all}");
    assert!(all.contains("red\\u{202e}evil") && !all.contains('\u{202e}'), "the bidi override is shown, not applied: {all}");
    assert!(!all.contains('\u{1b}'), "no terminal escape reaches the page: {all}");
    let ei = steps["steps"][1]["ei"].as_u64().unwrap();
    let event = console.get(&jar, &format!("/api/sessions/{sid}/events/{ei}"));
    assert!(event.headers.contains("content-type: application/json"));
    let event: serde_json::Value = serde_json::from_str(&event.body).unwrap();
    assert_eq!(event["ei"].as_u64(), Some(ei));

    // Search finds the statement by a word in it; the page shows it as inert text.
    let search = console.get(&jar, "/search?text=zebra");
    assert_eq!(search.status, 200);
    assert_security_headers(&search);
    assert!(search.body.contains(&format!("/sessions/{sid}?at=")), "{}", search.body);
    assert!(search.body.contains("&#60;script&#62;") || search.body.contains("&lt;script&gt;"), "{}", search.body);
    assert!(!search.body.contains("<script>document") && !search.body.contains("<img src=x") && !search.body.contains("<a hx-get"));

    let export = console.get(&jar, &format!("/export?sid={sid}"));
    assert_eq!(export.status, 200);
    assert!(export.headers.contains("content-type: application/x-ndjson"));
    assert!(export.headers.contains(&format!("content-disposition: attachment; filename=\"{sid}.ndjson\"")));
    assert!(export.body.lines().count() >= 4 && export.body.contains("zebra"));

    let logout = console.request(Some(&jar), "POST", "/logout", &[("csrf", &field(&list.body, "csrf"))], &[]);
    assert_eq!(logout.status, 303);
    assert_eq!(console.get(&jar, "/sessions").status, 303, "logged out");

    // Every look is an event in a signed, chained reviewer-access recording.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (ok, out, err) = console.dbtape(&["export", "--event", "session.recording.access"]);
    assert!(ok, "{err}");
    let access: Vec<serde_json::Value> = out.lines().map(|l| common::assert_schema_valid(l.as_bytes())).collect();
    let actions: Vec<(String, String)> = access
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_string(), e["session_id"].as_str().unwrap_or_default().to_string()))
        .collect();
    for expected in ["session.view", "session.steps", "session.event", "export"] {
        assert!(actions.contains(&(expected.to_string(), sid.clone())), "{expected} of {sid} not in {actions:?}");
    }
    assert!(actions.iter().any(|(a, _)| a == "search") && actions.iter().any(|(a, _)| a == "login"));
    assert!(access.iter().all(|e| e["user"] == "ana" && e["code"] == "T2012I" && e["db_protocol"] == "review"));
    assert!(access.iter().all(|e| e["addr.remote"].as_str().unwrap().starts_with("127.0.0.1:")));
    // The console signs with a key of its own (made at its first start); a reviewer who
    // trusts it, as `recording.trusted_keys` says, verifies what it recorded.
    let text = std::fs::read_to_string(&console.config).unwrap();
    let trusted = format!("trusted_keys = [\"{}/review-key.pub\"]", console.root.display());
    std::fs::write(&console.config, text.replacen("trusted_keys = []", &trusted, 1)).unwrap();
    let access_sid = access[0]["sid"].as_str().unwrap();
    let (ok, out, err) = console.dbtape(&["verify", access_sid]);
    assert!(ok, "the access recording verifies: {out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_what_a_reviewer_may_not_do_and_marks_a_tampered_recording() {
    let mut proxy = Proxy::start().await;
    let sid = record_sessions(&mut proxy).await;
    let mut console = Console::start(&proxy);
    let stranger = console.jar("stranger");

    // No login: pages go to the login page, the API and exports answer 401.
    let page = console.get(&stranger, "/sessions");
    assert_eq!(page.status, 303);
    assert!(page.headers.contains("location: /login"));
    assert_security_headers(&page);
    assert_eq!(console.get(&stranger, &format!("/api/sessions/{sid}/steps")).status, 401);
    assert_eq!(console.get(&stranger, &format!("/export?sid={sid}")).status, 401);

    // A wrong password, and a login form that did not come from the console.
    let (_, wrong) = console.login("ana", "not-the-password");
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong name or password"));
    let forged =
        console.request(Some(&stranger), "POST", "/login", &[("name", "ana"), ("password", ANA_PASSWORD), ("csrf", "forged")], &[]);
    assert_eq!(forged.status, 403);

    // rui may see database "other" only.
    let (rui, login) = console.login("rui", RUI_PASSWORD);
    assert_eq!(login.status, 303);
    assert!(!console.get(&rui, "/sessions").body.contains(&sid));
    assert_eq!(console.get(&rui, &format!("/sessions/{sid}")).status, 404);
    assert_eq!(console.get(&rui, &format!("/api/sessions/{sid}/steps")).status, 404);
    assert_eq!(console.get(&rui, &format!("/export?sid={sid}")).status, 404);
    assert!(!console.get(&rui, "/search?text=zebra").body.contains(&sid));

    // State changes need the session's CSRF token, and never come from another site.
    let list = console.get(&rui, "/sessions");
    let csrf = field(&list.body, "csrf");
    assert_eq!(console.request(Some(&rui), "POST", "/logout", &[("csrf", "wrong")], &[]).status, 403);
    let cross = console.request(Some(&rui), "POST", "/logout", &[("csrf", &csrf)], &["Sec-Fetch-Site: cross-site"]);
    assert_eq!(cross.status, 403);
    assert_eq!(console.get(&rui, "/sessions").status, 200, "still logged in");

    // A recording altered after sealing is marked on the list and on its page.
    let path = proxy.store.recording_path(&sid);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&path, bytes).unwrap();
    let (ana, _) = console.login("ana", ANA_PASSWORD);
    let list = console.get(&ana, "/sessions");
    let row = list.body.split("<tr>").find(|r| r.contains(&sid)).unwrap_or_else(|| panic!("{}", list.body));
    assert!(row.contains("integrity tampered") && row.contains("TAMPERED"), "{row}");
    let page = console.get(&ana, &format!("/sessions/{sid}"));
    assert!(page.body.contains("integrity tampered") && page.body.contains("TAMPERED"), "{}", page.body);

    // Ten failed logins from one address in a minute, and it may not try again for a while,
    // not even with the right password: each check costs a PBKDF2 derivation.
    for _ in 0..10 {
        console.login("rui", "guessing");
    }
    let (_, blocked) = console.login("rui", RUI_PASSWORD);
    assert_eq!(blocked.status, 429, "{}", blocked.body);

    // The refused logins are recorded too, in one recording, sealed when the console stops.
    console.stop();
    let review = proxy.root.path().join("review.toml");
    let out = common::dbtape_bin().args(["export", "--event", "session.recording.access", "--config"]).arg(&review).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("\"action\":\"login\"")
            && l.contains("\"success\":false")
            && l.contains("wrong name or password for \\\"ana\\\" from 127.0.0.1:")),
        "{text}"
    );
}
