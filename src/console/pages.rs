//! The console's pages: login, sessions, one session (its player), search.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Form};

use super::catalog::{group_rows, integrity_view, IntegrityView, SessionFilter};
use super::http::{
    begin_login, cookie, end_login, random_token, redirect, set_cookie, Authed, Console, RemoteAddr, LOGIN_COOKIE, OIDC_COOKIE,
    SESSION_COOKIE,
};
use super::text::visible;
use crate::recording::SessionSummary;

fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console: a page did not render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page did not render").into_response()
        }
    }
}

fn error_page(status: StatusCode, message: &str) -> Response {
    let mut response = render(&ErrorPage { message: message.to_string() });
    *response.status_mut() = status;
    response
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    message: String,
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    csrf: String,
    error: String,
    /// The OIDC button's label; empty when the console has no `[review.oidc]`.
    oidc_label: String,
}

fn oidc_label(console: &Console) -> String {
    console.oidc.as_ref().map(|o| o.settings.label.clone()).unwrap_or_default()
}

pub async fn login_page(State(console): State<Arc<Console>>) -> Response {
    let csrf = random_token();
    let mut response = render(&LoginPage { csrf: csrf.clone(), error: String::new(), oidc_label: oidc_label(&console) });
    set_cookie(&mut response, LOGIN_COOKIE, &csrf, 600);
    response
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    name: String,
    password: String,
    csrf: String,
}

pub async fn login(
    State(console): State<Arc<Console>>,
    Extension(RemoteAddr(addr)): Extension<RemoteAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    // The login form's token must match the cookie set with it: another site cannot read
    // the cookie, so it cannot post a login (login CSRF).
    if cookie(&headers, LOGIN_COOKIE).is_none_or(|c| c.is_empty() || c != form.csrf) {
        return error_page(StatusCode::FORBIDDEN, "The login form expired or did not come from this console. Reload the login page.");
    }
    let user_agent = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let now = chrono::Utc::now().timestamp_millis();
    if console.limiter.blocked(addr.ip(), now) {
        return error_page(StatusCode::TOO_MANY_REQUESTS, "Too many failed logins from your address. Wait a minute.");
    }
    let (name, password) = (form.name.clone(), form.password);
    let checking = console.clone();
    let reviewer = tokio::task::spawn_blocking(move || checking.accounts.check(&name, &password)).await.ok().flatten();
    let remote = addr.to_string();
    let Some(reviewer) = reviewer else {
        console.limiter.failed(addr.ip(), now);
        if let Err(e) = console.access.refused(&form.name, &remote, &user_agent) {
            tracing::error!(error = %e, "console: cannot record a refused login");
        }
        let csrf = random_token();
        let error = "Wrong name or password.".into();
        let mut response = render(&LoginPage { csrf: csrf.clone(), error, oidc_label: oidc_label(&console) });
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        set_cookie(&mut response, LOGIN_COOKIE, &csrf, 600);
        return response;
    };
    match begin_login(&console, reviewer, &remote, &user_agent, "local account") {
        Ok((token, _)) => {
            let mut response = redirect("/sessions");
            set_cookie(&mut response, SESSION_COOKIE, &token, console.settings.session_ttl.as_secs());
            set_cookie(&mut response, LOGIN_COOKIE, "", 0);
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "console: cannot start a login");
            error_page(StatusCode::SERVICE_UNAVAILABLE, "The console cannot record this login, so it is refused.")
        }
    }
}

/// Sends the browser to the OIDC provider, with this login's state in a cookie.
pub async fn oidc_begin(State(console): State<Arc<Console>>) -> Response {
    let Some(oidc) = &console.oidc else {
        return error_page(StatusCode::NOT_FOUND, "This console has no single sign-on configured.");
    };
    match oidc.begin() {
        Ok((cookie, url)) => {
            let mut response = redirect(&url);
            set_cookie(&mut response, OIDC_COOKIE, &cookie, 600);
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "console: cannot start an OIDC login");
            error_page(StatusCode::SERVICE_UNAVAILABLE, "Single sign-on cannot start. Try again in a minute.")
        }
    }
}

#[derive(serde::Deserialize)]
pub struct OidcCallback {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: String,
    /// RFC 9207: the issuer of this answer, which providers that send it let a client tell
    /// one provider's answer from another's.
    iss: Option<String>,
}

