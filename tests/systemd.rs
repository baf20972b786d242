//! The shipped systemd unit (`contrib/dbtape.service`): `systemd-analyze verify` accepts it
//! (with ExecStart pointing at this build, since verify checks the binary exists), and its
//! sandboxing keeps `systemd-analyze security`'s exposure score low.

use std::process::Command;

fn unit_for_this_build(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/dbtape.service")).unwrap();
    for required in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/dbtape/recordings",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "ExecReload=",
        "User=dbtape",
    ] {
        assert!(text.contains(required), "the unit lacks {required}");
    }
    let path = dir.join("dbtape.service");
    std::fs::write(&path, text.replace("/usr/local/bin/dbtape", env!("CARGO_BIN_EXE_dbtape"))).unwrap();
    path
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd, installed by scripts/services)");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_units_exposure_score_stays_low() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_this_build(dir.path());
    let out = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for dbtape.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in {text}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(score <= 2.0, "exposure {score} (README reports 1.5)");
}
