//! Postgres sessions, rendered the way `tsh play` renders them.
//!
//! Results that name their query (`query_ei`, written by dbtape) are paired exactly, so a
//! pipelined client's queries each show with their own result. Recordings without it
//! follow `tsh play`'s rule: a result shows only right after a query.

use std::collections::{HashMap, VecDeque};

use super::{go_quote, render_gap, rows_affected, screen_time, terminal_safe, write_prompted, Renderer};
use crate::audit::RecordedEvent;

#[derive(Default)]
pub struct PostgresRenderer {
    expecting_result: bool,
    statements: HashMap<String, String>,
    /// Portal name → (statement name, its parameters as shown: `$1 = …, $2 = …`).
    portals: HashMap<String, (String, String)>,
    /// The query on screen whose result has not come yet.
    open: Option<u64>,
    /// Queries sent while another awaited its result (pipelining), not yet shown.
    deferred: VecDeque<(u64, String, String)>,
}

impl PostgresRenderer {
    /// Shows a query now, or defers it while an earlier one awaits its result.
    fn query(&mut self, ei: u64, prompt: String, text: String, out: &mut String) {
        if self.open.is_none() && self.deferred.is_empty() {
            write_prompted(&prompt, &text, out);
            self.open = Some(ei);
        } else {
            self.deferred.push_back((ei, prompt, text));
        }
        self.expecting_result = true;
    }

    fn result_text(event: &RecordedEvent, out: &mut String) {
        if event.success == Some(false) {
            out.push_str(&terminal_safe(&event.error));
            out.push_str("\r\n");
        } else {
            out.push_str("SUCCESS\r\n");
            out.push_str(&rows_affected(event.affected_records));
            out.push_str("\r\n");
        }
    }

    fn paired_result(&mut self, query_ei: u64, event: &RecordedEvent, out: &mut String) {
        if self.open != Some(query_ei) {
            // Deferred queries are in event order: a binary search keeps a deep pipeline (a
            // JDBC batch of thousands) from costing a scan per result.
            let Ok(at) = self.deferred.binary_search_by_key(&query_ei, |(ei, _, _)| *ei) else { return };
            // Queries before it got no result (the server skipped them after an error).
            for (_, prompt, text) in self.deferred.drain(..=at) {
                write_prompted(&prompt, &text, out);
            }
        }
        Self::result_text(event, out);
        self.open = None;
        if let Some((ei, prompt, text)) = self.deferred.pop_front() {
            write_prompted(&prompt, &text, out);
            self.open = Some(ei);
        }
    }

    fn flush(&mut self, out: &mut String) {
        for (_, prompt, text) in self.deferred.drain(..) {
            write_prompted(&prompt, &text, out);
        }
        self.open = None;
    }
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
                self.flush(out);
                out.push_str(&format!("\r\nSession ended at {}\r\n", screen_time(&event.time)));
            }
            "db.session.query" => {
                let text = event.db_query.clone().unwrap_or_default();
                self.query(event.ei, format!("{}=> ", event.db_name), text, out);
            }
            "db.session.result" => match event.query_ei {
                Some(query_ei) => {
                    self.paired_result(query_ei, event, out);
                    self.expecting_result = false;
                }
                None if self.expecting_result => {
                    // A recording without pairing: show queries as they come from now on.
                    self.flush(out);
                    self.expecting_result = false;
                    Self::result_text(event, out);
                }
                None => {}
            },
            "db.session.postgres.statements.parse" => {
                self.statements.insert(event.statement_name.clone(), event.query.clone());
                self.expecting_result = false;
            }
            "db.session.postgres.statements.bind" => {
                let shown =
                    match crate::statement::parameters::readable(&event.parameters, &event.parameter_formats, &event.parameter_types) {
                        Some(values) => crate::statement::parameters::numbered(&values),
                        // A recording without formats or types: shown as `tsh play` shows it.
                        None => event
                            .parameters
                            .iter()
                            .enumerate()
                            .map(|(i, p)| format!("${} = {}", i + 1, go_quote(p)))
                            .collect::<Vec<_>>()
                            .join(", "),
                    };
                self.portals.insert(event.portal_name.clone(), (event.statement_name.clone(), shown));
                self.expecting_result = false;
            }
            "db.session.postgres.statements.execute" => {
                let Some((statement, parameters)) = self.portals.get(&event.portal_name) else {
                    self.expecting_result = false;
                    return;
                };
                let mut text = self.statements.get(statement).cloned().unwrap_or_else(|| format!("EXECUTE {statement}"));
                if !parameters.is_empty() {
                    text.push_str(&format!(" ({parameters})"));
                }
                self.query(event.ei, format!("{}=> ", event.db_name), text, out);
            }
            "db.session.postgres.function" => self.expecting_result = false,
            _ => {}
        }
    }
}
