//! Getting a build's files: a clone of the project's repository at the exact commit, and its
//! `.slipway.yml`.

use std::path::Path;
use std::time::Duration;

use slipway_pipeline::Spec;
use tokio::process::Command;

/// The pipeline file at the root of an application repository.
pub const SPEC_FILE: &str = ".slipway.yml";
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Clones `url` into `dest` and checks out `commit` (detached).
pub async fn clone_at(url: &str, commit: &str, dest: &Path) -> Result<(), String> {
    git(
        &[
            "clone",
            "--quiet",
            "--no-checkout",
            url,
            &dest.to_string_lossy(),
        ],
        None,
    )
    .await
    .map_err(|e| format!("cannot clone {}: {e}", redact_url(url)))?;
    git(
        &[
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "--quiet",
            "--detach",
            commit,
        ],
        Some(dest),
    )
    .await
    .map_err(|e| format!("cannot check out commit {commit}: {e}"))
}

/// Reads and parses `.slipway.yml` from a checkout; errors name the file, line and column.
pub fn read_spec(dir: &Path) -> Result<Spec, String> {
    let path = dir.join(SPEC_FILE);
    let text = slipway_pipeline::spec::read_file(&path)
        .map_err(|e| format!("cannot read {SPEC_FILE} at the root of the repository: {e}"))?;
    slipway_pipeline::parse(&text).map_err(|e| format!("{SPEC_FILE}: {e}"))
}

async fn git(args: &[&str], dir: Option<&Path>) -> Result<(), String> {
    let mut command = Command::new("git");
    command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .kill_on_drop(true);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = tokio::time::timeout(GIT_TIMEOUT, command.output())
        .await
        .map_err(|_| format!("git took longer than {} s", GIT_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot run git: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(redact_url(stderr.trim()))
    }
}

/// Hides credentials in `scheme://user:password@host` so they never reach logs or the API.
pub fn redact_url(text: &str) -> String {
    let re = regex::Regex::new(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@").expect("valid regex");
    re.replace_all(text, "${scheme}****@").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_clone_urls_are_hidden() {
        assert_eq!(
            redact_url(
                "fatal: could not read from https://bot:s3cret@bitbucket.org/acme/hello.git"
            ),
            "fatal: could not read from https://****@bitbucket.org/acme/hello.git"
        );
        assert_eq!(redact_url("file:///srv/hello.git"), "file:///srv/hello.git");
    }
}
