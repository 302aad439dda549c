//! Bitbucket's REST API as Slipway uses it: a build's status on its commit, in the shape each
//! flavour documents.
//!
//! - Cloud: `POST {api}/2.0/repositories/{workspace}/{repo_slug}/commit/{commit}/statuses/build`
//!   with `key`, `state` (`INPROGRESS`, `SUCCESSFUL`, `FAILED`, `STOPPED`), `name`, `url` and
//!   `description`; the key is at most 40 characters.
//! - Data Center: `POST {base}/rest/api/latest/projects/{key}/repos/{slug}/commits/{commit}/builds`
//!   with `key`, `state` (`INPROGRESS`, `SUCCESSFUL`, `FAILED`, `CANCELLED`), `name`, `url`,
//!   `description`, `buildNumber`, `ref` and, once it ended, `duration` (ms).
//!
//! - The clone URLs of a repository (a pull request's fork): Cloud's
//!   `GET {api}/2.0/repositories/{workspace}/{repo_slug}` and Data Center's
//!   `GET {base}/rest/api/latest/projects/{key}/repos/{slug}`, each listing `links.clone` as
//!   `{href, name}` with `name` `https`/`http` or `ssh`.
//!
//! A status with a key Bitbucket already has for the commit replaces it, so a build's statuses
//! (one key per project: its one pipeline) end as the last one sent. The token goes in the
//! `Authorization` header only: a bearer for access tokens (user `x-token-auth`), else basic
//! with the user.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::bitbucket::{Flavour, TOKEN_USERNAME};
use crate::config::Bitbucket;

/// How long one status call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest key Bitbucket Cloud accepts.
const KEY_LIMIT: usize = 40;
/// Longest name and description sent (Bitbucket refuses 255 characters and more).
const TEXT_LIMIT: usize = 250;
/// The most of an error answer's body kept in a report's error.
const ANSWER_LIMIT: usize = 300;

/// One build's status, as Bitbucket is told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildStatus {
    pub project: String,
    /// `owner/slug` (Cloud) or `KEY/slug` (Data Center).
    pub repository: String,
    pub commit: String,
    pub branch: String,
    pub number: i64,
    /// The build's status in Slipway: `running`, `passed`, `failed`, `errored`, `cancelled`.
    pub status: String,
    pub reason: Option<String>,
    pub duration_ms: Option<i64>,
    /// Where users see the build.
    pub url: String,
}

/// The state Bitbucket shows for a build status of Slipway's.
pub fn state(flavour: Flavour, status: &str) -> &'static str {
    match (status, flavour) {
        ("running", _) => "INPROGRESS",
        ("passed", _) => "SUCCESSFUL",
        ("cancelled", Flavour::Cloud) => "STOPPED",
        ("cancelled", Flavour::DataCenter) => "CANCELLED",
        _ => "FAILED",
    }
}

/// The status key of a project's builds: stable, and short enough for Cloud.
pub fn key(project: &str) -> String {
    let key = format!("slipway-{project}");
    if key.len() <= KEY_LIMIT {
        key
    } else {
        let digest = hex::encode(Sha256::digest(project.as_bytes()));
        format!("slipway-{}", &digest[..KEY_LIMIT - "slipway-".len()])
    }
}

/// The URL and JSON body of the call that sets `status` on its commit.
pub fn request(bitbucket: &Bitbucket, status: &BuildStatus) -> (String, Value) {
    let (owner, slug) = status
        .repository
        .split_once('/')
        .unwrap_or((&status.repository, ""));
    let name = bounded(&format!("Slipway {} #{}", status.project, status.number));
    let description = bounded(&describe(status));
    let state = state(bitbucket.flavour, &status.status);
    match bitbucket.flavour {
        Flavour::Cloud => (
            format!(
                "{}/2.0/repositories/{}/{}/commit/{}/statuses/build",
                bitbucket.api_url,
                segment(owner),
                segment(slug),
                status.commit
            ),
            json!({
                "key": key(&status.project),
                "state": state,
                "name": name,
                "url": status.url,
                "description": description,
            }),
        ),
        Flavour::DataCenter => {
            let mut body = json!({
                "key": key(&status.project),
                "state": state,
                "name": name,
                "url": status.url,
                "description": description,
                "buildNumber": status.number.to_string(),
                "ref": format!("refs/heads/{}", status.branch),
            });
            if let (Some(duration), true) = (status.duration_ms, status.status != "running") {
                body["duration"] = json!(duration);
            }
            (
                format!(
                    "{}/rest/api/latest/projects/{}/repos/{}/commits/{}/builds",
                    bitbucket.api_url,
                    segment(owner),
                    segment(slug),
                    status.commit
                ),
                body,
            )
        }
    }
}

