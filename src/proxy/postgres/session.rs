//! One client connection from first byte to last: TLS negotiation, identity, authorization,
//! upstream login, then the audited relay.

use crate::util::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pgwire::messages::startup::Authentication;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::codec::{
    auth_message, error_response, message, read_message, read_startup, MessageScanner, StartupPacket, WireError, PROTOCOL_3_2,
};
use super::messages::{client_captures, client_event, server_captures, server_result};
use super::pairing::Pairing;
use super::redact::{Redactor, SessionSecrets};
use super::upstream::{UpstreamError, UpstreamTarget};
use crate::audit::EventBody;
use crate::auth::scram::{ServerExchange, Verifier};
use crate::auth::{authorize, split_login};
use crate::config::{AuthMethod, ClientTlsMode};
use crate::proxy::chunk_reader::ChunkReader;
use crate::proxy::stream::Stream;
use crate::recording::AuditPort;
use crate::server::{Connection, ConnectionInfo, ListenerContext, Refusal, SessionIdentity};

/// Per-database state built once at start-up.
pub struct DbState {
    pub server_tls: Option<crate::proxy::tls::ServerTls>,
    pub upstream: UpstreamTarget,
    pub client_tls_mode: ClientTlsMode,
    /// For `aws_iam`: made on first use, then shared by every session of this database.
    pub aws_credentials: crate::aws::credentials::CredentialCache,
}

impl DbState {
    /// An RDS IAM auth token for `db_user`, from cached (assumed-role) credentials.
    async fn iam_token(&self, ctx: &ListenerContext, db_user: &str) -> Result<String, String> {
        let aws = &ctx.database().aws;
        let identity = self.aws_credentials.identity().await.map_err(|e| e.to_string())?;
        let creds = identity.credentials;
        crate::aws::rds_token::generate(&self.upstream.host, self.upstream.port, db_user, &aws.region, &creds, std::time::SystemTime::now())
            .map_err(|e| e.to_string())
    }
}

/// The real backend behind a synthetic cancel key.
#[derive(Clone)]
pub struct CancelTarget {
    upstream: UpstreamTarget,
    pid: i32,
    key: Vec<u8>,
}

/// Synthetic (pid, key) → real target. Keys never leave this map: not logged, not recorded.
pub type CancelMap = Arc<Mutex<HashMap<(i32, Vec<u8>), CancelTarget>>>;

/// Bound on captured client messages (queries, binds): bigger ones are refused as malformed.
const MAX_CAPTURED: usize = 64 * 1024 * 1024;

fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    if getrandom::getrandom(&mut out).is_err() {
        // Without randomness a synthetic key is guessable; use the clock rather than fail
        // the session, since the key only maps back through this proxy.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        for (i, b) in out.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8;
        }
    }
    out
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) {
    let _ = w.write_all(bytes).await;
    let _ = w.flush().await;
}

pub async fn run(conn: Connection, ctx: Arc<ListenerContext>, state: Arc<DbState>, cancels: CancelMap, redactor: Arc<Redactor>) {
    let info = conn.info();
    let span = conn.span;
    let mut login = conn.login;
    let client = Stream::Plain(conn.stream);
    // Boxed: the login's state machine (TLS accept, SCRAM, the upstream's TLS and login) is
    // some 15 KiB, and inline it would size this future, held for the session's whole life.
    let Some(handshake) = login.before_deadline(&span, Box::pin(handshake(client, &ctx, &state, &cancels, info))).await else { return };
    login.logged_in();
    if let Some((client, established)) = handshake {
        let Established { port, upstream, synthetic, real } = established;
        if let Some((pid, key)) = real {
            lock(&cancels).insert(synthetic.clone(), CancelTarget { upstream: state.upstream.clone(), pid, key });
        }
        relay_session(client, upstream, port, &ctx, &span, &redactor).await;
        lock(&cancels).remove(&synthetic);
    }
}

