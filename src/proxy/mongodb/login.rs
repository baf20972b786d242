//! Everything before the relay: TLS, hello, the client's login (SCRAM-SHA-256 against the
//! user's stored verifier, or an X.509 client certificate), authorization and the upstream
//! login. Driver monitoring connections, which only ever send hello, are served here too.

use std::time::Duration;

use bson::raw::RawBsonRef;
use bson::spec::BinarySubtype;
use bson::{rawdoc, Binary, RawDocument, RawDocumentBuf};

use super::client::{reply_bytes, send, user_agent, Request};
use super::commands::{self, error_reply, is_hello, is_login_command, AUTHENTICATION_FAILED, UNAUTHORIZED};
use super::upstream::{aws_login, command, scram_login, speculative_reply, ScramStart, UpstreamError};
use super::wire::{read_message, Compressor, Message, WireError};
use super::DbState;
use crate::auth::scram::{client_first_user, ScramError, ServerExchange};
use crate::auth::{authorize, split_login};
use crate::config::{AuthMethod, UserConfig};
use crate::proxy::stream::Stream;
use crate::recording::AuditPort;
use crate::server::{ConnectionInfo, ListenerContext, Refusal, SessionIdentity};

/// Messages before login are handshakes and SASL steps: small (a hello's client metadata is
/// at most 512 bytes).
const MAX_LOGIN_MESSAGE: usize = 64 * 1024;
/// Failed logins one connection may make before it is closed.
const MAX_FAILURES_PER_CONNECTION: u32 = 3;
/// A cached upstream hello serves logins and monitors for this long.
const HELLO_CACHE_FOR: Duration = Duration::from_secs(10);
/// The longest an awaitable hello from a monitor is held before its answer.
const MAX_AWAIT: Duration = Duration::from_secs(10);
const SCRAM: &str = "SCRAM-SHA-256";
const X509: &str = "MONGODB-X509";

/// A logged-in session, ready to relay.
pub struct Established {
    pub port: AuditPort,
    pub upstream: Stream,
    pub max_message: usize,
    pub names: NameGrant,
}

/// The database names (`$db`) the session's grants allow.
#[derive(Debug, Clone)]
pub struct NameGrant {
    pub any: bool,
    pub names: Vec<String>,
}

impl NameGrant {
    fn of(user: &UserConfig, database: &str, db_user: &str) -> NameGrant {
        let grants: Vec<_> = user.grants.iter().filter(|g| g.database == database && g.db_users.iter().any(|u| u == db_user)).collect();
        NameGrant { any: grants.iter().any(|g| g.db_names.is_empty()), names: grants.iter().flat_map(|g| g.db_names.clone()).collect() }
    }

    pub fn allows(&self, db: &str) -> bool {
        self.any || self.names.iter().any(|n| n == db)
    }
}

/// How the pre-login phase ended.
pub enum Outcome {
    LoggedIn(Established),
    /// The connection only watches the server (a driver's monitor): serve hellos until it ends.
    Monitor,
    Closed,
}

enum Scram {
    /// Waiting for the client-final message.
    Started { exchange: ServerExchange, login: String, known: bool, skip_empty: bool, conversation: i32 },
    /// Proof checked and upstream logged in; the client still sends an empty final step.
    AwaitingEmpty { established: Established, conversation: i32 },
}

/// Per-connection state before login.
pub struct Login<'a> {
    pub ctx: &'a ListenerContext,
    pub state: &'a DbState,
    pub info: ConnectionInfo,
    pub cert_cn: Option<Result<String, String>>,
    first_hello: Option<RawDocumentBuf>,
    compressors: Vec<Compressor>,
    hellos: u32,
    failures: u32,
    scram: Option<Scram>,
}

pub enum Step {
    Reply(RawDocumentBuf),
    Done(RawDocumentBuf, Established),
}

impl<'a> Login<'a> {
    pub fn new(ctx: &'a ListenerContext, state: &'a DbState, info: ConnectionInfo, cert_cn: Option<Result<String, String>>) -> Self {
        Login { ctx, state, info, cert_cn, first_hello: None, compressors: Vec::new(), hellos: 0, failures: 0, scram: None }
    }

