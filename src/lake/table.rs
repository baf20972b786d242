//! The lake's one table: typed columns for what auditors filter on, the derived statement
//! fields, and the whole event as `export` writes it. Every column comes from the event
//! itself (and this host's `server_id`), so the same events always make the same bytes: a
//! batch rebuilt after a crash overwrites its object with identical content.

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Int64Builder, ListBuilder, StringBuilder, TimestampMillisecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::LakeError;

/// String columns, in table order (`Columns::texts` gives their values in the same order).
const TEXT_COLUMNS: &[&str] = &[
    "event",
    "code",
    "uid",
    "sid",
    "cluster_name",
    "user",
    "db_service",
    "db_protocol",
    "db_type",
    "db_uri",
    "db_user",
    "db_name",
    "error",
    "client_addr",
    "aws_role_arn",
    "db_statement_class",
    "db_query_fingerprint",
];

type Text<'a> = Option<Borrowed<'a>>;

/// A string field borrowed from the line unless it holds escapes. serde's own `Cow<str>`
/// borrows only as a field's whole type: inside an `Option` it allocated every value, which
/// cost the writer a tenth of its time.
pub(crate) struct Borrowed<'a>(std::borrow::Cow<'a, str>);

impl std::ops::Deref for Borrowed<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Borrowed<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Borrowed<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Borrowed(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Borrowed(std::borrow::Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Borrowed(std::borrow::Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// What the typed columns take from an event, borrowed from its line where it can be: the
/// writer reads every field of a million rows, and a `serde_json::Value` per row allocated
/// more than the rest of the work.
#[derive(Default, serde::Deserialize)]
struct Columns<'a> {
    #[serde(borrow, default)]
    event: Text<'a>,
    #[serde(borrow, default)]
    code: Text<'a>,
    #[serde(borrow, default)]
    uid: Text<'a>,
    #[serde(borrow, default)]
    sid: Text<'a>,
    #[serde(borrow, default)]
    cluster_name: Text<'a>,
    #[serde(borrow, default)]
    user: Text<'a>,
    #[serde(borrow, default)]
    db_service: Text<'a>,
    #[serde(borrow, default)]
    db_protocol: Text<'a>,
    #[serde(borrow, default)]
    db_type: Text<'a>,
    #[serde(borrow, default)]
    db_uri: Text<'a>,
    #[serde(borrow, default)]
    db_user: Text<'a>,
    #[serde(borrow, default)]
    db_name: Text<'a>,
    #[serde(borrow, default)]
    error: Text<'a>,
    #[serde(borrow, default, rename = "addr.remote")]
    client_addr: Text<'a>,
    #[serde(borrow, default)]
    aws_role_arn: Text<'a>,
    #[serde(borrow, default)]
    db_statement_class: Text<'a>,
    #[serde(borrow, default)]
    db_query_fingerprint: Text<'a>,
    #[serde(borrow, default)]
    db_query: Text<'a>,
    #[serde(borrow, default)]
    query: Text<'a>,
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    affected_records: Option<i64>,
    #[serde(borrow, default)]
    db_tables: Option<Vec<Borrowed<'a>>>,
}

impl Columns<'_> {
    fn texts(&self) -> [&Text<'_>; 17] {
        [
            &self.event,
            &self.code,
            &self.uid,
            &self.sid,
            &self.cluster_name,
            &self.user,
            &self.db_service,
            &self.db_protocol,
            &self.db_type,
            &self.db_uri,
            &self.db_user,
            &self.db_name,
            &self.error,
            &self.client_addr,
            &self.aws_role_arn,
            &self.db_statement_class,
            &self.db_query_fingerprint,
        ]
    }
}

fn non_empty<'b>(text: &'b Text<'_>) -> Option<&'b str> {
    text.as_deref().filter(|s| !s.is_empty())
}

pub fn schema() -> Arc<Schema> {
    let text = |name: &str| Field::new(name, DataType::Utf8, true);
    let mut fields = vec![Field::new("time", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false)];
    fields.extend(TEXT_COLUMNS.iter().map(|name| text(name)));
    fields.extend([
        Field::new("ei", DataType::Int64, false),
        text("server_id"),
        text("db_query"),
        Field::new("success", DataType::Boolean, true),
        Field::new("affected_records", DataType::Int64, true),
        Field::new("db_tables", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), true),
        text("event_json"),
    ]);
    Arc::new(Schema::new(fields))
}

