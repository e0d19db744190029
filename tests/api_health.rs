//! Health endpoints through the router, without a socket.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use mxguard::api::{router, AppState, OPENAPI};
use mxguard::config::StoreUrl;
use tower::ServiceExt;

async fn app(dir: &tempfile::TempDir) -> (axum::Router, std::sync::Arc<dyn mxguard::store::Store>) {
    let url = StoreUrl::parse(&format!("sqlite://{}", dir.path().join("t.db").display())).unwrap();
    let store = mxguard::store::open(&url).await.unwrap();
    store.migrate().await.unwrap();
    // /readyz needs a token unless the config opens it; these tests open it.
    let config =
        mxguard::config::Config::parse("t.toml", "[server]\nopen_readyz = true\n").unwrap();
    (
        router(AppState {
            store: store.clone(),
            engine: Default::default(),
            config: std::sync::Arc::new(config),
            providers: Default::default(),
        }),
        store,
    )
}

async fn call(app: &axum::Router, path: &str) -> (StatusCode, String) {
    let resp = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn readyz_follows_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (app, store) = app(&dir).await;
    let (status, body) = call(&app, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    store.close().await;
    let (status, body) = call(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("\"status\":\"unavailable\""), "{body}");
    let (status, _) = call(&app, "/healthz").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "liveness does not depend on the store"
    );
}

#[tokio::test]
async fn openapi_document_is_served_and_lists_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = app(&dir).await;
    let (status, body) = call(&app, "/openapi.yaml").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, OPENAPI);
    for path in ["/healthz", "/readyz", "/openapi.yaml"] {
        assert!(
            OPENAPI.contains(&format!("\n  {path}:\n")),
            "{path} not documented"
        );
        let (status, _) = call(&app, path).await;
        assert_ne!(
            status,
            StatusCode::NOT_FOUND,
            "{path} documented but not routed"
        );
    }
    let (status, _) = call(&app, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