    /// Serves messages until the client is logged in, turns out to be a monitor, or leaves.
    pub async fn run(&mut self, client: &mut Stream) -> Outcome {
        loop {
            let msg = match read_message(client, MAX_LOGIN_MESSAGE).await {
                Ok(m) => m,
                Err(WireError::Closed | WireError::Io(_)) => return Outcome::Closed,
                Err(e) => {
                    tracing::info!(error = %e, "malformed message before login; connection closed");
                    return Outcome::Closed;
                }
            };
            let request = match Request::parse(&msg) {
                Ok(r) => r,
                Err(e) => {
                    let reply = error_reply(9, "FailedToParse", &format!("dbtape: {e}"));
                    if !send(client, &reply_for_unparsed(&msg, &reply)).await {
                        return Outcome::Closed;
                    }
                    continue;
                }
            };
            let name = request.name().to_string();
            // A second plain hello with no login begun: this connection watches the topology.
            if is_hello(&name) && self.hellos >= 1 && self.scram.is_none() {
                let reply = self.hello_reply(request.body(), None).await;
                if !send(client, &reply_bytes(&msg, &request, &reply)).await {
                    return Outcome::Closed;
                }
                return Outcome::Monitor;
            }
            let step = match name.as_str() {
                n if is_hello(n) => self.hello(&request).await,
                "saslStart" => self.sasl_start(request.body()).await,
                "saslContinue" => self.sasl_continue(request.body()).await,
                "authenticate" => self.x509(request.body()).await,
                _ => Step::Reply(error_reply(UNAUTHORIZED.0, UNAUTHORIZED.1, &format!("command {name} requires authentication"))),
            };
            match step {
                Step::Reply(reply) => {
                    if !send(client, &reply_bytes(&msg, &request, &reply)).await || self.failures >= MAX_FAILURES_PER_CONNECTION {
                        return Outcome::Closed;
                    }
                }
                Step::Done(reply, established) => {
                    if !send(client, &reply_bytes(&msg, &request, &reply)).await {
                        let _ = established.port.end().await;
                        return Outcome::Closed;
                    }
                    return Outcome::LoggedIn(established);
                }
            }
        }
    }

    async fn hello(&mut self, request: &Request) -> Step {
        let body = request.body();
        self.hellos += 1;
        if self.first_hello.is_none() {
            self.compressors = commands::offered_compressors(body);
            self.first_hello = Some(body.to_raw_document_buf());
        }
        let speculative = match body.get("speculativeAuthenticate") {
            Ok(Some(RawBsonRef::Document(d))) => Some(d.to_raw_document_buf()),
            _ => None,
        };
        let mut spec_reply = None;
        if let Some(spec) = speculative {
            // Speculation is best effort: a failure here leaves the driver to log in normally.
            let step = if spec.get("saslStart").ok().flatten().is_some() {
                self.sasl_start(&spec).await
            } else if spec.get("authenticate").ok().flatten().is_some() {
                self.x509(&spec).await
            } else {
                Step::Reply(rawdoc! {})
            };
            match step {
                Step::Reply(r) if commands::summarize_reply(&r).ok => spec_reply = Some(commands::without(&r, &["ok"])),
                Step::Reply(_) => {}
                Step::Done(r, established) => {
                    // X.509 finished inside the hello.
                    let reply = self.hello_reply(body, Some(commands::without(&r, &["ok"]))).await;
                    return Step::Done(reply, established);
                }
            }
        }
        Step::Reply(self.hello_reply(body, spec_reply).await)
    }