/// Sets `status` on its commit. The error says what Bitbucket answered (or why it could not
/// be asked), never the token.
pub async fn send(
    http: &reqwest::Client,
    bitbucket: &Bitbucket,
    status: &BuildStatus,
) -> Result<(), String> {
    let (url, body) = request(bitbucket, status);
    call(bitbucket, http.post(&url).json(&body)).await.map(drop)
}

/// One of a repository's clone URLs, as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct CloneLink {
    pub href: String,
    /// `https`, `http` or `ssh`.
    pub name: String,
}

/// The most of a repository's answer read: it is a few kilobytes.
const REPOSITORY_ANSWER_LIMIT: usize = 256 * 1024;

/// The clone URLs of `repository` (`owner/slug` or `KEY/slug`).
pub async fn clone_links(
    http: &reqwest::Client,
    bitbucket: &Bitbucket,
    repository: &str,
) -> Result<Vec<CloneLink>, String> {
    let (owner, slug) = repository.split_once('/').unwrap_or((repository, ""));
    let url = match bitbucket.flavour {
        Flavour::Cloud => format!(
            "{}/2.0/repositories/{}/{}",
            bitbucket.api_url,
            segment(owner),
            segment(slug)
        ),
        Flavour::DataCenter => format!(
            "{}/rest/api/latest/projects/{}/repos/{}",
            bitbucket.api_url,
            segment(owner),
            segment(slug)
        ),
    };
    let answer = call(bitbucket, http.get(&url)).await?;
    if answer.content_length().unwrap_or(0) > REPOSITORY_ANSWER_LIMIT as u64 {
        return Err("Bitbucket's answer is too large".into());
    }
    let body = answer
        .bytes()
        .await
        .map_err(|e| format!("cannot read Bitbucket's answer: {}", without_url(&e)))?;
    if body.len() > REPOSITORY_ANSWER_LIMIT {
        return Err("Bitbucket's answer is too large".into());
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        links: Links,
    }
    #[derive(serde::Deserialize)]
    struct Links {
        #[serde(default)]
        clone: Vec<CloneLink>,
    }
    let answer: Answer = serde_json::from_slice(&body)
        .map_err(|e| format!("Bitbucket's answer lists no clone links: {e}"))?;
    Ok(answer.links.clone)
}

/// Sends `call` with the token, and fails unless Bitbucket answers with success: the error
/// says what Bitbucket answered (or why it could not be asked), never the token.
async fn call(
    bitbucket: &Bitbucket,
    call: reqwest::RequestBuilder,
) -> Result<reqwest::Response, String> {
    let Some(token) = &bitbucket.token else {
        return Err("no token: set token_env or token_file in [projects.bitbucket]".into());
    };
    let token = token.read()?;
    let call = call.timeout(CALL_TIMEOUT);
    let call = if bitbucket.username == TOKEN_USERNAME {
        call.bearer_auth(token.expose())
    } else {
        call.basic_auth(&bitbucket.username, Some(token.expose()))
    };
    let answer = call
        .send()
        .await
        .map_err(|e| format!("cannot reach {}: {}", bitbucket.api_url, without_url(&e)))?;
    let code = answer.status();
    if code.is_success() {
        return Ok(answer);
    }
    let text = answer.text().await.unwrap_or_default();
    let text: String = text.chars().take(ANSWER_LIMIT).collect();
    Err(format!("Bitbucket answered {code}: {}", text.trim()))
}

