//! The embedded default: one SQLite file in WAL mode. Single instance only.
//!
//! SQLite lets one writer at a time into the file and, with `synchronous = FULL`, makes every
//! commit wait for an fsync of the WAL: that fsync, not the SQL, is what a write costs. Writes
//! used to share a pool of 4 connections with reads (acquire timeout 5 s): at a start with
//! thousands of domains every actor writes its state and events at once, the 4 connections
//! fought for the write lock (the losers sleeping in SQLite's busy handler, holding their
//! connection), reads queued behind them, and callers waiting more than 5 s for a connection
//! got an error: an audit event or a state write lost (tests/store_load.rs, 5,000 startups,
//! about 31,000 writes: the old pool lost 300 to 750 of them, up to 10,000 in a heavier
//! variant; now none, in 40 % less time, with 171 fsyncs instead of one per write).
//!
//! So writes and reads are kept apart:
//! - **Writes** go to one task that owns the only write connection and commits them in
//!   groups: it takes every write job waiting (up to `GROUP_MAX`), runs each in a
//!   `SAVEPOINT` of one `BEGIN IMMEDIATE` transaction (a job that fails rolls back alone, as
//!   its own transaction did), commits once (one fsync for the group) and only then answers
//!   each caller. A caller is told "done" only once its write is durable, exactly as before
//!   (`synchronous` stays `FULL`); if the commit fails, every job of the group is told so.
//!   Writers wait in a queue instead of timing out: SQLite serialises them anyway, and a
//!   write that gives up is data lost while one that waits is merely late. A caller that
//!   stops waiting (its future dropped) does not withdraw a queued write; it still commits.
//! - **Reads** use a pool of their own (`query_only`): in WAL mode they never wait for the
//!   writer, so loading state stays fast while writes queue.
//! - `busy_timeout` remains for other processes (the CLI's snapshot commands) holding the
//!   write lock.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio::sync::{mpsc, oneshot};

use super::sql::impl_sql_store;
use super::StoreError;
use crate::config::{StoreKind, StoreUrl};

/// Most write jobs committed by one transaction: bounds how long the first of them waits.
const GROUP_MAX: usize = 256;
/// Write jobs queued before callers wait to enqueue (a caller waits either way).
const QUEUE: usize = 1024;

type Output = Box<dyn Any + Send>;
type Run = Box<
    dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<Output, StoreError>>
        + Send,
>;

type Reply = oneshot::Sender<Result<Output, StoreError>>;

/// One caller's writes, and where to send the answer once their group is committed.
struct Job {
    run: Run,
    reply: Reply,
}

pub struct SqliteStore {
    readers: SqlitePool,
    /// One connection: the writer task's (and the migrations', which run before any write).
    writes: SqlitePool,
    jobs: mpsc::Sender<Job>,
}

impl SqliteStore {
    const KIND: StoreKind = StoreKind::Sqlite;
    /// SQLite's clock (the machine's, read once per statement), in ms. `subsec` needs SQLite
    /// 3.42; sqlx bundles 3.46.
    const CLOCK_MS: &str = "CAST(ROUND(unixepoch('now', 'subsec') * 1000) AS INTEGER)";
    /// The snapshot a domain's state refers to (`actor::Persisted::failover_snapshot`).
    const STATE_SNAPSHOT: &str = "json_extract(state, '$.failover_snapshot')";
    /// The snapshot a domain's TTL restore reads (`actor::Persisted::early_ttl_snapshot`).
    const STATE_EARLY_SNAPSHOT: &str = "json_extract(state, '$.early_ttl_snapshot')";
    /// The names of the JSON array bound as `$1`: one variable, whatever the count.
    const NAMES: &str = "(SELECT value FROM json_each($1))";

    pub async fn open(url: &StoreUrl) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url.expose())
            .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // The write connection first: it creates the file and switches it to WAL.
        let writes = SqlitePoolOptions::new()
            .max_connections(1)
            // Only the writer task and the migrations take it; the writer waits for nothing
            // else, so this bounds a stuck migration, not a busy service.
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(opts.clone())
            .await
            .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            // Reads never wait for the writer (WAL); a read that waits this long means the
            // process is starved, and waiting still beats failing the caller.
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts.pragma("query_only", "ON"))
            .await
            .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        let (jobs, queue) = mpsc::channel(QUEUE);
        spawn_writer(writes.clone(), queue)?;
        Ok(SqliteStore {
            readers,
            writes,
            jobs,
        })
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.writes)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))
    }

    fn reader(&self) -> &SqlitePool {
        &self.readers
    }

    /// Queues `job` for the writer task and waits, without a time limit, until its group is
    /// committed (or has failed).
    async fn write<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, StoreError>>
            + Send
            + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let run: Run = Box::new(move |c| {
            Box::pin(async move { job(c).await.map(|out| Box::new(out) as Output) })
        });
        self.jobs
            .send(Job { run, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?;
        let out = answer.await.map_err(|_| {
            StoreError::Unavailable("the store's writer stopped before committing".into())
        })??;
        out.downcast::<T>()
            .map(|out| *out)
            .map_err(|_| StoreError::Corrupt("a write job answered with another type".into()))
    }

    async fn close_pools(&self) {
        // The writes pool closes once a group in progress has committed and returned its
        // connection; jobs queued after that are answered `Unavailable`.
        self.writes.close().await;
        self.readers.close().await;
    }
}

