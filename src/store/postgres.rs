//! PostgreSQL: the production backend, and the only one that can hold a leader lease for HA.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

use super::sql::impl_sql_store;
use super::StoreError;
use crate::config::{StoreKind, StoreUrl};

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    const KIND: StoreKind = StoreKind::Postgres;
    /// The server's clock, in ms: `clock_timestamp()`, the time the statement reads it, rather
    /// than `now()`, which stays at the start of the transaction.
    const CLOCK_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";
    /// The snapshot a domain's state refers to (`actor::Persisted::failover_snapshot`).
    const STATE_SNAPSHOT: &str = "(state ->> 'failover_snapshot')::BIGINT";
    /// The snapshot a domain's TTL restore reads (`actor::Persisted::early_ttl_snapshot`).
    const STATE_EARLY_SNAPSHOT: &str = "(state ->> 'early_ttl_snapshot')::BIGINT";
    /// The names of the JSON array bound as `$1` (sqlx binds `Json` as `jsonb`).
    const NAMES: &str = "(SELECT jsonb_array_elements_text($1))";

    pub async fn open(url: &StoreUrl) -> Result<Self, StoreError> {
        // A caller waits up to 30 s for one of the 8 connections: at a start with thousands
        // of domains every actor writes at once, and a write that gives up after 5 s (as it
        // did) is an audit event or a state lost (tests/store_load.rs against PostgreSQL: 381
        // to 675 of 31,000 writes lost, none now), while one that waits is merely late.
        // PostgreSQL itself takes concurrent writers.
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy(url.expose())
            .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        // Opening still fails fast when the server is down (`serve` and the CLI exit 1).
        match tokio::time::timeout(Duration::from_secs(5), pool.acquire()).await {
            Ok(Ok(_first)) => Ok(PgStore { pool }),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("{url}: {e}"))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "{url}: no connection within 5 s"
            ))),
        }
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    /// Each write job is a transaction of its own: PostgreSQL takes concurrent writers itself
    /// (row locks; the fence's lease row lock is held until this commit).
    async fn write<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let mut tx = self.pool.begin().await?;
        let out = job(&mut tx).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn close_pools(&self) {
        self.pool.close().await;
    }
}

impl_sql_store!(PgStore, sqlx::Postgres);
