//! Bitbucket webhook deliveries: signature check and the pushes they describe.
//!
//! Bitbucket Cloud sends `repo:push`, Data Center sends `repo:refs_changed` (and
//! `diagnostics:ping` when an admin tests the hook). Both sign the raw body with
//! `X-Hub-Signature: sha256=<hex HMAC-SHA256>`. Parsing is pure: no IO, no store.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// What a delivery asks for, once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Data Center's "test connection".
    Ping,
    Push(Push),
    /// An event Slipway does not act on; the string is its key.
    Ignored(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Cloud `owner/slug`, Data Center `PROJECTKEY/slug`.
    pub repository: String,
    pub refs: Vec<RefChange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefChange {
    /// Branch name without `refs/heads/`; tags are not listed.
    pub branch: String,
    /// The new head; `None` when the branch was deleted.
    pub commit: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("missing X-Hub-Signature header")]
    MissingSignature,
    #[error("X-Hub-Signature is not of the form sha256=<64 hex digits>")]
    MalformedSignature,
    #[error("X-Hub-Signature does not match the body and the project's secret")]
    WrongSignature,
    #[error("malformed JSON body: {0}")]
    Json(String),
}

/// Checks `header` (the value of `X-Hub-Signature`) against the raw body in constant time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), WebhookError> {
    let header = header.ok_or(WebhookError::MissingSignature)?;
    let hex_digest = header
        .strip_prefix("sha256=")
        .ok_or(WebhookError::MalformedSignature)?;
    let given = hex::decode(hex_digest).map_err(|_| WebhookError::MalformedSignature)?;
    if given.len() != 32 {
        return Err(WebhookError::MalformedSignature);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    if bool::from(expected.as_slice().ct_eq(&given)) {
        Ok(())
    } else {
        Err(WebhookError::WrongSignature)
    }
}

/// The repository a delivery is about, read before the signature can be checked (the
/// repository picks the project, and so the secret). `None` for events without one.
pub fn repository_of(body: &[u8]) -> Result<Option<String>, WebhookError> {
    #[derive(Deserialize)]
    struct Envelope {
        repository: Option<Repository>,
    }
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| WebhookError::Json(e.to_string()))?;
    Ok(envelope.repository.and_then(|r| r.full_name()))
}

/// Parses a delivery given its event key (`X-Event-Key`).
pub fn parse(event_key: &str, body: &[u8]) -> Result<Delivery, WebhookError> {
    let json = |e: serde_json::Error| WebhookError::Json(e.to_string());
    match event_key {
        "diagnostics:ping" => Ok(Delivery::Ping),
        "repo:push" => {
            let push: CloudPush = serde_json::from_slice(body).map_err(json)?;
            Ok(Delivery::Push(push.into_push()))
        }
        "repo:refs_changed" => {
            let push: DataCenterPush = serde_json::from_slice(body).map_err(json)?;
            Ok(Delivery::Push(push.into_push()))
        }
        other => {
            // Still reject bodies that are not JSON at all.
            serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(json)?;
            Ok(Delivery::Ignored(other.to_string()))
        }
    }
}

#[derive(Deserialize)]
struct Repository {
    /// Cloud.
    full_name: Option<String>,
    /// Data Center.
    slug: Option<String>,
    project: Option<DataCenterProject>,
}

#[derive(Deserialize)]
struct DataCenterProject {
    key: String,
}

