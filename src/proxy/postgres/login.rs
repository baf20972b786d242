//! A connection before its session: SSL and cancel requests, the client's identity (a
//! certificate CN or SCRAM), authorization, the upstream login, and refusals.

use crate::util::sync::lock;

use pgwire::messages::startup::Authentication;
use tokio::io::AsyncWriteExt;

use super::codec::{auth_message, error_response, message, read_message, read_startup, StartupPacket, WireError, PROTOCOL_3_2};
use super::upstream::UpstreamError;
use crate::auth::scram::{ServerExchange, Verifier};
use crate::auth::{authorize, split_login};
use crate::config::{AuthMethod, ClientTlsMode};
use crate::proxy::stream::Stream;
use crate::recording::AuditPort;
use crate::server::{ConnectionInfo, ListenerContext, Refusal, SessionIdentity};

use super::pool::{Backend, Lease};
use super::session::{random_bytes, send, CancelMap, DbState};

/// Everything before the relay: TLS, cancel requests, authentication, the upstream login.
/// Returns the session to relay, or none when the connection ended here.
pub(super) async fn handshake(
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
pub(super) enum LoginEnd {
    /// Authentication or authorization failed: 28000, recorded as TDB00W.
    Refused(Refusal),
    /// The client went away mid-handshake.
    Gone,
}

pub(super) struct Established {
    pub(super) port: AuditPort,
    pub(super) upstream: Backend,
    pub(super) synthetic: (i32, Vec<u8>),
    /// The pool slot the connection holds, on a pooled database.
    pub(super) pooled: Option<Lease>,
}

pub(super) enum ScramOutcome {
    WrongPassword,
    Gone,
    Protocol(String),
}

/// Runs SCRAM-SHA-256 with the client against `verifier`. Returns the SASLFinal message for
/// the caller to send with what follows it (AuthenticationOk and the startup), so that the
/// client gets one packet, not two.
pub(super) async fn scram_login(client: &mut Stream, verifier: Verifier) -> Result<Vec<u8>, ScramOutcome> {
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
        Ok(server_final) => Ok(auth_message(Authentication::SASLFinal(server_final.into()))),
        Err(crate::auth::scram::ScramError::WrongProof) => Err(ScramOutcome::WrongPassword),
        Err(e) => Err(ScramOutcome::Protocol(e.to_string())),
    }
}

/// Tells the client why and records the failed start.
pub(super) async fn refuse_after_open(
    client: &mut Stream,
    port: AuditPort,
    reason: String,
    sqlstate: &str,
) -> Result<Option<Established>, LoginEnd> {
    tracing::warn!(%reason, "session refused after authentication");
    send(client, &error_response("FATAL", sqlstate, &format!("dbtape: {reason}"))).await;
    port.start_failed(reason, "upstream connection failed").await;
    Ok(None)
}

