//! Which query each result answers. PostgreSQL answers in order, so a queue of what the
//! client sent is enough, given its rules: a simple Query may yield several results and ends
//! at ReadyForQuery; an extended-protocol error skips every Execute up to the next Sync.
//! A statement Describe is answered by a ParameterDescription, which says whose it is the
//! same way.

use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Simple(u64),
    Extended(u64),
    /// A Describe of the statement named, after that name's Parse number `u64`.
    Describe(Box<str>, u64),
    Sync,
}

#[derive(Debug, Default)]
pub struct Pairing {
    pending: VecDeque<Pending>,
}

impl Pairing {
    pub fn simple_query(&mut self, ei: u64) {
        self.pending.push_back(Pending::Simple(ei));
    }

    pub fn execute(&mut self, ei: u64) {
        self.pending.push_back(Pending::Extended(ei));
    }

    pub fn sync(&mut self) {
        self.pending.push_back(Pending::Sync);
    }

    pub fn describe(&mut self, statement: Box<str>, parse: u64) {
        self.pending.push_back(Pending::Describe(statement, parse));
    }

    /// A ParameterDescription: the statement (and its Parse) the Describe it answers named.
    pub fn described(&mut self) -> Option<(Box<str>, u64)> {
        match self.pending.pop_front()? {
            Pending::Describe(name, parse) => Some((name, parse)),
            other => {
                // Not a Describe's answer in turn: the server's order is not ours to fix.
                self.pending.push_front(other);
                None
            }
        }
    }

    /// Drops Describes whose answer will not come (the server failed them).
    fn drop_unanswered_describes(&mut self) {
        while let Some(Pending::Describe(..)) = self.pending.front() {
            self.pending.pop_front();
        }
    }

    /// A CommandComplete, EmptyQueryResponse or PortalSuspended: returns the query answered.
    pub fn completed(&mut self) -> Option<u64> {
        self.drop_unanswered_describes();
        match *self.pending.front()? {
            Pending::Simple(ei) => Some(ei),
            Pending::Extended(ei) => {
                self.pending.pop_front();
                Some(ei)
            }
            Pending::Sync | Pending::Describe(..) => None,
        }
    }

    /// An ErrorResponse: returns the query that failed, and drops the executes and
    /// describes the server will now skip.
    pub fn failed(&mut self) -> Option<u64> {
        if let Pending::Simple(ei) = *self.pending.front()? {
            return Some(ei);
        }
        let mut failed = None;
        while let Some(Pending::Extended(ei)) | Some(Pending::Describe(_, ei)) = self.pending.front() {
            let is_execute = matches!(self.pending.front(), Some(Pending::Extended(_)));
            if is_execute && failed.is_none() {
                failed = Some(*ei);
            }
            self.pending.pop_front();
        }
        failed
    }

    /// Advances on a server message of type `ty`; returns the query a result answers.
    pub fn on_server_message(&mut self, ty: u8) -> Option<u64> {
        match ty {
            b'C' | b'I' | b's' => self.completed(),
            b'E' => self.failed(),
            b'Z' => {
                self.ready();
                None
            }
            _ => None,
        }
    }

    /// ReadyForQuery ends a simple query, or everything up to the oldest Sync.
    pub fn ready(&mut self) {
        match self.pending.front() {
            Some(Pending::Simple(_)) => {
                self.pending.pop_front();
            }
            Some(_) => {
                while let Some(entry) = self.pending.pop_front() {
                    if entry == Pending::Sync {
                        break;
                    }
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_executes_pair_in_order_and_errors_skip_to_sync() {
        let mut p = Pairing::default();
        p.execute(1);
        p.execute(2);
        p.sync();
        p.execute(4);
        p.execute(5);
        p.sync();
        assert_eq!(p.completed(), Some(1));
        assert_eq!(p.completed(), Some(2));
        p.ready();
        assert_eq!(p.failed(), Some(4)); // 5 is skipped by the server
        p.ready();
        p.simple_query(7);
        assert_eq!(p.completed(), Some(7));
        assert_eq!(p.completed(), Some(7)); // a multi-statement query
        p.ready();
        assert_eq!(p.completed(), None);
    }

    #[test]
    fn describes_are_answered_in_turn_and_dropped_on_error() {
        let mut p = Pairing::default();
        p.describe("a".into(), 1);
        p.execute(2);
        p.sync();
        p.describe("b".into(), 3);
        p.execute(4);
        p.sync();
        assert_eq!(p.described(), Some(("a".into(), 1)));
        assert_eq!(p.described(), None, "an execute is next, not a describe");
        assert_eq!(p.completed(), Some(2));
        p.ready();
        // Parse failed: the describe and the execute are skipped; the execute failed.
        assert_eq!(p.failed(), Some(4));
        p.ready();
        assert!(p.pending.is_empty());
    }
}
