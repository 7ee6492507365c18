//! Local-only extras for the demo web app (`web/app/`):
//!
//! - [`serve_static`]: the app's static files at `/`, `/app.js`, ... from one folder.
//!   API routes always win: a path whose first segment is the first literal segment of a
//!   template route (`/v1/...`, `/healthz`) or `__local` is never looked up on disk, and a
//!   path with no file behind it goes on to the HTTP API as before. Only `GET` and `HEAD`
//!   are served; `..`, `.`, backslashes, NUL and hidden segments are refused, and the
//!   resolved file must lie inside the folder after following symlinks.
//! - [`token_router`]: `POST /__local/token {"user":"demo"}` → `{token, user, expiresAt}`,
//!   a token signed like `local-token`'s, so the browser can sign in as a demo user. It
//!   exists in the local runtime only; nothing in template.yaml serves it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::jwt;

/// How long a token from `POST /__local/token` is valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);
/// The longest user name `POST /__local/token` accepts.
pub const MAX_USER_LEN: usize = 64;

/// The folder the web app is served from, and the first path segments it must never
/// answer for.
#[derive(Debug, Clone)]
pub struct WebRoot {
    root: PathBuf,
    reserved: Vec<String>,
}

impl WebRoot {
    /// `folder` (which must exist) with the first literal segments of `route_paths`
    /// (template paths such as `/v1/banks`) and `__local` reserved for the API.
    pub fn new<'a>(
        folder: &Path,
        route_paths: impl IntoIterator<Item = &'a str>,
    ) -> std::io::Result<WebRoot> {
        let root = folder.canonicalize()?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a folder", root.display()),
            ));
        }
        let mut reserved = vec!["__local".to_owned()];
        for path in route_paths {
            if let Some(first) = path.strip_prefix('/').and_then(|p| p.split('/').next())
                && !first.is_empty()
                && !first.starts_with('{')
                && !reserved.iter().any(|r| r == first)
            {
                reserved.push(first.to_owned());
            }
        }
        Ok(WebRoot { root, reserved })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file to answer `path` (the raw, still percent-encoded request path) with, or
    /// `None` when the path is the API's, is not acceptable, or has no file behind it.
    pub fn resolve(&self, path: &str) -> Option<PathBuf> {
        let decoded = percent_decode(path)?;
        let segments: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
        if let Some(first) = segments.first()
            && self.reserved.iter().any(|r| r == first)
        {
            return None;
        }
        let mut candidate = self.root.clone();
        for segment in &segments {
            if segment.starts_with('.') || segment.contains(['\\', '\0']) {
                return None;
            }
            candidate.push(segment);
        }
        if segments.is_empty() || decoded.ends_with('/') {
            candidate.push("index.html");
        }
        // Symlinks may point anywhere: what counts is where the file really is.
        let real = candidate.canonicalize().ok()?;
        (real.starts_with(&self.root) && real.is_file()).then_some(real)
    }
}

/// Percent-decodes a path; `None` for an invalid escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `Content-Type` for a file name.
pub fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("ico") => "image/x-icon",
        Some("csv") => "text/csv; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Wraps `app` (admin routes merged with the HTTP API) so that the web app's files are
/// served where no API route answers; `None` leaves `app` as it is.
pub fn serve_static(app: Router, web: Option<WebRoot>) -> Router {
    match web {
        Some(web) => app.layer(middleware::from_fn_with_state(
            Arc::new(web),
            static_middleware,
        )),
        None => app,
    }
}

