//! `dbtape user add|passwd`: SCRAM-SHA-256 verifiers for the config, so dbtape never
//! stores a password.

use std::io::{BufRead, IsTerminal, Write};

use super::Failure;
use crate::auth::scram::Verifier;

const ITERATIONS: u32 = 4096;

fn read_password(from_stdin: bool) -> Result<String, Failure> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_string());
    }
    let first = prompt("New password: ")?;
    let second = prompt("Repeat it: ")?;
    if first != second {
        return Err(Failure { code: 1, message: "the passwords differ".into() });
    }
    Ok(first)
}

/// Reads a line from the terminal without echoing it.
fn prompt(label: &str) -> Result<String, Failure> {
    use crossterm::event::{read, Event, KeyCode, KeyModifiers};
    eprint!("{label}");
    std::io::stderr().flush()?;
    crossterm::terminal::enable_raw_mode()?;
    let mut out = String::new();
    let result = loop {
        match read() {
            Ok(Event::Key(key)) => match key.code {
                KeyCode::Enter => break Ok(()),
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    break Err(Failure { code: 130, message: String::new() })
                }
                KeyCode::Backspace => {
                    out.pop();
                }
                KeyCode::Char(c) => out.push(c),
                _ => {}
            },
            Ok(_) => {}
            Err(e) => break Err(e.into()),
        }
    };
    let _ = crossterm::terminal::disable_raw_mode();
    eprintln!();
    result.map(|()| out)
}

fn verifier(from_stdin: bool) -> Result<String, Failure> {
    let password = read_password(from_stdin)?;
    if password.len() < 8 {
        return Err(Failure { code: 1, message: "use a password of at least 8 characters".into() });
    }
    Ok(Verifier::generate(&password, ITERATIONS).map_err(|e| Failure { code: 1, message: e.to_string() })?.to_string())
}

pub fn add(name: &str, from_stdin: bool) -> Result<(), Failure> {
    if name.is_empty() || name.contains('@') {
        return Err(Failure { code: 2, message: "a user name must be non-empty and must not contain '@'".into() });
    }
    let verifier = verifier(from_stdin)?;
    println!("# Add to dbtape.toml; then grant databases under [[users.grants]].");
    println!("[[users]]");
    println!("name = {}", serde_json::to_string(name)?);
    println!("scram_verifier = {}", serde_json::to_string(&verifier)?);
    Ok(())
}

/// `dbtape reviewer add`: the reviewer's verifier into the config's `review.reviewers_file`.
pub fn add_reviewer(
    config: &std::path::Path,
    name: &str,
    role: super::ReviewerRoleArg,
    databases: Vec<String>,
    from_stdin: bool,
    oidc_only: bool,
) -> Result<(), Failure> {
    let fail = |message: String| Failure { code: 1, message };
    let (_, review) = crate::config::Config::load_review_settings(config).map_err(|e| fail(e.to_string()))?;
    let password = if oidc_only { None } else { Some(read_password(from_stdin)?) };
    if password.as_ref().is_some_and(|p| p.len() < 12) {
        return Err(Failure { code: 1, message: "use a password of at least 12 characters".into() });
    }
    let role = match role {
        super::ReviewerRoleArg::Auditor => crate::console::ReviewerRole::Auditor,
        super::ReviewerRoleArg::Reviewer => crate::console::ReviewerRole::Reviewer,
    };
    crate::console::add_reviewer(&review.reviewers_file, name, role, databases, password.as_deref()).map_err(|e| fail(e.to_string()))?;
    println!("reviewer {} written to {}", serde_json::to_string(name)?, review.reviewers_file.display());
    Ok(())
}

pub fn passwd(name: &str, from_stdin: bool) -> Result<(), Failure> {
    let verifier = verifier(from_stdin)?;
    println!("# Replace user {}'s scram_verifier in dbtape.toml with:", serde_json::to_string(name)?);
    println!("scram_verifier = {}", serde_json::to_string(&verifier)?);
    Ok(())
}