    /// The upstream's hello answer, pointed at the proxy, with the proxy's own answers to
    /// what the client asked of the login (mechanisms, compression, speculation).
    pub async fn hello_reply(&self, hello: &RawDocument, speculative: Option<RawDocumentBuf>) -> RawDocumentBuf {
        let upstream = match cached_hello(self.state).await {
            Ok(doc) => doc,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the upstream for hello");
                return error_reply(6, "HostUnreachable", "dbtape: the database cannot be reached");
            }
        };
        let advertised = self.info.local.map(|a| a.to_string()).unwrap_or_default();
        let reply = commands::rewrite_topology(&upstream, &advertised);
        // `ok` goes last, after the proxy's own answers, as servers order it.
        let ok = reply.get("ok").ok().flatten().map(|v| v.to_raw_bson());
        let mut out = commands::without(&reply, &["ok"]);
        if !self.compressors.is_empty() {
            let mut list = bson::RawArrayBuf::new();
            for c in &self.compressors {
                list.push(c.name());
            }
            out.append("compression", list);
        }
        if hello.get("saslSupportedMechs").ok().flatten().is_some() {
            let mut list = bson::RawArrayBuf::new();
            list.push(SCRAM);
            out.append("saslSupportedMechs", list);
        }
        if let Some(spec) = speculative {
            out.append("speculativeAuthenticate", spec);
        }
        out.append("ok", ok.unwrap_or(bson::RawBson::Double(1.0)));
        out
    }

    async fn sasl_start(&mut self, body: &RawDocument) -> Step {
        let mechanism = body.get_str("mechanism").unwrap_or_default();
        if mechanism != SCRAM {
            return Step::Reply(error_reply(
                334,
                "MechanismUnavailable",
                &format!("Received authentication for mechanism {mechanism} which is not enabled (dbtape accepts {SCRAM} and {X509})"),
            ));
        }
        let payload = match body.get("payload") {
            Ok(Some(RawBsonRef::Binary(b))) => String::from_utf8_lossy(b.bytes).into_owned(),
            _ => return Step::Reply(error_reply(9, "FailedToParse", "saslStart needs a binary payload")),
        };
        let login = client_first_user(&payload).unwrap_or_default();
        let (person, _) = split_login(&login);
        // Unknown users get the same exchange against a stand-in, so replies reveal nobody.
        let (verifier, known) = self.ctx.directory().scram_verifier(person, self.ctx.login_secret());
        let skip_empty = body.get_document("options").ok().and_then(|o| o.get_bool("skipEmptyExchange").ok()).unwrap_or(false);
        match ServerExchange::start(verifier, &payload) {
            Ok((exchange, server_first)) => {
                let conversation = 1;
                self.scram = Some(Scram::Started { exchange, login, known, skip_empty, conversation });
                Step::Reply(
                    rawdoc! { "conversationId": conversation, "done": false, "payload": binary(server_first.into_bytes()), "ok": 1.0 },
                )
            }
            Err(e) => Step::Reply(self.refused(&login, format!("SCRAM exchange failed: {e}")).await),
        }
    }

    async fn sasl_continue(&mut self, body: &RawDocument) -> Step {
        let payload = match body.get("payload") {
            Ok(Some(RawBsonRef::Binary(b))) => String::from_utf8_lossy(b.bytes).into_owned(),
            _ => String::new(),
        };
        match self.scram.take() {
            Some(Scram::Started { exchange, login, known, skip_empty, conversation }) => {
                let directory = self.ctx.directory();
                let user = directory.by_name(split_login(&login).0).filter(|_| known).map(|p| &p.config);
                match (exchange.finish(&payload), user) {
                    (Ok(server_final), Some(user)) => {
                        let reply = rawdoc! { "conversationId": conversation, "done": skip_empty, "payload": binary(server_final.into_bytes()), "ok": 1.0 };
                        match self.begin_session(user, split_login(&login).1).await {
                            Ok(established) if skip_empty => Step::Done(reply, established),
                            Ok(established) => {
                                self.scram = Some(Scram::AwaitingEmpty { established, conversation });
                                Step::Reply(reply)
                            }
                            Err(reply) => Step::Reply(reply),
                        }
                    }
                    (Ok(_), None) | (Err(ScramError::WrongProof), _) => Step::Reply(
                        self.refused(&login, format!("password authentication failed for user {:?}", split_login(&login).0)).await,
                    ),
                    (Err(e), _) => Step::Reply(self.refused(&login, format!("SCRAM exchange failed: {e}")).await),
                }
            }
            Some(Scram::AwaitingEmpty { established, conversation }) => {
                Step::Done(rawdoc! { "conversationId": conversation, "done": true, "payload": binary(Vec::new()), "ok": 1.0 }, established)
            }
            None => Step::Reply(error_reply(17, "ProtocolError", "saslContinue without saslStart")),
        }
    }

    /// MONGODB-X509: the verified client certificate's CN names the user.
    async fn x509(&mut self, body: &RawDocument) -> Step {
        let mechanism = body.get_str("mechanism").unwrap_or_default();
        let requested = body.get_str("user").unwrap_or_default().to_string();
        if mechanism != X509 {
            return Step::Reply(error_reply(334, "MechanismUnavailable", &format!("mechanism {mechanism} is not enabled")));
        }
        let cn = match self.cert_cn.clone() {
            Some(Ok(cn)) => cn,
            Some(Err(e)) => return Step::Reply(self.refused(&requested, e).await),
            None => return Step::Reply(self.refused(&requested, "no client certificate was presented".into()).await),
        };
        let directory = self.ctx.directory();
        let Some(user) = directory.by_cert_cn(&cn).map(|p| &p.config) else {
            return Step::Reply(self.refused(&requested, format!("no user has certificate CN {cn:?}")).await);
        };
        // `user` may be the certificate subject (drivers send it) or `name@db_user`.
        let (person, db_user) = split_login(&requested);
        let db_user = if person == user.name { db_user } else { None };
        match self.begin_session(user, db_user).await {
            Ok(established) => Step::Done(rawdoc! { "dbname": "$external", "user": user.name.as_str(), "ok": 1.0 }, established),
            Err(reply) => Step::Reply(reply),
        }
    }

    async fn refused(&mut self, login: &str, reason: String) -> RawDocumentBuf {
        self.scram = None;
        self.failures += 1;
        let (person, db_user) = split_login(login);
        tracing::info!(user = %person, %reason, "login refused");
        let identity = SessionIdentity {
            user: person.to_string(),
            db_user: db_user.unwrap_or_default().to_string(),
            user_agent: self.agent(),
            ..Default::default()
        };
        self.ctx.refuse(Refusal::new(identity, reason), self.info).await;
        error_reply(AUTHENTICATION_FAILED.0, AUTHENTICATION_FAILED.1, "Authentication failed.")
    }

    fn agent(&self) -> String {
        self.first_hello.as_deref().map(user_agent).unwrap_or_default()
    }

    /// Authorizes, opens the recording and logs in upstream. On failure, the error reply.
    async fn begin_session(&mut self, user: &UserConfig, requested_db_user: Option<&str>) -> Result<Established, RawDocumentBuf> {
        let ctx = self.ctx;
        let (db_user, db_name) = match authorize(user, &ctx.database().name, requested_db_user, None, "") {
            Ok(granted) => granted,
            Err(reason) => {
                let login = requested_db_user.map_or(user.name.clone(), |d| format!("{}@{d}", user.name));
                return Err(self.refused(&login, reason).await);
            }
        };
        let identity = SessionIdentity {
            user: user.name.clone(),
            db_user: db_user.clone(),
            db_name,
            user_agent: self.agent(),
            aws_role_arn: if ctx.database().auth.method == AuthMethod::AwsIam && crate::util::arn::is_role_arn(&db_user) {
                db_user.clone()
            } else {
                String::new()
            },
        };
        let port = match ctx.open_session(identity, self.info).await {
            Ok(port) => port,
            Err(e) => {
                tracing::error!(error = %e, "cannot open a recording; refusing the session");
                return Err(error_reply(
                    AUTHENTICATION_FAILED.0,
                    AUTHENTICATION_FAILED.1,
                    &format!("dbtape: {}, so it is refused", e.client_reason()),
                ));
            }
        };
        match self.upstream_login(&db_user).await {
            Ok((upstream, max_message)) => {
                let port = match port.begin(None).await {
                    Ok(port) => port,
                    Err(e) => return Err(error_reply(AUTHENTICATION_FAILED.0, AUTHENTICATION_FAILED.1, e.client_message())),
                };
                let names = NameGrant::of(user, &ctx.database().name, &db_user);
                Ok(Established { port, upstream, max_message, names })
            }
            Err(e) => {
                tracing::warn!(error = %e, "upstream login failed");
                port.start_failed(format!("upstream: {e}"), "upstream connection failed").await;
                Err(error_reply(AUTHENTICATION_FAILED.0, AUTHENTICATION_FAILED.1, &format!("dbtape: upstream login failed: {e}")))
            }
        }
    }

    async fn upstream_login(&self, db_user: &str) -> Result<(Stream, usize), UpstreamError> {
        let mut upstream = self.state.upstream.connect().await?;
        let auth = &self.ctx.database().auth;
        let scram = match auth.method {
            AuthMethod::Password => {
                let password =
                    self.ctx.upstream_password()?.ok_or(UpstreamError::Password(crate::server::UpstreamPasswordError::NotConfigured))?;
                let auth_db = self.state.upstream.auth_source.as_deref().unwrap_or("admin");
                Some(ScramStart::new(auth_db, db_user, &password)?)
            }
            AuthMethod::None | AuthMethod::AwsIam => None,
        };
        let mut hello = match &self.first_hello {
            Some(h) => commands::without(h, &["speculativeAuthenticate", "saslSupportedMechs", "compression", "$db"]),
            None => rawdoc! { "hello": 1 },
        };
        if let Some(scram) = &scram {
            hello.append("speculativeAuthenticate", scram.speculative());
        }
        hello.append("$db", "admin");
        let reply = command(&mut upstream, &hello).await?;
        let max_message = commands::max_message_bytes(&reply).unwrap_or(super::wire::DEFAULT_MAX_MESSAGE_BYTES);
        if let Some(scram) = scram {
            scram_login(&mut upstream, scram, speculative_reply(&reply), &self.state.upstream.salted).await?;
        } else if auth.method == AuthMethod::AwsIam {
            let credentials = self.state.aws_credentials(db_user).await.map_err(UpstreamError::Aws)?;
            aws_login(&mut upstream, &credentials).await?;
        }
        Ok((upstream, max_message))
    }
}

