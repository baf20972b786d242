//! A search as a reviewer writes it (times as text, the class by name, a regular
//! expression's source), checked into the index's `SearchFilter`.

use super::ReviewError;
use crate::search::SearchFilter;
use crate::statement::StatementClass;

#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub user: Option<String>,
    pub db: Option<String>,
    pub db_user: Option<String>,
    pub db_name: Option<String>,
    pub protocol: Option<String>,
    pub events: Vec<String>,
    pub codes: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub sid: Option<String>,
    pub failed: bool,
    pub class: Option<String>,
    pub table: Option<String>,
    pub fingerprint: Option<String>,
    pub text: Option<String>,
    pub regex: Option<String>,
}

impl SearchQuery {
    pub fn filter(self) -> Result<SearchFilter, ReviewError> {
        let (since_ms, until_ms) = super::time_range(self.since.as_deref(), self.until.as_deref())?;
        let class = self
            .class
            .map(|c| {
                StatementClass::parse(&c)
                    .ok_or_else(|| ReviewError::Usage(format!("--class {c:?}: use READ, WRITE, FUNCTION, ROLE, DDL, MISC or MISC_SET")))
            })
            .transpose()?;
        let regex = self.regex.map(|r| regex::Regex::new(&r).map_err(|e| ReviewError::Usage(format!("--regex: {e}")))).transpose()?;
        let sid = self.sid.map(|s| crate::recording::validate_session_id(&s).map_err(|e| ReviewError::Usage(e.to_string()))).transpose()?;
        Ok(SearchFilter {
            user: self.user,
            db: self.db,
            db_user: self.db_user,
            db_name: self.db_name,
            protocol: self.protocol,
            events: self.events,
            codes: self.codes,
            since_ms,
            until_ms,
            sid,
            failed: self.failed,
            class,
            table: self.table,
            fingerprint: self.fingerprint,
            text: self.text,
            regex,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_parts_are_usage_errors_naming_the_flag() {
        let bad = |q: SearchQuery| match q.filter() {
            Err(ReviewError::Usage(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(bad(SearchQuery { class: Some("LOUD".into()), ..Default::default() }).starts_with("--class"));
        assert!(bad(SearchQuery { regex: Some("(".into()), ..Default::default() }).starts_with("--regex"));
        assert!(bad(SearchQuery { since: Some("soonish".into()), ..Default::default() }).starts_with("--since"));
        assert!(SearchQuery { class: Some("ddl".into()), since: Some("2026-01-02".into()), ..Default::default() }.filter().is_ok());
    }
}