/// One event, ready to become a row: its time, where it is, and its exported line.
#[derive(Debug, Clone)]
pub struct Row {
    pub time_ms: i64,
    pub sid: Arc<str>,
    pub ei: u64,
    /// The event as `export` writes it (derived fields included), without its newline.
    pub line: Vec<u8>,
}

/// The rows as one Parquet object, sorted by time (then session and `ei`).
pub fn parquet_object(rows: &mut [Row], server_id: &str) -> Result<Vec<u8>, LakeError> {
    rows.sort_by(|a, b| (a.time_ms, &a.sid, a.ei).cmp(&(b.time_ms, &b.sid, b.ei)));
    let batch = record_batch(rows, server_id)?;
    write_parquet(&batch)
}

/// zstd's level for every column. `scripts/bench lake` (1 M events): level 3 gave 65.3 bytes
/// per event at 155 K rows/s, level 9 59.8 bytes at 111 K rows/s; the writer's speed is the
/// scarcer of the two.
const ZSTD_LEVEL: i32 = 3;

/// A batch as one Parquet object: zstd, data pages of at most 1 MB uncompressed (Security
/// Lake's bound), one row group for the objects the writer makes.
pub fn write_parquet(batch: &RecordBatch) -> Result<Vec<u8>, LakeError> {
    let mut properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).map_err(|e| LakeError::Parquet(e.to_string()))?))
        // Security Lake's bound on a data page: 1 MB uncompressed.
        .set_data_page_size_limit(1024 * 1024);
    // Values unique to each row gain nothing from a dictionary but the cost of trying one.
    for unique in ["event_json", "uid"] {
        if batch.schema().column_with_name(unique).is_some() {
            properties = properties.set_column_dictionary_enabled(parquet::schema::types::ColumnPath::from(unique), false);
        }
    }
    let properties = properties.build();
    let mut out = Vec::with_capacity(batch.num_rows() * 48);
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(properties)).map_err(|e| LakeError::Parquet(e.to_string()))?;
    writer.write(batch).map_err(|e| LakeError::Parquet(e.to_string()))?;
    writer.close().map_err(|e| LakeError::Parquet(e.to_string()))?;
    Ok(out)
}