/// Runs the writer on a thread and runtime of its own. Each statement is a round trip between
/// the async writer and sqlx's connection thread; on the service's runtime every one of those
/// waited its turn behind thousands of probe tasks (5,000 domains: about 50 writes/s, and
/// the store fell minutes behind). On its own current-thread runtime the writer is woken as
/// soon as SQLite answers.
fn spawn_writer(pool: SqlitePool, queue: mpsc::Receiver<Job>) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Unavailable(format!("cannot start the store's writer: {e}")))?;
    std::thread::Builder::new()
        .name("mxguard-sqlite-writer".into())
        .spawn(move || runtime.block_on(writer(pool, queue)))
        .map_err(|e| StoreError::Unavailable(format!("cannot start the store's writer: {e}")))?;
    Ok(())
}

/// The writer task: commits the queued write jobs group by group until the store is dropped.
async fn writer(pool: SqlitePool, mut queue: mpsc::Receiver<Job>) {
    let mut group = Vec::with_capacity(GROUP_MAX);
    while queue.recv_many(&mut group, GROUP_MAX).await > 0 {
        commit_group(&pool, std::mem::take(&mut group)).await;
    }
}

/// One statement of the writer's own (transaction control). Boxed with its lifetime spelled
/// out: awaiting sqlx's generic `execute` directly in the spawned writer trips rustc's
/// inference of `Send` ("implementation of `Executor` is not general enough").
fn exec<'c>(conn: &'c mut SqliteConnection, sql: &'static str) -> BoxFuture<'c, sqlx::Result<()>> {
    Box::pin(async move { sqlx::query(sql).execute(conn).await.map(|_| ()) })
}

/// Runs `group` in one transaction, a savepoint per job, commits, then answers every job.
async fn commit_group(pool: &SqlitePool, group: Vec<Job>) {
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => {
            let why = format!("no write connection: {e}");
            for job in group {
                let _ = job.reply.send(Err(StoreError::Unavailable(why.clone())));
            }
            return;
        }
    };
    let mut done: Vec<(Reply, Result<Output, StoreError>)> = Vec::with_capacity(group.len());
    let mut jobs = group.into_iter();
    let outcome = run_group(&mut conn, &mut jobs, &mut done).await;
    let failed = match outcome {
        Ok(()) => match exec(&mut conn, "COMMIT").await {
            Ok(_) => None,
            Err(e) => Some(format!("commit failed: {e}")),
        },
        Err(why) => Some(why),
    };
    if let Some(why) = failed {
        // The group did not commit (as for any failed commit, an I/O error at the fsync leaves
        // it uncertain, never half done). A job that failed on its own keeps its own error
        // (still true); the others learn that their write was not committed. The connection
        // may be left inside the transaction: it is closed, not reused.
        let _ = exec(&mut conn, "ROLLBACK").await;
        conn.close_on_drop();
        tracing::error!(error = %why, jobs = done.len() + jobs.len(), "SQLite store: a group of writes was not committed");
        for (reply, out) in done {
            let out = out.and(Err(StoreError::Unavailable(why.clone())));
            let _ = reply.send(out);
        }
        for job in jobs {
            let _ = job.reply.send(Err(StoreError::Unavailable(why.clone())));
        }
        return;
    }
    for (reply, out) in done {
        let _ = reply.send(out);
    }
}

/// Opens the group's transaction and runs each job in a savepoint; `Err` when the group as a
/// whole cannot commit (the jobs not yet run stay in `jobs`).
async fn run_group(
    conn: &mut SqliteConnection,
    jobs: &mut std::vec::IntoIter<Job>,
    done: &mut Vec<(Reply, Result<Output, StoreError>)>,
) -> Result<(), String> {
    // IMMEDIATE: take the write lock now (waiting `busy_timeout` for another process), so no
    // statement of the group can fail later for want of it.
    exec(conn, "BEGIN IMMEDIATE")
        .await
        .map_err(|e| format!("cannot begin a write transaction: {e}"))?;
    for job in jobs.by_ref() {
        exec(conn, "SAVEPOINT job")
            .await
            .map_err(|e| format!("savepoint: {e}"))?;
        let out = match AssertUnwindSafe((job.run)(conn)).catch_unwind().await {
            Ok(out) => out,
            Err(_) => {
                let _ = job
                    .reply
                    .send(Err(StoreError::Unavailable("a write job panicked".into())));
                return Err("a write job panicked".into());
            }
        };
        // A failed job leaves nothing behind; if SQLite rolled the whole transaction back
        // (I/O error, disk full) the savepoint is gone and this fails the group.
        let ended = match out.is_ok() {
            true => exec(conn, "RELEASE job").await,
            false => match exec(conn, "ROLLBACK TO job").await {
                Ok(()) => exec(conn, "RELEASE job").await,
                Err(e) => Err(e),
            },
        };
        done.push((job.reply, out));
        ended.map_err(|e| format!("ending a savepoint: {e}"))?;
    }
    Ok(())
}

impl_sql_store!(SqliteStore, sqlx::Sqlite);
