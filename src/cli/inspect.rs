//! The auditor's commands: config check, ls, play, export and verify.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{parse_when, DataFormat, Failure, PlayFormatArg, StoreArgs};
use crate::config::{Config, DEFAULT_CONFIG_FILE};
use crate::recording::verify::{verify_with, KeyRing, Verdict};
use crate::recording::{RecordingStore, SessionSummary};
use crate::replay::export::{export_reporting, matching_sessions, ExportFilter};
use crate::replay::player::{play as play_session, PlayFormat, PlayOptions};
use crate::signing::{load_public_key, public_key_path};

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

/// The folder and (where known) the signing key of the recordings these commands read.
pub(super) struct Located {
    pub(super) store: RecordingStore,
    signing_key: Option<PathBuf>,
    trusted_keys: Vec<PathBuf>,
}

pub(super) fn locate(args: &StoreArgs) -> Result<Located, Failure> {
    let config_path = &args.config.config;
    let default_missing = config_path == Path::new(DEFAULT_CONFIG_FILE) && !config_path.exists();
    let recording = if default_missing { None } else { Some(Config::load_recording_settings(config_path)?) };
    let signing_key = recording.as_ref().map(|r| r.signing_key.clone());
    let trusted_keys = recording.as_ref().map(|r| r.trusted_keys.clone()).unwrap_or_default();
    if args.source == super::Source::S3 {
        let s3 = Config::load_storage_settings(config_path)?.ok_or_else(|| Failure {
            code: 2,
            message: format!("{}: --source s3 needs a [storage.s3] section naming the bucket", config_path.display()),
        })?;
        let dir = args.dir.clone().unwrap_or_else(|| crate::recording::upload::remote::cache_dir(&s3));
        copy_from_bucket(&s3, &dir)?;
        return Ok(Located { store: RecordingStore::new(dir), signing_key, trusted_keys });
    }
    let dir = match (&args.dir, &recording) {
        (Some(dir), _) => dir.clone(),
        (None, Some(r)) => r.dir.clone(),
        (None, None) => PathBuf::from("recordings"),
    };
    Ok(Located { store: RecordingStore::new(dir), signing_key, trusted_keys })
}

fn copy_from_bucket(s3: &crate::config::S3Storage, dir: &Path) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let copied = runtime.block_on(crate::recording::upload::remote::sync(s3, dir))?;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("{copied} file(s) copied from s3://{}/{} into {}", s3.bucket, s3.prefix, dir.display());
    }
    Ok(())
}

/// The recording a session id names: in the local folder or, when it is not there (the
/// proxy deleted it after upload, or it was recorded on another instance) and the config
/// has a `[storage.s3]`, in the bucket.
fn locate_session(args: &StoreArgs, input: &str) -> Result<(Located, String), Failure> {
    let located = locate(args)?;
    let missing = match located.store.find(input) {
        Ok(sid) => return Ok((located, sid)),
        Err(e @ crate::recording::StoreError::NotFound { .. }) if args.source == super::Source::Local => e,
        Err(e) => return Err(Failure { code: 2, message: e.to_string() }),
    };
    let config_path = &args.config.config;
    let s3 = match config_path.exists().then(|| Config::load_storage_settings(config_path)).transpose()? {
        Some(Some(s3)) => s3,
        _ => return Err(Failure { code: 2, message: missing.to_string() }),
    };
    let dir = crate::recording::upload::remote::cache_dir(&s3);
    copy_from_bucket(&s3, &dir)?;
    let store = RecordingStore::new(dir);
    let sid = store.find(input).map_err(|_| Failure { code: 2, message: format!("{missing}, nor in s3://{}/{}", s3.bucket, s3.prefix) })?;
    eprintln!("note: {sid} is not in the local recordings folder; reading it from s3://{}/{}", s3.bucket, s3.prefix);
    Ok((Located { store, ..located }, sid))
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
    let now = chrono::Utc::now().timestamp_millis();
    let since = since.map(|s| parse_when(&s, now)).transpose().map_err(|m| Failure { code: 2, message: format!("--since: {m}") })?;
    let until = until.map(|s| parse_when(&s, now)).transpose().map_err(|m| Failure { code: 2, message: format!("--until: {m}") })?;
    Ok((since, until))
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
    // One time range for sessions and for the refusals in them, both ends included, as
    // `export` and `search` take it.
    let export_filter = ExportFilter { since_ms, until_ms, db: filter.db, protocol: filter.protocol, ..ExportFilter::default() };
    let mut warnings = Vec::new();
    let logs: Vec<SessionSummary> =
        matching_sessions(&located.store, &export_filter, &mut warnings)?.into_iter().filter(|s| s.refused_logins > 0).collect();
    for w in &warnings {
        eprintln!("{w}");
    }
    let mut refused: Vec<(crate::audit::RecordedEvent, Vec<u8>)> = Vec::new();
    for log in &logs {
        let mut stream = crate::recording::events::EventStream::open(&located.store, &log.sid, false)
            .map_err(|e| Failure { code: 1, message: format!("{}: {e}", log.sid) })?;
        stream
            .for_each_event(|line| {
                let Ok(event) = serde_json::from_slice::<crate::audit::RecordedEvent>(line) else { return Ok(true) };
                let time = event.time_ms().unwrap_or_default();
                let wanted = event.event == "db.session.start"
                    && event.success == Some(false)
                    && export_filter.time_in_range(time)
                    && filter.user.as_ref().is_none_or(|u| *u == event.user);
                if wanted {
                    refused.push((event, line.to_vec()));
                }
                Ok(true)
            })
            .map_err(|e| Failure { code: 1, message: format!("{}: {e}", log.sid) })?;
    }
    refused.sort_by(|a, b| b.0.time.cmp(&a.0.time));
    refused.truncate(filter.limit);
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
    let job = crate::replay::follow::CursorExport { cursor, out: export.out, follow, batch_bytes: crate::replay::follow::BATCH_BYTES };
    crate::replay::follow::export_from_cursor(&located.store, &filter, &job, &|| false)?;
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

/// The keys a review trusts: those passed with --public-key, or else this instance's own and
/// the config's recording.trusted_keys. The keys instances published under `keys/` (copied
/// from the bucket) are added untrusted, so that each recording's signer can be named.
pub(super) fn key_ring(located: &Located, public_keys: Vec<PathBuf>) -> KeyRing {
    let mut ring = KeyRing::default();
    let trusted = if public_keys.is_empty() {
        let own =
            located.signing_key.as_deref().map(public_key_path).unwrap_or_else(|| public_key_path(Path::new("keys/recording-signing.key")));
        std::iter::once(own).chain(located.trusted_keys.iter().cloned()).collect()
    } else {
        public_keys
    };
    for path in trusted {
        match load_public_key(&path) {
            Ok(key) => ring.add(key, path.display().to_string(), true),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    if let Ok(entries) = std::fs::read_dir(located.store.dir().join("keys")) {
        let mut published: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        published.sort();
        for path in published.into_iter().filter(|p| p.extension().is_some_and(|e| e == "pub")) {
            if let Ok(key) = load_public_key(&path) {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                ring.add(key, format!("published as keys/{name}"), false);
            }
        }
    }
    ring
}
