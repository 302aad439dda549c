//! Who is asking and whether they may: the bearer token of every `/api/v1` request (or the
//! web UI session standing for one, with its CSRF token), and the scope each route needs (one
//! table, [`needed_scope`], so no route is left without one).

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, RequestExt};
use serde_json::json;

use super::{ApiError, AppState};
use crate::store::audit::Actor;
use crate::store::tokens::{Presented, Scope, TokenRecord};

/// The token a request came with, once it passed authentication; handlers take it as an
/// `Extension<Caller>` to record who asked.
#[derive(Debug, Clone)]
pub struct Caller(pub TokenRecord);

impl Caller {
    pub fn actor(&self) -> Actor {
        Actor {
            id: self.0.id,
            name: self.0.name.clone(),
        }
    }
}

/// The cookie that holds a web UI session's secret.
pub const SESSION_COOKIE: &str = "slipway_session";
/// The header in which a signed-in page sends its session's CSRF token with every request
/// that changes something; a form posted from another site cannot set it.
pub const CSRF_HEADER: &str = "x-slipway-csrf";

/// Answers 401 without a valid, unrevoked token (as a bearer, or through a web UI session)
/// and 403 when the token lacks the route's scope; otherwise passes the request on with its
/// [`Caller`]. With `[ui] anonymous_read`, a request with neither may read what `read` may.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match authenticate(&state, request.method(), request.headers()).await {
        Ok(caller) => caller,
        Err(refusal) => return refusal,
    };
    // A path that matched no route has nothing to protect: the fallback answers 404.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|route| route.as_str().to_owned());
    let needed = match route {
        Some(route) => {
            let environment = match request.extract_parts::<RawPathParams>().await {
                Ok(params) => params
                    .iter()
                    .find(|(key, _)| *key == "environment")
                    .map(|(_, value)| value.to_owned()),
                Err(rejection) => return rejection.into_response(),
            };
            let needed = needed_scope(request.method(), &route, environment);
            if let Some(caller) = &caller {
                if !caller.scopes.iter().any(|scope| scope.allows(&needed)) {
                    return forbidden(caller, request.method(), &route, &needed);
                }
            }
            needed
        }
        None => Scope::Read,
    };
    match caller {
        Some(caller) => {
            request.extensions_mut().insert(Caller(caller));
        }
        None if needed == Scope::Read && state.config.ui.anonymous_read => {}
        None => return missing_credentials(),
    }
    next.run(request).await
}

/// The token a request presents: its bearer token, else its web UI session's (whose requests
/// that change something must also carry the session's CSRF token); `None` with neither, or
/// for a read with an ended session under `[ui] anonymous_read`.
pub(super) async fn authenticate(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Option<TokenRecord>, Response> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(token) = bearer {
        return match state.store.check_token(token).await {
            Ok(Presented::Valid(record)) => Ok(Some(record)),
            Ok(Presented::Revoked(record)) => {
                let revoked = record.revoked_at.map(|at| at.to_rfc3339());
                let message = format!(
                    "this token (id {}) was revoked at {}",
                    record.id,
                    revoked.unwrap_or_default()
                );
                Err(ApiError::new(StatusCode::UNAUTHORIZED, message).into_response())
            }
            Ok(Presented::Unknown) => {
                Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown token").into_response())
            }
            Err(e) => Err(ApiError::from(e).into_response()),
        };
    }
    let Some(secret) = session_cookie(headers) else {
        return Ok(None);
    };
    let session =
        match state.store.session(secret).await {
            Ok(Some(session)) => session,
            // Where anyone may read, a browser whose sign-in ended reads as anyone does.
            Ok(None) if is_safe(method) && state.config.ui.anonymous_read => return Ok(None),
            Ok(None) => return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this sign-in has ended (signed out, expired, or its token revoked); sign in again",
            )
            .into_response()),
            Err(e) => return Err(ApiError::from(e).into_response()),
        };
    if !is_safe(method) && !csrf_matches(headers, &session.csrf) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a signed-in request that changes something must carry its page's CSRF token in the {CSRF_HEADER} header"
            ),
        )
        .into_response());
    }
    Ok(Some(session.token))
}

pub(super) fn missing_credentials() -> Response {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing bearer token (Authorization: Bearer <token>) or web UI sign-in",
    )
    .into_response()
}