impl Repository {
    fn full_name(self) -> Option<String> {
        match (self.full_name, self.slug, self.project) {
            (Some(name), _, _) => Some(name),
            (None, Some(slug), Some(project)) => Some(format!("{}/{slug}", project.key)),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct CloudPush {
    push: CloudChanges,
    repository: Repository,
}

#[derive(Deserialize)]
struct CloudChanges {
    changes: Vec<CloudChange>,
}

#[derive(Deserialize)]
struct CloudChange {
    old: Option<CloudRef>,
    new: Option<CloudRef>,
}

#[derive(Deserialize)]
struct CloudRef {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    target: Option<CloudTarget>,
}

#[derive(Deserialize)]
struct CloudTarget {
    hash: String,
}

impl CloudPush {
    fn into_push(self) -> Push {
        let refs = self
            .push
            .changes
            .into_iter()
            .filter_map(|change| match (change.new, change.old) {
                (Some(new), _) if new.kind == "branch" => Some(RefChange {
                    branch: new.name,
                    commit: new.target.map(|t| t.hash),
                }),
                (None, Some(old)) if old.kind == "branch" => Some(RefChange {
                    branch: old.name,
                    commit: None,
                }),
                _ => None,
            })
            .collect();
        Push {
            repository: self.repository.full_name().unwrap_or_default(),
            refs,
        }
    }
}

#[derive(Deserialize)]
struct DataCenterPush {
    repository: Repository,
    changes: Vec<DataCenterChange>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataCenterChange {
    ref_id: String,
    to_hash: String,
    #[serde(rename = "type")]
    kind: String,
}

impl DataCenterPush {
    fn into_push(self) -> Push {
        let refs = self
            .changes
            .into_iter()
            .filter_map(|change| {
                let branch = change.ref_id.strip_prefix("refs/heads/")?.to_string();
                let commit = (change.kind != "DELETE").then_some(change.to_hash);
                Some(RefChange { branch, commit })
            })
            .collect();
        Push {
            repository: self.repository.full_name().unwrap_or_default(),
            refs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &[u8] = include_bytes!("../../shared/fixtures/bitbucket/cloud-signed-push.json");
    const SECRET: &[u8] = b"Gkvl$k$wyNpQAF42";
    const SIGNATURE: &str =
        "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035";

    #[test]
    fn the_recorded_cloud_delivery_verifies_and_parses() {
        verify_signature(SECRET, FIXTURE, Some(SIGNATURE)).unwrap();
        assert_eq!(
            repository_of(FIXTURE).unwrap().as_deref(),
            Some("nfalco79/test-repos")
        );
        let Delivery::Push(push) = parse("repo:push", FIXTURE).unwrap() else {
            panic!("expected a push");
        };
        assert_eq!(push.repository, "nfalco79/test-repos");
        assert_eq!(
            push.refs,
            vec![RefChange {
                branch: "feature/webhook".into(),
                commit: Some("d7f300a32270053bdfd97a6d64113f58202c33e7".into()),
            }]
        );
    }

    #[test]
    fn any_changed_hex_digit_is_rejected() {
        for i in "sha256=".len()..SIGNATURE.len() {
            let mut changed = SIGNATURE.to_string().into_bytes();
            changed[i] = if changed[i] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(changed).unwrap();
            assert_eq!(
                verify_signature(SECRET, FIXTURE, Some(&changed)),
                Err(WebhookError::WrongSignature),
                "{changed}"
            );
        }
    }

    #[test]
    fn missing_or_malformed_signatures_are_rejected() {
        assert_eq!(
            verify_signature(SECRET, FIXTURE, None),
            Err(WebhookError::MissingSignature)
        );
        assert_eq!(
            verify_signature(SECRET, FIXTURE, Some("sha1=abcd")),
            Err(WebhookError::MalformedSignature)
        );
        assert_eq!(
            verify_signature(SECRET, FIXTURE, Some("sha256=zz")),
            Err(WebhookError::MalformedSignature)
        );
        assert_eq!(
            verify_signature(b"another secret", FIXTURE, Some(SIGNATURE)),
            Err(WebhookError::WrongSignature)
        );
    }

    #[test]
    fn data_center_refs_changed_lists_branches_and_deletions() {
        let body = br#"{"eventKey":"repo:refs_changed","repository":{"slug":"hello","project":{"key":"ACME"}},
            "changes":[
              {"ref":{"id":"refs/heads/main","displayId":"main","type":"BRANCH"},"refId":"refs/heads/main","fromHash":"aaa","toHash":"bbb","type":"UPDATE"},
              {"ref":{"id":"refs/heads/old","displayId":"old","type":"BRANCH"},"refId":"refs/heads/old","fromHash":"ccc","toHash":"0000000000000000000000000000000000000000","type":"DELETE"},
              {"ref":{"id":"refs/tags/v1","displayId":"v1","type":"TAG"},"refId":"refs/tags/v1","fromHash":"0","toHash":"ddd","type":"ADD"}
            ]}"#;
        assert_eq!(repository_of(body).unwrap().as_deref(), Some("ACME/hello"));
        let Delivery::Push(push) = parse("repo:refs_changed", body).unwrap() else {
            panic!("expected a push");
        };
        assert_eq!(
            push.refs,
            vec![
                RefChange {
                    branch: "main".into(),
                    commit: Some("bbb".into())
                },
                RefChange {
                    branch: "old".into(),
                    commit: None
                },
            ]
        );
    }

    #[test]
    fn cloud_branch_deletion_has_no_commit() {
        let body = br#"{"repository":{"full_name":"acme/hello"},"push":{"changes":[
            {"old":{"type":"branch","name":"gone","target":{"hash":"abc"}},"new":null}]}}"#;
        let Delivery::Push(push) = parse("repo:push", body).unwrap() else {
            panic!("expected a push");
        };
        assert_eq!(
            push.refs,
            vec![RefChange {
                branch: "gone".into(),
                commit: None
            }]
        );
    }

    #[test]
    fn malformed_json_is_an_error_and_unknown_events_are_ignored() {
        assert!(matches!(
            parse("repo:push", b"{not json"),
            Err(WebhookError::Json(_))
        ));
        assert_eq!(
            parse("pullrequest:created", b"{}").unwrap(),
            Delivery::Ignored("pullrequest:created".into())
        );
        assert_eq!(
            parse("diagnostics:ping", b"{\"test\":true}").unwrap(),
            Delivery::Ping
        );
    }
}