/// Which of `links` a project cloned from `clone_url` fetches a fork from: the one of the same
/// protocol (SSH, or HTTP(S)), on a host the project already sends its credentials to (its
/// `clone_url`'s, or its API's, `api.` dropped), with any user name dropped from an HTTP(S)
/// link (the project's own username goes along).
pub fn pick_clone_link(
    links: &[CloneLink],
    clone_url: &str,
    api_url: &str,
) -> Result<String, String> {
    let wants_ssh = is_ssh(clone_url);
    let api_host = host(api_url).unwrap_or_default();
    let trusted = [
        host(clone_url).unwrap_or_default(),
        api_host
            .strip_prefix("api.")
            .unwrap_or(&api_host)
            .to_owned(),
        api_host.clone(),
    ];
    let protocol = if wants_ssh { "ssh" } else { "https or http" };
    let link = links
        .iter()
        .find(|link| {
            let named_ssh = link.name.eq_ignore_ascii_case("ssh");
            named_ssh == wants_ssh && is_ssh(&link.href) == wants_ssh
        })
        .ok_or_else(|| format!("Bitbucket lists no {protocol} clone URL for it"))?;
    let link_host = host(&link.href).unwrap_or_default();
    if link_host.is_empty() || !trusted.iter().any(|h| h.eq_ignore_ascii_case(&link_host)) {
        return Err(format!(
            "its clone URL's host `{link_host}` is neither clone_url's nor api_url's"
        ));
    }
    if wants_ssh {
        return Ok(link.href.clone());
    }
    let mut url =
        reqwest::Url::parse(&link.href).map_err(|e| format!("its clone URL is not a URL: {e}"))?;
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Ok(url.to_string())
}

/// Whether `url` is fetched over SSH: `ssh://…` or the short `user@host:path`.
fn is_ssh(url: &str) -> bool {
    match url.split_once("://") {
        Some((scheme, _)) => scheme.eq_ignore_ascii_case("ssh"),
        None => url.contains(':'),
    }
}