async fn static_middleware(
    State(web): State<Arc<WebRoot>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return next.run(request).await;
    }
    let Some(file) = web.resolve(request.uri().path()) else {
        return next.run(request).await;
    };
    let read = tokio::task::spawn_blocking({
        let file = file.clone();
        move || std::fs::read(file)
    })
    .await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        _ => return next.run(request).await,
    };
    let length = bytes.len();
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&file)));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `POST /__local/token`, signing with `secret` (the runtime's JWT authorizer secret).
pub fn token_router(secret: String) -> Router {
    Router::new()
        .route("/__local/token", post(issue_token))
        .with_state(Arc::new(secret))
}

/// Whether `user` may be a demo user name: 1 to [`MAX_USER_LEN`] characters of
/// `A-Z a-z 0-9 . _ @ -`.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= MAX_USER_LEN
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}

async fn issue_token(State(secret): State<Arc<String>>, body: axum::body::Bytes) -> Response {
    let problem = |detail: &str| {
        (
            StatusCode::BAD_REQUEST,
            [(CONTENT_TYPE, "application/problem+json")],
            Json(json!({
                "type": "about:blank",
                "title": "Bad Request",
                "status": 400,
                "detail": detail,
                "errors": [{"field": "user", "message": detail}],
            })),
        )
            .into_response()
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return problem("the body must be JSON such as {\"user\":\"demo\"}");
    };
    let Some(user) = value.get("user").and_then(|u| u.as_str()) else {
        return problem("user is required");
    };
    if !valid_user(user) {
        return problem("user must be 1 to 64 letters, digits or . _ @ -");
    }
    let token = jwt::issue(&secret, user, TOKEN_TTL, None);
    let expires_at = chrono::Utc::now()
        + chrono::Duration::from_std(TOKEN_TTL).unwrap_or(chrono::Duration::hours(12));
    tracing::info!(user, "issued a local demo token");
    (
        StatusCode::OK,
        [(CACHE_CONTROL, "no-store")],
        Json(json!({
            "token": token,
            "user": user,
            "expiresAt": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("web-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A web root with index.html, app.js, a nested file, a file named like an API route,
    /// and a secret file beside (outside) the root.
    fn fixture() -> (PathBuf, WebRoot) {
        let base = temp_dir("fixture");
        let root = base.join("app");
        std::fs::create_dir_all(root.join("img")).unwrap();
        std::fs::create_dir_all(root.join("v1")).unwrap();
        std::fs::write(root.join("index.html"), "<h1>demo</h1>").unwrap();
        std::fs::write(root.join("app.js"), "console.log(1)").unwrap();
        std::fs::write(root.join("img/logo.svg"), "<svg/>").unwrap();
        std::fs::write(root.join("v1/banks"), "shadow").unwrap();
        std::fs::write(root.join("teapot"), "shadow").unwrap();
        std::fs::write(root.join(".env"), "hidden").unwrap();
        std::fs::write(base.join("secret.txt"), "outside").unwrap();
        std::os::unix::fs::symlink(base.join("secret.txt"), root.join("link.txt")).unwrap();
        let web = WebRoot::new(&root, ["/v1/banks", "/healthz", "/teapot", "/{proxy+}"]).unwrap();
        (base, web)
    }

    /// Serves `web` in front of a stand-in API that answers every request
    /// `api METHOD PATH`; returns the base URL.
    async fn serve(web: WebRoot) -> String {
        let api = Router::new().fallback(|request: Request| async move {
            format!("api {} {}", request.method(), request.uri().path())
        });
        let app = serve_static(token_router("unit-secret".to_owned()).merge(api), Some(web));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    #[test]
    fn resolves_files_inside_the_root_only() {
        let (base, web) = fixture();
        let root = web.root().to_path_buf();
        assert_eq!(web.resolve("/"), Some(root.join("index.html")));
        assert_eq!(web.resolve("/app.js"), Some(root.join("app.js")));
        assert_eq!(
            web.resolve("/img/logo.svg"),
            Some(root.join("img/logo.svg"))
        );
        assert_eq!(
            web.resolve("/img%2Flogo.svg"),
            Some(root.join("img/logo.svg"))
        );
        for refused in [
            "/../secret.txt",
            "/img/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E%2Fsecret.txt",
            "/img/..%2f..%2fsecret.txt",
            "/..%5csecret.txt",
            "/.env",
            "/link.txt",
            "/missing.js",
            "/img",
            "/app.js%00",
            "/%zz",
            "/v1/banks",
            "/teapot",
            "/healthz",
            "/__local/plan",
        ] {
            assert_eq!(web.resolve(refused), None, "{refused}");
        }
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_missing_folder_is_an_error() {
        let missing = std::env::temp_dir().join("web-root-that-does-not-exist-7f3a");
        assert!(WebRoot::new(&missing, []).is_err());
    }

    #[tokio::test]
    async fn serves_the_app_and_leaves_api_routes_to_the_api() {
        let (base, web) = fixture();
        let url = serve(web).await;
        let http = reqwest::Client::new();

        let index = http.get(format!("{url}/")).send().await.unwrap();
        assert_eq!(index.status(), 200);
        assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(index.text().await.unwrap(), "<h1>demo</h1>");

        let js = http.get(format!("{url}/app.js")).send().await.unwrap();
        assert_eq!(
            js.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(js.headers()["x-content-type-options"], "nosniff");
        assert_eq!(js.text().await.unwrap(), "console.log(1)");

        let head = http.head(format!("{url}/app.js")).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["content-length"], "14");

        // API routes win even where a file of the same name exists.
        for (method, path) in [
            (reqwest::Method::GET, "/v1/banks"),
            (reqwest::Method::GET, "/teapot"),
            (reqwest::Method::GET, "/healthz"),
            (reqwest::Method::POST, "/app.js"),
            (reqwest::Method::GET, "/missing.js"),
        ] {
            let answer = http
                .request(method.clone(), format!("{url}{path}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(answer, format!("api {method} {path}"));
        }

        // Traversal attempts never read the file outside the root.
        for path in [
            "/%2e%2e/secret.txt",
            "/img/..%2f..%2fsecret.txt",
            "/link.txt",
        ] {
            let answer = http.get(format!("{url}{path}")).send().await.unwrap();
            let text = answer.text().await.unwrap();
            assert!(!text.contains("outside"), "{path}: {text}");
            assert!(text.starts_with("api GET"), "{path}: {text}");
        }
        std::fs::remove_dir_all(base).unwrap();
    }

    #[tokio::test]
    async fn the_token_route_signs_like_local_token() {
        let (base, web) = fixture();
        let url = serve(web).await;
        let http = reqwest::Client::new();

        let answer = http
            .post(format!("{url}/__local/token"))
            .body(r#"{"user":"demo"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["cache-control"], "no-store");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["user"], "demo");
        let token = body["token"].as_str().unwrap();
        let claims = jwt::verify("unit-secret", token, None).unwrap();
        assert_eq!(claims["sub"], "demo");
        assert_eq!(claims["iss"], jwt::ISSUER);
        assert!(jwt::verify("another-secret", token, None).is_err());

        for bad in [
            "",
            "nope",
            r#"{"user":""}"#,
            r#"{"user":"a b"}"#,
            r#"{"user":7}"#,
        ] {
            let answer = http
                .post(format!("{url}/__local/token"))
                .body(bad)
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 400, "{bad}");
            assert_eq!(answer.headers()["content-type"], "application/problem+json");
            let problem: serde_json::Value = answer.json().await.unwrap();
            assert_eq!(problem["errors"][0]["field"], "user", "{bad}");
        }
        let long = format!(r#"{{"user":"{}"}}"#, "a".repeat(MAX_USER_LEN + 1));
        let answer = http
            .post(format!("{url}/__local/token"))
            .body(long)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400);
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn user_names() {
        assert!(valid_user("demo"));
        assert!(valid_user("alice.b_c-d@example"));
        assert!(!valid_user(""));
        assert!(!valid_user("a/b"));
        assert!(!valid_user("ä"));
        assert!(!valid_user(&"a".repeat(MAX_USER_LEN + 1)));
    }
}
