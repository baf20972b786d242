//! Which query each result answers. PostgreSQL answers in order, so a queue of what the
//! client sent is enough, given its rules: a simple Query may yield several results and ends
//! at ReadyForQuery; an extended-protocol error skips every Execute up to the next Sync.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Simple(u64),
    Extended(u64),
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

    /// A CommandComplete, EmptyQueryResponse or PortalSuspended: returns the query answered.
    pub fn completed(&mut self) -> Option<u64> {
        match self.pending.front().copied()? {
            Pending::Simple(ei) => Some(ei),
            Pending::Extended(ei) => {
                self.pending.pop_front();
                Some(ei)
            }
            Pending::Sync => None,
        }
    }

    /// An ErrorResponse: returns the query that failed, and drops the executes the server
    /// will now skip.
    pub fn failed(&mut self) -> Option<u64> {
        match self.pending.front().copied()? {
            Pending::Simple(ei) => Some(ei),
            Pending::Extended(ei) => {
                self.pending.pop_front();
                while let Some(Pending::Extended(_)) = self.pending.front() {
                    self.pending.pop_front();
                }
                Some(ei)
            }
            Pending::Sync => None,
        }
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
}