fn binary(bytes: Vec<u8>) -> Binary {
    Binary { subtype: BinarySubtype::Generic, bytes }
}

/// An error for a message that could not be parsed: OP_REPLY for OP_QUERY, else OP_MSG.
pub fn reply_for_unparsed(msg: &Message, reply: &RawDocumentBuf) -> Vec<u8> {
    let id = super::client::next_reply_id();
    if msg.header.op_code == super::wire::OP_QUERY {
        super::wire::frame(
            id,
            msg.header.request_id,
            super::wire::OP_REPLY,
            &super::wire::op_reply_body(super::wire::REPLY_QUERY_FAILURE, &[reply]),
        )
    } else {
        super::wire::frame(id, msg.header.request_id, super::wire::OP_MSG, &super::wire::op_msg_body(0, reply))
    }
}

/// The upstream's hello, fetched at most every `HELLO_CACHE_FOR` on a short connection of the
/// proxy's own, so strangers' hellos never each cost an upstream connection.
async fn cached_hello(state: &DbState) -> Result<RawDocumentBuf, UpstreamError> {
    let mut cache = state.hello_cache.lock().await;
    if let Some((at, doc)) = cache.as_ref() {
        if at.elapsed() < HELLO_CACHE_FOR {
            return Ok(doc.clone());
        }
    }
    let mut upstream = state.upstream.connect().await?;
    let doc = command(&mut upstream, &rawdoc! { "hello": 1, "$db": "admin" }).await?;
    *cache = Some((std::time::Instant::now(), doc.clone()));
    Ok(doc)
}

