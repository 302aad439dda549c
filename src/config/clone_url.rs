//! A project's `clone_url`, split into the URL git is given (no credentials) and the
//! credentials, which reach git only through a credential helper (see `crate::mirror`).

use super::{Secret, SecretSource};

/// The user and password for an `http(s)://` clone URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneCredentials {
    pub username: String,
    pub password: SecretSource,
}

/// The configured URL without its userinfo, and the credentials it held (or that
/// `password_from_env` supplies). Errors say what is wrong without repeating the URL, which
/// may hold a password.
pub fn split_clone_url(
    url: &str,
    password_from_env: Option<Secret>,
) -> Result<(String, Option<CloneCredentials>), String> {
    if url.is_empty() {
        return Err("expected a URL git can fetch from, got an empty string".into());
    }
    if url.starts_with('-') {
        return Err("a URL cannot start with '-'".into());
    }
    if url.chars().any(char::is_control) {
        return Err("the URL contains a control character (a newline, a tab, NUL, ...)".into());
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        // A local path or scp-like `user@host:path` (ssh, where the user is no secret).
        return match password_from_env {
            Some(_) => Err(only_http("clone_password_env")),
            None => Ok((url.to_string(), None)),
        };
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    // The last '@' ends the userinfo: a password holding an unescaped '@' still splits right.
    let Some(at) = authority.rfind('@') else {
        return match password_from_env {
            Some(_) => Err("clone_password_env needs the user name in clone_url, as in https://USER@host/repo.git".into()),
            None => Ok((url.to_string(), None)),
        };
    };
    let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    let scheme_lower = scheme.to_ascii_lowercase();
    if scheme_lower != "http" && scheme_lower != "https" {
        return match (password, password_from_env) {
            (None, None) => Ok((url.to_string(), None)),
            (Some(_), _) => Err(format!(
                "a password in a {scheme}:// URL cannot be used; put credentials in an https:// URL or use a key"
            )),
            (None, Some(_)) => Err(only_http("clone_password_env")),
        };
    }
    let password = match (password, password_from_env) {
        (Some(_), Some(_)) => {
            return Err(
                "set the password either in clone_url or with clone_password_env, not both".into(),
            )
        }
        (Some(password), None) => Secret::new(percent_decode(password)?),
        (None, Some(secret)) => secret,
        (None, None) => Secret::new(String::new()),
    };
    let username = percent_decode(user)?;
    if username.is_empty() {
        return Err("the URL has credentials without a user name".into());
    }
    Ok((
        format!("{scheme}://{host}{path}"),
        Some(CloneCredentials {
            username,
            password: SecretSource::Value(password),
        }),
    ))
}

fn only_http(key: &str) -> String {
    format!("{key} works only with an http:// or https:// clone_url")
}

/// `%XX` escapes decoded, as git decodes them in a URL's userinfo.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("the URL's credentials hold a '%' that is not followed by two hex digits")?;
            decoded.push(hex);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded)
        .map_err(|_| "the URL's credentials are not UTF-8 once decoded".to_string())?;
    if decoded.chars().any(char::is_control) {
        return Err("the URL's credentials hold a control character once decoded".into());
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_password_leave_the_url() {
        let (url, credentials) =
            split_clone_url("https://bot:s3cr%40t@bitbucket.org/acme/hello.git", None).unwrap();
        assert_eq!(url, "https://bitbucket.org/acme/hello.git");
        let credentials = credentials.unwrap();
        assert_eq!(credentials.username, "bot");
        assert_eq!(credentials.password.read().unwrap().expose(), "s3cr@t");
    }

    #[test]
    fn an_unescaped_at_sign_stays_in_the_password() {
        let (url, credentials) =
            split_clone_url("http://bot:p@ss@127.0.0.1:8000/hello.git", None).unwrap();
        assert_eq!(url, "http://127.0.0.1:8000/hello.git");
        assert_eq!(
            credentials.unwrap().password.read().unwrap().expose(),
            "p@ss"
        );
    }

    #[test]
    fn urls_without_credentials_are_kept() {
        for url in [
            "file:///srv/hello.git",
            "/srv/hello.git",
            "git@bitbucket.org:acme/hello.git",
            "ssh://git@bitbucket.org/acme/hello.git",
            "https://bitbucket.org/acme/hello.git",
        ] {
            assert_eq!(split_clone_url(url, None).unwrap(), (url.to_string(), None));
        }
    }

    #[test]
    fn the_password_may_come_from_the_environment() {
        let (url, credentials) = split_clone_url(
            "https://bot@bitbucket.org/acme/hello.git",
            Some(Secret::new("from-env")),
        )
        .unwrap();
        assert_eq!(url, "https://bitbucket.org/acme/hello.git");
        assert_eq!(
            credentials.unwrap().password.read().unwrap().expose(),
            "from-env"
        );
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_the_password() {
        for (url, env) in [
            ("ssh://git:hunter2@host/repo.git", None),
            ("https://bot:hunter2@host/repo.git\n", None),
            ("https://bot:hunter2@host/repo.git", Some(Secret::new("x"))),
            ("https://:hunter2@host/repo.git", None),
            ("https://bot:hunter2%zz@host/repo.git", None),
            ("--upload-pack=touch /tmp/x", None),
        ] {
            let error = split_clone_url(url, env).unwrap_err();
            assert!(!error.contains("hunter2"), "{error}");
        }
        assert!(
            split_clone_url("https://host/repo.git", Some(Secret::new("x")))
                .unwrap_err()
                .contains("user name")
        );
    }
}
