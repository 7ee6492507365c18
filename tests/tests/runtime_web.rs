//! The demo web app in the local runtime (fixture template): its files are served where no
//! API route answers, API routes still reach their functions, a path that climbs out of
//! the folder reads nothing outside it, and `POST /__local/token` signs in a demo user with
//! a token the JWT authorizer accepts.
//!
//! Needs the fixture binaries: `cargo build -p runtime-fixture` (make test does it).

use std::path::{Path, PathBuf};

use integration_tests::Runtime;
use serde_json::Value;

const SECRET: &str = "web-e2e-secret";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test]
async fn the_runtime_serves_the_web_app_beside_the_api() {
    let rt = Runtime::start(
        &root().join("tests/fixtures/runtime-template.yaml"),
        SECRET,
        &[(
            "FIXTURE_LOG",
            std::env::temp_dir()
                .join(format!(
                    "runtime-web-{}.jsonl",
                    uuid::Uuid::new_v4().simple()
                ))
                .display()
                .to_string(),
        )],
    )
    .await;

    let index = rt.http.get(rt.url("/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
    let html = index.text().await.unwrap();
    let on_disk = std::fs::read_to_string(root().join("web/app/index.html")).unwrap();
    assert_eq!(html, on_disk);

    let js = rt.http.get(rt.url("/app.js")).send().await.unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );

    // API routes are the API's: a public one answers from its function, a protected one
    // without a token is refused by the authorizer, an unknown path is API Gateway's 404.
    let teapot = rt.http.get(rt.url("/teapot")).send().await.unwrap();
    assert_eq!(teapot.status(), 418);
    assert_eq!(
        rt.http.get(rt.url("/v1/me")).send().await.unwrap().status(),
        401
    );
    let nowhere = rt.http.get(rt.url("/nowhere.js")).send().await.unwrap();
    assert_eq!(nowhere.status(), 404);
    assert_eq!(
        nowhere.json::<Value>().await.unwrap()["message"],
        "Not Found"
    );

    // Climbing out of web/app (encoded so that no client normalises it away) reads nothing.
    for path in [
        "/..%2f..%2fCargo.toml",
        "/%2e%2e%2F%2e%2e%2FCargo.toml",
        "/..%5c..%5cCargo.toml",
    ] {
        let r = rt.http.get(rt.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(!r.text().await.unwrap().contains("[workspace]"), "{path}");
    }

    // Sign in as a demo user; the token works on a protected route.
    let signed: Value = rt
        .http
        .post(rt.url("/__local/token"))
        .body(r#"{"user":"demo-web"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signed["token"].as_str().unwrap();
    let me = rt
        .http
        .get(rt.url("/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<Value>().await.unwrap()["sub"], "demo-web");
    let refused = rt
        .http
        .post(rt.url("/__local/token"))
        .body(r#"{"user":"../x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);

    rt.stop().await;
}
