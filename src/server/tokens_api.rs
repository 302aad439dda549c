//! Token and audit routes under `/api/v1` (admin only, see [`super::auth`]): make, list and
//! revoke tokens, read the audit trail; and [`audit`], which the other routes call to record
//! who asked for an action.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::json_body;
use super::auth::Caller;
use super::{ApiError, AppState};
use crate::config::Config;
use crate::store::audit::{AuditEvent, AuditQuery, NewAuditEvent};
use crate::store::tokens::{self, RevokeRefusal, Scope, TokenRecord, MAX_SCOPES};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tokens", post(create_token).get(list_tokens))
        .route("/tokens/{id}", delete(revoke_token))
        .route("/audit", get(list_audit))
}

/// Records that `caller` asked for `event`. The action has happened by then, so a store
/// failure does not undo it: the entry goes to the server log at ERROR instead, for an
/// operator to keep.
pub async fn audit(state: &AppState, caller: &Caller, event: NewAuditEvent<'_>) {
    let actor = caller.actor();
    if let Err(error) = state.store.record_audit(&actor, &event).await {
        tracing::error!(
            %error,
            token_id = actor.id,
            token_name = %actor.name,
            action = event.action,
            project = event.project,
            environment = event.environment,
            subject = %event.subject,
            deployment = event.deployment_id,
            detail = %event.detail,
            "recording an audit event failed"
        );
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    scopes: Vec<String>,
}

/// `POST /tokens {name, scopes}`: 201 with the token, shown this once.
async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: NewToken = json_body(body)?;
    tokens::check_name(&request.name).map_err(ApiError::bad_request)?;
    let scopes = checked_scopes(&state.config, &request.scopes)?;
    let token = tokens::generate_token();
    let record = state
        .store
        .insert_token(&request.name, &scopes, &token)
        .await?;
    audit(
        &state,
        &caller,
        NewAuditEvent {
            action: "token_create",
            project: None,
            environment: None,
            subject: subject(&record),
            deployment_id: None,
            detail: json!({ "scopes": record.scopes }),
        },
    )
    .await;
    let mut body = json!(record);
    body["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(body)))
}

/// The scopes asked for, parsed, without repeats; `deploy:<environment>` must name an
/// environment some project configures (a typo would make a token that can deploy nowhere).
fn checked_scopes(config: &Config, asked: &[String]) -> Result<Vec<Scope>, ApiError> {
    if asked.is_empty() || asked.len() > MAX_SCOPES {
        return Err(ApiError::bad_request(format!(
            "a token needs 1 to {MAX_SCOPES} scopes (read, build, deploy:<environment>, deploy, admin, agent); {} given",
            asked.len()
        )));
    }
    let environments: BTreeSet<&str> = config
        .projects
        .iter()
        .flat_map(|p| &p.environments)
        .map(|e| e.name.as_str())
        .collect();
    let mut scopes = BTreeSet::new();
    for text in asked {
        let scope = Scope::parse(text).map_err(ApiError::bad_request)?;
        if let Scope::Deploy(Some(environment)) = &scope {
            if !environments.contains(environment.as_str()) {
                let listed = match environments.is_empty() {
                    true => "none configured".to_owned(),
                    false => environments.iter().copied().collect::<Vec<_>>().join(", "),
                };
                return Err(ApiError::bad_request(format!(
                    "scope {:?} names no configured environment; environments: {listed}",
                    tokens::shorten(text)
                )));
            }
        }
        scopes.insert(scope);
    }
    Ok(scopes.into_iter().collect())
}

/// `GET /tokens`: every token (revoked ones too), without secrets.
async fn list_tokens(State(state): State<AppState>) -> Result<Json<Vec<TokenRecord>>, ApiError> {
    Ok(Json(state.store.list_tokens().await?))
}

/// `DELETE /tokens/{id}`: revokes the token; requests with it get 401 from then on.
async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> Result<Json<TokenRecord>, ApiError> {
    let record = match state.store.revoke_token(id).await? {
        Ok(record) => record,
        Err(RevokeRefusal::NoSuchToken) => {
            return Err(ApiError::not_found(format!(
                "no token has id {id}; `slipway token list` shows them"
            )))
        }
        Err(RevokeRefusal::LastAdmin) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("token {id} is the last admin token that is not revoked; make another admin token first"),
            ))
        }
    };
    audit(
        &state,
        &caller,
        NewAuditEvent {
            action: "token_revoke",
            project: None,
            environment: None,
            subject: subject(&record),
            deployment_id: None,
            detail: json!({}),
        },
    )
    .await;
    Ok(Json(record))
}

/// `token 7 (ci)`.
fn subject(token: &TokenRecord) -> String {
    format!("token {} ({})", token.id, tokens::shorten(&token.name))
}

#[derive(Deserialize)]
struct AuditParams {
    project: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// `GET /audit?project=&before=&limit=`: newest first, at most `limit` (default 100, at most
/// 1000); `before` (an event id) pages back.
async fn list_audit(
    State(state): State<AppState>,
    Query(params): Query<AuditParams>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    let query = AuditQuery {
        project: params.project.as_deref(),
        before: params.before,
        limit: params.limit.unwrap_or(100).clamp(1, 1000),
    };
    Ok(Json(state.store.audit_events(&query).await?))
}
