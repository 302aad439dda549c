//! The server's bare mirror of each project's repository (`<data_dir>/mirrors/<project>.git`):
//! fetched, never cloned again for a build; the source of every build's files; the place
//! ancestry questions are answered.
//!
//! Every git run here is built by the server. A commit from outside is a checked full hex
//! object id and reaches git only after `--end-of-options`. The URL git is given carries no
//! credentials; they reach git through a credential helper that reads them from git's own
//! environment, so they are in no URL, argument, config or file, and never in a workspace.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;

use crate::config::bitbucket::SshKey;
use crate::config::{CloneCredentials, Project};

const GIT_TIMEOUT: Duration = Duration::from_secs(600);
/// The most of git's error output an error message repeats.
const MAX_ERROR_BYTES: usize = 2048;
/// Where git finds the credentials; only git and the helper it runs see this environment.
const USERNAME_VAR: &str = "SLIPWAY_CLONE_USERNAME";
const PASSWORD_VAR: &str = "SLIPWAY_CLONE_PASSWORD";
/// Answers git's `get` from the environment above and ignores `store` and `erase`.
const CREDENTIAL_HELPER: &str = "!f() { test \"$1\" = get && printf 'username=%s\\npassword=%s\\n' \"$SLIPWAY_CLONE_USERNAME\" \"$SLIPWAY_CLONE_PASSWORD\"; }; f";

/// A full hex object id of a commit (SHA-1 or SHA-256), checked before it reaches git.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitId(String);