/// The provider sent the browser back: the code is exchanged, the ID token checked, and the
/// identity mapped to a reviewer. Every refusal is recorded like a wrong password.
pub async fn oidc_callback(
    State(console): State<Arc<Console>>,
    Extension(RemoteAddr(addr)): Extension<RemoteAddr>,
    headers: HeaderMap,
    Query(callback): Query<OidcCallback>,
) -> Response {
    let Some(oidc) = &console.oidc else {
        return error_page(StatusCode::NOT_FOUND, "This console has no single sign-on configured.");
    };
    let user_agent = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let remote = addr.to_string();
    let now = chrono::Utc::now().timestamp_millis();
    if console.limiter.blocked(addr.ip(), now) {
        return error_page(StatusCode::TOO_MANY_REQUESTS, "Too many failed logins from your address. Wait a minute.");
    }
    let cookie_state = cookie(&headers, OIDC_COOKIE).unwrap_or_default();
    let outcome = if callback.iss.as_ref().is_some_and(|iss| *iss != oidc.settings.issuer) {
        Err(super::oidc::OidcError::Refused("the answer came from another issuer".into()))
    } else if callback.error.is_empty() {
        oidc.finish(&callback.state, &cookie_state, &callback.code).await
    } else {
        // Anyone can make up a callback: its text is cut short before it is shown or kept.
        Err(super::oidc::OidcError::Refused(callback.error.chars().take(100).collect()))
    };
    let refuse = |tried: &str, why: String| {
        console.limiter.failed(addr.ip(), now);
        if let Err(e) = console.access.refused_because(tried, &remote, &user_agent, &why) {
            tracing::error!(error = %e, "console: cannot record a refused login");
        }
        let mut response = error_page(StatusCode::FORBIDDEN, &format!("Single sign-on did not log you in: {why}."));
        set_cookie(&mut response, OIDC_COOKIE, "", 0);
        response
    };
    let identity = match outcome {
        Ok(identity) => identity,
        Err(e) => return refuse("", format!("single sign-on: {e}")),
    };
    let Some(reviewer) = console.accounts.for_identity(&identity.name, &identity.groups, &oidc.settings.auditor_groups) else {
        return refuse(&identity.name, format!("{:?} is not a reviewer of this console", identity.name));
    };
    let how = format!("single sign-on, {} subject {}", oidc.settings.issuer, identity.subject);
    match begin_login(&console, reviewer, &remote, &user_agent, &how) {
        Ok((token, _)) => {
            // A page, not a redirect: the next request must start on this site for the
            // strict session cookie to come with it.
            let mut response = render(&Continue { to: "/sessions" });
            set_cookie(&mut response, SESSION_COOKIE, &token, console.settings.session_ttl.as_secs());
            set_cookie(&mut response, OIDC_COOKIE, "", 0);
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "console: cannot start a login");
            error_page(StatusCode::SERVICE_UNAVAILABLE, "The console cannot record this login, so it is refused.")
        }
    }
}

#[derive(Template)]
#[template(path = "console/continue.html")]
struct Continue {
    to: &'static str,
}

#[derive(serde::Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(
    State(console): State<Arc<Console>>,
    Authed(login): Authed,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if form.csrf != login.csrf {
        return error_page(StatusCode::FORBIDDEN, "This form did not come from your session.");
    }
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        end_login(&console, &token).await;
    }
    let mut response = redirect("/login");
    set_cookie(&mut response, SESSION_COOKIE, "", 0);
    response
}

/// One session's row on a page: its fields as text made visible.
pub struct SessionRow {
    pub sid: String,
    pub user: String,
    pub db: String,
    pub protocol: String,
    pub start: String,
    pub duration: String,
    pub queries: u64,
    pub failed: u64,
    pub refused: u64,
    pub state: String,
    pub source: String,
    pub integrity: IntegrityView,
}

