//! Bitbucket webhook deliveries: signature check and the pushes they describe.
//!
//! Bitbucket Cloud sends `repo:push`, Data Center sends `repo:refs_changed` (and
//! `diagnostics:ping` when an admin tests the hook); pull requests come as Cloud's
//! `pullrequest:created` / `pullrequest:updated` and Data Center's `pr:opened` /
//! `pr:from_ref_updated`. Both sign the raw body with
//! `X-Hub-Signature: sha256=<hex HMAC-SHA256>`. Parsing is pure: no IO, no store.
//!
//! A signed delivery is still checked field by field before anything acts on it: its commits
//! reach `git` and its branch names reach the store and the build's environment, so a commit
//! must be a full hex object id and a branch a name `git check-ref-format --branch` accepts.

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
    PullRequest(PullRequest),
    /// An event Slipway does not act on; the string is its key.
    Ignored(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Cloud `owner/slug`, Data Center `PROJECTKEY/slug`.
    pub repository: String,
    pub refs: Vec<RefChange>,
    /// Tags created or moved (deleted ones start nothing).
    pub tags: Vec<TagPush>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPush {
    /// The tag's name without `refs/tags/`.
    pub name: String,
    pub commit: String,
}

/// A pull request opened, or whose source branch moved: its source commit is to be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The repository the pull request targets (the project's).
    pub repository: String,
    /// The repository its commits come from: another one for a pull request from a fork.
    pub source_repository: String,
    pub number: i64,
    /// Control characters removed, at most [`MAX_TITLE_CHARS`] characters.
    pub title: String,
    pub source_branch: String,
    pub target_branch: String,
    /// The source's head: a full id from Data Center; Cloud sends an abbreviated one (at
    /// least 7 hex digits), to resolve against the source branch.
    pub commit: String,
}

impl PullRequest {
    pub fn from_fork(&self) -> bool {
        !self
            .source_repository
            .eq_ignore_ascii_case(&self.repository)
    }

    /// Whether [`PullRequest::commit`] is a full object id.
    pub fn commit_is_full(&self) -> bool {
        matches!(self.commit.len(), 40 | 64)
    }
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
    /// A field Slipway would act on holds a value it refuses; `field` is its JSON path.
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
}

/// Longest branch name accepted, in bytes (the limit most file systems put on a path part).
pub const MAX_BRANCH_BYTES: usize = 255;
/// Longest repository name (`owner/slug`) accepted, in bytes.
pub const MAX_REPOSITORY_BYTES: usize = 255;
/// The most of a pull request's title kept.
pub const MAX_TITLE_CHARS: usize = 255;

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
        /// Data Center's pull request events name the repository only in their refs.
        #[serde(rename = "pullRequest")]
        pull_request: Option<PullRequestEnvelope>,
    }
    #[derive(Deserialize)]
    struct PullRequestEnvelope {
        #[serde(rename = "toRef")]
        to_ref: Option<RefEnvelope>,
    }
    #[derive(Deserialize)]
    struct RefEnvelope {
        repository: Option<Repository>,
    }
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| WebhookError::Json(e.to_string()))?;
    let repository = envelope.repository.or_else(|| {
        envelope
            .pull_request
            .and_then(|pr| pr.to_ref)
            .and_then(|to| to.repository)
    });
    let Some(name) = repository.and_then(|r| r.full_name()) else {
        return Ok(None);
    };
    check_repository(&name).map_err(|problem| invalid("repository", problem))?;
    Ok(Some(name))
}

