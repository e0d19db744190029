//! Helpers shared by the black-box tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use mxguard::config::StoreUrl;
use sqlx::Connection;

/// A fresh, empty PostgreSQL database for one test, dropped by [`PgDb::drop_db`].
/// `DATABASE_URL` must name a server where the user may create databases; there is no
/// fallback: without it the test fails and says so.
pub struct PgDb {
    admin_url: String,
    pub name: String,
    pub url: StoreUrl,
}

pub async fn fresh_pg_database(tag: &str) -> PgDb {
    let admin_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: the PostgreSQL tests need a server \
             (scripts/test starts one and exports DATABASE_URL)"
        )
    });
    let mut conn = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at DATABASE_URL: {e}"));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    let name = format!("mxguard_test_{tag}_{}_{nanos}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    conn.close().await.ok();
    let url = with_database(&admin_url, &name);
    PgDb {
        admin_url,
        url: StoreUrl::parse(&url).expect("postgres url"),
        name,
    }
}

impl PgDb {
    pub async fn drop_db(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}

/// Replaces the database name in a postgres URL (keeps query parameters).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..path_start], db);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub async fn poll<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub mod api;
pub mod browser;
pub mod ha;
pub mod lab;
