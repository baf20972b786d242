//! The console's HTTPS server: TLS (rustls) in front of an axum router, the security headers
//! on every response, and the reviewer's login (a random token in a `__Host-` cookie,
//! `Secure`, `HttpOnly`, `SameSite=Strict`, with a CSRF token for every form).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{FromRequestParts, Request};
use axum::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::access::{record, AccessLog};
use super::accounts::{Accounts, Reviewer};
use super::catalog::Catalog;
use super::ConsoleError;
use crate::config::ReviewSection;
use crate::recording::writer::SessionLog;

pub const SESSION_COOKIE: &str = "__Host-dbtape-review";
pub const LOGIN_COOKIE: &str = "__Host-dbtape-login";
/// The state of an OIDC login under way. `SameSite=Lax`, because the provider's redirect
/// back is a navigation from another site, which a strict cookie would not come with.
pub const OIDC_COOKIE: &str = "__Host-dbtape-oidc";

/// What `dbtape review` was started with.
pub struct ReviewOptions {
    pub source: crate::review::ReviewSource,
}

pub struct Console {
    pub catalog: Catalog,
    pub accounts: Accounts,
    pub access: AccessLog,
    pub limiter: super::access::LoginLimiter,
    pub logins: Mutex<HashMap<String, Arc<Login>>>,
    pub settings: ReviewSection,
    pub oidc: Option<super::oidc::Oidc>,
    /// The search index beside the recordings, kept open and brought up to date in the
    /// background, so a search pays only for its own question.
    pub index: Option<crate::search::SearchIndex>,
}

/// One reviewer's login: who, the CSRF token of their forms, and their access recording.
pub struct Login {
    pub reviewer: Reviewer,
    pub csrf: String,
    pub expires_ms: i64,
    log: Mutex<Option<SessionLog>>,
}

impl Login {
    /// Records what the reviewer did. A recording that cannot be written ends the login:
    /// a look that is not recorded is not allowed.
    pub fn audit(&self, action: &str, session_id: &str, detail: &str) -> Result<(), Unrecorded> {
        let guard = self.log.lock().map_err(|_| Unrecorded)?;
        let log = guard.as_ref().ok_or(Unrecorded)?;
        record(log, action, session_id, detail, true).map_err(|e| {
            tracing::error!(error = %e, "console: cannot record a reviewer's access; refusing it");
            Unrecorded
        })
    }

    async fn end(&self, action: &str) {
        let log = self.log.lock().ok().and_then(|mut l| l.take());
        if let Some(log) = log {
            let _ = record(&log, action, "", "", true);
            if let Err(e) = log.close().await {
                tracing::warn!(error = %e, "console: a reviewer-access recording did not seal");
            }
        }
    }
}

/// A look the console could not record, and so refuses.
pub struct Unrecorded;

impl IntoResponse for Unrecorded {
    fn into_response(self) -> Response {
        (StatusCode::SERVICE_UNAVAILABLE, "the console cannot record this access, so it is refused").into_response()
    }
}

/// The client's address, put on each request by the accept loop.
#[derive(Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

/// A request from a logged-in reviewer. Pages without one redirect to the login page; the
/// API answers 401.
pub struct Authed(pub Arc<Login>);

impl FromRequestParts<Arc<Console>> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Arc<Console>) -> Result<Self, Self::Rejection> {
        let token = cookie(&parts.headers, SESSION_COOKIE);
        let login = token.as_deref().and_then(|t| console.logins.lock().ok()?.get(t).cloned());
        let now = chrono::Utc::now().timestamp_millis();
        match login {
            Some(login) if login.expires_ms > now => Ok(Authed(login)),
            expired => {
                if let (Some(login), Some(token)) = (expired, token) {
                    if let Ok(mut logins) = console.logins.lock() {
                        logins.remove(&token);
                    }
                    login.end("logout").await;
                }
                Err(if parts.uri.path().starts_with("/api/") || parts.uri.path() == "/export" {
                    (StatusCode::UNAUTHORIZED, "log in first").into_response()
                } else {
                    redirect("/login")
                })
            }
        }
    }
}

pub fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // getrandom fails only without an OS entropy source; an all-zero token then would be
    // guessable, so the caller's login fails instead (see `login`).
    if getrandom::getrandom(&mut bytes).is_err() {
        return String::new();
    }
    crate::util::hex::hex(&bytes)
}