/// Parses a delivery given its event key (`X-Event-Key`).
pub fn parse(event_key: &str, body: &[u8]) -> Result<Delivery, WebhookError> {
    let json = |e: serde_json::Error| WebhookError::Json(e.to_string());
    match event_key {
        "diagnostics:ping" => Ok(Delivery::Ping),
        "repo:push" => {
            let push: CloudPush = serde_json::from_slice(body).map_err(json)?;
            Ok(Delivery::Push(push.into_push()?))
        }
        "repo:refs_changed" => {
            let push: DataCenterPush = serde_json::from_slice(body).map_err(json)?;
            Ok(Delivery::Push(push.into_push()?))
        }
        "pullrequest:created" | "pullrequest:updated" => {
            let event: CloudPullRequestEvent = serde_json::from_slice(body).map_err(json)?;
            Ok(Delivery::PullRequest(event.into_pull_request()?))
        }
        "pr:opened" | "pr:from_ref_updated" => {
            let event: DataCenterPullRequestEvent = serde_json::from_slice(body).map_err(json)?;
            Ok(Delivery::PullRequest(event.into_pull_request()?))
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
    fn into_push(self) -> Result<Push, WebhookError> {
        let mut refs = Vec::new();
        let mut tags = Vec::new();
        for (index, change) in self.push.changes.into_iter().enumerate() {
            let at = |field: &str| format!("push.changes[{index}].{field}");
            match (change.new, change.old) {
                (Some(new), _) if new.kind == "tag" => {
                    check_ref(&format!("refs/tags/{}", new.name))
                        .map_err(|p| invalid(&at("new.name"), p))?;
                    let hash = new.target.map(|t| t.hash).unwrap_or_default();
                    let commit =
                        commit_id(&hash).map_err(|p| invalid(&at("new.target.hash"), p))?;
                    tags.push(TagPush {
                        name: new.name,
                        commit,
                    });
                }
                (Some(new), _) if new.kind == "branch" => {
                    check_branch(&new.name).map_err(|p| invalid(&at("new.name"), p))?;
                    let commit = match new.target {
                        Some(target) => Some(
                            commit_id(&target.hash)
                                .map_err(|p| invalid(&at("new.target.hash"), p))?,
                        ),
                        None => None,
                    };
                    refs.push(RefChange {
                        branch: new.name,
                        commit,
                    });
                }
                (None, Some(old)) if old.kind == "branch" => {
                    check_branch(&old.name).map_err(|p| invalid(&at("old.name"), p))?;
                    refs.push(RefChange {
                        branch: old.name,
                        commit: None,
                    });
                }
                _ => {}
            }
        }
        Ok(Push {
            repository: self.repository.full_name().unwrap_or_default(),
            refs,
            tags,
        })
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
    fn into_push(self) -> Result<Push, WebhookError> {
        let mut refs = Vec::new();
        let mut tags = Vec::new();
        for (index, change) in self.changes.into_iter().enumerate() {
            let at = |field: &str| format!("changes[{index}].{field}");
            // Other refs start no build, but their names are still checked: a delivery
            // carrying a control character anywhere Slipway reads is refused whole.
            check_ref(&change.ref_id).map_err(|p| invalid(&at("refId"), p))?;
            if let Some(tag) = change.ref_id.strip_prefix("refs/tags/") {
                if change.kind != "DELETE" {
                    let commit =
                        commit_id(&change.to_hash).map_err(|p| invalid(&at("toHash"), p))?;
                    tags.push(TagPush {
                        name: tag.to_string(),
                        commit,
                    });
                }
                continue;
            }
            let Some(branch) = change.ref_id.strip_prefix("refs/heads/") else {
                continue;
            };
            check_branch(branch).map_err(|p| invalid(&at("refId"), p))?;
            let commit = if change.kind == "DELETE" {
                None
            } else {
                Some(commit_id(&change.to_hash).map_err(|p| invalid(&at("toHash"), p))?)
            };
            refs.push(RefChange {
                branch: branch.to_string(),
                commit,
            });
        }
        Ok(Push {
            repository: self.repository.full_name().unwrap_or_default(),
            refs,
            tags,
        })
    }
}

#[derive(Deserialize)]
struct CloudPullRequestEvent {
    pullrequest: CloudPullRequest,
    repository: Repository,
}

#[derive(Deserialize)]
struct CloudPullRequest {
    id: i64,
    title: String,
    source: CloudEndpoint,
    destination: CloudEndpoint,
}

#[derive(Deserialize)]
struct CloudEndpoint {
    branch: CloudBranch,
    commit: Option<CloudTarget>,
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct CloudBranch {
    name: String,
}

impl CloudPullRequestEvent {
    fn into_pull_request(self) -> Result<PullRequest, WebhookError> {
        let repository = self.repository.full_name().unwrap_or_default();
        let pr = self.pullrequest;
        let at = |field: &str| format!("pullrequest.{field}");
        check_number(pr.id).map_err(|p| invalid(&at("id"), p))?;
        check_branch(&pr.source.branch.name).map_err(|p| invalid(&at("source.branch.name"), p))?;
        check_branch(&pr.destination.branch.name)
            .map_err(|p| invalid(&at("destination.branch.name"), p))?;
        let hash = pr.source.commit.map(|c| c.hash).unwrap_or_default();
        let commit =
            abbreviated_commit_id(&hash).map_err(|p| invalid(&at("source.commit.hash"), p))?;
        let source_repository = match pr.source.repository.and_then(|r| r.full_name()) {
            Some(name) => {
                check_repository(&name)
                    .map_err(|p| invalid(&at("source.repository.full_name"), p))?;
                name
            }
            None => repository.clone(),
        };
        Ok(PullRequest {
            repository,
            source_repository,
            number: pr.id,
            title: clean_title(&pr.title),
            source_branch: pr.source.branch.name,
            target_branch: pr.destination.branch.name,
            commit,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataCenterPullRequestEvent {
    pull_request: DataCenterPullRequest,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataCenterPullRequest {
    id: i64,
    title: String,
    from_ref: DataCenterRef,
    to_ref: DataCenterRef,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataCenterRef {
    id: String,
    latest_commit: String,
    repository: Repository,
}

impl DataCenterPullRequestEvent {
    fn into_pull_request(self) -> Result<PullRequest, WebhookError> {
        let pr = self.pull_request;
        let at = |field: &str| format!("pullRequest.{field}");
        check_number(pr.id).map_err(|p| invalid(&at("id"), p))?;
        let branch_of = |reference: &DataCenterRef, field: &str| {
            check_ref(&reference.id).map_err(|p| invalid(&at(field), p))?;
            let branch = reference.id.strip_prefix("refs/heads/").ok_or_else(|| {
                invalid(
                    &at(field),
                    format!("{} is not a branch", quoted(&reference.id)),
                )
            })?;
            check_branch(branch).map_err(|p| invalid(&at(field), p))?;
            Ok::<_, WebhookError>(branch.to_string())
        };
        let source_branch = branch_of(&pr.from_ref, "fromRef.id")?;
        let target_branch = branch_of(&pr.to_ref, "toRef.id")?;
        let commit = commit_id(&pr.from_ref.latest_commit)
            .map_err(|p| invalid(&at("fromRef.latestCommit"), p))?;
        let repository = pr.to_ref.repository.full_name().unwrap_or_default();
        let source_repository = pr
            .from_ref
            .repository
            .full_name()
            .unwrap_or_else(|| repository.clone());
        check_repository(&source_repository).map_err(|p| invalid(&at("fromRef.repository"), p))?;
        Ok(PullRequest {
            repository,
            source_repository,
            number: pr.id,
            title: clean_title(&pr.title),
            source_branch,
            target_branch,
            commit,
        })
    }
}

/// A pull request's number: positive.
fn check_number(number: i64) -> Result<(), String> {
    if number > 0 {
        Ok(())
    } else {
        Err(format!(
            "expected a positive pull request number, got {number}"
        ))
    }
}

/// A title as the build's environment gets it: one line, bounded.
fn clean_title(title: &str) -> String {
    title
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_TITLE_CHARS)
        .collect::<String>()
        .trim()
        .to_string()
}

/// A commit id as Cloud's pull request events give it: at least 7 hex digits (full ids too),
/// returned in lowercase.
fn abbreviated_commit_id(text: &str) -> Result<String, String> {
    check_printable(text)?;
    if !(7..=64).contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{} is not a commit id: expected 7 to 64 hex digits",
            quoted(text)
        ));
    }
    Ok(text.to_ascii_lowercase())
}

fn invalid(field: &str, problem: String) -> WebhookError {
    WebhookError::Invalid {
        field: field.to_string(),
        problem,
    }
}

/// A full object id, 40 hex digits (SHA-1) or 64 (SHA-256), returned in lowercase. Anything
/// shorter or symbolic (`-f`, `origin/evil`, an abbreviated id) would let git pick the commit.
fn commit_id(text: &str) -> Result<String, String> {
    check_printable(text)?;
    let full_length = matches!(text.len(), 40 | 64);
    if !full_length || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{} is not a full commit id: expected 40 or 64 hex digits",
            quoted(text)
        ));
    }
    Ok(text.to_ascii_lowercase())
}

/// A branch name as `git check-ref-format --branch` accepts it, at most
/// [`MAX_BRANCH_BYTES`] long.
pub(crate) fn check_branch(name: &str) -> Result<(), String> {
    if name.len() > MAX_BRANCH_BYTES {
        return Err(format!(
            "the branch name is {} bytes long; the limit is {MAX_BRANCH_BYTES}",
            name.len()
        ));
    }
    check_printable(name)?;
    let refused = |why: &str| {
        Err(format!(
            "{} is not a valid branch name: {why}",
            quoted(name)
        ))
    };
    if name.is_empty() {
        return refused("it is empty");
    }
    if name.starts_with('-') {
        return refused("it starts with `-`");
    }
    if name == "HEAD" {
        return refused("`HEAD` names the checked-out commit, not a branch");
    }
    // `refs/heads/` adds no way to break a rule, so the name is checked on its own.
    match ref_rule_broken(name) {
        Some(why) => refused(why),
        None => Ok(()),
    }
}

/// A full ref name (`refs/...`) by the rules of `git check-ref-format`.
fn check_ref(name: &str) -> Result<(), String> {
    if name.len() > MAX_BRANCH_BYTES + "refs/heads/".len() {
        return Err(format!(
            "the ref name is {} bytes long; the limit is {}",
            name.len(),
            MAX_BRANCH_BYTES + "refs/heads/".len()
        ));
    }
    check_printable(name)?;
    if !name.starts_with("refs/") {
        return Err(format!("{} does not start with `refs/`", quoted(name)));
    }
    match ref_rule_broken(name) {
        Some(why) => Err(format!("{} is not a valid ref name: {why}", quoted(name))),
        None => Ok(()),
    }
}

/// Which of git's ref name rules `name` breaks, if any (control characters are checked
/// before, by [`check_printable`]).
fn ref_rule_broken(name: &str) -> Option<&'static str> {
    const FORBIDDEN: &[(char, &str)] = &[
        (' ', "it contains a space"),
        ('~', "it contains `~`"),
        ('^', "it contains `^`"),
        (':', "it contains `:`"),
        ('?', "it contains `?`"),
        ('*', "it contains `*`"),
        ('[', "it contains `[`"),
        ('\\', "it contains `\\`"),
    ];
    if let Some((_, why)) = FORBIDDEN.iter().find(|(c, _)| name.contains(*c)) {
        return Some(*why);
    }
    if name.contains("..") {
        return Some("it contains `..`");
    }
    if name.contains("@{") {
        return Some("it contains `@{`");
    }
    if name == "@" {
        return Some("it is `@`");
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return Some("it has an empty path component (a leading, trailing or double `/`)");
    }
    if name.ends_with('.') {
        return Some("it ends with `.`");
    }
    if name.split('/').any(|part| part.starts_with('.')) {
        return Some("a path component starts with `.`");
    }
    if name.split('/').any(|part| part.ends_with(".lock")) {
        return Some("a path component ends with `.lock`");
    }
    None
}

/// `owner/slug` or `PROJECT/slug`: bounded, without control characters.
fn check_repository(name: &str) -> Result<(), String> {
    if name.len() > MAX_REPOSITORY_BYTES {
        return Err(format!(
            "the repository name is {} bytes long; the limit is {MAX_REPOSITORY_BYTES}",
            name.len()
        ));
    }
    check_printable(name)
}

/// Refuses NUL and every other control character, naming the first one and where it is.
fn check_printable(text: &str) -> Result<(), String> {
    match text.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, c)) => Err(format!(
            "contains the control character U+{:04X} at byte {at}",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// The value as it can be shown in an answer: escaped, and cut if long.
fn quoted(text: &str) -> String {
    const SHOWN: usize = 80;
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
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
              {"ref":{"id":"refs/heads/main","displayId":"main","type":"BRANCH"},"refId":"refs/heads/main","fromHash":"aaa","toHash":"BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB","type":"UPDATE"},
              {"ref":{"id":"refs/heads/old","displayId":"old","type":"BRANCH"},"refId":"refs/heads/old","fromHash":"ccc","toHash":"0000000000000000000000000000000000000000","type":"DELETE"},
              {"ref":{"id":"refs/tags/v1","displayId":"v1","type":"TAG"},"refId":"refs/tags/v1","fromHash":"0","toHash":"dddddddddddddddddddddddddddddddddddddddd","type":"ADD"},
              {"ref":{"id":"refs/tags/v0","displayId":"v0","type":"TAG"},"refId":"refs/tags/v0","fromHash":"eee","toHash":"0000000000000000000000000000000000000000","type":"DELETE"}
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
                    commit: Some("b".repeat(40))
                },
                RefChange {
                    branch: "old".into(),
                    commit: None
                },
            ]
        );
        assert_eq!(
            push.tags,
            vec![TagPush {
                name: "v1".into(),
                commit: "d".repeat(40)
            }],
            "a deleted tag starts nothing"
        );
    }

    #[test]
    fn cloud_tag_pushes_are_listed_with_their_commit() {
        let body = br#"{"repository":{"full_name":"acme/hello"},"push":{"changes":[
            {"old":null,"new":{"type":"tag","name":"v1.2.0","target":{"hash":"ABCDEF0123456789ABCDEF0123456789ABCDEF01"}}}]}}"#;
        let Delivery::Push(push) = parse("repo:push", body).unwrap() else {
            panic!("expected a push");
        };
        assert!(push.refs.is_empty());
        assert_eq!(
            push.tags,
            vec![TagPush {
                name: "v1.2.0".into(),
                commit: "abcdef0123456789abcdef0123456789abcdef01".into()
            }]
        );
        let bad = br#"{"repository":{"full_name":"acme/hello"},"push":{"changes":[
            {"old":null,"new":{"type":"tag","name":"v1..2","target":{"hash":"ABCDEF0123456789ABCDEF0123456789ABCDEF01"}}}]}}"#;
        assert!(matches!(
            parse("repo:push", bad),
            Err(WebhookError::Invalid { field, .. }) if field == "push.changes[0].new.name"
        ));
    }

    #[test]
    fn cloud_pull_requests_give_their_source_commit_branches_title_and_fork() {
        let body = br#"{"repository":{"full_name":"acme/hello"},"pullrequest":{"id":42,
            "title":"Add\nthe thing","state":"OPEN",
            "source":{"branch":{"name":"feature/x"},"commit":{"hash":"1A2B3C4D5E6F"},"repository":{"full_name":"bob/hello"}},
            "destination":{"branch":{"name":"main"},"commit":{"hash":"aaaaaaaaaaaa"},"repository":{"full_name":"acme/hello"}}}}"#;
        assert_eq!(repository_of(body).unwrap().as_deref(), Some("acme/hello"));
        let Delivery::PullRequest(pr) = parse("pullrequest:updated", body).unwrap() else {
            panic!("expected a pull request");
        };
        assert_eq!(
            pr,
            PullRequest {
                repository: "acme/hello".into(),
                source_repository: "bob/hello".into(),
                number: 42,
                title: "Add the thing".into(),
                source_branch: "feature/x".into(),
                target_branch: "main".into(),
                commit: "1a2b3c4d5e6f".into(),
            }
        );
        assert!(pr.from_fork() && !pr.commit_is_full());
        let bad = String::from_utf8_lossy(body).replace("1A2B3C4D5E6F", "-f");
        assert!(matches!(
            parse("pullrequest:created", bad.as_bytes()),
            Err(WebhookError::Invalid { field, .. }) if field == "pullrequest.source.commit.hash"
        ));
    }

    #[test]
    fn data_center_pull_requests_name_their_repository_in_their_refs() {
        let body = br#"{"eventKey":"pr:from_ref_updated","pullRequest":{"id":7,"title":"Fix it",
            "fromRef":{"id":"refs/heads/fix","displayId":"fix","latestCommit":"CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC",
                       "repository":{"slug":"hello","project":{"key":"ACME"}}},
            "toRef":{"id":"refs/heads/main","displayId":"main","latestCommit":"dddddddddddddddddddddddddddddddddddddddd",
                     "repository":{"slug":"hello","project":{"key":"ACME"}}}}}"#;
        assert_eq!(repository_of(body).unwrap().as_deref(), Some("ACME/hello"));
        let Delivery::PullRequest(pr) = parse("pr:from_ref_updated", body).unwrap() else {
            panic!("expected a pull request");
        };
        assert_eq!(pr.repository, "ACME/hello");
        assert_eq!((pr.number, pr.title.as_str()), (7, "Fix it"));
        assert_eq!(
            (pr.source_branch.as_str(), pr.target_branch.as_str()),
            ("fix", "main")
        );
        assert_eq!(pr.commit, "c".repeat(40));
        assert!(!pr.from_fork() && pr.commit_is_full());
        let tag = String::from_utf8_lossy(body).replace("refs/heads/fix", "refs/tags/fix");
        assert!(matches!(
            parse("pr:opened", tag.as_bytes()),
            Err(WebhookError::Invalid { field, .. }) if field == "pullRequest.fromRef.id"
        ));
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
            parse("pullrequest:fulfilled", b"{}").unwrap(),
            Delivery::Ignored("pullrequest:fulfilled".into())
        );
        assert_eq!(
            parse("diagnostics:ping", b"{\"test\":true}").unwrap(),
            Delivery::Ping
        );
    }

    fn cloud_push(branch: &str, hash: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "repository": {"full_name": "acme/hello"},
            "push": {"changes": [{"old": null, "new": {"type": "branch", "name": branch, "target": {"hash": hash}}}]}
        }))
        .unwrap()
    }

    fn data_center_push(ref_id: &str, hash: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "repository": {"slug": "hello", "project": {"key": "ACME"}},
            "changes": [{"refId": ref_id, "fromHash": "0", "toHash": hash, "type": "UPDATE"}]
        }))
        .unwrap()
    }

    fn refusal(event: &str, body: &[u8]) -> (String, String) {
        match parse(event, body) {
            Err(WebhookError::Invalid { field, problem }) => (field, problem),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const GOOD: &str = "d7f300a32270053bdfd97a6d64113f58202c33e7";

    #[test]
    fn commits_that_are_not_full_hex_ids_are_refused_naming_the_field() {
        for commit in [
            "-f",
            "origin/evil",
            "d7f300a",
            "HEAD",
            "",
            &format!("{GOOD}\0"),
            &format!("{}g", &GOOD[..39]),
        ] {
            let (field, problem) = refusal("repo:push", &cloud_push("main", commit));
            assert_eq!(field, "push.changes[0].new.target.hash", "{commit:?}");
            assert!(
                problem.contains("not a full commit id") || problem.contains("control character"),
                "{problem}"
            );
            let (field, _) = refusal(
                "repo:refs_changed",
                &data_center_push("refs/heads/main", commit),
            );
            assert_eq!(field, "changes[0].toHash", "{commit:?}");
        }
        let (_, problem) = refusal("repo:push", &cloud_push("main", "a\0b"));
        assert_eq!(problem, "contains the control character U+0000 at byte 1");
    }

    #[test]
    fn full_sha1_and_sha256_ids_are_accepted_in_lowercase() {
        let sha256 = "AB".repeat(32);
        for (given, stored) in [
            (GOOD.to_uppercase(), GOOD.to_string()),
            (sha256, "ab".repeat(32)),
        ] {
            let Delivery::Push(push) = parse("repo:push", &cloud_push("main", &given)).unwrap()
            else {
                panic!("expected a push");
            };
            assert_eq!(push.refs[0].commit.as_deref(), Some(stored.as_str()));
        }
    }

    #[test]
    fn bad_branch_names_are_refused_in_both_payloads() {
        for branch in [
            "-f",
            "a..b",
            "feature/x.lock",
            "x@{1}",
            "a\0b",
            "tab\there",
            "",
            "HEAD",
            &"b".repeat(256),
        ] {
            let (field, _) = refusal("repo:push", &cloud_push(branch, GOOD));
            assert_eq!(field, "push.changes[0].new.name", "{branch:?}");
            let (field, _) = refusal(
                "repo:refs_changed",
                &data_center_push(&format!("refs/heads/{branch}"), GOOD),
            );
            assert_eq!(field, "changes[0].refId", "{branch:?}");
        }
        // A deleted branch's name is echoed in the answer, so it is checked too.
        let body = br#"{"repository":{"full_name":"acme/hello"},"push":{"changes":[
            {"old":{"type":"branch","name":"gone\u0007","target":{"hash":"abc"}},"new":null}]}}"#;
        assert_eq!(refusal("repo:push", body).0, "push.changes[0].old.name");
        // So is a tag's ref, although a tag starts no build.
        let tag = data_center_push("refs/tags/v1\u{1b}[2J", GOOD);
        assert_eq!(refusal("repo:refs_changed", &tag).0, "changes[0].refId");
    }

    #[test]
    fn a_repository_name_with_a_control_character_is_refused() {
        let body = br#"{"repository":{"full_name":"acme/hello\u0000"}}"#;
        assert!(matches!(
            repository_of(body),
            Err(WebhookError::Invalid { field, .. }) if field == "repository"
        ));
    }

    /// The branch rules agree with git's own: every name git refuses is refused, and every
    /// name accepted here git accepts too.
    #[test]
    fn branch_rules_agree_with_git_check_ref_format() {
        let names = [
            "main",
            "feature/webhook",
            "release/2.0",
            "a-b_c",
            "ünïcode",
            "x.y",
            "v1.2.3",
            "-f",
            "--end-of-options",
            "a..b",
            "a/.hidden",
            ".hidden",
            "x.lock",
            "a/b.lock/c",
            "a.lock.b",
            "x@{1}",
            "@",
            "a@b",
            "a b",
            "a~1",
            "a^2",
            "a:b",
            "a?",
            "a*",
            "a[1]",
            "a\\b",
            "/a",
            "a/",
            "a//b",
            "a.",
            "HEAD",
            "origin/evil",
            "a\u{7f}b",
        ];
        for name in names {
            let git = std::process::Command::new("git")
                .args(["check-ref-format", "--branch", name])
                .current_dir(std::env::temp_dir())
                .output()
                .expect("git runs");
            let ours = check_branch(name);
            if ours.is_ok() {
                assert!(
                    git.status.success(),
                    "{name:?} is accepted here but not by git"
                );
            }
            if !git.status.success() {
                assert!(
                    ours.is_err(),
                    "{name:?} is refused by git but accepted here"
                );
            }
        }
    }
}
