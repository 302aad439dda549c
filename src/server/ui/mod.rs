//! The web UI at `/`: the pages' shell, sign-in and sign-out, and the script and styles built
//! into the binary. The pages render in the browser from the JSON API under `/api/v1`, which
//! the session cookie opens like a bearer token (see `auth.rs`); nothing is fetched from
//! anywhere but this server.
//!
//! A page is only served to a signed-in browser, unless `[ui] anonymous_read` is set; its
//! actions (promote, rollback, cancel, rebuild, rebake) go through the API with the session's
//! CSRF token in a header, so a form posted from another site cannot act.

mod page;

use axum::extract::{DefaultBodyLimit, Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::auth::{session_cookie, SESSION_COOKIE};
use super::AppState;
use crate::store::sessions::Session;
use crate::store::tokens::{Presented, Scope};

/// The largest sign-in or sign-out form read: a token and a path.
const MAX_FORM_BYTES: usize = 4096;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(show_page))
        .route("/agents", get(show_page))
        .route("/projects/{project}", get(show_page))
        .route("/projects/{project}/builds/{number}", get(show_page))
        .route("/projects/{project}/releases", get(show_page))
        .route("/projects/{project}/environments", get(show_page))
        .route("/projects/{project}/deployments/{id}", get(show_page))
        .route("/sign-in", get(sign_in_form).post(sign_in))
        .route("/sign-out", axum::routing::post(sign_out))
        .route("/ui/{asset}", get(asset))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
}

/// Who looks at a page: a signed-in session, or nobody (only with `anonymous_read`).
async fn viewer(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, Response> {
    let Some(secret) = session_cookie(headers) else {
        return Ok(None);
    };
    state
        .store
        .session(secret)
        .await
        .map_err(|error| server_error(&error))
}

fn server_error(error: &dyn std::fmt::Display) -> Response {
    tracing::error!(%error, "the web UI cannot reach the store");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the server cannot reach its database; try again shortly",
    )
        .into_response()
}

async fn show_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let session = match viewer(&state, &headers).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    if session.is_none() && !state.config.ui.anonymous_read {
        let next = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let target = format!("/sign-in?next={}", page::query_escape(next));
        return Redirect::to(&target).into_response();
    }
    html(StatusCode::OK, page::shell(session.as_ref()))
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

async fn sign_in_form(Query(query): Query<NextQuery>) -> Response {
    let next = local_path(query.next.as_deref());
    html(StatusCode::OK, page::sign_in(&next, None))
}

#[derive(Deserialize)]
struct SignInForm {
    token: String,
    next: Option<String>,
}

/// `POST /sign-in` (a form with `token`): opens a session for a valid token that may read,
/// sets its cookie and goes on to `next`; otherwise shows the form again saying why.
async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_origin(&state, &headers) {
        return cross_site();
    }
    let Ok(Form(form)) = form else {
        return html(
            StatusCode::BAD_REQUEST,
            page::sign_in("/", Some("the form could not be read; paste an API token")),
        );
    };
    let next = local_path(form.next.as_deref());
    let refuse = |why: &str| html(StatusCode::UNAUTHORIZED, page::sign_in(&next, Some(why)));
    let record = match state.store.check_token(form.token.trim()).await {
        Ok(Presented::Valid(record)) => record,
        Ok(Presented::Revoked(record)) => {
            return refuse(&format!("this token (id {}) was revoked", record.id))
        }
        Ok(Presented::Unknown) => return refuse("no such token"),
        Err(error) => return server_error(&error),
    };
    if record.scopes.iter().all(|scope| *scope == Scope::Agent) {
        return refuse("this token can only register build agents; sign in with one that can read");
    }
    let session = match state
        .store
        .open_session(record.id, state.config.ui.session_hours)
        .await
    {
        Ok(session) => session,
        Err(error) => return server_error(&error),
    };
    tracing::info!(token = record.id, name = %record.name, "signed in to the web UI");
    let max_age = state.config.ui.session_hours * 3600;
    let cookie = session_cookie_header(&state, &session.secret, max_age);
    let mut response = Redirect::to(&next).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

#[derive(Deserialize)]
struct SignOutForm {
    csrf: String,
}

/// `POST /sign-out` (a form with the page's `csrf`): ends the session and clears its cookie.
async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SignOutForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_origin(&state, &headers) {
        return cross_site();
    }
    let session = match viewer(&state, &headers).await {
        Ok(Some(session)) => session,
        Ok(None) => return Redirect::to("/sign-in").into_response(),
        Err(response) => return response,
    };
    let given = form.map(|Form(form)| form.csrf).unwrap_or_default();
    if !constant_time_eq(&given, &session.csrf) {
        return (
            StatusCode::FORBIDDEN,
            "sign-out needs the page's CSRF token",
        )
            .into_response();
    }
    if let Some(secret) = session_cookie(&headers) {
        if let Err(error) = state.store.close_session(secret).await {
            return server_error(&error);
        }
    }
    let mut response = Redirect::to("/sign-in").into_response();
    let cookie = session_cookie_header(&state, "", 0);
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

fn constant_time_eq(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

fn cross_site() -> Response {
    (
        StatusCode::FORBIDDEN,
        "this form was posted from another site",
    )
        .into_response()
}

/// Whether a form was posted from this server's own pages: its `Origin` (browsers send it
/// with every POST) must be this server's. A client that sends none is no browser page.
fn same_origin(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let public = state.config.public_url.trim_end_matches('/');
    let matches_host = host.is_some_and(|host| {
        origin == format!("http://{host}") || origin == format!("https://{host}")
    });
    origin == public || matches_host
}

/// The session cookie: HttpOnly (no script reads it), SameSite=Lax (no other site's form or
/// script sends it), Secure when the server is reached over HTTPS.
fn session_cookie_header(state: &AppState, secret: &str, max_age: u64) -> HeaderValue {
    let secure = match state.config.public_url.starts_with("https://") {
        true => "; Secure",
        false => "",
    };
    let cookie = format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    );
    HeaderValue::from_str(&cookie).expect("a cookie of hex digits is a valid header")
}

/// `next` when it is a path on this server, else `/`: sign-in never sends a browser elsewhere.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && path.len() <= 512
                && !path.chars().any(char::is_control) =>
        {
            path.to_string()
        }
        _ => "/".to_string(),
    }
}

/// An HTML page with the headers every page carries: scripts and styles from this server only,
/// never framed, no referrer leaves it.
fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The script and styles, from the binary.
async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.js" => (
            include_str!("assets/app.js"),
            "text/javascript; charset=utf-8",
        ),
        "log.js" => (
            include_str!("assets/log.js"),
            "text/javascript; charset=utf-8",
        ),
        "app.css" => (include_str!("assets/app.css"), "text/css; charset=utf-8"),
        "log.css" => (include_str!("assets/log.css"), "text/css; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_only_goes_on_to_a_path_of_this_server() {
        assert_eq!(
            local_path(Some("/projects/hello?x=1")),
            "/projects/hello?x=1"
        );
        for elsewhere in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(local_path(Some(elsewhere)), "/", "{elsewhere}");
        }
        assert_eq!(local_path(None), "/");
    }
}
