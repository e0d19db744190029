//! An axum app served on a loopback port in the calling tokio runtime until stopped: the HTTP
//! peers (the Cloudflare fake, the Route 53 proxy) share this rather than each keeping its own
//! shutdown channel.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Error, Result};

pub(crate) struct Served {
    pub addr: SocketAddr,
    stop: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl Served {
    /// Binds 127.0.0.1:0 and serves `app` there; `what` names the peer in errors.
    pub(crate) async fn start(app: axum::Router, what: &str) -> Result<Served> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::io(format!("binding {what}'s port"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io(format!("reading {what}'s address"), e))?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Served {
            addr,
            stop: Mutex::new(Some((tx, task))),
        })
    }

    /// Stops serving (later connections are refused); waits up to 10 s for open ones.
    pub(crate) async fn stop(&self) {
        let taken = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((tx, task)) = taken {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}
