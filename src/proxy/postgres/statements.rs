//! Each prepared statement's parameter types, so that a Bind's binary values can be read
//! back: declared by the driver in Parse, or else described by the server in its
//! ParameterDescription (pgx, asyncpg, JDBC and tokio-postgres describe a statement before
//! they bind it). Every Bind records the types its statement has at that moment.

use std::collections::HashMap;
use std::sync::Arc;

/// Statements a session may hold types for; a client that prepares more starts the table
/// afresh, so the memory a session costs stays bounded whatever it sends.
const MAX_STATEMENTS: usize = 4096;
/// Type OIDs held across all of a session's statements.
const MAX_HELD_TYPES: usize = 256 * 1024;

#[derive(Debug)]
struct Known {
    /// Which Parse of this name the types belong to: a ParameterDescription that answers an
    /// earlier Parse of a reused name (the unnamed statement, in a pipeline) must not
    /// overwrite a later one's.
    parse: u64,
    types: Option<Arc<[u32]>>,
}

#[derive(Debug, Default)]
pub struct StatementTypes {
    by_name: HashMap<Box<str>, Known>,
    parses: u64,
    held: usize,
}

impl StatementTypes {
    /// A Parse of `name` with the types the driver declared (0 for "let the server infer").
    pub fn parsed(&mut self, name: &str, declared: Vec<u32>) {
        self.parses += 1;
        let types = (declared.iter().any(|&t| t != 0)).then(|| Arc::from(declared));
        self.set(name, Known { parse: self.parses, types });
    }

    /// Which Parse a Describe of statement `name` asks about, to hand back with the answer.
    pub fn describing(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|known| known.parse)
    }

    /// The server's ParameterDescription for the Describe of `name` after Parse `parse`.
    pub fn described(&mut self, name: &str, parse: u64, types: Vec<u32>) {
        if self.by_name.get(name).is_some_and(|known| known.parse == parse) {
            self.set(name, Known { parse, types: Some(Arc::from(types)) });
        }
    }

    pub fn closed(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name) {
            self.held -= old.types.map_or(0, |t| t.len());
        }
    }

    /// The types statement `name` has now, if the proxy saw them.
    pub fn types_of(&self, name: &str) -> Option<Arc<[u32]>> {
        self.by_name.get(name).and_then(|known| known.types.clone())
    }

    fn set(&mut self, name: &str, known: Known) {
        let adding = known.types.as_ref().map_or(0, |t| t.len());
        self.closed(name);
        if self.by_name.len() >= MAX_STATEMENTS || self.held + adding > MAX_HELD_TYPES {
            self.by_name.clear();
            self.held = 0;
        }
        self.held += adding;
        self.by_name.insert(name.into(), known);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_then_described_and_a_late_answer_is_ignored() {
        let mut s = StatementTypes::default();
        s.parsed("", vec![0, 0]);
        assert_eq!(s.types_of(""), None, "nothing declared");
        let first = s.describing("").unwrap();
        s.parsed("", vec![23]);
        // The answer to the first Parse's Describe comes after the second Parse.
        s.described("", first, vec![25, 25]);
        assert_eq!(s.types_of("").as_deref(), Some(&[23][..]));
        let second = s.describing("").unwrap();
        s.described("", second, vec![23]);
        s.closed("");
        assert_eq!(s.types_of(""), None);
        assert_eq!(s.held, 0);
    }

    #[test]
    fn parse_numbers_start_at_one_so_zero_matches_nothing() {
        let mut s = StatementTypes::default();
        s.parsed("a", vec![]);
        s.described("a", 0, vec![23]);
        assert_eq!(s.types_of("a"), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut s = StatementTypes::default();
        for i in 0..MAX_STATEMENTS * 3 {
            s.parsed(&format!("s{i}"), vec![23; 200]);
        }
        assert!(s.by_name.len() <= MAX_STATEMENTS);
        assert!(s.held <= MAX_HELD_TYPES);
        assert_eq!(s.held, s.by_name.values().map(|k| k.types.as_ref().map_or(0, |t| t.len())).sum::<usize>());
    }
}
