//! `dbtape search` and `dbtape index`.

use std::io::Write;

use super::inspect::{failure, key_ring, locate, safe, time_filter};
use super::{DataFormat, Failure, SearchArgs, StoreArgs};
use crate::review::SearchQuery;
use crate::search::{SearchFilter, SearchIndex};

fn filter_of(args: SearchArgs) -> Result<SearchFilter, Failure> {
    let query = SearchQuery {
        user: args.user,
        db: args.db,
        db_user: args.db_user,
        db_name: args.db_name,
        protocol: args.protocol,
        events: args.events,
        codes: args.codes,
        since: args.since,
        until: args.until,
        sid: args.sid,
        failed: args.failed,
        class: args.class,
        table: args.table,
        fingerprint: args.fingerprint,
        text: args.text,
        regex: args.regex,
    };
    query.filter().map_err(failure)
}

/// Brings the index up to date with the folder first, so a search never misses a recording
/// sealed since the proxy's last indexing pass (or a folder copied from the bucket).
fn fresh_index(store: &crate::recording::RecordingStore) -> Result<SearchIndex, Failure> {
    let index = SearchIndex::open(store.dir())?;
    if let Err(e) = index.catch_up(store) {
        // A running proxy holds the writer: search what it has indexed so far.
        eprintln!("note: some recordings are not indexed yet ({e})");
    }
    Ok(index)
}

pub fn search(store: &StoreArgs, args: SearchArgs, format: DataFormat, count: bool, shapes: bool) -> Result<(), Failure> {
    let filter = filter_of(args)?;
    let located = locate(store)?;
    let keys = key_ring(&located, Vec::new());
    let index = fresh_index(&located.store)?;
    let outcome = crate::search::search(&located.store, &index, &filter, &keys)?;
    for warning in &outcome.warnings {
        eprintln!("warning: {}", safe(warning));
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if count {
        writeln!(out, "{}", outcome.hits.len())?;
        return Ok(out.flush()?);
    }
    if shapes {
        write_shapes(&mut out, &outcome.hits, format)?;
        return Ok(out.flush()?);
    }
    match format {
        DataFormat::Json => {
            // Whole events as `export` writes them, derived statement fields included.
            let mut enricher = crate::statement::enrich::Enricher::new();
            for hit in &outcome.hits {
                enricher.write_line(&hit.line, &mut out)?;
            }
        }
        DataFormat::Text => {
            // Cut to the terminal's width; piped into a file or a pager, nothing is cut.
            let width = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                crossterm::terminal::size().map(|(w, _)| w as usize).unwrap_or(160).max(80)
            } else {
                usize::MAX
            };
            writeln!(out, "{:<19}  {:<12} {:<12} {:<36} {:>5}  WHAT", "TIME (UTC)", "USER", "DB", "SID", "EI")?;
            for hit in &outcome.hits {
                let time = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(hit.time_ms).unwrap_or_default();
                let field = |key: &str| hit.event.get(key).and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
                let what = what_of(&hit.event, &hit.line);
                let room = width.saturating_sub(19 + 2 + 13 + 13 + 37 + 6 + 2).max(20);
                let what: String = safe(&what).chars().map(|c| if c == '\n' { ' ' } else { c }).take(room).collect();
                writeln!(
                    out,
                    "{}  {:<12} {:<12} {:<36} {:>5}  {}",
                    time.format("%Y-%m-%d %H:%M:%S"),
                    safe(&field("user")),
                    safe(&field("db_service")),
                    hit.sid,
                    hit.ei,
                    what
                )?;
            }
            writeln!(out, "{} event(s); `dbtape play <sid> --from <ei>` plays a session from a hit", outcome.hits.len())?;
        }
    }
    Ok(out.flush()?)
}

/// "Which query shapes did this user run": hits grouped by fingerprint, most frequent first.
fn write_shapes(out: &mut impl Write, hits: &[crate::search::Hit], format: DataFormat) -> std::io::Result<()> {
    let mut shapes: std::collections::HashMap<String, (u64, String)> = std::collections::HashMap::new();
    for hit in hits {
        let Some(classified) = crate::statement::classify_event(&hit.event) else { continue };
        if classified.fingerprint.is_empty() {
            continue;
        }
        let entry = shapes.entry(classified.fingerprint).or_insert_with(|| (0, what_of(&hit.event, &hit.line)));
        entry.0 += 1;
    }
    let mut shapes: Vec<(String, (u64, String))> = shapes.into_iter().collect();
    shapes.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
    match format {
        DataFormat::Json => {
            let rows: Vec<serde_json::Value> =
                shapes.iter().map(|(fp, (n, example))| serde_json::json!({"fingerprint": fp, "count": n, "example": example})).collect();
            serde_json::to_writer_pretty(&mut *out, &rows)?;
            writeln!(out)
        }
        DataFormat::Text => {
            writeln!(out, "{:>8}  {:<16}  EXAMPLE", "COUNT", "FINGERPRINT")?;
            for (fp, (n, example)) in &shapes {
                writeln!(out, "{n:>8}  {fp:<16}  {}", safe(example).replace('\n', " "))?;
            }
            writeln!(out, "{} shape(s); `dbtape search --fingerprint <fingerprint>` lists one shape's statements", shapes.len())
        }
    }
}