/// Serves a driver's monitoring connection: hellos only, awaitable ones held up to 10 s.
pub async fn serve_monitor(client: &mut Stream, login: &Login<'_>, shutdown: &tokio_util::sync::CancellationToken) {
    let Some(_slot) = MonitorSlot::take(login) else { return };
    let mut client = tokio::io::BufReader::new(client);
    loop {
        let next = tokio::select! {
            m = tokio::time::timeout(MAX_AWAIT * 6, read_message(&mut client, MAX_LOGIN_MESSAGE)) => m,
            () = shutdown.cancelled() => break,
        };
        let Ok(Ok(msg)) = next else { break };
        let Ok(request) = Request::parse(&msg) else { break };
        let reply = if is_hello(request.name()) {
            let wait = request.body().get("maxAwaitTimeMS").ok().flatten().and_then(|v| commands::number(Some(v)));
            if let (Some(ms), true) = (wait, request.body().get("topologyVersion").ok().flatten().is_some()) {
                let wait = Duration::from_millis(ms.max(0.0) as u64).min(MAX_AWAIT);
                // A driver closes its monitor as its client shuts down, often in the middle
                // of this wait: seen at once, the monitor's place is free for the next one.
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    open = still_open(&mut client) => if !open { break },
                    () = shutdown.cancelled() => break,
                }
            }
            login.hello_reply(request.body(), None).await
        } else if is_login_command(request.name()) {
            error_reply(UNAUTHORIZED.0, UNAUTHORIZED.1, "dbtape: log in on a new connection")
        } else {
            error_reply(UNAUTHORIZED.0, UNAUTHORIZED.1, &format!("command {} requires authentication", request.name()))
        };
        if !send(&mut client, &reply_bytes(&msg, &request, &reply)).await {
            break;
        }
    }
}