/// Everything before the relay: TLS, cancel requests, authentication, the upstream login.
/// Returns the session to relay, or none when the connection ended here.
async fn handshake(
    mut client: Stream,
    ctx: &ListenerContext,
    state: &DbState,
    cancels: &CancelMap,
    info: ConnectionInfo,
) -> Option<(Stream, Established)> {
    // Startup phase: SSL / GSSENC negotiation and cancel requests come before the startup message.
    let (version, params) = loop {
        match read_startup(&mut client).await {
            Ok((StartupPacket::Ssl, _)) => match (&state.server_tls, client) {
                (Some(tls), Stream::Plain(mut tcp)) => {
                    if tcp.write_all(b"S").await.is_err() {
                        return None;
                    }
                    match crate::proxy::tls_stream::accept(tls.config.clone(), tcp).await {
                        Ok(tls) => client = Stream::Server(Box::new(tls)),
                        Err(e) => {
                            tracing::info!(error = %e, "client TLS handshake failed");
                            return None;
                        }
                    }
                }
                (_, mut other) => {
                    if other.write_all(b"N").await.is_err() {
                        return None;
                    }
                    client = other;
                }
            },
            Ok((StartupPacket::GssEnc, _)) => {
                if client.write_all(b"N").await.is_err() {
                    return None;
                }
            }
            Ok((StartupPacket::Cancel { pid, key }, _)) => {
                let target = lock(cancels).get(&(pid, key)).cloned();
                match target {
                    Some(t) => {
                        if let Err(e) = t.upstream.cancel(t.pid, &t.key).await {
                            tracing::warn!(error = %e, "forwarding a cancel request failed");
                        }
                    }
                    None => tracing::info!("cancel request for an unknown session ignored"),
                }
                return None;
            }
            Ok((StartupPacket::Startup { version, params }, _)) => break (version, params),
            Err(WireError::Closed) => return None,
            Err(e) => {
                send(&mut client, &error_response("FATAL", "08P01", &format!("dbtape: {e}"))).await;
                return None;
            }
        }
    };
    match establish(&mut client, ctx, state, info, version, &params).await {
        Ok(Some(established)) => return Some((client, established)),
        Ok(None) | Err(LoginEnd::Gone) => {}
        Err(LoginEnd::Refused(refusal)) => {
            tracing::info!(user = %refusal.identity.user, reason = %refusal.reason, "connection denied");
            let error = error_response("FATAL", "28000", &format!("dbtape: {}", refusal.reason));
            ctx.refuse(refusal, info).await;
            send(&mut client, &error).await;
        }
    }
    None
}

/// What ended a connection before its session began.
enum LoginEnd {
    /// Authentication or authorization failed: 28000, recorded as TDB00W.
    Refused(Refusal),
    /// The client went away mid-handshake.
    Gone,
}

struct Established {
    port: AuditPort,
    upstream: Stream,
    synthetic: (i32, Vec<u8>),
    real: Option<(i32, Vec<u8>)>,
}

enum ScramOutcome {
    WrongPassword,
    Gone,
    Protocol(String),
}

/// Runs SCRAM-SHA-256 with the client against `verifier`.
async fn scram_login(client: &mut Stream, verifier: Verifier) -> Result<(), ScramOutcome> {
    let gone = |e: WireError| match e {
        WireError::Closed | WireError::Io(_) => ScramOutcome::Gone,
        other => ScramOutcome::Protocol(other.to_string()),
    };
    client.write_all(&auth_message(Authentication::SASL(vec!["SCRAM-SHA-256".into()]))).await.map_err(|_| ScramOutcome::Gone)?;
    let _ = client.flush().await;
    let (ty, body) = read_message(client, 16 * 1024).await.map_err(gone)?;
    if ty != b'p' {
        return Err(ScramOutcome::Protocol(format!("expected SASLInitialResponse, got {:?}", ty as char)));
    }
    let (mechanism, rest) = super::codec::cstr(&body).ok_or_else(|| ScramOutcome::Protocol("SASLInitialResponse".into()))?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(ScramOutcome::Protocol(format!("unsupported mechanism {mechanism:?}")));
    }
    let first = String::from_utf8_lossy(rest.get(4..).unwrap_or_default()).into_owned();
    let (exchange, server_first) = ServerExchange::start(verifier, &first).map_err(|e| ScramOutcome::Protocol(e.to_string()))?;
    client.write_all(&auth_message(Authentication::SASLContinue(server_first.into()))).await.map_err(|_| ScramOutcome::Gone)?;
    let _ = client.flush().await;
    let (ty, body) = read_message(client, 16 * 1024).await.map_err(gone)?;
    if ty != b'p' {
        return Err(ScramOutcome::Protocol(format!("expected SASLResponse, got {:?}", ty as char)));
    }
    match exchange.finish(&String::from_utf8_lossy(&body)) {
        Ok(server_final) => {
            client.write_all(&auth_message(Authentication::SASLFinal(server_final.into()))).await.map_err(|_| ScramOutcome::Gone)?;
            Ok(())
        }
        Err(crate::auth::scram::ScramError::WrongProof) => Err(ScramOutcome::WrongPassword),
        Err(e) => Err(ScramOutcome::Protocol(e.to_string())),
    }
}