fn record_batch(rows: &[Row], server_id: &str) -> Result<RecordBatch, LakeError> {
    let n = rows.len();
    let mut time = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut texts: Vec<StringBuilder> = TEXT_COLUMNS.iter().map(|_| StringBuilder::with_capacity(n, n * 16)).collect();
    let mut ei = Int64Builder::with_capacity(n);
    let mut server = StringBuilder::with_capacity(n, n * server_id.len());
    let mut query = StringBuilder::with_capacity(n, n * 64);
    let mut success = BooleanBuilder::with_capacity(n);
    let mut affected = Int64Builder::with_capacity(n);
    let mut tables = ListBuilder::new(StringBuilder::new());
    let mut json = StringBuilder::with_capacity(n, rows.iter().map(|r| r.line.len()).sum());
    let mut uid_field = Vec::with_capacity(64);
    for row in rows {
        // A line that does not read as an event still becomes a row: its `sid`, `ei` and
        // text are kept, so the lake never stalls on it and `lake verify` shows it.
        let event = serde_json::from_slice::<Columns<'_>>(&row.line).unwrap_or_default();
        time.append_value(row.time_ms);
        for (value, builder) in event.texts().into_iter().zip(texts.iter_mut()) {
            builder.append_option(non_empty(value));
        }
        ei.append_value(i64::try_from(row.ei).unwrap_or(i64::MAX));
        server.append_value(server_id);
        // An extended-protocol Parse carries its statement in `query`.
        query.append_option(non_empty(&event.db_query).or_else(|| non_empty(&event.query)));
        success.append_option(event.success);
        affected.append_option(event.affected_records);
        match &event.db_tables {
            Some(list) => {
                for table in list {
                    tables.values().append_value(&**table);
                }
                tables.append(true);
            }
            None => tables.append(false),
        }
        append_without_uid(&mut json, &row.line, non_empty(&event.uid), &mut uid_field);
    }
    let mut columns: Vec<ArrayRef> = vec![Arc::new(time.finish())];
    columns.extend(texts.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.extend([
        Arc::new(ei.finish()) as ArrayRef,
        Arc::new(server.finish()),
        Arc::new(query.finish()),
        Arc::new(success.finish()),
        Arc::new(affected.finish()),
        Arc::new(tables.finish()),
        Arc::new(json.finish()),
    ]);
    RecordBatch::try_new(schema(), columns).map_err(|e| LakeError::Parquet(e.to_string()))
}

/// Appends the event's line as `event_json` without its top-level `uid`, which the `uid`
/// column holds: a uid is 16 random bytes that no codec shrinks, and storing it twice cost
/// 20 of a row's 66 bytes. `read_rows` puts it back. The field is found by its value:
/// a nested `"uid"` (a DynamoDB item's, say) would need this event's unpredictable uid to
/// match, and the last match is taken because the recorder writes body fields before it.
fn append_without_uid(json: &mut StringBuilder, line: &[u8], uid: Option<&str>, field: &mut Vec<u8>) {
    use std::fmt::Write as _;
    let whole = || json_text(line);
    let Some(uid) = uid else { return json.append_value(whole()) };
    field.clear();
    field.extend_from_slice(b",\"uid\":\"");
    field.extend_from_slice(uid.as_bytes());
    field.push(b'"');
    match memchr::memmem::rfind(line, field) {
        Some(at) => {
            // Writing into a StringBuilder cannot fail.
            let _ = json.write_str(&json_text(&line[..at]));
            let _ = json.write_str(&json_text(&line[at + field.len()..]));
            json.append_value("");
        }
        None => json.append_value(whole()),
    }
}

fn json_text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// `event_json` with the row's `uid` column put back in, as `export` wrote the event.
fn with_uid(json: &str, uid: Option<&str>) -> String {
    match (uid, json.strip_suffix('}')) {
        (Some(uid), Some(body)) if !json.contains(&format!("\"uid\":\"{uid}\"")) => {
            let separator = if body.trim_end().ends_with('{') { "" } else { "," };
            format!("{body}{separator}\"uid\":\"{uid}\"}}")
        }
        _ => json.to_string(),
    }
}

/// The `(sid, ei, event_json)` of every row of a Parquet object, for `lake verify`, the
/// event's `uid` back in its JSON.
pub fn read_rows(bytes: Vec<u8>) -> Result<Vec<(String, u64, String)>, LakeError> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array as _;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let bad = |e: &dyn std::fmt::Display| LakeError::Parquet(e.to_string());
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).map_err(|e| bad(&e))?.build().map_err(|e| bad(&e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(&e))?;
        let column = |name: &str| batch.column_by_name(name).ok_or_else(|| LakeError::Parquet(format!("no column {name}")));
        let sids = column("sid")?.as_string_opt::<i32>().ok_or_else(|| LakeError::Parquet("sid is not text".into()))?;
        let eis = column("ei")?
            .as_primitive_opt::<arrow_array::types::Int64Type>()
            .ok_or_else(|| LakeError::Parquet("ei is not int64".into()))?;
        let json = column("event_json")?.as_string_opt::<i32>().ok_or_else(|| LakeError::Parquet("event_json is not text".into()))?;
        let uids = column("uid")?.as_string_opt::<i32>().ok_or_else(|| LakeError::Parquet("uid is not text".into()))?;
        for i in 0..batch.num_rows() {
            let uid = (!uids.is_null(i)).then(|| uids.value(i));
            out.push((sids.value(i).to_string(), u64::try_from(eis.value(i)).unwrap_or(u64::MAX), with_uid(json.value(i), uid)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_leaves_out_the_top_level_uid_and_reading_puts_it_back() {
        let uid = "0b0e6f3e-8d43-4b8e-9a39-2d6c2f6f1d10";
        // A DynamoDB item with a "uid" of its own, before the event's, stays as it was.
        let line = format!(
            r#"{{"ei":1,"event":"db.session.dynamodb.request","body":{{"Item":{{"uid":{{"S":"x"}}}}}},"uid":"{uid}","sid":"s","user":"alice"}}"#
        );
        let mut rows = vec![Row { time_ms: 1, sid: Arc::from("s"), ei: 1, line: line.clone().into_bytes() }];
        let parquet = parquet_object(&mut rows, "proxy-1").unwrap();
        let read = read_rows(parquet.clone()).unwrap();
        let stored: serde_json::Value = serde_json::from_str(&read[0].2).unwrap();
        assert_eq!(stored, serde_json::from_str::<serde_json::Value>(&line).unwrap(), "read back whole");
        use arrow_array::cast::AsArray;
        let batch = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(parquet))
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let json = batch.column_by_name("event_json").unwrap().as_string::<i32>().value(0).to_string();
        assert!(!json.contains(uid) && json.contains(r#""Item":{"uid":{"S":"x"}}"#), "{json}");
        assert_eq!(batch.column_by_name("uid").unwrap().as_string::<i32>().value(0), uid);
    }
}
