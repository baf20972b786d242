//! What kind of statement an event holds, in the classes auditors know from pgaudit (READ,
//! WRITE, FUNCTION, ROLE, DDL, MISC, MISC_SET), the tables or collections it touched, and for
//! PostgreSQL a fingerprint that groups statements of one shape with different constants.
//! PostgreSQL statements are read with the server's own parser (libpg_query); MongoDB
//! commands and DynamoDB operations by their names. This runs when recordings are indexed,
//! never on a session's path.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatementClass {
    Misc,
    MiscSet,
    Read,
    Function,
    Write,
    Ddl,
    Role,
}

impl StatementClass {
    pub const ALL: [StatementClass; 7] = [
        StatementClass::Read,
        StatementClass::Write,
        StatementClass::Function,
        StatementClass::Role,
        StatementClass::Ddl,
        StatementClass::Misc,
        StatementClass::MiscSet,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatementClass::Read => "READ",
            StatementClass::Write => "WRITE",
            StatementClass::Function => "FUNCTION",
            StatementClass::Role => "ROLE",
            StatementClass::Ddl => "DDL",
            StatementClass::Misc => "MISC",
            StatementClass::MiscSet => "MISC_SET",
        }
    }

    pub fn parse(text: &str) -> Option<StatementClass> {
        StatementClass::ALL.into_iter().find(|c| c.as_str().eq_ignore_ascii_case(text))
    }
}

/// What the classifier found in one event's statement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Classified {
    /// Every class of the statements in it (a query string may hold several), strongest
    /// first: ROLE, DDL, WRITE, FUNCTION, READ, MISC_SET, MISC.
    pub classes: Vec<StatementClass>,
    /// Tables, or collections, lower-cased as the server resolves unquoted names.
    pub tables: Vec<String>,
    /// pg_query's fingerprint (16 hex digits); empty where there is none.
    pub fingerprint: String,
    /// The statement failed to parse (the server will have refused it too).
    pub unparsed: bool,
}

impl Classified {
    pub fn class(&self) -> Option<StatementClass> {
        self.classes.first().copied()
    }
}

/// Classifies an event, if it carries a statement: a query (or a failed one), a prepared
/// statement's parse, or a DynamoDB request.
pub fn classify_event(event: &Value) -> Option<Classified> {
    let kind = event.get("event")?.as_str()?;
    match (event.get("db_protocol").and_then(Value::as_str).unwrap_or_default(), kind) {
        ("postgres", "db.session.query" | "db.session.query.failed") => Some(classify_postgres(event.get("db_query")?.as_str()?)),
        ("postgres", "db.session.postgres.statements.parse") => Some(classify_postgres(event.get("query")?.as_str()?)),
        ("mongodb", "db.session.query" | "db.session.query.failed") => Some(classify_mongodb(event.get("db_query")?.as_str()?)),
        ("dynamodb", "db.session.dynamodb.request") => {
            Some(classify_dynamodb(event.get("target")?.as_str()?, event.get("body").unwrap_or(&Value::Null)))
        }
        _ => None,
    }
}

pub fn classify_postgres(sql: &str) -> Classified {
    let mut out = Classified::default();
    let summary = match pg_query::summary(sql, 0, -1) {
        Ok(summary) => summary,
        Err(_) => {
            out.unparsed = true;
            out.classes.push(first_word_class(sql));
            return out;
        }
    };
    let mut classes: Vec<StatementClass> = summary.statement_types().iter().map(|t| postgres_class(t, sql)).collect();
    if classes.is_empty() {
        classes.push(StatementClass::Misc);
    }
    classes.sort_by(|a, b| b.cmp(a));
    classes.dedup();
    out.classes = classes;
    let mut tables: Vec<String> = summary.tables().into_iter().map(|t| t.to_lowercase()).collect();
    tables.sort();
    tables.dedup();
    out.tables = tables;
    out.fingerprint = pg_query::fingerprint(sql, 0, 0).map(|f| f.hex).unwrap_or_default();
    out
}