/// Waits until the client sends more or closes; says which. Cancel-safe: bytes that come
/// stay buffered for the next `read_message`.
async fn still_open<R: tokio::io::AsyncBufRead + Unpin>(client: &mut R) -> bool {
    use tokio::io::AsyncBufReadExt;
    matches!(client.fill_buf().await, Ok(bytes) if !bytes.is_empty())
}

/// A monitoring connection's place, within `server.max_pending_logins` per listener and
/// `server.max_pending_logins_per_source` per address, so one source cannot take every
/// place and leave other drivers' monitors (and so their applications) without a server.
struct MonitorSlot<'a> {
    state: &'a DbState,
    source: std::net::IpAddr,
}

impl<'a> MonitorSlot<'a> {
    fn take(login: &'a Login<'_>) -> Option<MonitorSlot<'a>> {
        let server = &login.ctx.config().server;
        let source = login.info.peer.ip();
        let mut monitors = crate::util::sync::lock(&login.state.monitors);
        let total: usize = monitors.values().sum();
        let from_source = monitors.get(&source).copied().unwrap_or(0);
        if total >= server.max_pending_logins || from_source >= server.max_pending_logins_per_source {
            tracing::warn!(%source, "too many unauthenticated monitoring connections (server.max_pending_logins[_per_source]); closing one");
            return None;
        }
        *monitors.entry(source).or_insert(0) += 1;
        Some(MonitorSlot { state: login.state, source })
    }
}

impl Drop for MonitorSlot<'_> {
    fn drop(&mut self) {
        let mut monitors = crate::util::sync::lock(&self.state.monitors);
        if let Some(n) = monitors.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                monitors.remove(&self.source);
            }
        }
    }
}

impl DbState {
    /// Credentials for MONGODB-AWS: dbtape's identity (the AWS chain, through
    /// `aws.assume_role_arn` when set), or, when the db_user is an IAM role ARN (DocumentDB's
    /// IAM users are), that role assumed from it.
    async fn aws_credentials(&self, db_user: &str) -> Result<aws_credential_types::Credentials, String> {
        let assumed = if crate::util::arn::is_role_arn(db_user) {
            self.aws_credentials.role("dbtape", db_user).await
        } else {
            self.aws_credentials.identity().await
        };
        assumed.map(|a| a.credentials).map_err(|e| e.to_string())
    }
}
