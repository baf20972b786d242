//! `dbtape report`: a review summary per user and database over a time range: sessions,
//! statements by class, refused logins, errors, and the privileged statements themselves
//! (ROLE and DDL). Read straight from the recordings, so it needs no index.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::fields::{event_time_ms, is_failure};
use crate::recording::events::EventStream;
use crate::recording::RecordingStore;
use crate::replay::export::{matching_sessions, ExportFilter};
use crate::statement::classify::{classify_event, StatementClass};
use crate::statement::parameters;

/// Privileged statements kept per user and database; the count says how many there were.
const PRIVILEGED_KEPT: usize = 50;

#[derive(Debug, Default, Serialize)]
pub struct Row {
    pub user: String,
    pub db: String,
    pub sessions: u64,
    pub statements: u64,
    pub by_class: BTreeMap<String, u64>,
    pub refused_logins: u64,
    pub errors: u64,
    pub privileged_count: u64,
    pub privileged: Vec<Privileged>,
}

#[derive(Debug, Serialize)]
pub struct Privileged {
    pub time: String,
    pub sid: String,
    pub ei: u64,
    pub class: String,
    pub statement: String,
}

pub fn report(store: &RecordingStore, filter: &ExportFilter) -> std::io::Result<(Vec<Row>, Vec<String>)> {
    let mut warnings = Vec::new();
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    for session in matching_sessions(store, filter, &mut warnings)? {
        let mut stream = match EventStream::open(store, &session.sid, false) {
            Ok(s) => s,
            Err(e) => {
                warnings.push(format!("recording {}: {e}", session.sid));
                continue;
            }
        };
        let refusals_log = session.refused_logins > 0 || session.user.is_empty();
        if !refusals_log {
            row(&mut rows, &session.user, &session.db_service).sessions += 1;
        }
        // A privileged statement prepared with Parse, by name, awaiting the Bind whose values
        // it ran with: (user, its index in that row's list).
        let mut awaiting_bind: std::collections::HashMap<String, (String, usize)> = std::collections::HashMap::new();
        let _ = stream.for_each_event(|line| {
            let Ok(event) = serde_json::from_slice::<Value>(line) else { return Ok(true) };
            let time = event_time_ms(&event).unwrap_or_default();
            if filter.since_ms.is_some_and(|s| time < s) || filter.until_ms.is_some_and(|u| time > u) {
                return Ok(true);
            }
            let field = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
            let user = if refusals_log { field("user") } else { session.user.clone() };
            let kind = field("event");
            let r = row(&mut rows, &user, &session.db_service);
            if kind == "db.session.postgres.statements.bind" {
                let at = awaiting_bind.remove(&field("statement_name")).filter(|(u, _)| *u == user).map(|(_, at)| at);
                if let (Some(privileged), Some(values)) = (at.and_then(|at| r.privileged.get_mut(at)), parameters::of_bind_event(&event)) {
                    privileged.statement.push_str(&format!(" ({})", parameters::numbered(&values)));
                }
            }
            if kind == "db.session.start" && is_failure(&event) {
                r.refused_logins += 1;
            } else if is_failure(&event) {
                r.errors += 1;
            }
            if let Some(classified) = classify_event(&event) {
                r.statements += 1;
                let class = classified.class().unwrap_or(StatementClass::Misc);
                *r.by_class.entry(class.as_str().to_string()).or_default() += 1;
                if matches!(class, StatementClass::Role | StatementClass::Ddl) {
                    r.privileged_count += 1;
                    if r.privileged.len() < PRIVILEGED_KEPT {
                        let statement =
                            [field("db_query"), field("query"), field("target")].into_iter().find(|s| !s.is_empty()).unwrap_or_default();
                        if kind == "db.session.postgres.statements.parse" {
                            awaiting_bind.insert(field("statement_name"), (user.clone(), r.privileged.len()));
                        }
                        r.privileged.push(Privileged {
                            time: field("time"),
                            sid: session.sid.clone(),
                            ei: event.get("ei").and_then(Value::as_u64).unwrap_or_default(),
                            class: class.as_str().to_string(),
                            statement,
                        });
                    }
                }
            }
            Ok(true)
        });
    }
    Ok((rows.into_values().filter(|r| r.sessions + r.statements + r.refused_logins > 0).collect(), warnings))
}

fn row<'a>(rows: &'a mut BTreeMap<(String, String), Row>, user: &str, db: &str) -> &'a mut Row {
    rows.entry((user.to_string(), db.to_string())).or_insert_with(|| Row { user: user.to_string(), db: db.to_string(), ..Row::default() })
}
