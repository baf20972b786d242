//! `dbtape lake ddl`: the table as each engine declares it, with types that match what the
//! writer writes (a timestamp, not a bigint; a date partition with projection, so Athena
//! needs neither a crawler nor `MSCK REPAIR`).

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Athena,
    Trino,
    Spark,
    Duckdb,
}

/// Column names and their SQL types, as `table::schema` writes them.
const COLUMNS: &[(&str, &str)] = &[
    ("time", "timestamp"),
    ("event", "string"),
    ("code", "string"),
    ("uid", "string"),
    ("sid", "string"),
    ("cluster_name", "string"),
    ("user", "string"),
    ("db_service", "string"),
    ("db_protocol", "string"),
    ("db_type", "string"),
    ("db_uri", "string"),
    ("db_user", "string"),
    ("db_name", "string"),
    ("error", "string"),
    ("client_addr", "string"),
    ("aws_role_arn", "string"),
    ("db_statement_class", "string"),
    ("db_query_fingerprint", "string"),
    ("ei", "bigint"),
    ("server_id", "string"),
    ("db_query", "string"),
    ("success", "boolean"),
    ("affected_records", "bigint"),
    ("db_tables", "array<string>"),
    ("event_json", "string"),
];

/// The table definition for `engine`, over `s3://bucket/prefix` (or a local folder for
/// DuckDB), named `table`.
pub fn ddl(engine: Engine, location: &str, table: &str) -> String {
    let location = location.trim_end_matches('/');
    let quoted = |name: &str, engine: Engine| match engine {
        Engine::Athena | Engine::Spark => format!("`{name}`"),
        Engine::Trino | Engine::Duckdb => format!("\"{name}\""),
    };
    let trino_type = |t: &str| match t {
        "string" => "varchar".to_string(),
        "timestamp" => "timestamp(3)".to_string(),
        "array<string>" => "array(varchar)".to_string(),
        other => other.to_string(),
    };
    let columns = |engine: Engine, map: &dyn Fn(&str) -> String| {
        COLUMNS.iter().map(|(name, t)| format!("  {} {}", quoted(name, engine), map(t))).collect::<Vec<_>>().join(",\n")
    };
    match engine {
        Engine::Athena => format!(
            "CREATE EXTERNAL TABLE IF NOT EXISTS {table} (\n{}\n)\nPARTITIONED BY (`event_date` date)\nSTORED AS PARQUET\nLOCATION '{location}/events/'\nTBLPROPERTIES (\n  'parquet.compression'='ZSTD',\n  'projection.enabled'='true',\n  'projection.event_date.type'='date',\n  'projection.event_date.format'='yyyy-MM-dd',\n  'projection.event_date.range'='2024-01-01,NOW',\n  'projection.event_date.interval'='1',\n  'projection.event_date.interval.unit'='DAYS'\n);\n",
            columns(engine, &|t| t.to_string())
        ),
        Engine::Trino => format!(
            "CREATE TABLE IF NOT EXISTS {table} (\n{},\n  \"event_date\" date\n)\nWITH (\n  format = 'PARQUET',\n  external_location = '{location}/events/',\n  partitioned_by = ARRAY['event_date'],\n  partition_projection_enabled = true\n);\n-- Projection of event_date: ALTER TABLE … SET PROPERTIES, or the hive.partition-projection-* catalog settings, as Athena's above.\n",
            columns(engine, &trino_type)
        ),
        Engine::Spark => format!(
            "CREATE TABLE IF NOT EXISTS {table} (\n{},\n  `event_date` date\n)\nUSING parquet\nPARTITIONED BY (event_date)\nLOCATION '{location}/events/';\nMSCK REPAIR TABLE {table};\n",
            columns(engine, &|t| t.to_string())
        ),
        Engine::Duckdb => format!(
            "CREATE OR REPLACE VIEW {table} AS\n  SELECT * FROM read_parquet('{location}/events/*/*.parquet', hive_partitioning = true, hive_types = {{'event_date': DATE}});\n"
        ),
    }
}
