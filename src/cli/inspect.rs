//! The auditor's commands: config check, ls, play, export and verify.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{DataFormat, Failure, PlayFormatArg, StoreArgs};
use crate::config::Config;
use crate::recording::verify::{verify_with, KeyRing, Verdict};
use crate::recording::SessionSummary;
use crate::replay::export::{export_reporting, matching_sessions, ExportFilter};
use crate::replay::player::{play as play_session, PlayFormat, PlayOptions};
use crate::review::{self, Located};

pub fn config_check(path: &Path) -> Result<(), Failure> {
    match Config::load(path) {
        Ok(config) => {
            println!(
                "{}: OK ({} database{}, {} user{}, recordings in {}, mode {}, fsync {})",
                path.display(),
                config.databases.len(),
                plural(config.databases.len()),
                config.users.len(),
                plural(config.users.len()),
                config.recording.dir.display(),
                match config.recording.mode {
                    crate::recording::RecordingMode::Strict => "strict",
                    crate::recording::RecordingMode::BestEffort => "best_effort",
                },
                match config.recording.fsync {
                    crate::recording::FsyncPolicy::Always => "always",
                    crate::recording::FsyncPolicy::Batch => "batch",
                    crate::recording::FsyncPolicy::Never => "never",
                },
            );
            Ok(())
        }
        Err(e) => Err(Failure { code: 1, message: e.to_string() }),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Where the recordings are, with what the reviewer is to be told said on stderr.
pub(super) fn locate(args: &StoreArgs) -> Result<Located, Failure> {
    shown(review::locate(&args.review_source()).map_err(failure)?)
}

fn locate_session(args: &StoreArgs, input: &str) -> Result<(Located, String), Failure> {
    let (located, sid) = review::locate_session(&args.review_source(), input).map_err(failure)?;
    Ok((shown(located)?, sid))
}

fn shown(located: Located) -> Result<Located, Failure> {
    if let Some(copied) = located.copied.as_deref().filter(|_| std::io::IsTerminal::is_terminal(&std::io::stderr())) {
        eprintln!("{copied}");
    }
    for note in &located.notes {
        eprintln!("note: {note}");
    }
    Ok(located)
}

/// A review error as the command's failure: usage errors exit 2, the rest 1.
pub(super) fn failure(e: review::ReviewError) -> Failure {
    Failure { code: e.exit_code(), message: e.to_string() }
}

pub struct LsFilter {
    pub since: Option<String>,
    pub until: Option<String>,
    pub user: Option<String>,
    pub db: Option<String>,
    pub protocol: Option<String>,
    pub limit: usize,
}

pub(super) fn time_filter(since: Option<String>, until: Option<String>) -> Result<(Option<i64>, Option<i64>), Failure> {
    review::time_range(since.as_deref(), until.as_deref()).map_err(failure)
}

pub fn ls(args: &StoreArgs, filter: LsFilter, format: DataFormat) -> Result<(), Failure> {
    let located = locate(args)?;
    let (since_ms, until_ms) = time_filter(filter.since, filter.until)?;
    let export_filter =
        ExportFilter { since_ms, until_ms, user: filter.user, db: filter.db, protocol: filter.protocol, ..ExportFilter::default() };
    let mut warnings = Vec::new();
    let mut sessions = matching_sessions(&located.store, &export_filter, &mut warnings)?;
    sessions.reverse();
    sessions.truncate(filter.limit);
    for w in &warnings {
        eprintln!("{w}");
    }
    let mut out = std::io::stdout().lock();
    match format {
        DataFormat::Json => {
            let rows: Vec<serde_json::Value> = sessions.iter().map(summary_json).collect();
            serde_json::to_writer_pretty(&mut out, &rows)?;
            writeln!(out)?;
        }
        DataFormat::Text => write_table(&mut out, &sessions)?,
    }
    Ok(())
}

/// `ls --failed`: refused logins, newest first, read from the refused-logins logs (the only
/// recordings whose sidecar counts any), filtered like sessions.
pub fn ls_refused(args: &StoreArgs, filter: LsFilter, format: DataFormat) -> Result<(), Failure> {
    let located = locate(args)?;
    let (since_ms, until_ms) = time_filter(filter.since, filter.until)?;
    let export_filter = ExportFilter { since_ms, until_ms, db: filter.db, protocol: filter.protocol, ..ExportFilter::default() };
    let mut warnings = Vec::new();
    let refused =
        review::refused_logins(&located.store, &export_filter, filter.user.as_deref(), filter.limit, &mut warnings).map_err(failure)?;
    for w in &warnings {
        eprintln!("{w}");
    }
    let mut out = std::io::stdout().lock();
    match format {
        DataFormat::Json => {
            let rows: Vec<serde_json::Value> = refused.iter().filter_map(|(_, raw)| serde_json::from_slice(raw).ok()).collect();
            serde_json::to_writer_pretty(&mut out, &rows)?;
            writeln!(out)?;
        }
        DataFormat::Text if refused.is_empty() => writeln!(out, "no refused logins match")?,
        DataFormat::Text => {
            for (event, _) in &refused {
                writeln!(
                    out,
                    "{}  {:<16}  {:<12}  {:<21}  {}",
                    event.time,
                    safe(if event.user.is_empty() { "-" } else { &event.user }),
                    safe(&event.db_service),
                    safe(&event.addr_remote),
                    safe(&event.error)
                )?;
            }
        }
    }
    Ok(())
}

fn summary_json(s: &SessionSummary) -> serde_json::Value {
    let mut value = serde_json::to_value(s).unwrap_or_default();
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("start".into(), crate::audit::format_time(s.start_ms).into());
        map.insert("duration_ms".into(), s.duration_ms().into());
    }
    value
}

fn format_duration(ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let secs = ms / 1000;
    if secs >= 3600 {
        format!("{}h{:02}m{:02}s", secs / 3600, secs % 3600 / 60, secs % 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}.{:03}s", secs, ms % 1000)
    }
}

pub(super) fn safe(text: &str) -> String {
    crate::replay::render::terminal_safe(text).into_owned()
}

fn write_table(out: &mut impl Write, sessions: &[SessionSummary]) -> std::io::Result<()> {
    if sessions.is_empty() {
        writeln!(out, "no recorded sessions match")?;
        return Ok(());
    }
    let header = ["ID", "USER", "DATABASE", "PROTOCOL", "START", "DURATION", "QUERIES", "FAILED", "STATE"];
    let rows: Vec<[String; 9]> = sessions
        .iter()
        .map(|s| {
            [
                // Names come from clients and the config; a sidecar may have been edited.
                safe(&s.sid),
                if s.refused_logins > 0 { format!("({} refused logins)", s.refused_logins) } else { safe(&s.user) },
                safe(&s.db_service),
                safe(&s.db_protocol),
                chrono::DateTime::from_timestamp_millis(s.start_ms).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default(),
                format_duration(s.duration_ms()),
                s.queries.to_string(),
                s.failed_queries.to_string(),
                s.state.as_str().to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text
    };
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    Ok(())
}

pub fn play(
    args: &StoreArgs,
    session_id: &str,
    speed: f64,
    skip_idle: bool,
    format: PlayFormatArg,
    follow: bool,
    from_ei: u64,
) -> Result<(), Failure> {
    if !(0.25..=16.0).contains(&speed) {
        return Err(Failure { code: 2, message: format!("--speed {speed} is out of range: use 0.25 to 16") });
    }
    let (located, sid) = locate_session(args, session_id)?;
    let protocol = located.store.read_summary(&sid).map(|s| s.db_protocol).unwrap_or_default();
    let format = match format {
        PlayFormatArg::Pty => PlayFormat::Pty,
        PlayFormatArg::Text => PlayFormat::Text,
        PlayFormatArg::Json => PlayFormat::Json,
        PlayFormatArg::Yaml => PlayFormat::Yaml,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let end = play_session(&located.store, &sid, &protocol, PlayOptions { format, speed, skip_idle, follow, from_ei }, &mut out)?;
    out.flush()?;
    if let Some(warning) = end.warning(&sid) {
        eprintln!("{warning}");
    }
    match end {
        crate::recording::events::StreamEnd::Damaged(_) => Err(Failure { code: 1, message: String::new() }),
        _ => Ok(()),
    }
}

pub struct ExportArgs {
    pub since: Option<String>,
    pub until: Option<String>,
    pub user: Option<String>,
    pub db: Option<String>,
    pub events: Vec<String>,
    pub session: Option<String>,
    pub out: Option<PathBuf>,
    pub raw: bool,
}

pub fn export_with_cursor(args: &StoreArgs, export: ExportArgs, cursor: PathBuf, follow: bool) -> Result<(), Failure> {
    let located = locate(args)?;
    let (since_ms, until_ms) = time_filter(export.since, export.until)?;
    let session = export.session.map(|s| located.store.find(&s)).transpose().map_err(|e| Failure { code: 2, message: e.to_string() })?;
    let filter = ExportFilter {
        since_ms,
        until_ms,
        user: export.user,
        db: export.db,
        protocol: None,
        event_types: export.events,
        session,
        raw: export.raw,
    };
    let job = crate::replay::cursor::CursorExport { cursor, out: export.out, follow, batch_bytes: crate::replay::cursor::BATCH_BYTES };
    crate::replay::cursor::export_from_cursor(&located.store, &filter, &job, &|| false)?;
    Ok(())
}

pub fn export(args: &StoreArgs, export: ExportArgs) -> Result<(), Failure> {
    let ExportArgs { since, until, user, db, events, session, out, raw } = export;
    let (located, session) = match session {
        Some(input) => locate_session(args, &input).map(|(located, sid)| (located, Some(sid)))?,
        None => (locate(args)?, None),
    };
    let (since_ms, until_ms) = time_filter(since, until)?;
    for kind in &events {
        if crate::audit::EventType::parse(kind).is_none() {
            eprintln!("note: --event {kind:?} is not an event type dbtape writes");
        }
    }
    let filter = ExportFilter { since_ms, until_ms, user, db, protocol: None, event_types: events, session, raw };
    let progress = super::progress::bar(0, "export", false);
    let stats = match out {
        Some(path) => {
            let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            export_reporting(&located.store, &filter, &mut std::io::BufWriter::with_capacity(1 << 20, file), |done, of| {
                progress.set_length(of as u64);
                progress.set_position(done as u64);
            })?
        }
        None => {
            // Events on the terminal itself leave no room for a bar.
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            export_reporting(&located.store, &filter, &mut out, |done, of| {
                progress.set_length(of as u64);
                progress.set_position(done as u64);
            })?
        }
    };
    progress.finish_and_clear();
    for w in &stats.warnings {
        eprintln!("{w}");
    }
    Ok(())
}

pub fn verify(args: &StoreArgs, session_ids: Vec<String>, all: bool, public_keys: Vec<PathBuf>, format: DataFormat) -> Result<(), Failure> {
    let mut located = locate(args)?;
    if all != session_ids.is_empty() {
        return Err(Failure { code: 2, message: "give session ids or --all (not both)".into() });
    }
    // A session id the local folder lacks sends the whole review to the bucket (if any).
    if let Some(missing) = session_ids.iter().find(|input| located.store.find(input).is_err()) {
        located = locate_session(args, missing)?.0;
    }
    let keys = key_ring(&located, public_keys);
    let mut sids = Vec::new();
    if all {
        sids = located.store.session_ids()?;
        sids.sort();
    } else {
        for input in &session_ids {
            sids.push(located.store.find(input).map_err(|e| Failure { code: 2, message: e.to_string() })?);
        }
    }
    let progress = super::progress::bar(sids.len() as u64, "verify", false);
    let reports: Vec<_> = sids
        .iter()
        .map(|sid| {
            let report = verify_with(&located.store, sid, &keys);
            progress.inc(1);
            report
        })
        .collect();
    progress.finish_and_clear();
    let failed = reports.iter().filter(|r| !r.passed()).count();
    let mut out = std::io::stdout().lock();
    match format {
        DataFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &reports)?;
            writeln!(out)?;
        }
        DataFormat::Text => {
            for r in &reports {
                let verdict = match r.verdict {
                    Verdict::Ok => "OK",
                    Verdict::Recovered => "OK (recovered after a crash)",
                    Verdict::Live => "LIVE (not sealed yet)",
                    Verdict::Failed => "FAILED",
                };
                writeln!(out, "{}  {verdict}  {} events in {} frames", safe(&r.sid), r.events, r.frames)?;
                for p in &r.problems {
                    writeln!(out, "    problem: {}", safe(p))?;
                }
                if let Some(key) = &r.signed_by {
                    let origin = r.key_origin.as_deref().unwrap_or("unknown key");
                    let trust = if r.key_trusted { "trusted" } else { "not trusted" };
                    writeln!(out, "    signed by {} ({}, {trust})", safe(key), safe(origin))?;
                }
                for n in &r.notes {
                    writeln!(out, "    note: {}", safe(n))?;
                }
            }
            if reports.is_empty() {
                writeln!(out, "no recordings to verify")?;
            }
        }
    }
    if failed > 0 {
        return Err(Failure { code: 1, message: format!("{failed} of {} recording(s) failed verification", reports.len()) });
    }
    Ok(())
}

/// `review::key_ring`, its warnings on stderr.
pub(super) fn key_ring(located: &Located, public_keys: Vec<PathBuf>) -> KeyRing {
    let (ring, warnings) = review::key_ring(located, public_keys);
    for w in warnings {
        eprintln!("{w}");
    }
    ring
}