/// Tells the client why and records the failed start.
async fn refuse_after_open(client: &mut Stream, port: AuditPort, reason: String, sqlstate: &str) -> Result<Option<Established>, LoginEnd> {
    tracing::warn!(%reason, "session refused after authentication");
    send(client, &error_response("FATAL", sqlstate, &format!("dbtape: {reason}"))).await;
    port.start_failed(reason, "upstream connection failed").await;
    Ok(None)
}

/// Authenticates the client, authorizes, logs in upstream and finishes the client's startup.
async fn establish(
    client: &mut Stream,
    ctx: &ListenerContext,
    state: &DbState,
    info: ConnectionInfo,
    version: i32,
    params: &[(String, String)],
) -> Result<Option<Established>, LoginEnd> {
    let login = StartupPacket::param(params, "user").unwrap_or_default().to_string();
    // psql defaults the database to the login; with `alice@reader` that is no real choice.
    let requested_db = StartupPacket::param(params, "database").filter(|d| *d != login).map(str::to_string);
    let (person, requested_db_user) = split_login(&login);
    let deny = |who: &str, reason: String| {
        let identity = SessionIdentity {
            user: who.to_string(),
            db_user: requested_db_user.unwrap_or_default().to_string(),
            db_name: requested_db.clone().unwrap_or_default(),
            user_agent: StartupPacket::param(params, "application_name").unwrap_or_default().to_string(),
            ..Default::default()
        };
        LoginEnd::Refused(Refusal::new(identity, reason))
    };
    if state.client_tls_mode == ClientTlsMode::Required && !client.is_tls() {
        return Err(deny(person, "this database requires TLS (connect with sslmode=require or stronger)".into()));
    }
    let directory = ctx.directory();
    let user = match crate::proxy::tls::client_certificate_cn(client, state.server_tls.as_ref()) {
        Some(Err(untrusted)) => return Err(deny(person, untrusted)),
        Some(Ok(cn)) => {
            let user = directory.by_cert_cn(&cn).ok_or_else(|| deny(person, format!("no user has certificate CN {cn:?}")))?;
            if !person.is_empty() && person != user.config.name {
                return Err(deny(person, format!("certificate CN {cn:?} belongs to {:?}, not {person:?}", user.config.name)));
            }
            &user.config
        }
        None => {
            // Unknown users go through the same exchange against a stand-in verifier, so the
            // answer does not reveal who exists.
            let (verifier, known) = directory.scram_verifier(person, ctx.login_secret());
            match scram_login(client, verifier).await {
                Ok(()) if known => {}
                Ok(()) | Err(ScramOutcome::WrongPassword) => {
                    return Err(deny(person, format!("password authentication failed for user {person:?}")))
                }
                Err(ScramOutcome::Gone) => return Err(LoginEnd::Gone),
                Err(ScramOutcome::Protocol(e)) => return Err(deny(person, format!("SCRAM exchange failed: {e}"))),
            }
            directory
                .by_name(person)
                .map(|p| &p.config)
                .ok_or_else(|| deny(person, format!("password authentication failed for user {person:?}")))?
        }
    };
    let (db_user, db_name) = authorize(user, &ctx.database().name, requested_db_user, requested_db.as_deref(), &state.upstream.database)
        .map_err(|reason| deny(&user.name, reason))?;
    let identity = SessionIdentity {
        user: user.name.clone(),
        db_user: db_user.clone(),
        db_name: db_name.clone(),
        user_agent: StartupPacket::param(params, "application_name").unwrap_or_default().to_string(),
        ..Default::default()
    };
    let port = match ctx.open_session(identity, info).await {
        Ok(port) => port,
        Err(e) => {
            tracing::error!(error = %e, "cannot open a recording; refusing the session");
            send(client, &error_response("FATAL", "58030", &format!("dbtape: {}, so it is refused", e.client_reason()))).await;
            return Ok(None);
        }
    };
    let password = match ctx.database().auth.method {
        AuthMethod::Password | AuthMethod::None => match ctx.upstream_password() {
            Ok(password) => password,
            Err(e) => return refuse_after_open(client, port, e.to_string(), "08004").await,
        },
        AuthMethod::AwsIam => match state.iam_token(ctx, &db_user).await {
            Ok(token) => Some(token),
            Err(e) => return refuse_after_open(client, port, format!("cannot make an IAM auth token: {e}"), "08004").await,
        },
    };
    let mut upstream_params: Vec<(String, String)> = vec![("user".into(), db_user), ("database".into(), db_name)];
    upstream_params.extend(params.iter().filter(|(k, _)| !matches!(k.as_str(), "user" | "database" | "replication")).cloned());
    let mut upstream = match state.upstream.connect(&upstream_params, password.as_deref()).await {
        Ok(s) => s,
        Err(UpstreamError::Server { text, raw }) => {
            send(client, &raw).await;
            port.start_failed(text, "upstream refused the login").await;
            return Ok(None);
        }
        Err(e) => return refuse_after_open(client, port, format!("upstream: {e}"), "08006").await,
    };
    // Finish the client's startup with what the upstream says, swapping in a synthetic
    // cancel key (3.2 clients get a 32-byte key).
    let mut out = auth_message(Authentication::Ok);
    let mut real = None;
    let pid_bytes: [u8; 4] = random_bytes(4).try_into().unwrap_or([0, 0, 0, 1]);
    let synthetic = ((i32::from_be_bytes(pid_bytes) & 0x7fff_ffff).max(1), random_bytes(if version == PROTOCOL_3_2 { 32 } else { 4 }));
    loop {
        let (ty, body) = match read_message(&mut upstream, 1 << 20).await {
            Ok(m) => m,
            Err(e) => return refuse_after_open(client, port, format!("upstream: {e}"), "08006").await,
        };
        match ty {
            b'K' => {
                let pid = body.get(..4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
                real = Some((pid, body.get(4..).unwrap_or_default().to_vec()));
                let mut fake = synthetic.0.to_be_bytes().to_vec();
                fake.extend_from_slice(&synthetic.1);
                out.extend_from_slice(&message(b'K', &fake));
            }
            b'E' => {
                out.extend_from_slice(&message(b'E', &body));
                send(client, &out).await;
                let text = super::messages::error_text(&body);
                port.start_failed(text, "upstream refused the session").await;
                return Ok(None);
            }
            b'Z' => {
                out.extend_from_slice(&message(b'Z', &body));
                break;
            }
            _ => out.extend_from_slice(&message(ty, &body)),
        }
    }
    let port = match port.begin(real.as_ref().map(|(pid, _)| *pid as u32)).await {
        Ok(port) => port,
        Err(e) => {
            send(client, &error_response("FATAL", "58030", e.client_message())).await;
            return Ok(None);
        }
    };
    if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
        let _ = port.end().await;
        return Ok(None);
    }
    Ok(Some(Established { port, upstream, synthetic, real }))
}