pub fn set_cookie(response: &mut Response, name: &str, value: &str, max_age_s: u64) {
    let same_site = if name == OIDC_COOKIE { "Lax" } else { "Strict" };
    let text = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}; Max-Age={max_age_s}");
    if let Ok(value) = HeaderValue::from_str(&text) {
        response.headers_mut().append(SET_COOKIE, value);
    }
}

/// Starts a login for `reviewer`: its access recording, its token and CSRF token.
pub fn begin_login(
    console: &Console,
    reviewer: Reviewer,
    remote_addr: &str,
    user_agent: &str,
    how: &str,
) -> Result<(String, Arc<Login>), ConsoleError> {
    let (token, csrf) = (random_token(), random_token());
    if token.is_empty() || csrf.is_empty() {
        return Err(ConsoleError::Usage("no random numbers from the operating system".into()));
    }
    let log = console.access.open(&reviewer.name, remote_addr, user_agent)?;
    record(&log, "login", "", how, true)?;
    let ttl = i64::try_from(console.settings.session_ttl.as_millis()).unwrap_or(i64::MAX);
    let login = Arc::new(Login {
        reviewer,
        csrf,
        expires_ms: chrono::Utc::now().timestamp_millis().saturating_add(ttl),
        log: Mutex::new(Some(log)),
    });
    if let Ok(mut logins) = console.logins.lock() {
        logins.insert(token.clone(), login.clone());
    }
    Ok((token, login))
}

pub async fn end_login(console: &Console, token: &str) {
    let login = console.logins.lock().ok().and_then(|mut l| l.remove(token));
    if let Some(login) = login {
        login.end("logout").await;
    }
}

