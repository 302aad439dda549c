//! The HTML the server writes itself: the shell every page starts from (the script renders the
//! rest from the API) and the sign-in form. Everything interpolated is escaped.

use crate::store::sessions::Session;
use crate::store::tokens::Scope;

/// The page for a viewer: signed in (with the CSRF token the script sends with changes and the
/// token's scopes, which decide the actions it offers), or anonymous (reads only).
pub fn shell(session: Option<&Session>) -> String {
    let (who, csrf, scopes) = match session {
        Some(session) => {
            let scopes: Vec<String> = session.token.scopes.iter().map(Scope::to_string).collect();
            (
                session.token.name.clone(),
                session.csrf.clone(),
                scopes.join(" "),
            )
        }
        None => (String::new(), String::new(), String::new()),
    };
    let account = match session {
        Some(_) => format!(
            r#"<form method="post" action="/sign-out" class="sign-out"><span class="who" title="signed in with this API token">{}</span><input type="hidden" name="csrf" value="{}"><button type="submit">Sign out</button></form>"#,
            escape(&who),
            escape(&csrf)
        ),
        None => r#"<a class="sign-in-link" href="/sign-in">Sign in</a>"#.to_string(),
    };
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="slipway-csrf" content="{csrf}">
<meta name="slipway-scopes" content="{scopes}">
<title>Slipway</title>
<link rel="stylesheet" href="/ui/app.css">
<link rel="stylesheet" href="/ui/log.css">
<script src="/ui/log.js" defer></script>
<script src="/ui/app.js" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<a class="brand" href="/">Slipway</a>
<nav id="nav" aria-label="Sections"></nav>
<div class="account">{account}</div>
</header>
<div id="alert" role="alert" hidden></div>
<main id="main" tabindex="-1"><p class="loading">Loading…</p></main>
<footer class="foot">Slipway {version}</footer>
<dialog id="confirm" aria-labelledby="confirm-title">
<form method="dialog">
<h2 id="confirm-title"></h2>
<p id="confirm-detail"></p>
<div class="buttons"><button value="cancel" type="submit" class="secondary">Cancel</button> <button value="ok" type="submit" id="confirm-ok" class="danger"></button></div>
</form>
</dialog>
</body>
</html>
"##,
        csrf = escape(&csrf),
        scopes = escape(&scopes),
        version = escape(env!("CARGO_PKG_VERSION")),
        account = account,
    )
}

/// The sign-in form, with why the last try failed.
pub fn sign_in(next: &str, error: Option<&str>) -> String {
    let error = match error {
        Some(why) => format!(r#"<p class="error" role="alert">{}</p>"#, escape(why)),
        None => String::new(),
    };
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Sign in · Slipway</title>
<link rel="stylesheet" href="/ui/app.css">
</head>
<body class="sign-in-page">
<main id="main">
<h1>Slipway</h1>
<form method="post" action="/sign-in" class="card sign-in">
<h2>Sign in</h2>
{error}
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus spellcheck="false">
<input type="hidden" name="next" value="{next}">
<p class="hint">Any token that can read (<code>slipway token create --scope read</code>). What you may do here is what the token may do.</p>
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"##,
        next = escape(next),
    )
}

/// `text` with HTML's special characters escaped, for element content and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// `text` percent-encoded for a query string value.
pub fn query_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                escaped.push(byte as char)
            }
            other => escaped.push_str(&format!("%{other:02X}")),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_pages_interpolate_is_escaped() {
        assert_eq!(
            escape(r#"<script>"x" & 'y'</script>"#),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        let form = sign_in(r#""><script>"#, Some("<b>no</b>"));
        assert!(!form.contains("<script>"));
        assert!(form.contains("&lt;b&gt;no&lt;/b&gt;"));
        assert_eq!(
            query_escape("/projects/a b?x=1&y"),
            "/projects/a%20b%3Fx%3D1%26y"
        );
    }
}