/// The hit's statement as `play` shows it (psql's, mongosh's or the DynamoDB line, as the
/// console shows it too), or what else tells the event apart.
fn what_of(event: &serde_json::Value, line: &[u8]) -> String {
    let field = |key: &str| event.get(key).and_then(serde_json::Value::as_str).unwrap_or_default();
    let class = crate::statement::classify_event(event).and_then(|c| c.class()).map(|c| format!("[{}] ", c.as_str())).unwrap_or_default();
    let text = match field("event") {
        "db.session.dynamodb.request" => crate::replay::screen::render_event("dynamodb", line)
            .map(|shown| shown.split("\r\n").map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| format!("{} {}", field("target"), event.get("body").map(|b| b.to_string()).unwrap_or_default())),
        "db.session.postgres.statements.bind" => {
            use crate::statement::parameters::{numbered, of_bind_event, quote_literal};
            let raw = || -> Vec<String> {
                let list = event.get("parameters").and_then(serde_json::Value::as_array);
                list.into_iter().flatten().map(|v| quote_literal(v.as_str().unwrap_or_default())).collect()
            };
            let shown = of_bind_event(event).unwrap_or_else(raw);
            format!("bind {} ({})", quote_literal(field("statement_name")), numbered(&shown))
        }
        _ if !field("db_query").is_empty() => crate::replay::screen::render_event(field("db_protocol"), line)
            .map(|shown| shown.split("\r\n").map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "))
            .filter(|shown| !shown.is_empty())
            .unwrap_or_else(|| field("db_query").to_string()),
        kind if !field("error").is_empty() => format!("{kind}: {}", field("error")),
        kind => kind.to_string(),
    };
    format!("{class}{text}")
}

pub fn rebuild(store: &StoreArgs) -> Result<(), Failure> {
    let located = locate(store)?;
    let index = SearchIndex::open(located.store.dir())?;
    let (recordings, events) = index.rebuild(&located.store)?;
    println!("indexed {events} events from {recordings} recording(s)");
    Ok(())
}

pub fn verify(store: &StoreArgs) -> Result<(), Failure> {
    let located = locate(store)?;
    let index = SearchIndex::open(located.store.dir())?;
    let covered = index.covered()?;
    let mut problems = 0;
    let mut sids = located.store.session_ids()?;
    sids.sort();
    for sid in sids {
        let Ok(Some(manifest)) = located.store.read_manifest(&sid) else { continue };
        let expected = manifest.body.event_count + u64::from(manifest.body.rebuilt_end.is_some());
        match covered.get(&sid) {
            None => {
                problems += 1;
                println!("{sid}  NOT INDEXED");
            }
            Some(&n) if n != expected => {
                problems += 1;
                println!("{sid}  PARTLY INDEXED: {n} of {expected} events");
            }
            Some(_) => {}
        }
    }
    if problems > 0 {
        return Err(Failure { code: 1, message: format!("{problems} recording(s) not fully covered: `dbtape index rebuild` covers them") });
    }
    println!("every sealed recording is indexed ({} in all)", covered.len());
    Ok(())
}

pub fn report(
    store: &StoreArgs,
    since: String,
    until: Option<String>,
    user: Option<String>,
    db: Option<String>,
    format: DataFormat,
) -> Result<(), Failure> {
    let located = locate(store)?;
    let (since_ms, until_ms) = time_filter(Some(since), until)?;
    let filter = crate::replay::export::ExportFilter { since_ms, until_ms, user: None, db: db.clone(), ..Default::default() };
    let (mut rows, warnings) = crate::search::report::report(&located.store, &filter)?;
    if let Some(user) = &user {
        rows.retain(|r| r.user == *user);
    }
    for warning in &warnings {
        eprintln!("{}", safe(warning));
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match format {
        DataFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &rows)?;
            writeln!(out)?;
        }
        DataFormat::Text => {
            for r in &rows {
                let classes: Vec<String> = r.by_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
                writeln!(
                    out,
                    "{} on {}: {} session(s), {} statement(s) ({}), {} refused login(s), {} error(s), {} privileged",
                    safe(if r.user.is_empty() { "(unknown user)" } else { &r.user }),
                    safe(&r.db),
                    r.sessions,
                    r.statements,
                    if classes.is_empty() { "none".to_string() } else { classes.join(", ") },
                    r.refused_logins,
                    r.errors,
                    r.privileged_count
                )?;
                for p in &r.privileged {
                    writeln!(out, "    {}  {}  {} {:>4}  {}", safe(&p.time), p.class, p.sid, p.ei, safe(&p.statement))?;
                }
                if r.privileged_count > r.privileged.len() as u64 {
                    writeln!(
                        out,
                        "    … and {} more (`dbtape search --class ROLE` / `--class DDL` lists them all)",
                        r.privileged_count - r.privileged.len() as u64
                    )?;
                }
            }
            if rows.is_empty() {
                writeln!(out, "nothing recorded in that time")?;
            }
        }
    }
    Ok(out.flush()?)
}
