//! The `dbtape` command line.

mod inspect;
mod lake;
mod progress;
mod reload;
mod search;
mod serve;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "dbtape", version, about = "Audit-centric database session recording proxy", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct ConfigArg {
    /// Config file.
    #[arg(long, short = 'c', default_value = crate::config::DEFAULT_CONFIG_FILE, env = "DBTAPE_CONFIG")]
    pub config: PathBuf,
}

/// Where recordings are read from: `--dir`, else the config's `recording.dir`; with
/// `--source s3`, the bucket of the config's `[storage.s3]`, copied into `--dir` (default a
/// cache folder) first.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Recordings folder; overrides the config file's recording.dir.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// local: the recordings folder; s3: the bucket (needs only read access to it).
    #[arg(long, value_enum, default_value_t = Source::Local)]
    pub source: Source,
}

impl StoreArgs {
    pub fn review_source(&self) -> crate::review::ReviewSource {
        crate::review::ReviewSource { config: self.config.config.clone(), dir: self.dir.clone(), from_bucket: self.source == Source::S3 }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Local,
    S3,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayFormatArg {
    Pty,
    Text,
    Json,
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy: listen for every configured database, record every session.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check the configuration and have the running proxy apply it (SIGHUP): open sessions go
    /// on, new connections use the new users, certificates, patterns, limits and listeners.
    Reload {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Create SCRAM verifiers for the people who log in through dbtape.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// List recorded sessions, newest first.
    Ls {
        #[command(flatten)]
        store: StoreArgs,
        /// Only sessions active since: a duration ago ("24h") or a time (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Only sessions started before this time (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        /// Only this user's sessions.
        #[arg(long)]
        user: Option<String>,
        /// Only sessions to this database (its name in the config).
        #[arg(long)]
        db: Option<String>,
        /// Only this protocol: postgres, mongodb or dynamodb.
        #[arg(long)]
        protocol: Option<String>,
        /// At most this many sessions.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// List refused logins (from each listener's refused-logins log) instead of sessions.
        #[arg(long)]
        failed: bool,
        #[arg(long, value_enum, default_value_t = DataFormat::Text)]
        format: DataFormat,
    },
    /// Play a recorded session back.
    Play {
        /// Session id, as listed by `dbtape ls`.
        session_id: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Playback speed for pty (0.25 to 16).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Cap pauses at 500 ms.
        #[arg(long)]
        skip_idle: bool,
        /// pty replays with timing (Space pauses, arrows seek, Ctrl-C quits); text prints the
        /// same screen at once; json and yaml print the events.
        #[arg(long, value_enum, default_value_t = PlayFormatArg::Pty)]
        format: PlayFormatArg,
        /// Keep playing a live session as it is recorded.
        #[arg(long)]
        follow: bool,
        /// Start at this event (a `dbtape search` hit's ei); earlier events are skipped.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Export events as JSON Lines for a SIEM, streamed in constant memory.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// Only events at or after: a duration ago ("24h") or a time.
        #[arg(long)]
        since: Option<String>,
        /// Only events at or before this time.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        db: Option<String>,
        /// Only this event type (repeatable), e.g. db.session.query.
        #[arg(long = "event")]
        events: Vec<String>,
        /// Only this session.
        #[arg(long)]
        session: Option<String>,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Events exactly as recorded, without the fields derived from each statement on
        /// reading (db_statement_class, db_tables, db_query_fingerprint).
        #[arg(long)]
        raw: bool,
        /// Remember what was sent in this file and send only what is new; with --out, a
        /// restart after any crash leaves every event in the file exactly once.
        #[arg(long)]
        cursor: Option<PathBuf>,
        /// Keep sending events as they are recorded (needs --cursor).
        #[arg(long)]
        follow: bool,
    },
    /// Find events across every recording: who ran what, where, when. Each hit is read back
    /// from its signed recording; the index only says where to look.
    Search {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        filter: Box<SearchArgs>,
        /// text: a table; json: whole events as `export` writes them.
        #[arg(long, value_enum, default_value_t = DataFormat::Text)]
        format: DataFormat,
        /// Print only how many events match.
        #[arg(long)]
        count: bool,
        /// Group the matching statements by shape (the same statement with other constants):
        /// how many, the fingerprint, and one example each.
        #[arg(long)]
        shapes: bool,
    },
    /// A review summary per user and database: sessions, statements by class, refused
    /// logins, errors, and the privileged (ROLE and DDL) statements themselves.
    Report {
        #[command(flatten)]
        store: StoreArgs,
        /// Events at or after: a duration ago ("30d") or a time (RFC 3339 or YYYY-MM-DD).
        #[arg(long, default_value = "30d")]
        since: String,
        /// Events at or before (same forms as --since).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        db: Option<String>,
        #[arg(long, value_enum, default_value_t = DataFormat::Text)]
        format: DataFormat,
    },
    /// The search index in the recordings folder.
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// The web review console: sessions, search and playback in a browser, over HTTPS
    /// ([review] in the config), every look itself recorded.
    Review {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Local accounts of the review console's reviewers (verifiers only).
    Reviewer {
        #[command(subcommand)]
        command: ReviewerCommand,
    },
    /// The event lake: Parquet in the bucket for Athena, Trino, Spark and DuckDB.
    Lake {
        #[command(subcommand)]
        command: LakeCommand,
    },
    /// Upload recordings the proxy has not uploaded yet to [storage.s3], now.
    Upload {
        #[command(flatten)]
        config: ConfigArg,
        /// Upload every sealed recording again, also those already confirmed (for example
        /// to a new bucket); the local copies must still be there.
        #[arg(long)]
        all: bool,
    },
    /// Check recordings' CRCs, hash chain, trailer and signature.
    Verify {
        /// Session ids to verify.
        session_ids: Vec<String>,
        /// Verify every recording.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        store: StoreArgs,
        /// Trusted public key (repeatable); default: the config's recording.signing_key with
        /// `.pub` and its recording.trusted_keys. Keys a fleet published in the bucket name
        /// each recording's signer but are not trusted unless given here or in the config.
        #[arg(long)]
        public_key: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = DataFormat::Text)]
        format: DataFormat,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Make a SCRAM-SHA-256 verifier for a new user and print the config entry.
    Add {
        name: String,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Make a new verifier for an existing user.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReviewerCommand {
    /// Add a reviewer (or give one a new password, role or databases) in review.reviewers_file.
    Add {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
        /// auditor: every session; reviewer: only the sessions of the --database names.
        #[arg(long, value_enum, default_value_t = ReviewerRoleArg::Auditor)]
        role: ReviewerRoleArg,
        /// A database (its name in the config) a reviewer may see; repeatable.
        #[arg(long = "database")]
        databases: Vec<String>,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// No password: the reviewer logs in only through [review.oidc], under this name
        /// (the provider's name_claim).
        #[arg(long, conflicts_with = "password_stdin")]
        oidc: bool,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewerRoleArg {
    Auditor,
    Reviewer,
}

#[derive(Subcommand, Debug)]
pub enum LakeCommand {
    /// Print the table definition for an engine.
    Ddl {
        #[arg(long, value_enum)]
        engine: crate::lake::ddl::Engine,
        #[command(flatten)]
        config: ConfigArg,
        /// The table's name.
        #[arg(long, default_value = "dbtape_events")]
        table: String,
        /// Where the table is; default s3://<bucket>/<lake.prefix> from the config.
        #[arg(long)]
        location: Option<String>,
    },
    /// Check the lake against the signed recordings: every event once, unchanged.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// Only events at or after: a duration ago ("30d") or a time.
        #[arg(long)]
        since: Option<String>,
        /// Only events at or before (same forms); "6m" leaves out what a running proxy has
        /// not flushed yet.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_enum, default_value_t = DataFormat::Text)]
        format: DataFormat,
    },
    /// Write the recordings the lake does not hold yet, now (recordings from before the
    /// lake was turned on, say). Shares the live writer's journal, so nothing is written twice.
    Backfill {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum IndexCommand {
    /// Index every sealed recording again, from scratch.
    Rebuild {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Report sealed recordings the index does not cover (or covers only in part).
    Verify {
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// `dbtape search` filters; every one given must hold.
#[derive(Args, Debug, Clone, Default)]
pub struct SearchArgs {
    /// The person or program dbtape identified.
    #[arg(long)]
    pub user: Option<String>,
    /// The database's name in the config (db_service).
    #[arg(long)]
    pub db: Option<String>,
    /// The database user the session ran as.
    #[arg(long)]
    pub db_user: Option<String>,
    /// The database (or MongoDB $db) the statement ran in.
    #[arg(long)]
    pub db_name: Option<String>,
    /// postgres, mongodb or dynamodb.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Event type (repeatable), e.g. db.session.query.
    #[arg(long = "event")]
    pub events: Vec<String>,
    /// Event code (repeatable), e.g. TDB02W.
    #[arg(long = "code")]
    pub codes: Vec<String>,
    /// Events at or after: a duration ago ("30d", "12h") or a time (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    pub since: Option<String>,
    /// Events at or before (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// One session.
    #[arg(long)]
    pub sid: Option<String>,
    /// Failed queries, results with errors and refused logins.
    #[arg(long)]
    pub failed: bool,
    /// Statement class: READ, WRITE, FUNCTION, ROLE, DDL, MISC or MISC_SET (pgaudit's).
    #[arg(long)]
    pub class: Option<String>,
    /// A table (or collection) the statement touched.
    #[arg(long)]
    pub table: Option<String>,
    /// Statements of one shape: pg_query's fingerprint (16 hex digits), as `--shapes` lists.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Words that must all appear in the statement, and "quoted phrases".
    #[arg(long)]
    pub text: Option<String>,
    /// A regular expression the statement must match (slower: applied to each candidate).
    #[arg(long)]
    pub regex: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Report every error in the config file, with its key and a fix.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Errors at the CLI edge carry their own exit code.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure { code: 1, message: e.to_string() }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose_default = matches!(cli.command, Command::Serve { .. });
    let result = match cli.command {
        Command::Serve { config } => serve::run(&config.config),
        Command::Reload { config } => reload::send(&config.config),
        Command::Review { store } => {
            init_logging(verbose_default, false);
            let options = crate::console::ReviewOptions { source: store.review_source() };
            crate::console::run(&store.config.config, options).map_err(|e| Failure { code: 1, message: e.to_string() })
        }
        Command::Reviewer { command: ReviewerCommand::Add { name, config, role, databases, password_stdin, oidc } } => {
            user::add_reviewer(&config.config, &name, role, databases, password_stdin, oidc)
        }
        Command::Lake { command } => {
            init_logging(false, false);
            lake::run(command)
        }
        Command::Upload { config, all } => {
            init_logging(false, false);
            serve::upload(&config.config, all)
        }
        Command::Config { command: ConfigCommand::Check { config } } => inspect::config_check(&config.config),
        Command::User { command: UserCommand::Add { name, password_stdin } } => user::add(&name, password_stdin),
        Command::User { command: UserCommand::Passwd { name, password_stdin } } => user::passwd(&name, password_stdin),
        Command::Ls { store, since, until, user, db, protocol, limit, failed, format } => {
            init_logging(verbose_default, false);
            let filter = inspect::LsFilter { since, until, user, db, protocol, limit };
            if failed {
                inspect::ls_refused(&store, filter, format)
            } else {
                inspect::ls(&store, filter, format)
            }
        }
        Command::Play { session_id, store, speed, skip_idle, format, follow, from } => {
            init_logging(false, false);
            inspect::play(&store, &session_id, speed, skip_idle, format, follow, from)
        }
        Command::Export { store, since, until, user, db, events, session, out, raw, cursor, follow } => {
            init_logging(false, false);
            let filter = inspect::ExportArgs { since, until, user, db, events, session, out, raw };
            match cursor {
                Some(cursor) => inspect::export_with_cursor(&store, filter, cursor, follow),
                None if follow => Err(Failure { code: 2, message: "--follow needs --cursor FILE, where it keeps its place".into() }),
                None => inspect::export(&store, filter),
            }
        }
        Command::Search { store, filter, format, count, shapes } => {
            init_logging(false, false);
            search::search(&store, *filter, format, count, shapes)
        }
        Command::Report { store, since, until, user, db, format } => {
            init_logging(false, false);
            search::report(&store, since, until, user, db, format)
        }
        Command::Index { command: IndexCommand::Rebuild { store } } => {
            init_logging(false, false);
            search::rebuild(&store)
        }
        Command::Index { command: IndexCommand::Verify { store } } => {
            init_logging(false, false);
            search::verify(&store)
        }
        Command::Verify { session_ids, all, store, public_key, format } => {
            init_logging(false, false);
            inspect::verify(&store, session_ids, all, public_key, format)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("dbtape: {}", failure.message.trim_end());
            }
            ExitCode::from(failure.code)
        }
    }
}

pub fn init_logging(verbose: bool, json: bool) {
    let default = if verbose { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
