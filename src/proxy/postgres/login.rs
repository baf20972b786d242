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
    pub(super) upstream: Stream,
    pub(super) synthetic: (i32, Vec<u8>),
    pub(super) real: Option<(i32, Vec<u8>)>,
}

pub(super) enum ScramOutcome {
    WrongPassword,
    Gone,
    Protocol(String),
}

/// Runs SCRAM-SHA-256 with the client against `verifier`.
pub(super) async fn scram_login(client: &mut Stream, verifier: Verifier) -> Result<(), ScramOutcome> {
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
