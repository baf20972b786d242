//! Postgres sessions, rendered the way `tsh play` renders them.

use std::collections::HashMap;

use super::{go_quote, render_gap, rows_affected, screen_time, write_prompted, Renderer};
use crate::audit::RecordedEvent;

#[derive(Default)]
pub struct PostgresRenderer {
    expecting_result: bool,
    statements: HashMap<String, String>,
    /// Portal name → (statement name, parameters).
    portals: HashMap<String, (String, Vec<String>)>,
}

impl Renderer for PostgresRenderer {
    fn render(&mut self, event: &RecordedEvent, _raw: &[u8], out: &mut String) {
        if render_gap(event, out) {
            return;
        }
        match event.event.as_str() {
            "db.session.start" => {
                out.push_str(&format!("Session started to database {} at {}\r\n", go_quote(&event.db_service), screen_time(&event.time)));
            }
            "db.session.end" => {
                out.push_str(&format!("\r\nSession ended at {}\r\n", screen_time(&event.time)));
            }
            "db.session.query" => {
                write_prompted(&format!("{}=> ", event.db_name), event.db_query.as_deref().unwrap_or_default(), out);
                self.expecting_result = true;
            }
            "db.session.result" if self.expecting_result => {
                self.expecting_result = false;
                if event.success == Some(false) {
                    out.push_str(&event.error);
                    out.push_str("\r\n");
                } else {
                    out.push_str("SUCCESS\r\n");
                    out.push_str(&rows_affected(event.affected_records));
                    out.push_str("\r\n");
                }
            }
            "db.session.postgres.statements.parse" => {
                self.statements.insert(event.statement_name.clone(), event.query.clone());
                self.expecting_result = false;
            }
            "db.session.postgres.statements.bind" => {
                self.portals.insert(event.portal_name.clone(), (event.statement_name.clone(), event.parameters.clone()));
                self.expecting_result = false;
            }
            "db.session.postgres.statements.execute" => {
                let Some((statement, parameters)) = self.portals.get(&event.portal_name) else {
                    self.expecting_result = false;
                    return;
                };
                let mut text = self
                    .statements
                    .get(statement)
                    .cloned()
                    .unwrap_or_else(|| format!("EXECUTE {statement}"));
                if !parameters.is_empty() {
                    let rendered: Vec<String> = parameters
                        .iter()
                        .enumerate()
                        .map(|(i, p)| format!("${} = {}", i + 1, go_quote(p)))
                        .collect();
                    text.push_str(&format!(" ({})", rendered.join(", ")));
                }
                write_prompted(&format!("{}=> ", event.db_name), &text, out);
                self.expecting_result = true;
            }
            "db.session.postgres.function" => self.expecting_result = false,
            _ => {}
        }
    }
}
