//! A foreground daemon (named -g, unbound -d) run as a child process, logging to a file in
//! its peer directory, killed on drop.

use std::ffi::OsString;
use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::util::{log_tail, poll_until};
use crate::workdir::Workdir;
use crate::{Error, Result, START_DEADLINE};

#[derive(Debug)]
pub(crate) struct Daemon {
    name: &'static str,
    bin: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    pub(crate) fn new(name: &'static str, bin: PathBuf, args: Vec<OsString>, log: PathBuf) -> Self {
        Daemon {
            name,
            bin,
            args,
            log,
            child: None,
        }
    }

    /// Starts the process (appending to its log) and waits until `ready` succeeds, failing
    /// early with the log's tail if the process exits.
    pub(crate) async fn start<F, Fut, E>(&mut self, workdir: &Workdir, ready: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Display,
    {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Error::io(format!("opening {}", self.log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("duplicating a log handle", e))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .current_dir(workdir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Error::io(format!("running {}", self.bin.display()), e))?;
        workdir.record_daemon(child.id());
        self.child = Some(child);
        self.wait_ready(ready).await.inspect_err(|_| self.kill())
    }

    async fn wait_ready<F, Fut, E>(&mut self, mut ready: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Display,
    {
        let child = &mut self.child;
        let what = format!("{} to answer", self.name);
        let outcome = poll_until(START_DEADLINE, &what, || {
            let exited = match child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Ok(None)) => None,
                Some(Err(e)) => Some(e.to_string()),
                None => Some("never started".into()),
            };
            let probe = ready();
            async move {
                match exited {
                    Some(status) => Ok(Err(status)),
                    None => probe.await.map(Ok),
                }
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            // Exited: typically the port was taken meanwhile; callers retry on a new port.
            Ok(Err(status)) => Err(self.failure(&format!("exited ({status})"))),
            Err(Error::Timeout { what, waited, last }) => Err(Error::Timeout {
                what,
                waited,
                last: format!("{last}\n{}", self.failure("log")),
            }),
            Err(e) => Err(e),
        }
    }

    /// An error carrying `what` and the last lines of the daemon's log.
    pub(crate) fn failure(&self, what: &str) -> Error {
        Error::peer(
            self.name,
            format!(
                "{what}\n--- last lines of {} ---\n{}",
                self.log.display(),
                log_tail(&self.log, 30)
            ),
        )
    }

    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process (SIGKILL) and reaps it; a no-op when it is not running.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