/// pgaudit's class for one parse-tree statement type.
fn postgres_class(statement_type: &str, sql: &str) -> StatementClass {
    use StatementClass::*;
    match statement_type {
        "SelectStmt" | "DeclareCursorStmt" | "PrepareStmt" => Read,
        "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" | "TruncateStmt" => Write,
        // COPY … FROM writes into a table; COPY … TO reads from one.
        "CopyStmt" => {
            if contains_word(sql, "from") && !contains_word(sql, "to") {
                Write
            } else {
                Read
            }
        }
        "DoStmt" | "CallStmt" => Function,
        "GrantStmt"
        | "GrantRoleStmt"
        | "CreateRoleStmt"
        | "AlterRoleStmt"
        | "AlterRoleSetStmt"
        | "DropRoleStmt"
        | "AlterDefaultPrivilegesStmt"
        | "CreateUserMappingStmt"
        | "AlterUserMappingStmt"
        | "DropUserMappingStmt"
        | "ReassignOwnedStmt" => Role,
        "VariableSetStmt" => MiscSet,
        "TransactionStmt" | "VariableShowStmt" | "ExplainStmt" | "VacuumStmt" | "CheckPointStmt" | "DiscardStmt" | "FetchStmt"
        | "ClosePortalStmt" | "ListenStmt" | "UnlistenStmt" | "NotifyStmt" | "LockStmt" | "ExecuteStmt" | "DeallocateStmt" | "LoadStmt"
        | "ClusterStmt" | "ReindexStmt" | "ConstraintsSetStmt" => Misc,
        other
            if other.starts_with("Create")
                || other.starts_with("Alter")
                || other.starts_with("Drop")
                || matches!(
                    other,
                    "RenameStmt" | "CommentStmt" | "IndexStmt" | "ViewStmt" | "RuleStmt" | "DefineStmt" | "SecLabelStmt"
                ) =>
        {
            Ddl
        }
        _ => Misc,
    }
}

fn contains_word(sql: &str, word: &str) -> bool {
    sql.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').any(|w| w.eq_ignore_ascii_case(word))
}

/// For a statement the parser refused: the class its first word suggests, so a failed
/// `DROP TABLE …;;` still counts as DDL.
fn first_word_class(sql: &str) -> StatementClass {
    let word = sql.split(|c: char| !c.is_ascii_alphabetic()).find(|w| !w.is_empty()).unwrap_or_default().to_ascii_uppercase();
    match word.as_str() {
        "SELECT" | "WITH" | "VALUES" | "TABLE" => StatementClass::Read,
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "TRUNCATE" | "COPY" => StatementClass::Write,
        "GRANT" | "REVOKE" => StatementClass::Role,
        "CREATE" | "ALTER" | "DROP" | "COMMENT" => StatementClass::Ddl,
        "DO" | "CALL" => StatementClass::Function,
        "SET" | "RESET" => StatementClass::MiscSet,
        _ => StatementClass::Misc,
    }
}

/// `OpMsg(Body={"find": "books", …}, …)`: the command is the body's first key, its
/// collection that key's string value.
pub fn classify_mongodb(db_query: &str) -> Classified {
    let body = db_query.strip_prefix("OpMsg(Body=").unwrap_or(db_query);
    let mut rest = body.trim_start_matches('{').trim_start();
    let command = match rest.strip_prefix('"').and_then(|r| r.split_once('"')) {
        Some((name, after)) => {
            rest = after;
            name.to_string()
        }
        None => String::new(),
    };
    let collection = rest
        .trim_start()
        .strip_prefix(':')
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix('"'))
        .and_then(|r| r.split_once('"'))
        .map(|(c, _)| c.to_string());
    use StatementClass::*;
    let class = match command.as_str() {
        "find" | "aggregate" | "count" | "distinct" | "getMore" | "mapReduce" => Read,
        "insert" | "update" | "delete" | "findAndModify" | "bulkWrite" => Write,
        "create"
        | "drop"
        | "createIndexes"
        | "dropIndexes"
        | "collMod"
        | "renameCollection"
        | "dropDatabase"
        | "convertToCapped"
        | "cloneCollectionAsCapped" => Ddl,
        "createUser"
        | "updateUser"
        | "dropUser"
        | "dropAllUsersFromDatabase"
        | "grantRolesToUser"
        | "revokeRolesFromUser"
        | "createRole"
        | "updateRole"
        | "dropRole"
        | "grantPrivilegesToRole"
        | "revokePrivilegesFromRole"
        | "grantRolesToRole"
        | "revokeRolesFromRole" => Role,
        "eval" | "$eval" => Function,
        "setParameter" | "setFeatureCompatibilityVersion" => MiscSet,
        _ => Misc,
    };
    Classified {
        classes: vec![class],
        tables: collection.filter(|c| !c.is_empty() && class != Misc && class != Role).into_iter().collect(),
        fingerprint: String::new(),
        unparsed: command.is_empty(),
    }
}