/// Authenticates the client, authorizes, logs in upstream and finishes the client's startup.
pub(super) async fn establish(
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
    let mut sasl_final = Vec::new();
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
                Ok(last) if known => sasl_final = last,
                Ok(_) | Err(ScramOutcome::WrongPassword) => {
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
    let mut upstream_params: Vec<(String, String)> = vec![("user".into(), db_user.clone()), ("database".into(), db_name)];
    upstream_params.extend(params.iter().filter(|(k, _)| !matches!(k.as_str(), "user" | "database" | "replication")).cloned());
    let (pooled, reused) = match &state.pool {
        Some(pool) => match pool.take(&upstream_params).await {
            Ok((lease, backend)) => (Some(lease), backend),
            Err(_) => return refuse_after_open(client, port, "the upstream pool is closed".into(), "08006").await,
        },
        None => (None, None),
    };
    let pid_bytes: [u8; 4] = random_bytes(4).try_into().unwrap_or([0, 0, 0, 1]);
    let synthetic = ((i32::from_be_bytes(pid_bytes) & 0x7fff_ffff).max(1), random_bytes(if version == PROTOCOL_3_2 { 32 } else { 4 }));
    let mut out = sasl_final;
    out.extend_from_slice(&auth_message(Authentication::Ok));
    let was_reused = reused.is_some();
    let upstream = match reused {
        Some(backend) => {
            // What the server told this connection's first client, as it stands after the
            // reset: the new client sees the same startup a fresh login would give it.
            for (name, value) in &backend.parameters {
                let mut body = name.as_bytes().to_vec();
                body.push(0);
                body.extend_from_slice(value.as_bytes());
                body.push(0);
                out.extend_from_slice(&message(b'S', &body));
            }
            out.extend_from_slice(&synthetic_key(&synthetic));
            out.extend_from_slice(&message(b'Z', b"I"));
            backend
        }
        None => match login_upstream(ctx, state, &db_user, &upstream_params, &synthetic, &mut out).await {
            Ok(backend) => backend,
            Err(UpstreamLogin::Refused(raw, text, what)) => {
                send(client, &raw).await;
                port.start_failed(text, what).await;
                return Ok(None);
            }
            Err(UpstreamLogin::Failed(reason, sqlstate)) => return refuse_after_open(client, port, reason, sqlstate).await,
        },
    };
    let port = match port.begin_on(upstream.pid(), pooled.as_ref().map(|_| was_reused)).await {
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
    Ok(Some(Established { port, upstream, synthetic, pooled }))
}

fn synthetic_key(synthetic: &(i32, Vec<u8>)) -> Vec<u8> {
    let mut fake = synthetic.0.to_be_bytes().to_vec();
    fake.extend_from_slice(&synthetic.1);
    message(b'K', &fake)
}

/// Why a new upstream connection gave no session.
enum UpstreamLogin {
    /// The server's own error (raw, as text) for the client, and the kind of failure.
    Refused(Vec<u8>, String, &'static str),
    /// The proxy's reason, with the SQLSTATE the client gets.
    Failed(String, &'static str),
}

/// Opens and logs in a new upstream connection, appending to `out` what the client is to
/// see of the server's startup (with the synthetic cancel key swapped in).
async fn login_upstream(
    ctx: &ListenerContext,
    state: &DbState,
    db_user: &str,
    upstream_params: &[(String, String)],
    synthetic: &(i32, Vec<u8>),
    out: &mut Vec<u8>,
) -> Result<Backend, UpstreamLogin> {
    let password = match ctx.database().auth.method {
        AuthMethod::Password | AuthMethod::None => ctx.upstream_password().map_err(|e| UpstreamLogin::Failed(e.to_string(), "08004"))?,
        AuthMethod::AwsIam => Some(
            state
                .iam_token(ctx, db_user)
                .await
                .map_err(|e| UpstreamLogin::Failed(format!("cannot make an IAM auth token: {e}"), "08004"))?,
        ),
    };
    let mut stream = match state.upstream.connect(upstream_params, password.as_deref()).await {
        Ok(s) => s,
        Err(UpstreamError::Server { text, raw }) => return Err(UpstreamLogin::Refused(raw, text, "upstream refused the login")),
        Err(e) => return Err(UpstreamLogin::Failed(format!("upstream: {e}"), "08006")),
    };
    let mut backend_key = None;
    let mut parameters = Vec::new();
    loop {
        let (ty, body) = read_message(&mut stream, 1 << 20).await.map_err(|e| UpstreamLogin::Failed(format!("upstream: {e}"), "08006"))?;
        match ty {
            b'K' => {
                let pid = body.get(..4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
                backend_key = Some((pid, body.get(4..).unwrap_or_default().to_vec()));
                out.extend_from_slice(&synthetic_key(synthetic));
            }
            b'E' => {
                let text = super::messages::error_text(&body);
                out.extend_from_slice(&message(b'E', &body));
                return Err(UpstreamLogin::Refused(std::mem::take(out), text, "upstream refused the session"));
            }
            b'Z' => {
                out.extend_from_slice(&message(b'Z', &body));
                return Ok(Backend { stream, key: backend_key, parameters });
            }
            ty => {
                if ty == b'S' {
                    parameters.extend(super::pool::parameter_status(&body));
                }
                out.extend_from_slice(&message(ty, &body));
            }
        }
    }
}
