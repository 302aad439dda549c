//! `/apt/`: the apt repository (suite `stable`, the pool, the public key), from the directory
//! the servers share or, with `[apt] s3`, streamed from the bucket, so every server serves
//! the same bytes.

use aws_sdk_s3::primitives::DateTimeFormat;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::io::ReaderStream;
use tower_http::services::{ServeDir, ServeFile};

use super::AppState;

/// The longest path under `/apt/` looked up in the bucket.
const PATH_LIMIT: usize = 1024;

pub fn routes(state: &AppState) -> Router<AppState> {
    if state.repository.bucket().is_some() {
        return Router::new().route("/apt/{*path}", get(from_bucket));
    }
    let apt = state.repository.root();
    // The index (a symlink swapped atomically on publish), the pool of every release's
    // package, and the public key for `signed-by`.
    Router::new()
        .nest_service("/apt/dists", ServeDir::new(apt.join("dists")))
        .nest_service("/apt/pool", ServeDir::new(apt.join("pool")))
        .route_service("/apt/key.gpg", ServeFile::new(apt.join("key.gpg")))
}

/// One object of the repository, streamed from the bucket.
async fn from_bucket(State(state): State<AppState>, Path(path): Path<String>) -> Response {
    let Some(bucket) = state.repository.bucket() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !servable(&path) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let object = match bucket.object(&path).await {
        Ok(Some(object)) => object,
        Ok(None) => return StatusCode::NOT_FOUND.into_response(),
        Err(error) => {
            tracing::warn!(
                path,
                error = format!("{error:#}"),
                "cannot serve from the apt bucket"
            );
            return (
                StatusCode::BAD_GATEWAY,
                "the apt repository's bucket did not answer\n",
            )
                .into_response();
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(length) = object.content_length() {
        headers.insert(header::CONTENT_LENGTH, length.into());
    }
    let modified = object
        .last_modified()
        .and_then(|time| time.fmt(DateTimeFormat::HttpDate).ok())
        .and_then(|text: String| HeaderValue::from_str(&text).ok());
    if let Some(modified) = modified {
        headers.insert(header::LAST_MODIFIED, modified);
    }
    if let Some(etag) = object.e_tag().and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert(header::ETAG, etag);
    }
    let body = Body::from_stream(ReaderStream::new(object.body.into_async_read()));
    (headers, body).into_response()
}

/// What `/apt/` serves: the index, the pool and the public key, never the catalogue; and no
/// path that S3 would read another way than a directory would.
fn servable(path: &str) -> bool {
    path.len() <= PATH_LIMIT
        && (path == "key.gpg" || path.starts_with("dists/") || path.starts_with("pool/"))
        && path.bytes().all(|b| b.is_ascii_graphic())
        && path
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

#[cfg(test)]
mod tests {
    use super::servable;

    #[test]
    fn only_the_index_the_pool_and_the_key_are_served_from_the_bucket() {
        for path in [
            "key.gpg",
            "dists/stable/InRelease",
            "dists/stable/main/binary-amd64/by-hash/SHA256/ab12",
            "pool/main/h/hello/hello_1_amd64.deb",
        ] {
            assert!(servable(path), "{path}");
        }
        for path in [
            "db/catalogue.json",
            "dists/../db/catalogue.json",
            "pool//x",
            "dists/stable/./Release",
            "pool/a b.deb",
            "",
        ] {
            assert!(!servable(path), "{path}");
        }
        assert!(!servable(&format!("pool/{}", "a".repeat(1100))));
    }
}