/// Why the relay stopped.
enum Stop {
    ClientClosed,
    UpstreamClosed,
    ClientMalformed(String, Vec<u8>),
    UpstreamMalformed(String, Vec<u8>),
    Audit(crate::recording::AuditError),
    Io,
    /// The proxy is shutting down.
    Shutdown,
}

/// Relays both directions, auditing on the way, until either side ends.
async fn relay_session(
    client: Stream,
    upstream: Stream,
    port: AuditPort,
    ctx: &ListenerContext,
    span: &tracing::Span,
    redactor: &Redactor,
) {
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let pairing = Mutex::new(Pairing::default());
    let redaction = Redaction { redactor, secrets: Mutex::new(SessionSecrets::default()), seen_any: Default::default() };
    // The pumps are built inside select!: built outside and moved in, each would take its
    // size twice in this future, which lives as long as the session.
    let stop = tokio::select! {
        stop = pump(&mut client_read, &mut upstream_write, &port, &pairing, &redaction, Direction::FromClient) => stop,
        stop = pump(&mut upstream_read, &mut client_write, &port, &pairing, &redaction, Direction::FromUpstream) => stop,
        _ = ctx.shutdown().cancelled() => Stop::Shutdown,
    };
    // Boxed: the wind-up's awaits, inline, would size this future for the session's life.
    Box::pin(wind_up(stop, client_write, upstream_write, port, span)).await;
}