/// The same headers on every response, the login page and errors included.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "strict-transport-security", "max-age=31536000; includeSubDomains");
    set(headers, "x-frame-options", "DENY");
    set(headers, "referrer-policy", "no-referrer");
    set(headers, "cross-origin-opener-policy", "same-origin");
    set(headers, "cross-origin-resource-policy", "same-origin");
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Refuses a state-changing request another site started, before any handler runs.
async fn same_site_only(request: Request, next: Next) -> Response {
    let cross_site = request.headers().get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|v| v == "cross-site");
    if request.method() != axum::http::Method::GET && cross_site {
        return (StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    next.run(request).await
}

async fn asset(path: axum::extract::Path<String>) -> Response {
    let (body, kind) = match path.as_str() {
        "console.js" => (include_str!("../../assets/console.js"), "text/javascript; charset=utf-8"),
        "console.css" => (include_str!("../../assets/console.css"), "text/css; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    let mut response = body.into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("private, max-age=300"));
    response
}

pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(|| async { redirect("/sessions") }))
        .route("/login", get(super::pages::login_page).post(super::pages::login))
        .route("/login/oidc", get(super::pages::oidc_begin))
        .route("/login/oidc/callback", get(super::pages::oidc_callback))
        .route("/logout", post(super::pages::logout))
        .route("/sessions", get(super::pages::sessions))
        .route("/sessions/{sid}", get(super::pages::session))
        .route("/search", get(super::pages::search))
        .route("/export", get(super::api::export))
        .route("/api/sessions/{sid}/steps", get(super::api::steps))
        .route("/api/sessions/{sid}/events/{ei}", get(super::api::event))
        .route("/api/sessions/{sid}/follow", get(super::api::follow))
        .route("/assets/{name}", get(asset))
        .layer(axum::middleware::from_fn(same_site_only))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(console)
}

/// Serves the console until the process is stopped.
pub fn run(config_path: &std::path::Path, options: ReviewOptions) -> Result<(), ConsoleError> {
    let (_, settings) = crate::config::Config::load_review_settings(config_path).map_err(|e| ConsoleError::Config(e.to_string()))?;
    let located = crate::review::locate(&options.source)?;
    let (keys, warnings) = crate::review::key_ring(&located, Vec::new());
    for warning in warnings {
        tracing::warn!(%warning, "console: key ring");
    }
    let accounts = Accounts::load(&settings.reviewers_file)?;
    if accounts.is_empty() && settings.oidc.is_none() {
        return Err(ConsoleError::Config(format!(
            "{}: no reviewer accounts; add one with `dbtape reviewer add <name> --config {}`",
            settings.reviewers_file.display(),
            config_path.display()
        )));
    }
    let signer = Arc::new(
        crate::signing::Signer::load_or_generate(&settings.access_signing_key)
            .map_err(|e| ConsoleError::Config(format!("review.access_signing_key: {e}")))?,
    );
    let access_dir = settings.access_dir.clone().unwrap_or_else(|| located.store.dir().to_path_buf());
    let access = AccessLog::start(&access_dir, signer, "dbtape".into(), settings.listen.clone())?;
    let tls = tls_config(&settings)?;
    let catalog = Catalog::new(located.store.clone(), keys);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let oidc = match settings.oidc.clone() {
        Some(oidc) => Some(runtime.block_on(super::oidc::Oidc::discover(oidc)).map_err(|e| ConsoleError::Config(e.to_string()))?),
        None => None,
    };
    let index = match crate::search::SearchIndex::open(located.store.dir()) {
        Ok(index) => Some(index),
        Err(e) => {
            tracing::warn!(error = %e, "console: no search index; the search page is off");
            None
        }
    };
    let logins = Mutex::new(HashMap::new());
    let console = Arc::new(Console { catalog, accounts, access, limiter: Default::default(), logins, settings, oidc, index });
    keep_index_current(&console, true);
    runtime.block_on(serve(console, tls))
}

fn tls_config(settings: &ReviewSection) -> Result<Arc<rustls::ServerConfig>, ConsoleError> {
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| ConsoleError::Tls(format!("{}: {e}", path.display())));
    let certs: Vec<_> = rustls_pemfile::certs(&mut &read(&settings.tls_cert)?[..])
        .collect::<Result<_, _>>()
        .map_err(|e| ConsoleError::Tls(format!("{}: {e}", settings.tls_cert.display())))?;
    let key = rustls_pemfile::private_key(&mut &read(&settings.tls_key)?[..])
        .map_err(|e| ConsoleError::Tls(format!("{}: {e}", settings.tls_key.display())))?
        .ok_or_else(|| ConsoleError::Tls(format!("{}: no private key", settings.tls_key.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConsoleError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConsoleError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Indexes recordings sealed since the last pass (when `changed`), and lets searches see
/// commits from this pass or from a proxy indexing the same folder.
fn keep_index_current(console: &Console, changed: bool) {
    let Some(index) = &console.index else { return };
    if changed {
        if let Err(e) = index.catch_up(console.catalog.store()) {
            // A running proxy holds the index's writer and indexes them itself.
            tracing::debug!(error = %e, "console: the index is left to its writer");
        }
    }
    if let Err(e) = index.refresh() {
        tracing::warn!(error = %e, "console: cannot reload the search index");
    }
}

async fn serve(console: Arc<Console>, tls: Arc<rustls::ServerConfig>) -> Result<(), ConsoleError> {
    let listener = tokio::net::TcpListener::bind(&console.settings.listen)
        .await
        .map_err(|e| ConsoleError::Config(format!("review.listen {:?}: {e}", console.settings.listen)))?;
    tracing::info!(listen = %listener.local_addr()?, "review console listening (HTTPS)");
    eprintln!("review console on https://{}", listener.local_addr()?);
    // New sessions appear within a few seconds without a request ever reading the folder.
    // Logins that expired are ended (their access recordings sealed) even if the reviewer
    // never comes back.
    let reloading = console.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let catalog = reloading.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let changed = catalog.catalog.reload();
                keep_index_current(&catalog, changed);
            })
            .await;
            let now = chrono::Utc::now().timestamp_millis();
            let expired: Vec<String> = reloading
                .logins
                .lock()
                .map(|l| l.iter().filter(|(_, login)| login.expires_ms <= now).map(|(token, _)| token.clone()).collect())
                .unwrap_or_default();
            for token in expired {
                end_login(&reloading, &token).await;
            }
        }
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(console.clone());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let (tcp, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "console: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                _ => return,
            };
            let service = hyper::service::service_fn(move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(RemoteAddr(addr));
                let app = app.clone();
                async move { tower::ServiceExt::oneshot(app, request.map(axum::body::Body::new)).await }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(15))
                .serve_connection(io, service)
                .await;
        });
    }
    // Stopped: every open login's access recording and the refused-logins one are sealed.
    let logins: Vec<String> = console.logins.lock().map(|l| l.keys().cloned().collect()).unwrap_or_default();
    for token in logins {
        end_login(&console, &token).await;
    }
    console.access.close().await;
    tracing::info!("review console stopped; access recordings sealed");
    Ok(())
}
