//! The client settings `slipway login` stores: a server, the token for it and, when given, a
//! project, in `$XDG_CONFIG_HOME/slipway/client.toml` (else `$HOME/.config/slipway/...`).
//! The file holds the token, so it is the user's alone: mode 0600 in a 0700 directory, and
//! no error about it repeats its text.

use std::ffi::OsString;
use std::fs::{DirBuilder, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    pub server: String,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// Where the settings live, `None` when neither `XDG_CONFIG_HOME` nor `HOME` says.
pub fn path() -> Option<PathBuf> {
    path_from(|key| std::env::var_os(key))
}

/// The stored settings, `None` when there are none.
pub fn load() -> anyhow::Result<Option<ClientSettings>> {
    match path() {
        Some(path) => load_from(&path),
        None => Ok(None),
    }
}

/// Stores `settings` (replacing what was stored) and returns the file's path.
pub fn save(settings: &ClientSettings) -> anyhow::Result<PathBuf> {
    let path = path().ok_or_else(|| {
        anyhow!("cannot tell where to store the client settings: set HOME or XDG_CONFIG_HOME")
    })?;
    save_to(&path, settings)?;
    Ok(path)
}

/// The XDG base directory rule: `XDG_CONFIG_HOME` when it is an absolute path (a relative one
/// is ignored), else `$HOME/.config`.
fn path_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let absolute = |key: &str| var(key).map(PathBuf::from).filter(|dir| dir.is_absolute());
    let config_home = absolute("XDG_CONFIG_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".config")))?;
    Some(config_home.join("slipway").join("client.toml"))
}

fn load_from(path: &Path) -> anyhow::Result<Option<ClientSettings>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    // The parser's own message only: its full text quotes the line, which may be the token's.
    let settings = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start].matches('\n').count() + 1);
        anyhow!(
            "{}{}: {} (run `slipway login` again to rewrite it)",
            path.display(),
            line.map(|line| format!(", line {line}"))
                .unwrap_or_default(),
            e.message()
        )
    })?;
    Ok(Some(settings))
}

/// Writes a new file beside the old one, private from its creation, and renames it over.
fn save_to(path: &Path, settings: &ClientSettings) -> anyhow::Result<()> {
    let dir = path.parent().expect("the settings file is in a directory");
    let private_dir = |e: std::io::Error| anyhow!("cannot make {} private: {e}", dir.display());
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(private_dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(0o700)).map_err(private_dir)?;
    let text = toml::to_string(settings).expect("client settings serialize");
    let write = || -> std::io::Result<()> {
        let mut file = tempfile::Builder::new()
            .prefix(".client.toml.")
            .permissions(Permissions::from_mode(0o600))
            .tempfile_in(dir)?;
        file.write_all(text.as_bytes())?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn xdg_config_home_wins_over_home_unless_it_is_relative() {
        let both = [("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/ana")];
        assert_eq!(
            path_from(vars(&both)),
            Some(PathBuf::from("/xdg/slipway/client.toml"))
        );
        let relative = [("XDG_CONFIG_HOME", "xdg"), ("HOME", "/home/ana")];
        assert_eq!(
            path_from(vars(&relative)),
            Some(PathBuf::from("/home/ana/.config/slipway/client.toml"))
        );
        assert_eq!(path_from(vars(&[])), None);
    }

    #[test]
    fn saved_settings_are_private_and_read_back() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join("config/slipway/client.toml");
        let settings = ClientSettings {
            server: "http://slipway.acme.test:8080".into(),
            token: "secret-token".into(),
            project: None,
        };
        save_to(&path, &settings).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(load_from(&path).unwrap(), Some(settings));
        assert_eq!(load_from(&home.path().join("absent.toml")).unwrap(), None);
    }

    #[test]
    fn a_broken_file_is_named_without_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(
            &path,
            "server = \"http://x\"\ntoken = \"secret-token\nproject = 1\n",
        )
        .unwrap();
        let error = load_from(&path).unwrap_err().to_string();
        assert!(error.contains("client.toml, line 2"), "{error}");
        assert!(!error.contains("secret-token"), "{error}");
    }
}