/// Tells the client why the relay stopped, when that is its business, and ends the recording.
async fn wind_up(
    stop: Stop,
    mut client_write: tokio::io::WriteHalf<Stream>,
    mut upstream_write: tokio::io::WriteHalf<Stream>,
    port: AuditPort,
    span: &tracing::Span,
) {
    match stop {
        Stop::ClientClosed | Stop::UpstreamClosed | Stop::Io => {}
        Stop::Shutdown => {
            send(&mut client_write, &error_response("FATAL", "57P01", "dbtape: terminating connection because the proxy is shutting down"))
                .await
        }
        Stop::ClientMalformed(detail, sample) => {
            tracing::warn!(parent: span, %detail, "malformed message from the client; closing the connection");
            let _ = port.emit(EventBody::MalformedPacket { payload: sample }).await;
            send(&mut client_write, &error_response("FATAL", "08P01", &format!("dbtape: protocol violation: {detail}"))).await;
        }
        Stop::UpstreamMalformed(detail, sample) => {
            tracing::warn!(parent: span, %detail, "malformed message from the upstream; closing the connection");
            let _ = port.emit(EventBody::MalformedPacket { payload: sample }).await;
            send(&mut client_write, &error_response("FATAL", "08P01", "dbtape: the database sent a malformed message; connection closed"))
                .await;
        }
        Stop::Audit(e) => {
            tracing::error!(parent: span, error = %e, "recording failed in strict mode; ending the session");
            send(&mut client_write, &error_response("FATAL", "58030", e.client_message())).await;
        }
    }
    let _ = upstream_write.shutdown().await;
    if let Err(e) = port.end().await {
        tracing::error!(parent: span, error = %e, "could not record the session end");
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    FromClient,
    FromUpstream,
}

/// Bytes kept of a malformed chunk for the audit event.
const MALFORMED_SAMPLE: usize = 1024;

/// What a scanned client message asks of the audit.
// Steps live in one reused Vec per direction; boxing the event would allocate per event.
#[allow(clippy::large_enum_variant)]
enum ClientStep {
    /// The event, and whether secrets were masked in it.
    Event(EventBody, bool),
    Sync,
}

/// The session's redaction: the rules, and the secrets its statements held so far.
struct Redaction<'a> {
    redactor: &'a Redactor,
    secrets: Mutex<SessionSecrets>,
    /// Whether `secrets` holds any, readable without the lock.
    seen_any: std::sync::atomic::AtomicBool,
}

impl Redaction<'_> {
    fn step(&self, mut event: EventBody) -> ClientStep {
        // The common case takes no lock: a statement with nothing that looks like a secret,
        // or any other event while the session has given no secret yet.
        let quiet = !self.seen_any.load(std::sync::atomic::Ordering::Relaxed)
            && match &event {
                EventBody::Query { query, .. } | EventBody::PostgresParse { query, .. } => !self.redactor.may_hold_secrets(query),
                _ => true,
            };
        if quiet {
            return ClientStep::Event(event, false);
        }
        let mut secrets = lock(&self.secrets);
        let redacted = self.redactor.redact_event(&mut event, &mut secrets);
        self.seen_any.store(secrets.any(), std::sync::atomic::Ordering::Relaxed);
        ClientStep::Event(event, redacted)
    }
}