fn time_text(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

fn row(console: &Console, s: &SessionSummary) -> SessionRow {
    SessionRow {
        sid: s.sid.clone(),
        user: visible(&s.user),
        db: visible(&s.db_service),
        protocol: visible(&s.db_protocol),
        start: time_text(s.start_ms),
        duration: s.duration_ms().map(|d| format!("{:.3}s", d as f64 / 1000.0)).unwrap_or_else(|| "open".into()),
        queries: s.queries,
        failed: s.failed_queries,
        refused: s.refused_logins,
        state: s.state.as_str().to_string(),
        source: visible(&s.remote_addr),
        integrity: integrity_view(&console.catalog.integrity(&s.sid)),
    }
}

#[derive(Template)]
#[template(path = "console/sessions.html")]
struct SessionsPage {
    reviewer: String,
    csrf: String,
    filter: SessionFilter,
    groups: Vec<Vec<SessionRow>>,
    next: String,
    error: String,
}

pub async fn sessions(State(console): State<Arc<Console>>, Authed(login): Authed, Query(filter): Query<SessionFilter>) -> Response {
    let detail = serde_urlencoded::to_string(&filter).unwrap_or_default();
    if let Err(refused) = login.audit("sessions.list", "", &detail) {
        return refused.into_response();
    }
    let range = crate::review::time_range(non_empty(&filter.since), non_empty(&filter.until));
    let (range, error) = match range {
        Ok(range) => (range, String::new()),
        Err(e) => ((None, None), visible(&e.to_string())),
    };
    let reviewer = login.reviewer.clone();
    let size = console.settings.page_size;
    let gap = i64::try_from(console.settings.group_gap.as_millis()).unwrap_or(60_000);
    let page_console = console.clone();
    let page_filter = filter.clone();
    let built = tokio::task::spawn_blocking(move || {
        let page = page_console.catalog.page(&reviewer, &page_filter, range, size);
        let groups: Vec<Vec<SessionRow>> =
            group_rows(page.rows, gap).into_iter().map(|g| g.iter().map(|s| row(&page_console, s)).collect()).collect();
        (groups, page.next.unwrap_or_default())
    })
    .await;
    let Ok((groups, next)) = built else { return error_page(StatusCode::INTERNAL_SERVER_ERROR, "listing failed") };
    render(&SessionsPage { reviewer: visible(&login.reviewer.name), csrf: login.csrf.clone(), filter, groups, next, error })
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct SessionQuery {
    at: u64,
}

#[derive(Template)]
#[template(path = "console/session.html")]
struct SessionPage {
    reviewer: String,
    csrf: String,
    row: SessionRow,
    db_user: String,
    events: u64,
    at: u64,
    live: bool,
}

pub async fn session(
    State(console): State<Arc<Console>>,
    Authed(login): Authed,
    Path(sid): Path<String>,
    Query(query): Query<SessionQuery>,
) -> Response {
    if visible_session(&console, &login.reviewer, &sid).is_none() {
        return error_page(StatusCode::NOT_FOUND, "No such session, or not one you may see.");
    }
    let summary = match super::api::look(&console, &login, &sid, "session.view", &format!("at ei {}", query.at)) {
        Ok(summary) => summary,
        Err(denied) => return denied.into_response(),
    };
    let page_console = console.clone();
    let built = tokio::task::spawn_blocking(move || {
        let row = row(&page_console, &summary);
        (row, summary)
    })
    .await;
    let Ok((row, summary)) = built else { return error_page(StatusCode::INTERNAL_SERVER_ERROR, "the session did not open") };
    render(&SessionPage {
        reviewer: visible(&login.reviewer.name),
        csrf: login.csrf.clone(),
        row,
        db_user: visible(&summary.db_user),
        events: summary.events,
        at: query.at,
        live: summary.state == crate::recording::RecordingState::Live,
    })
}

/// The session, if it exists and the reviewer may see it.
pub fn visible_session(console: &Console, reviewer: &super::accounts::Reviewer, sid: &str) -> Option<SessionSummary> {
    let sid = crate::recording::validate_session_id(sid).ok()?;
    let summary = console.catalog.summary(&sid)?;
    reviewer.may_see(&summary.db_service, &summary.db_protocol).then_some(summary)
}

#[derive(serde::Deserialize, serde::Serialize, Default, Clone)]
#[serde(default)]
pub struct SearchForm {
    pub text: String,
    pub user: String,
    pub db: String,
    pub class: String,
    pub table: String,
    pub fingerprint: String,
    pub since: String,
    pub until: String,
}

pub struct SearchRow {
    pub sid: String,
    pub ei: u64,
    pub time: String,
    pub user: String,
    pub db: String,
    pub what: String,
}

#[derive(Template)]
#[template(path = "console/search.html")]
struct SearchPage {
    reviewer: String,
    csrf: String,
    form: SearchForm,
    rows: Vec<SearchRow>,
    searched: bool,
    more: bool,
    error: String,
}

/// At most this many hits on a page.
pub const SEARCH_HITS: usize = 500;

pub async fn search(State(console): State<Arc<Console>>, Authed(login): Authed, Query(form): Query<SearchForm>) -> Response {
    let searched = [&form.text, &form.user, &form.db, &form.class, &form.table, &form.fingerprint, &form.since, &form.until]
        .iter()
        .any(|f| !f.is_empty());
    let mut page = SearchPage {
        reviewer: visible(&login.reviewer.name),
        csrf: login.csrf.clone(),
        form: form.clone(),
        rows: Vec::new(),
        searched,
        more: false,
        error: String::new(),
    };
    if !searched {
        return render(&page);
    }
    if let Err(refused) = login.audit("search", "", &serde_urlencoded::to_string(&form).unwrap_or_default()) {
        return refused.into_response();
    }
    let reviewer = login.reviewer.clone();
    let store = console.catalog.store().clone();
    let keys_console = console.clone();
    let outcome = tokio::task::spawn_blocking(move || super::api::run_search(&keys_console, &store, &reviewer, &form)).await;
    match outcome {
        Ok(Ok((rows, more))) => {
            page.rows = rows;
            page.more = more;
        }
        Ok(Err(e)) => page.error = visible(&e),
        Err(_) => page.error = "the search failed".into(),
    }
    render(&page)
}