impl CommitId {
    pub fn parse(text: &str) -> Result<CommitId, String> {
        let hex = text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hex && (text.len() == 40 || text.len() == 64) {
            Ok(CommitId(text.to_string()))
        } else {
            Err(format!(
                "commit {:?} is not a full hex object id (40 or 64 lowercase hex digits)",
                text.chars().take(80).collect::<String>()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The mirrors of all projects; one fetch per project at a time. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Mirrors {
    dir: PathBuf,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Mirrors {
    /// The server's mirrors, in `<data_dir>/mirrors`.
    pub fn in_data_dir(data_dir: &Path) -> std::io::Result<Mirrors> {
        Mirrors::open(&data_dir.join("mirrors"))
    }

    /// Mirrors kept in `dir` (created, private to the server, when missing).
    pub fn open(dir: &Path) -> std::io::Result<Mirrors> {
        create_private_dir(dir)?;
        Ok(Mirrors {
            dir: dir.to_path_buf(),
            locks: Arc::default(),
        })
    }

    /// Mirrors kept in `dir`, made by the first fetch (inside a private parent directory).
    pub fn lazy(dir: &Path) -> Mirrors {
        Mirrors {
            dir: dir.to_path_buf(),
            locks: Arc::default(),
        }
    }

    /// The mirror of `project` (nothing on disk changes until it is fetched).
    pub fn mirror(&self, project: &Project) -> Mirror {
        self.mirror_named(
            &project.name,
            &project.clone_url,
            project.clone_credentials.clone(),
            project.clone_ssh.clone(),
        )
    }

    /// The mirror `<name>.git` of `url` (a name in the directory's own alphabet).
    pub fn mirror_named(
        &self,
        name: &str,
        url: &str,
        credentials: Option<CloneCredentials>,
        ssh: Option<SshKey>,
    ) -> Mirror {
        let lock = self
            .locks
            .lock()
            .expect("mirror locks")
            .entry(name.to_string())
            .or_default()
            .clone();
        Mirror {
            git_dir: self.dir.join(format!("{name}.git")),
            url: url.to_string(),
            credentials,
            ssh,
            fetch_lock: lock,
        }
    }
}

/// One project's bare mirror.
pub struct Mirror {
    git_dir: PathBuf,
    url: String,
    credentials: Option<CloneCredentials>,
    ssh: Option<SshKey>,
    fetch_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Mirror {
    /// Makes sure the mirror holds `commit`: a commit already there is not fetched again;
    /// else the commit alone is fetched by its id, without its history (kept under
    /// `refs/slipway/commits/`, so a force push that drops it from every branch loses nothing),
    /// or, from a server that refuses that, the branches and tags.
    pub async fn fetch_commit(&self, commit: &CommitId) -> Result<(), String> {
        let _one_fetch_at_a_time = self.fetch_lock.lock().await;
        if self.has_commit(commit).await {
            return Ok(());
        }
        self.init().await?;
        match self.fetch(&["--depth=1"], &[&pinned(commit)]).await {
            Ok(()) if self.has_commit(commit).await => return Ok(()),
            Ok(()) => {}
            // Not allowed in, or not reached: no other fetch would do better.
            Err(e) if why(&e).is_some() => return Err(e),
            Err(e) => tracing::debug!(error = %e, "fetching the commit by its id failed"),
        }
        // A server that serves only the commits its refs advertise (git's protocol v0 without
        // `uploadpack.allowReachableSHA1InWant`) refuses a fetch by id: the branches' and
        // tags' heads, then their whole histories, hold any commit it has.
        for depth in ["--depth=1", "--depth=2147483647"] {
            self.fetch(
                &[depth],
                &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
            )
            .await?;
            if self.has_commit(commit).await {
                return Ok(());
            }
        }
        Err(format!("commit {commit} is not in {}", self.url))
    }

    /// Resolves `git_ref` (checked by the caller: a tag, a branch or a full commit id) to the
    /// commit it names now, asking the repository for that one ref (a tag first, then a
    /// branch), and fetches that commit alone.
    pub async fn resolve_ref(&self, git_ref: &str) -> Result<CommitId, String> {
        if let Ok(commit) = CommitId::parse(git_ref) {
            self.fetch_commit(&commit).await?;
            return Ok(commit);
        }
        let (tag, branch) = (
            format!("refs/tags/{git_ref}"),
            format!("refs/heads/{git_ref}"),
        );
        let listed = {
            let _one_fetch_at_a_time = self.fetch_lock.lock().await;
            self.remote(
                &self.url,
                &["ls-remote", "--end-of-options", &self.url, &tag, &branch],
            )
            .await?
        };
        let listed = String::from_utf8_lossy(&listed.stdout);
        let named = |name: &str| {
            listed.lines().find_map(|line| {
                let (id, listed_name) = line.split_once('\t')?;
                (listed_name == name).then(|| CommitId::parse(id))
            })
        };
        // An annotated tag is listed twice: the tag object, then (`^{}`) its commit.
        let commit = named(&format!("{tag}^{{}}"))
            .or_else(|| named(&tag))
            .or_else(|| named(&branch))
            .ok_or_else(|| format!("{} has no tag or branch named `{git_ref}`", self.url))??;
        self.fetch_commit(&commit).await?;
        Ok(commit)
    }

    /// Fetches branch `branch` of the fork at `fork_url` (pull request `number`'s source) into
    /// `refs/slipway/pull-requests/<number>`, where the build finds its commit, and returns the
    /// branch's head (fetched alone, without its history).
    pub async fn fetch_fork_branch(
        &self,
        fork_url: &str,
        branch: &str,
        number: i64,
    ) -> Result<CommitId, String> {
        let _one_fetch_at_a_time = self.fetch_lock.lock().await;
        self.init().await?;
        let kept = format!("refs/slipway/pull-requests/{number}");
        self.fetch_from(
            fork_url,
            &["--depth=1"],
            &[&format!("+refs/heads/{branch}:{kept}")],
        )
        .await?;
        let output = run(git(Some(&self.git_dir))
            .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
            .arg(format!("{kept}^{{commit}}")))
        .await?;
        CommitId::parse(String::from_utf8_lossy(&output.stdout).trim())
    }

    /// How commit `a` stands to commit `b` in the repository's history. Both must be in the
    /// mirror ([`Mirror::fetch_commit`]).
    ///
    /// The mirror holds commits without their history, so the question is answered from what
    /// it holds when it can; else both histories are deepened together, 16 commits, then 64,
    /// 256 ..., until one commit is found in the other's history or neither history grows
    /// (both complete): the history fetched is that between the two commits, not the
    /// repository's.
    pub async fn relation(&self, a: &CommitId, b: &CommitId) -> Result<Relation, String> {
        if a == b {
            return Ok(Relation::Same);
        }
        let mut deepen = 16u32;
        loop {
            if self.reaches(b, a).await? {
                return Ok(Relation::Descendant);
            }
            if self.reaches(a, b).await? {
                return Ok(Relation::Ancestor);
            }
            let before = (self.depth(a).await?, self.depth(b).await?);
            let deepened = {
                let _one_fetch_at_a_time = self.fetch_lock.lock().await;
                self.fetch(&[&format!("--deepen={deepen}")], &[&pinned(a), &pinned(b)])
                    .await
            };
            match deepened {
                Ok(()) => {}
                Err(e) if why(&e).is_some() => {
                    return Err(format!("cannot read the history between {a} and {b}: {e}"))
                }
                // A server that refuses fetches by id: the branches' whole histories hold
                // what can be known.
                Err(_) => return self.relation_from_branches(a, b).await,
            }
            if (self.depth(a).await?, self.depth(b).await?) == before {
                return Ok(Relation::Unrelated);
            }
            deepen = deepen.saturating_mul(4);
        }
    }

    /// [`Mirror::relation`] once the branches and tags are fetched with their whole history.
    async fn relation_from_branches(&self, a: &CommitId, b: &CommitId) -> Result<Relation, String> {
        {
            let _one_fetch_at_a_time = self.fetch_lock.lock().await;
            self.fetch(
                &["--depth=2147483647"],
                &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
            )
            .await
            .map_err(|e| format!("cannot read the history between {a} and {b}: {e}"))?;
        }
        Ok(if self.reaches(b, a).await? {
            Relation::Descendant
        } else if self.reaches(a, b).await? {
            Relation::Ancestor
        } else {
            Relation::Unrelated
        })
    }

    /// Makes sure the mirror holds the whole history of `commit` and the repository's tags,
    /// for a workspace that asks for `.git` ([`Mirror::write_git_dir`]).
    pub async fn fetch_history(&self, commit: &CommitId) -> Result<(), String> {
        self.fetch_commit(commit).await?;
        let _one_fetch_at_a_time = self.fetch_lock.lock().await;
        // git's own number for "no limit" (what `--unshallow` asks for).
        let whole = ["--depth=2147483647"];
        match self
            .fetch(&whole, &[&pinned(commit), "+refs/tags/*:refs/tags/*"])
            .await
        {
            Err(e) if why(&e).is_none() => {
                // A server that refuses fetches by id: the branches' whole histories.
                self.fetch(
                    &whole,
                    &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                )
                .await
            }
            fetched => fetched,
        }
    }

    /// Whether `older` is in the history the mirror holds of `newer` (a commit is in its own).
    async fn reaches(&self, older: &CommitId, newer: &CommitId) -> Result<bool, String> {
        let output = output(
            git(Some(&self.git_dir))
                .args(["merge-base", "--is-ancestor", "--end-of-options"])
                .args([older.as_str(), newer.as_str()]),
        )
        .await?;
        match output.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(format!(
                "cannot tell whether {older} is an ancestor of {newer}: {}",
                error_text(&output)
            )),
        }
    }

    /// How many commits of `commit`'s history the mirror holds.
    async fn depth(&self, commit: &CommitId) -> Result<u64, String> {
        let output = run(git(Some(&self.git_dir))
            .args(["rev-list", "--count", "--end-of-options"])
            .arg(commit.as_str()))
        .await?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.trim()
            .parse()
            .map_err(|_| format!("git counted {:?} commits", text.trim()))
    }

    /// The commit's committer time, in seconds since the epoch.
    pub async fn commit_time(&self, commit: &CommitId) -> Result<u64, String> {
        let output = run(git(Some(&self.git_dir))
            .args(["show", "--no-patch", "--format=%ct", "--end-of-options"])
            .arg(commit.as_str()))
        .await
        .map_err(|e| format!("cannot read the time of commit {commit}: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.trim()
            .parse()
            .map_err(|_| format!("commit {commit} has no readable time: {:?}", text.trim()))
    }

    /// The author's name and the first line of the message of `commit`, each one line of at
    /// most [`SUMMARY_CHARS`] characters.
    pub async fn commit_summary(&self, commit: &CommitId) -> Result<(String, String), String> {
        let output = run(git(Some(&self.git_dir))
            .args([
                "show",
                "--no-patch",
                "--format=%an%x00%s",
                "--end-of-options",
            ])
            .arg(commit.as_str()))
        .await
        .map_err(|e| format!("cannot read commit {commit}: {e}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let (author, subject) = text.trim_end().split_once('\0').unwrap_or((&text, ""));
        let line = |text: &str| -> String {
            text.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(SUMMARY_CHARS)
                .collect::<String>()
                .trim()
                .to_owned()
        };
        Ok((line(author), line(subject)))
    }

    /// Writes the files of `commit` into the empty directory `dest`, as a checkout would, and
    /// nothing else: no `.git`. `index` is a scratch file outside `dest`, removed after.
    pub async fn export_tree(
        &self,
        commit: &CommitId,
        dest: &Path,
        index: &Path,
    ) -> Result<(), String> {
        let written = run(git(Some(&self.git_dir))
            .env("GIT_INDEX_FILE", index)
            .arg("--work-tree")
            .arg(dest)
            .args(["read-tree", "--reset", "-u", "--end-of-options"])
            .arg(commit.as_str()))
        .await
        .map_err(|e| format!("cannot write the files of commit {commit}: {e}"));
        let _ = std::fs::remove_file(index);
        written.map(drop)
    }

    /// Adds `.git` to a workspace that [`Mirror::export_tree`] filled: the history of `commit`
    /// and the tags, `HEAD` detached at it, and no remote (so nothing that leads back here).
    pub async fn write_git_dir(&self, commit: &CommitId, workspace: &Path) -> Result<(), String> {
        let git_dir = workspace.join(".git");
        let context = |e: String| format!("cannot make .git in the workspace: {e}");
        run(git(None)
            .args(["init", "--quiet", "--template=", "--initial-branch=main"])
            .arg(workspace))
        .await
        .map_err(context)?;
        run(git(Some(&git_dir))
            .args([
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--end-of-options",
            ])
            .arg(&self.git_dir)
            .args([commit.as_str(), "+refs/tags/*:refs/tags/*"]))
        .await
        .map_err(context)?;
        run(git(Some(&git_dir))
            .args(["-c", "core.logAllRefUpdates=false"])
            .args(["update-ref", "--no-deref", "HEAD", commit.as_str()]))
        .await
        .map_err(context)?;
        run(git(Some(&git_dir)).arg("--work-tree").arg(workspace).args([
            "read-tree",
            "--reset",
            "--end-of-options",
            commit.as_str(),
        ]))
        .await
        .map_err(context)?;
        run(git(Some(&git_dir)).arg("--work-tree").arg(workspace).args([
            "update-index",
            "-q",
            "--refresh",
        ]))
        .await
        .map(drop)
        .map_err(context)
    }

    async fn has_commit(&self, commit: &CommitId) -> bool {
        let mut command = git(Some(&self.git_dir));
        command
            .args(["cat-file", "-e", "--end-of-options"])
            .arg(format!("{commit}^{{commit}}"));
        self.git_dir.join("HEAD").exists()
            && output(&mut command)
                .await
                .is_ok_and(|output| output.status.success())
    }

    /// Makes the bare repository; idempotent, so it also completes a mirror whose first init
    /// was interrupted.
    async fn init(&self) -> Result<(), String> {
        run(git(None)
            .args(["init", "--bare", "--quiet", "--template="])
            .arg(&self.git_dir))
        .await
        .map(drop)
        .map_err(|e| format!("cannot make the mirror: {e}"))
    }

    async fn fetch(&self, options: &[&str], refspecs: &[&str]) -> Result<(), String> {
        self.fetch_from(&self.url, options, refspecs).await
    }

    /// Fetches `refspecs` from `url` (the mirror's own URL, or a fork of it on the same host).
    async fn fetch_from(
        &self,
        url: &str,
        options: &[&str],
        refspecs: &[&str],
    ) -> Result<(), String> {
        let mut args = vec!["fetch", "--quiet", "--no-tags"];
        args.extend(options);
        args.extend(["--end-of-options", url]);
        args.extend(refspecs);
        self.remote(url, &args).await.map(drop)
    }

    /// Runs git command `args`, which talks to `url`, with the project's credentials.
    async fn remote(&self, url: &str, args: &[&str]) -> Result<Output, String> {
        let mut command = git(Some(&self.git_dir));
        // An empty value first drops helpers configured elsewhere, which could store the
        // credentials on disk.
        command.args(["-c", "credential.helper="]);
        if let Some(ssh) = &self.ssh {
            // Only this key, and only the pinned host keys: no agent, no user config, no
            // prompt, no host trusted on first use.
            command.env(
                "GIT_SSH_COMMAND",
                format!(
                    "ssh -F /dev/null -i '{}' -o IdentitiesOnly=yes -o IdentityAgent=none -o UserKnownHostsFile='{}' -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes",
                    ssh.key_file.display(),
                    ssh.known_hosts.display()
                ),
            );
        }
        if let Some(credentials) = &self.credentials {
            let password = credentials.password.read()?;
            command
                .args(["-c", &format!("credential.helper={CREDENTIAL_HELPER}")])
                .env(USERNAME_VAR, &credentials.username)
                .env(PASSWORD_VAR, password.expose());
        }
        command.args(args);
        run(&mut command).await.map_err(|e| match why(&e) {
            Some(why) => format!("cannot fetch from {url}: {why} ({e})"),
            None => format!("cannot fetch from {url}: {e}"),
        })
    }
}

/// How one commit stands to another in the repository's history ([`Mirror::relation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Same,
    /// The first commit is in the history of the second.
    Ancestor,
    /// The second commit is in the history of the first.
    Descendant,
    /// Neither is in the other's history (diverged branches, or a force push).
    Unrelated,
}

/// Where the mirror keeps a commit fetched by its id.
fn pinned(commit: &CommitId) -> String {
    format!("+{commit}:refs/slipway/commits/{commit}")
}

/// The most of a commit's author or message line kept.
pub const SUMMARY_CHARS: usize = 200;

/// A git command that reads no repository but `git_dir` and never prompts.
fn git(git_dir: Option<&Path>) -> Command {
    let mut command = Command::new("git");
    // Repository selection comes only from the arguments; traces could print what the
    // credential helper answered into the error text.
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_TRACE",
        "GIT_TRACE_CURL",
        "GIT_TRACE_PACKET",
        "GIT_CURL_VERBOSE",
    ] {
        command.env_remove(var);
    }
    command
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(git_dir) = git_dir {
        command.arg("--git-dir").arg(git_dir);
    }
    command
}

/// Runs git and fails with its (bounded, redacted) error output unless it exits 0.
async fn run(command: &mut Command) -> Result<Output, String> {
    let output = output(command).await?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(error_text(&output))
    }
}

async fn output(command: &mut Command) -> Result<Output, String> {
    tokio::time::timeout(GIT_TIMEOUT, command.output())
        .await
        .map_err(|_| format!("git took longer than {} s", GIT_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot run git: {e}"))
}

fn error_text(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut text = redact_url(stderr.trim());
    if text.len() > MAX_ERROR_BYTES {
        let cut = (0..=MAX_ERROR_BYTES)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push_str(" [...]");
    }
    if text.is_empty() {
        format!("git exited with {}", output.status)
    } else {
        text
    }
}

/// What a failed fetch's git error means, in the words of a project's settings.
fn why(git_error: &str) -> Option<&'static str> {
    let says = |needles: &[&str]| needles.iter().any(|n| git_error.contains(n));
    if says(&[
        "Authentication failed",
        "Permission denied (publickey",
        "could not read Username",
        "could not read Password",
        "The requested URL returned error: 401",
        "The requested URL returned error: 403",
    ]) {
        Some("authentication failed: the repository refused the credentials (the token or deploy key of [projects.bitbucket], or clone_password_env)")
    } else if says(&[
        "Host key verification failed",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
    ]) {
        Some("the host's key is not one known_hosts pins")
    } else if says(&["Could not resolve host", "Name or service not known"]) {
        Some("unknown host: the clone URL's host name does not resolve")
    } else if says(&[
        "Connection refused",
        "Failed to connect",
        "Connection timed out",
    ]) {
        Some("cannot connect to the clone URL's host")
    } else if says(&[
        "repository not found",
        "Repository not found",
        "returned error: 404",
        "does not appear to be a git repository",
    ]) {
        Some("no repository at the clone URL")
    } else {
        None
    }
}

/// Hides credentials in `scheme://user:password@host`, should any text from git hold one.
pub fn redact_url(text: &str) -> String {
    let re = regex::Regex::new(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@").expect("valid regex");
    re.replace_all(text, "${scheme}****@").into_owned()
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_hidden() {
        assert_eq!(
            redact_url(
                "fatal: could not read from https://bot:s3cret@bitbucket.org/acme/hello.git"
            ),
            "fatal: could not read from https://****@bitbucket.org/acme/hello.git"
        );
        assert_eq!(redact_url("file:///srv/hello.git"), "file:///srv/hello.git");
    }

    #[test]
    fn only_full_hex_object_ids_are_commits() {
        assert!(CommitId::parse(&"a".repeat(40)).is_ok());
        assert!(CommitId::parse(&"0".repeat(64)).is_ok());
        for bad in [
            "-f",
            "origin/evil",
            "HEAD",
            "abc123",
            &"A".repeat(40),
            &format!("{}\n", "a".repeat(40)),
            &"g".repeat(40),
        ] {
            assert!(CommitId::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn project(clone_url: &str) -> Project {
        let text = format!(
            "[[projects]]\nname = \"hello\"\nrepository = \"acme/hello\"\nclone_url = \"{clone_url}\"\n"
        );
        let raw = crate::config::parse(&text, "test").unwrap();
        let mut config =
            crate::config::resolve(raw, "test", &Default::default(), &|_| None).unwrap();
        config.projects.remove(0)
    }

    fn git_in(dir: &Path, args: &[&str]) -> String {
        let output = std::process::Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.name=Test", "-c", "user.email=test@example.test"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    fn commit(dir: &Path, file: &str, text: &str) -> CommitId {
        std::fs::write(dir.join(file), text).unwrap();
        git_in(dir, &["add", "-A"]);
        git_in(dir, &["commit", "-q", "-m", file]);
        CommitId::parse(&git_in(dir, &["rev-parse", "HEAD"])).unwrap()
    }

    /// A repository in `dir/source` and an empty mirrors directory in `dir/mirrors`.
    fn source_and_mirror(dir: &Path) -> (PathBuf, Mirror) {
        let source = dir.join("source");
        std::fs::create_dir(&source).unwrap();
        git_in(&source, &["init", "-q", "-b", "main"]);
        let mirrors = Mirrors::open(&dir.join("mirrors")).unwrap();
        let mirror = mirrors.mirror(&project(&format!("file://{}", source.display())));
        (source, mirror)
    }

    /// What the mirror holds: (commits, blobs).
    fn held(mirror: &Mirror) -> (usize, usize) {
        let listing = git_in(
            &mirror.git_dir,
            &[
                "cat-file",
                "--batch-all-objects",
                "--batch-check=%(objecttype)",
            ],
        );
        let count = |kind: &str| listing.lines().filter(|line| *line == kind).count();
        (count("commit"), count("blob"))
    }

    #[tokio::test]
    async fn a_commit_is_fetched_alone_and_history_only_as_far_as_ancestry_needs() {
        let dir = tempfile::tempdir().unwrap();
        let (source, mirror) = source_and_mirror(dir.path());
        // 300 commits, each with a file of its own; then a side branch from the first.
        let first = commit(&source, "file-0", "0");
        let mut line = vec![first.clone()];
        for i in 1..300 {
            line.push(commit(&source, &format!("file-{i}"), &i.to_string()));
        }
        let last = line[299].clone();
        git_in(&source, &["checkout", "-q", "-b", "side", first.as_str()]);
        let side = commit(&source, "side", "side");
        git_in(&source, &["checkout", "-q", "main"]);

        mirror.fetch_commit(&last).await.unwrap();
        assert_eq!(held(&mirror), (1, 300), "the commit alone, with its files");

        // Ten commits apart: a few commits of history are fetched, not the repository's.
        let near = line[289].clone();
        mirror.fetch_commit(&near).await.unwrap();
        assert_eq!(
            mirror.relation(&near, &last).await.unwrap(),
            Relation::Ancestor
        );
        assert_eq!(
            mirror.relation(&last, &near).await.unwrap(),
            Relation::Descendant
        );
        assert_eq!(mirror.relation(&last, &last).await.unwrap(), Relation::Same);
        let (commits, blobs) = held(&mirror);
        // Both histories deepen together: at most 16 commits below each.
        assert!(
            commits <= 2 + 2 * 16,
            "{commits} commits fetched for 10 apart"
        );
        assert_eq!(blobs, 300, "older commits' files come with no new blob");

        // Far apart and diverged: complete histories, then the honest answer.
        mirror.fetch_commit(&side).await.unwrap();
        assert_eq!(
            mirror.relation(&side, &last).await.unwrap(),
            Relation::Unrelated
        );
        assert_eq!(
            mirror.relation(&last, &side).await.unwrap(),
            Relation::Unrelated
        );
        mirror.fetch_commit(&first).await.unwrap();
        assert_eq!(
            mirror.relation(&first, &side).await.unwrap(),
            Relation::Ancestor
        );
        assert_eq!(
            mirror.relation(&first, &last).await.unwrap(),
            Relation::Ancestor
        );
        assert_eq!(
            mirror.relation(&line[150], &last).await.unwrap(),
            Relation::Ancestor
        );

        // A commit the mirror lacks is an error, not an answer.
        let unknown = CommitId::parse(&"1".repeat(40)).unwrap();
        assert!(mirror.relation(&unknown, &last).await.is_err());
    }

    #[tokio::test]
    async fn a_server_that_refuses_fetches_by_id_still_answers_commits_and_ancestry() {
        let dir = tempfile::tempdir().unwrap();
        let (source, mirror) = source_and_mirror(dir.path());
        let released = commit(&source, "a", "1");
        mirror.fetch_commit(&released).await.unwrap();
        // The mirror speaks protocol v0, where the source's upload-pack serves only what its
        // refs advertise.
        git_in(&mirror.git_dir, &["config", "protocol.version", "0"]);
        let older = commit(&source, "a", "2");
        let head = commit(&source, "a", "3");
        // The head, advertised, is fetched by its id; an older commit through the branches.
        mirror.fetch_commit(&head).await.unwrap();
        assert_eq!(held(&mirror).0, 2);
        assert_eq!(
            mirror.relation(&released, &head).await.unwrap(),
            Relation::Ancestor
        );
        mirror.fetch_commit(&older).await.unwrap();
        assert_eq!(
            mirror.relation(&head, &older).await.unwrap(),
            Relation::Descendant
        );
        mirror.fetch_history(&older).await.unwrap();
        assert_eq!(
            git_in(&mirror.git_dir, &["rev-list", "--count", older.as_str()]),
            "2"
        );
    }

    #[tokio::test]
    async fn a_workspace_that_asks_for_git_gets_the_whole_history_and_the_tags() {
        let dir = tempfile::tempdir().unwrap();
        let (source, mirror) = source_and_mirror(dir.path());
        commit(&source, "a", "1");
        git_in(&source, &["tag", "-a", "-m", "first", "v1"]);
        commit(&source, "a", "2");
        let head = commit(&source, "a", "3");
        mirror.fetch_commit(&head).await.unwrap();
        assert_eq!(held(&mirror).0, 1);
        mirror.fetch_history(&head).await.unwrap();
        let workspace = dir.path().join("workspace");
        std::fs::create_dir(&workspace).unwrap();
        mirror
            .export_tree(&head, &workspace, &dir.path().join("index"))
            .await
            .unwrap();
        mirror.write_git_dir(&head, &workspace).await.unwrap();
        assert_eq!(git_in(&workspace, &["rev-list", "--count", "HEAD"]), "3");
        assert_eq!(
            git_in(&workspace, &["describe"]),
            format!("v1-2-g{}", &head.as_str()[..7])
        );
    }

    #[tokio::test]
    async fn a_ref_resolves_to_the_commit_its_tag_or_branch_names_now() {
        let dir = tempfile::tempdir().unwrap();
        let (source, mirror) = source_and_mirror(dir.path());
        let tagged = commit(&source, "a", "1");
        git_in(&source, &["tag", "v3"]);
        let newer = commit(&source, "a", "2");
        assert_eq!(mirror.resolve_ref("v3").await.unwrap(), tagged);
        assert_eq!(mirror.resolve_ref("main").await.unwrap(), newer);
        assert_eq!(mirror.resolve_ref(tagged.as_str()).await.unwrap(), tagged);
        let error = mirror.resolve_ref("v4").await.unwrap_err();
        assert!(error.contains("no tag or branch named `v4`"), "{error}");
        // A moved tag is followed: the ref is resolved again for each bake.
        git_in(&source, &["tag", "-f", "v3", newer.as_str()]);
        assert_eq!(mirror.resolve_ref("v3").await.unwrap(), newer);
    }

    #[tokio::test]
    async fn commits_are_fetched_once_and_a_commit_no_branch_holds_is_fetched_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let (source, mirror) = source_and_mirror(dir.path());
        let first = commit(&source, "a", "1");
        mirror.fetch_commit(&first).await.unwrap();

        // Once in the mirror, a commit needs no fetch: the source may be gone.
        let away = dir.path().join("away");
        std::fs::rename(&source, &away).unwrap();
        mirror.fetch_commit(&first).await.unwrap();
        let missing = CommitId::parse(&"2".repeat(40)).unwrap();
        assert!(mirror.fetch_commit(&missing).await.is_err());
        std::fs::rename(&away, &source).unwrap();

        // A force push dropped `second` from every branch; the build of it still gets it.
        let second = commit(&source, "a", "2");
        git_in(&source, &["reset", "-q", "--hard", first.as_str()]);
        mirror.fetch_commit(&second).await.unwrap();
        let error = mirror.fetch_commit(&missing).await.unwrap_err();
        assert!(error.contains("is not in file://"), "{error}");

        let time: u64 = git_in(&source, &["show", "-s", "--format=%ct", second.as_str()])
            .parse()
            .unwrap();
        assert_eq!(mirror.commit_time(&second).await.unwrap(), time);
    }

    #[tokio::test]
    async fn a_workspace_holds_the_tree_and_a_git_dir_without_remotes_only_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let (source, mirror) = source_and_mirror(dir.path());
        std::fs::create_dir(source.join("app")).unwrap();
        std::fs::write(source.join("app/run"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            source.join("app/run"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink(".git/config", source.join("gitconfig")).unwrap();
        let commit = commit(&source, "README", "hello\n");
        mirror.fetch_commit(&commit).await.unwrap();

        let workspace = dir.path().join("workspace");
        std::fs::create_dir(&workspace).unwrap();
        let index = dir.path().join("workspace.index");
        mirror
            .export_tree(&commit, &workspace, &index)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(workspace.join("README")).unwrap(),
            "hello\n"
        );
        let mode = std::fs::metadata(workspace.join("app/run")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o111,
            0o111
        );
        assert!(std::fs::symlink_metadata(workspace.join("gitconfig"))
            .unwrap()
            .is_symlink());
        assert!(!workspace.join(".git").exists());
        assert!(!index.exists(), "the scratch index is removed");

        mirror.write_git_dir(&commit, &workspace).await.unwrap();
        assert_eq!(git_in(&workspace, &["rev-parse", "HEAD"]), commit.as_str());
        assert_eq!(git_in(&workspace, &["status", "--porcelain"]), "");
        assert_eq!(git_in(&workspace, &["remote"]), "");
        let config = std::fs::read_to_string(workspace.join(".git/config")).unwrap();
        assert!(!config.contains("url"), "{config}");
    }
}