/// `DynamoDB_20120810.PutItem` and its body's `TableName` (or the tables of a batch).
pub fn classify_dynamodb(target: &str, body: &Value) -> Classified {
    let operation = target.rsplit('.').next().unwrap_or_default();
    use StatementClass::*;
    let class = match operation {
        "GetItem" | "BatchGetItem" | "Query" | "Scan" | "TransactGetItems" | "GetRecords" | "GetShardIterator" => Read,
        "PutItem" | "UpdateItem" | "DeleteItem" | "BatchWriteItem" | "TransactWriteItems" => Write,
        "ExecuteStatement" | "BatchExecuteStatement" | "ExecuteTransaction" => {
            let statement = body.get("Statement").and_then(Value::as_str).unwrap_or_default();
            match first_word_class(statement) {
                Read => Read,
                _ => Write,
            }
        }
        "CreateTable"
        | "UpdateTable"
        | "DeleteTable"
        | "UpdateTimeToLive"
        | "CreateGlobalTable"
        | "UpdateGlobalTable"
        | "RestoreTableFromBackup"
        | "RestoreTableToPointInTime"
        | "UpdateContinuousBackups"
        | "TagResource"
        | "UntagResource" => Ddl,
        "PutResourcePolicy" | "DeleteResourcePolicy" => Role,
        _ => Misc,
    };
    let mut tables: Vec<String> = Vec::new();
    if let Some(name) = body.get("TableName").and_then(Value::as_str) {
        tables.push(name.to_string());
    }
    for key in ["RequestItems"] {
        if let Some(map) = body.get(key).and_then(Value::as_object) {
            tables.extend(map.keys().cloned());
        }
    }
    tables.sort();
    tables.dedup();
    Classified { classes: vec![class], tables, fingerprint: String::new(), unparsed: operation.is_empty() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatementClass::*;

    #[test]
    fn postgres_statements_fall_in_pgaudits_classes() {
        let cases = [
            ("SELECT * FROM payments WHERE id = 1", Read),
            ("INSERT INTO orders VALUES (1)", Write),
            ("TRUNCATE orders", Write),
            ("COPY orders FROM STDIN", Write),
            ("COPY orders TO STDOUT", Read),
            ("DROP TABLE orders", Ddl),
            ("CREATE INDEX ON orders (id)", Ddl),
            ("GRANT SELECT ON orders TO alice", Role),
            ("ALTER ROLE alice PASSWORD NULL", Role),
            ("DO $$ BEGIN PERFORM 1; END $$", Function),
            ("SET search_path = app", MiscSet),
            ("BEGIN", Misc),
            ("VACUUM orders", Misc),
        ];
        for (sql, class) in cases {
            assert_eq!(classify_postgres(sql).class(), Some(class), "{sql}");
        }
        let several = classify_postgres("SELECT 1 FROM accounts; DROP TABLE Payments");
        assert_eq!(several.classes, [Ddl, Read]);
        assert_eq!(several.tables, ["accounts", "payments"]);
        let a = classify_postgres("SELECT * FROM payments WHERE id = 1");
        let b = classify_postgres("select * from payments where id = 42");
        assert_eq!(a.fingerprint.len(), 16);
        assert_eq!(a.fingerprint, b.fingerprint, "same shape, other constants");
        assert_ne!(a.fingerprint, classify_postgres("SELECT * FROM orders WHERE id = 1").fingerprint);
        let broken = classify_postgres("DROP TABLE orders;; nonsense (");
        assert!(broken.unparsed);
        assert_eq!(broken.class(), Some(Ddl));
    }

    #[test]
    fn mongodb_and_dynamodb_operations_get_the_same_classes() {
        let find = classify_mongodb(r#"OpMsg(Body={"find": "books", "filter": {}, "$db": "shop"}, Documents=[], Flags=)"#);
        assert_eq!((find.class(), find.tables.clone()), (Some(Read), vec!["books".to_string()]));
        assert_eq!(classify_mongodb(r#"OpMsg(Body={"drop": "books"}, Documents=[], Flags=)"#).class(), Some(Ddl));
        assert_eq!(classify_mongodb(r#"OpMsg(Body={"createUser": "eve"}, Documents=[], Flags=)"#).class(), Some(Role));
        let put = classify_dynamodb("DynamoDB_20120810.PutItem", &serde_json::json!({"TableName": "payments"}));
        assert_eq!((put.class(), put.tables.clone()), (Some(Write), vec!["payments".to_string()]));
        let batch = classify_dynamodb("DynamoDB_20120810.BatchGetItem", &serde_json::json!({"RequestItems": {"a": {}, "b": {}}}));
        assert_eq!((batch.class(), batch.tables), (Some(Read), vec!["a".to_string(), "b".to_string()]));
        assert_eq!(classify_dynamodb("DynamoDB_20120810.DeleteTable", &serde_json::json!({})).class(), Some(Ddl));
    }
}