/// The host a URL (`scheme://[user@]host[:port]/…`, or `user@host:path`) names.
fn host(url: &str) -> Option<String> {
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest,
        None => url,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next()?,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// What the status says beside its state.
fn describe(status: &BuildStatus) -> String {
    let took = status
        .duration_ms
        .map(|ms| format!(" in {} s", (ms + 500) / 1000))
        .unwrap_or_default();
    match (status.status.as_str(), &status.reason) {
        ("running", _) => format!("build #{} is running", status.number),
        ("passed", _) => format!("passed{took}"),
        (other, Some(reason)) => format!("{other}{took}: {reason}"),
        (other, None) => format!("{other}{took}"),
    }
}

fn bounded(text: &str) -> String {
    let mut bounded: String = text.chars().filter(|c| !c.is_control()).collect();
    if bounded.chars().count() > TEXT_LIMIT {
        bounded = bounded.chars().take(TEXT_LIMIT - 1).collect();
        bounded.push('…');
    }
    bounded
}

/// A path segment: the repository's parts are checked names, but are escaped all the same.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// reqwest's error without the URL it names (the URL holds no secret, but the message should
/// say what went wrong, not repeat the address given beside it).
fn without_url(error: &reqwest::Error) -> String {
    let error = error.to_string();
    match error.split_once(" for url (") {
        Some((what, _)) => what.to_owned(),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretSource;

    fn bitbucket(flavour: Flavour, api_url: &str) -> Bitbucket {
        Bitbucket {
            flavour,
            api_url: api_url.into(),
            username: TOKEN_USERNAME.into(),
            token: Some(SecretSource::Value(crate::config::Secret::new("t"))),
            ssh: None,
        }
    }

    fn status(status: &str) -> BuildStatus {
        BuildStatus {
            project: "hello".into(),
            repository: "acme/hello".into(),
            commit: "a".repeat(40),
            branch: "main".into(),
            number: 7,
            status: status.into(),
            reason: Some("step `test` exited with 1".into()),
            duration_ms: Some(41_600),
            url: "https://slipway.acme.test/api/v1/projects/hello/builds/7".into(),
        }
    }

    #[test]
    fn cloud_statuses_go_to_the_commit_s_build_statuses_with_the_documented_fields() {
        let cloud = bitbucket(Flavour::Cloud, "https://api.bitbucket.org");
        let (url, body) = request(&cloud, &status("failed"));
        assert_eq!(
            url,
            format!(
                "https://api.bitbucket.org/2.0/repositories/acme/hello/commit/{}/statuses/build",
                "a".repeat(40)
            )
        );
        assert_eq!(
            body,
            json!({
                "key": "slipway-hello",
                "state": "FAILED",
                "name": "Slipway hello #7",
                "url": "https://slipway.acme.test/api/v1/projects/hello/builds/7",
                "description": "failed in 42 s: step `test` exited with 1",
            })
        );
        assert_eq!(request(&cloud, &status("cancelled")).1["state"], "STOPPED");
        assert_eq!(request(&cloud, &status("running")).1["state"], "INPROGRESS");
        assert_eq!(request(&cloud, &status("passed")).1["state"], "SUCCESSFUL");
        assert_eq!(request(&cloud, &status("errored")).1["state"], "FAILED");
    }

    #[test]
    fn data_center_statuses_go_to_the_commit_s_builds_with_number_ref_and_duration() {
        let dc = bitbucket(Flavour::DataCenter, "https://git.acme.test/bitbucket");
        let mut running = status("running");
        running.repository = "ACME/hello".into();
        let (url, body) = request(&dc, &running);
        assert_eq!(
            url,
            format!(
                "https://git.acme.test/bitbucket/rest/api/latest/projects/ACME/repos/hello/commits/{}/builds",
                "a".repeat(40)
            )
        );
        assert_eq!(body["state"], "INPROGRESS");
        assert_eq!(body["buildNumber"], "7");
        assert_eq!(body["ref"], "refs/heads/main");
        assert!(body.get("duration").is_none(), "{body}");
        let (_, body) = request(&dc, &status("cancelled"));
        assert_eq!(body["state"], "CANCELLED");
        assert_eq!(body["duration"], 41_600);
    }

    #[test]
    fn keys_stay_within_forty_characters_and_texts_within_bitbucket_s_limits() {
        assert_eq!(key("hello"), "slipway-hello");
        let long = key(&"p".repeat(60));
        assert_eq!(long.len(), 40);
        assert_ne!(long, key(&"q".repeat(60)));
        let mut noisy = status("failed");
        noisy.reason = Some("x\n".repeat(400));
        let (_, body) = request(&bitbucket(Flavour::Cloud, "http://x"), &noisy);
        let description = body["description"].as_str().unwrap();
        assert!(description.chars().count() <= 250 && !description.contains('\n'));
    }

    #[test]
    fn a_forks_clone_url_is_the_link_of_the_projects_protocol_on_a_host_it_trusts() {
        let link = |name: &str, href: &str| CloneLink {
            name: name.into(),
            href: href.into(),
        };
        let cloud = [
            link("https", "https://bob@bitbucket.org/bob/hello.git"),
            link("ssh", "git@bitbucket.org:bob/hello.git"),
        ];
        let api = "https://api.bitbucket.org";
        // A mirror host in clone_url: the fork comes from Bitbucket itself.
        assert_eq!(
            pick_clone_link(&cloud, "https://git.acme.test/hello.git", api).unwrap(),
            "https://bitbucket.org/bob/hello.git"
        );
        assert_eq!(
            pick_clone_link(&cloud, "ssh://git@git.acme.test/hello.git", api).unwrap(),
            "git@bitbucket.org:bob/hello.git"
        );
        let datacenter = [
            link("http", "https://bb.acme.test/scm/~carol/hello.git"),
            link("ssh", "ssh://git@bb.acme.test:7999/~carol/hello.git"),
        ];
        let base = "https://bb.acme.test";
        assert_eq!(
            pick_clone_link(&datacenter, "https://mirror.acme.test/hello.git", base).unwrap(),
            "https://bb.acme.test/scm/~carol/hello.git"
        );
        assert_eq!(
            pick_clone_link(&datacenter, "git@mirror.acme.test:hello.git", base).unwrap(),
            "ssh://git@bb.acme.test:7999/~carol/hello.git"
        );
        // The project's credentials go to no other host.
        let elsewhere = [link("https", "https://evil.example.test/bob/hello.git")];
        let error = pick_clone_link(&elsewhere, "https://git.acme.test/h.git", api).unwrap_err();
        assert!(error.contains("`evil.example.test`"), "{error}");
        let error = pick_clone_link(&cloud[..1], "git@git.acme.test:h.git", api).unwrap_err();
        assert!(error.contains("no ssh clone URL"), "{error}");
        // A link named https that is an SSH address is not taken for one.
        let mislabelled = [link("https", "git@bitbucket.org:bob/hello.git")];
        assert!(pick_clone_link(&mislabelled, "https://git.acme.test/h.git", api).is_err());
    }
}