/// What a malformed client chunk leaves in the recording: at most `MALFORMED_SAMPLE` bytes,
/// cut before any mention of a password and with the session's known secrets masked.
fn client_sample(chunk: &[u8], redaction: &Redaction<'_>) -> Vec<u8> {
    let mut sample = chunk[..chunk.len().min(MALFORMED_SAMPLE)].to_vec();
    if let Some(at) = sample.windows(8).position(|w| w.eq_ignore_ascii_case(b"password")) {
        sample.truncate(at);
    }
    lock(&redaction.secrets).scrub_bytes(&mut sample);
    sample
}

/// Copies one direction chunk by chunk. Each chunk is scanned and its events recorded
/// before it is forwarded, so in strict mode nothing unrecorded passes.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut R,
    to: &mut W,
    port: &AuditPort,
    pairing: &Mutex<Pairing>,
    redaction: &Redaction<'_>,
    direction: Direction,
) -> Stop {
    let capture = match direction {
        Direction::FromClient => client_captures,
        Direction::FromUpstream => server_captures,
    };
    let mut scanner = MessageScanner::new(MAX_CAPTURED, capture);
    let mut reader = ChunkReader::new();
    // Room for one: a chunk usually carries one statement or one result, and the Vec is
    // kept for the session's life (a first push would otherwise reserve four, 184 B each).
    let mut steps: Vec<ClientStep> = Vec::with_capacity(1);
    loop {
        let chunk = match reader.read(from).await {
            Ok([]) | Err(_) => {
                return if direction == Direction::FromClient { Stop::ClientClosed } else { Stop::UpstreamClosed };
            }
            Ok(chunk) => chunk,
        };
        let terminate = direction == Direction::FromClient && chunk.first() == Some(&b'X') && scanner.at_boundary();
        let scanned = scanner.feed(chunk, |ty, body| {
            match direction {
                Direction::FromClient if ty == b'S' => steps.push(ClientStep::Sync),
                Direction::FromClient => {
                    if let Some(event) = client_event(ty, body)? {
                        steps.push(redaction.step(event));
                    }
                }
                Direction::FromUpstream => {
                    let query_ei = lock(pairing).on_server_message(ty);
                    if let Some(event) = server_result(ty, body, query_ei) {
                        steps.push(redaction.step(event));
                    }
                }
            }
            Ok(())
        });
        // Everything in one chunk arrived at once; one clock read stamps it all.
        let now_ms = if steps.is_empty() { 0 } else { crate::audit::now_ms() };
        for step in steps.drain(..) {
            let (event, redacted) = match step {
                ClientStep::Sync => {
                    lock(pairing).sync();
                    continue;
                }
                ClientStep::Event(event, redacted) => (event, redacted),
            };
            let kind = match &event {
                EventBody::Query { .. } => Some(true),
                EventBody::PostgresExecute { .. } => Some(false),
                _ => None,
            };
            let emitted = match port.emit_redacted_now_or_return(event, redacted, now_ms) {
                Ok(emitted) => emitted,
                // Only when the disk is behind or every event waits for fsync; boxed, so
                // the wait does not size this future for the session's life.
                Err(event) => Box::pin(port.emit_redacted_at(*event, redacted, now_ms)).await,
            };
            match emitted {
                Ok(Some(ei)) => match kind {
                    Some(true) => lock(pairing).simple_query(ei),
                    Some(false) => lock(pairing).execute(ei),
                    None => {}
                },
                Ok(None) => {}
                Err(e) => return Stop::Audit(e),
            }
        }
        if let Err(e) = scanned {
            return match direction {
                Direction::FromClient => Stop::ClientMalformed(e.to_string(), client_sample(chunk, redaction)),
                // Only the first message's header: what follows may be result rows, which
                // the recording never holds.
                Direction::FromUpstream => Stop::UpstreamMalformed(e.to_string(), chunk[..chunk.len().min(5)].to_vec()),
            };
        }
        if to.write_all(chunk).await.is_err() || to.flush().await.is_err() {
            return Stop::Io;
        }
        if terminate {
            return Stop::ClientClosed;
        }
    }
}