/// Whether `method` only reads.
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// The web UI session's secret from the request's cookies.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty() && value.len() <= 128)
}

/// Whether the request's CSRF header holds `expected`, compared in constant time.
fn csrf_matches(headers: &HeaderMap, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = headers.get(CSRF_HEADER) else {
        return false;
    };
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// The scope a request to `route` (the route's pattern, like `/projects/{project}/builds`)
/// needs. Reads need `read` (which every scope includes), except the token list and the
/// audit trail; any other method on a route not named here needs `admin`, so a new route is
/// closed until it is given its scope.
pub fn needed_scope(method: &Method, route: &str, environment: Option<String>) -> Scope {
    let route = route.strip_prefix("/api/v1").unwrap_or(route);
    match (method, route) {
        (&Method::GET, "/tokens" | "/audit") => Scope::Admin,
        (&Method::GET, _) => Scope::Read,
        (&Method::POST, "/agents") => Scope::Agent,
        (
            &Method::POST,
            "/projects/{project}/builds"
            | "/projects/{project}/builds/{number}/cancel"
            | "/projects/{project}/builds/{number}/rebuild",
        ) => Scope::Build,
        (
            &Method::POST,
            "/projects/{project}/environments/{environment}/promote"
            | "/projects/{project}/environments/{environment}/rollback",
        ) => Scope::Deploy(environment),
        _ => Scope::Admin,
    }
}

/// 403 naming the scope the token lacks and those it has.
fn forbidden(token: &TokenRecord, method: &Method, route: &str, needed: &Scope) -> Response {
    let also = match needed {
        Scope::Deploy(Some(_)) => " (or deploy:*, or admin)",
        Scope::Admin => "",
        _ => " (or admin)",
    };
    let has: Vec<String> = token.scopes.iter().map(Scope::to_string).collect();
    let message = format!(
        "this token (id {}) lacks the scope {needed}{also} that {method} {route} needs; it has: {}",
        token.id,
        has.join(", ")
    );
    let body = json!({ "error": message, "missing_scope": needed });
    (StatusCode::FORBIDDEN, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_needs_more_than_read() {
        let read = Scope::Read;
        for (method, route) in [
            (Method::POST, "/api/v1/projects/{project}/builds"),
            (
                Method::POST,
                "/api/v1/projects/{project}/builds/{number}/cancel",
            ),
            (
                Method::POST,
                "/api/v1/projects/{project}/builds/{number}/rebuild",
            ),
            (
                Method::POST,
                "/api/v1/projects/{project}/releases/{version}/rebake",
            ),
            (
                Method::POST,
                "/api/v1/projects/{project}/environments/{environment}/promote",
            ),
            (Method::POST, "/api/v1/tokens"),
            (Method::GET, "/api/v1/tokens"),
            (Method::DELETE, "/api/v1/tokens/{id}"),
            (Method::GET, "/api/v1/audit"),
            (Method::PUT, "/api/v1/some/route/added/later"),
        ] {
            let needed = needed_scope(&method, route, Some("prod".into()));
            assert!(!read.allows(&needed), "{method} {route} needs {needed}");
        }
        let build_logs = needed_scope(
            &Method::GET,
            "/api/v1/projects/{project}/builds/{number}/logs",
            None,
        );
        assert_eq!(build_logs, Scope::Read);
    }

    #[test]
    fn queuing_a_build_needs_the_build_scope() {
        let needed = needed_scope(&Method::POST, "/api/v1/projects/{project}/builds", None);
        assert_eq!(needed, Scope::Build);
        assert!(Scope::Build.allows(&needed));
        assert!(!Scope::Deploy(None).allows(&needed));
        let listing = needed_scope(&Method::GET, "/api/v1/projects/{project}/builds", None);
        assert_eq!(listing, Scope::Read);
    }

    #[test]
    fn promotion_needs_the_environment_in_the_path() {
        let needed = needed_scope(
            &Method::POST,
            "/projects/{project}/environments/{environment}/rollback",
            Some("prod".into()),
        );
        assert_eq!(needed, Scope::Deploy(Some("prod".into())));
        assert!(!Scope::Deploy(Some("dev".into())).allows(&needed));
    }
}
