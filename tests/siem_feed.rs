//! The README's SIEM feed, run for real: `dbtape export --follow --cursor --out` writes every
//! event to a file, Debian's rsyslog tails it (imfile, with its own state file) and forwards
//! each line over TCP to a receiver this test runs. Sessions are recorded throughout, the
//! exporter and rsyslog are each restarted once, and the receiver gets every event exactly
//! once.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::{Proxy, ALICE_PASSWORD};
use common::serve::{sigterm, KillOnDrop};

/// Collects every byte any connection sends (rsyslog reconnects after its restart).
fn receiver() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (port, received)
}

fn exporter(root: &std::path::Path) -> Child {
    let recordings = root.join("recordings");
    common::dbtape_bin()
        .args(["export", "--follow", "--cursor"])
        .arg(root.join("siem.cursor"))
        .arg("--out")
        .arg(root.join("events.jsonl"))
        .arg("--dir")
        .arg(&recordings)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn rsyslog(root: &std::path::Path, port: u16) -> Child {
    let state = root.join("rsyslog-state");
    std::fs::create_dir_all(&state).unwrap();
    // The README's configuration, with the receiver as the SIEM.
    let conf = format!(
        "global(workDirectory=\"{state}\")\nmodule(load=\"imfile\")\ntemplate(name=\"line\" type=\"string\" string=\"%msg%\\n\")\ninput(type=\"imfile\" File=\"{events}\" Tag=\"dbtape\" PersistStateInterval=\"100\")\nif $syslogtag == \"dbtape\" then {{\n  action(type=\"omfwd\" Target=\"127.0.0.1\" Port=\"{port}\" Protocol=\"tcp\" Template=\"line\")\n}}\n",
        state = state.display(),
        events = root.join("events.jsonl").display(),
    );
    let path = root.join("rsyslog.conf");
    std::fs::write(&path, conf).unwrap();
    Command::new("rsyslogd")
        .arg("-n")
        .arg("-f")
        .arg(&path)
        .arg("-i")
        .arg(root.join("rsyslog.pid"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("rsyslog.log")).unwrap())
        .spawn()
        .expect("rsyslogd (Debian's rsyslog, installed by scripts/services)")
}

fn restart(child: &mut Child, start: impl FnOnce() -> Child) -> KillOnDrop {
    sigterm(child);
    child.wait().unwrap();
    *child = start();
    KillOnDrop(child.id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_forwards_every_exported_event_exactly_once() {
    let mut proxy = Proxy::start().await;
    let root = proxy.root.path().to_path_buf();
    let (port, received) = receiver();
    let mut export = exporter(&root);
    let _export_reaper = KillOnDrop(export.id());
    let mut shipper = rsyslog(&root, port);
    let _shipper_reaper = KillOnDrop(shipper.id());
    let mut reapers = Vec::new();
    for round in 0..3 {
        for i in 0..3 {
            let sql = format!("SELECT 'round {round} session {i}'; SELECT 1/0;");
            let (_, out, _) = proxy.psql(proxy.conninfo("alice", ""), Some(ALICE_PASSWORD), vec!["-c".into(), sql]).await;
            assert!(out.contains(&format!("round {round}")), "{out}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        match round {
            0 => reapers.push(restart(&mut export, || exporter(&root))),
            1 => reapers.push(restart(&mut shipper, || rsyslog(&root, port))),
            _ => {}
        }
    }
    proxy.stop().await;

    // What the SIEM must end up with: every event of every recording, once.
    let out = common::dbtape_bin().arg("export").arg("--dir").arg(root.join("recordings")).output().unwrap();
    assert!(out.status.success());
    let expected: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(uid).collect();
    assert!(expected.len() >= 9 * 4, "{} events recorded", expected.len());
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        let text = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
        counts = HashMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            *counts.entry(uid(line)).or_default() += 1;
        }
        if expected.iter().all(|u| counts.contains_key(u)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<&String> = expected.iter().filter(|u| !counts.contains_key(*u)).collect();
    let twice: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let strangers: Vec<&String> = counts.keys().filter(|u| !expected.contains(u)).collect();
    assert!(missing.is_empty(), "{} of {} events never reached the SIEM: {missing:?}", missing.len(), expected.len());
    assert!(twice.is_empty(), "events the SIEM got more than once: {twice:?}");
    assert!(strangers.is_empty(), "the SIEM got events that were never recorded: {strangers:?}");
    drop(reapers);
}

/// The event's uid; a line that is not an event fails the test.
fn uid(line: &str) -> String {
    let event: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not an event ({e}): {line:?}"));
    event["uid"].as_str().unwrap_or_else(|| panic!("no uid: {line}")).to_string()
}
