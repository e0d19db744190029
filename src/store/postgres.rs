//! PostgreSQL: the production backend, and the only one that can hold a leader lease for HA.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use super::sql::impl_sql_store;
use super::StoreError;
use crate::config::{StoreKind, StoreUrl};

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    const KIND: StoreKind = StoreKind::Postgres;

    pub async fn open(url: &StoreUrl) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url.expose())
            .await
            .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        Ok(PgStore { pool })
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))
    }
}

impl_sql_store!(PgStore, sqlx::Postgres);
