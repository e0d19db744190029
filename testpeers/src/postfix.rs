//! Real Postfix instances as MX hosts: `postfix -c <dir>/conf start|stop`, one instance per
//! listening address, each with its own config, queue and data directory under
//! [`crate::peers_dir`]. Nothing is ever delivered: every transport is `discard:`.
//!
//! No system file is touched. `alternate_config_directories` in /etc/postfix/main.cf is only
//! consulted for non-root callers of Postfix's set-gid commands; `postfix` itself is
//! root-only, and as root it accepts any `-c` directory (checked on Debian 12, Postfix 3.7).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::ca::{Ca, CertKind, LeafCert};
use crate::util::{create_dir, log_tail, poll_until, require_binary, tcp_open, write_file};
use crate::workdir::{identity, kill9, set_mode, still_alive, Workdir};
use crate::{Error, Result, START_DEADLINE};

mod conf;

/// How the MX treats mail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// Accepts mail for its domain (`relay_domains`), refuses to relay anything else for a
    /// loopback client (`mynetworks = 127.0.0.254/32`, `reject_unauth_destination`).
    Mx,
    /// A misconfigured backup: trusts all of 127.0.0.0/8, so it relays for loopback clients.
    OpenRelay,
}

/// One Postfix instance's settings. Build with [`PostfixConfig::mx`] or
/// [`PostfixConfig::open_relay`], then adjust with the `with_*` methods.
#[derive(Clone, Debug)]
pub struct PostfixConfig {
    /// `myhostname`, shown in the banner and EHLO reply.
    pub hostname: String,
    /// The one address:port its smtpd listens on (e.g. 127.0.0.20:2525).
    pub listen: SocketAddr,
    /// The domain it accepts mail for. Default `example.test`.
    pub domain: String,
    pub profile: Profile,
    /// The STARTTLS certificate; `None`: no STARTTLS offered.
    pub cert: Option<LeafCert>,
    /// `smtpd_banner` (the text after `220 `); `None`: Postfix's default.
    pub banner: Option<String>,
    /// More `main.cf` lines, written last (e.g. `smtpd_recipient_restrictions = defer`).
    pub settings: Vec<String>,
}

impl PostfixConfig {
    /// An MX for `example.test` with STARTTLS and a valid certificate for `hostname` from `ca`.
    pub fn mx(ca: &Ca, hostname: &str, listen: SocketAddr) -> Result<Self> {
        Ok(PostfixConfig {
            hostname: hostname.trim_end_matches('.').to_string(),
            listen,
            domain: "example.test".to_string(),
            profile: Profile::Mx,
            cert: Some(ca.leaf(&[hostname], CertKind::Valid)?),
            banner: None,
            settings: Vec::new(),
        })
    }

    /// Like [`PostfixConfig::mx`], but an open relay.
    pub fn open_relay(ca: &Ca, hostname: &str, listen: SocketAddr) -> Result<Self> {
        Ok(PostfixConfig {
            profile: Profile::OpenRelay,
            ..PostfixConfig::mx(ca, hostname, listen)?
        })
    }

    pub fn without_starttls(mut self) -> Self {
        self.cert = None;
        self
    }

    pub fn with_cert(mut self, cert: LeafCert) -> Self {
        self.cert = Some(cert);
        self
    }

    /// `smtpd_banner`, e.g. `"$myhostname ESMTP ready"` (Postfix adds `220 `).
    pub fn with_banner(mut self, banner: &str) -> Self {
        self.banner = Some(banner.to_string());
        self
    }

    pub fn with_domain(mut self, domain: &str) -> Self {
        self.domain = domain.trim_end_matches('.').to_string();
        self
    }

    /// One more `main.cf` line, e.g. `"smtpd_recipient_restrictions = defer"` (every RCPT
    /// answered with `defer_code`) or `"defer_code = 421"`.
    pub fn with_setting(mut self, line: &str) -> Self {
        self.settings.push(line.to_string());
        self
    }
}

/// Writes `config`'s certificate and `main.cf` into the instance directory `dir`.
fn write_config(dir: &Path, config: &PostfixConfig) -> Result<()> {
    if let Some(cert) = &config.cert {
        write_file(&dir.join("conf/cert.pem"), &cert.cert_pem)?;
        write_file(&dir.join("conf/key.pem"), &cert.key_pem)?;
        set_mode(&dir.join("conf/key.pem"), 0o600)?;
    }
    write_file(&dir.join("conf/main.cf"), conf::main_cf(config, dir))
}

/// A running Postfix instance; stopped (and its master process gone) on drop.
#[derive(Debug)]
pub struct Postfix {
    config: PostfixConfig,
    bin: PathBuf,
    workdir: Workdir,
    running: bool,
}

impl Postfix {
    /// Writes the instance's files and starts it, waiting until its smtpd sends a banner.
    /// Error if Postfix is missing (package `postfix`) or the port is taken.
    pub async fn start(config: PostfixConfig) -> Result<Postfix> {
        let bin = require_binary("postfix", "postfix")?;
        let workdir = Workdir::new("postfix")?;
        let dir = workdir.path();
        for sub in ["conf", "queue", "data"] {
            create_dir(&dir.join(sub))?;
        }
        chown_to_postfix(&dir.join("data"))?;
        write_config(dir, &config)?;
        write_file(&dir.join("conf/master.cf"), conf::master_cf(config.listen))?;
        let mut postfix = Postfix {
            config,
            bin,
            workdir,
            running: false,
        };
        postfix.start_master().await?;
        Ok(postfix)
    }

    /// Starts several instances at once (each `postfix start` takes a second or two).
    pub async fn start_all(configs: Vec<PostfixConfig>) -> Result<Vec<Postfix>> {
        let tasks: Vec<_> = configs
            .into_iter()
            .map(|c| tokio::spawn(Postfix::start(c)))
            .collect();
        let mut started = Vec::with_capacity(tasks.len());
        for task in tasks {
            let postfix = task
                .await
                .map_err(|e| Error::peer("postfix", format!("start task failed: {e}")))??;
            started.push(postfix);
        }
        Ok(started)
    }

    async fn start_master(&mut self) -> Result<()> {
        let out = tokio::process::Command::new(&self.bin)
            .arg("-c")
            .arg(self.conf_dir())
            .arg("start")
            .output()
            .await
            .map_err(|e| Error::io(format!("running {} start", self.bin.display()), e))?;
        if !out.status.success() {
            return Err(self.failure(&format!(
                "`postfix start` exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        self.running = true;
        let addr = self.config.listen;
        let ready = poll_until(START_DEADLINE, "postfix's smtpd to send a banner", || {
            banner(addr)
        })
        .await;
        ready.map(|_| ()).map_err(|e| self.failure(&e.to_string()))
    }

    /// Stops the instance (`postfix stop`, then SIGKILL to the master's process group if it
    /// lingers) and waits until the port is closed.
    pub async fn stop(&mut self) -> Result<()> {
        let (conf, queue) = (self.conf_dir(), self.workdir.path().join("queue"));
        tokio::task::spawn_blocking(move || stop_blocking(&conf, &queue))
            .await
            .map_err(|e| Error::peer("postfix", format!("stop task failed: {e}")))?;
        self.running = false;
        let addr = self.config.listen;
        poll_until(START_DEADLINE, "postfix's port to close", || async move {
            if tcp_open(addr).await {
                Err(format!("{addr} still accepts connections"))
            } else {
                Ok(())
            }
        })
        .await
        .map_err(|e| self.failure(&e.to_string()))
    }

    /// Runs on with `config` (same address, queue and data): writes its files and has the
    /// running master reload them (`postfix reload`), so the port never closes; new sessions get
    /// the new settings once the old idle smtpd processes have gone. E.g. another domain, so
    /// that it refuses the one it served, or a restriction that defers every recipient.
    pub async fn reconfigure(&mut self, config: PostfixConfig) -> Result<()> {
        if config.listen != self.config.listen {
            return Err(Error::peer(
                "postfix",
                format!(
                    "reconfigure keeps the address {}, not {}",
                    self.config.listen, config.listen
                ),
            ));
        }
        write_config(self.workdir.path(), &config)?;
        self.config = config;
        if !self.running {
            return self.start_master().await;
        }
        let out = tokio::process::Command::new(&self.bin)
            .arg("-c")
            .arg(self.conf_dir())
            .arg("reload")
            .output()
            .await
            .map_err(|e| Error::io(format!("running {} reload", self.bin.display()), e))?;
        if !out.status.success() {
            return Err(self.failure(&format!(
                "`postfix reload` exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Starts a stopped instance again (stopping it first if it runs), same port and files.
    pub async fn restart(&mut self) -> Result<()> {
        if self.running {
            self.stop().await?;
        }
        self.start_master().await
    }

    pub fn addr(&self) -> SocketAddr {
        self.config.listen
    }

    pub fn hostname(&self) -> &str {
        &self.config.hostname
    }

    pub fn config(&self) -> &PostfixConfig {
        &self.config
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The instance's directory (conf/, queue/, data/, maillog).
    pub fn dir(&self) -> &Path {
        self.workdir.path()
    }

    /// Everything the instance logged (its `maillog_file`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.workdir.path().join("maillog")).unwrap_or_default()
    }

    fn conf_dir(&self) -> PathBuf {
        self.workdir.path().join("conf")
    }

    fn failure(&self, what: &str) -> Error {
        let log = self.workdir.path().join("maillog");
        Error::peer(
            format!("postfix {} ({})", self.config.hostname, self.config.listen),
            format!(
                "{what}\n--- last lines of {} ---\n{}",
                log.display(),
                log_tail(&log, 30)
            ),
        )
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        stop_blocking(&self.conf_dir(), &self.workdir.path().join("queue"));
    }
}

/// Reads the first line a server sends; Ok when it is a `220` banner.
async fn banner(addr: SocketAddr) -> std::result::Result<String, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
        .await
        .map_err(|_| "no banner within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    if line.starts_with("220") {
        Ok(line)
    } else {
        Err(format!("banner {line:?}"))
    }
}

/// `postfix -c conf stop`, then makes sure the master (from `queue/pid/master.pid`) is gone,
/// killing its process group if it is still there after 10 s.
fn stop_blocking(conf: &Path, queue: &Path) {
    let master = std::fs::read_to_string(queue.join("pid/master.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        // A stale pid file may name a reused pid: only a process called `master` is ours.
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "master")
        })
        .and_then(identity);
    let Some(master) = master else {
        return;
    };
    if let Ok(bin) = require_binary("postfix", "postfix") {
        let _ = std::process::Command::new(bin)
            .arg("-c")
            .arg(conf)
            .arg("stop")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while still_alive(&master) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if still_alive(&master) {
        if let Some(pid) = master.split_whitespace().next() {
            kill9(&format!("-{pid}"));
        }
    }
}

/// Stops the Postfix instance in an orphaned peer directory, if there is one.
pub(crate) fn stop_orphan_instance(dir: &Path) {
    if dir.join("conf/main.cf").is_file() {
        stop_blocking(&dir.join("conf"), &dir.join("queue"));
    }
}

fn chown_to_postfix(path: &Path) -> Result<()> {
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(|e| Error::io("reading /etc/passwd", e))?;
    let uid = passwd
        .lines()
        .find_map(|l| l.strip_prefix("postfix:"))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|uid| uid.parse::<u32>().ok())
        .ok_or_else(|| {
            Error::peer(
                "postfix",
                "no `postfix` user in /etc/passwd; reinstall the Debian package: apt-get install -y postfix",
            )
        })?;
    std::os::unix::fs::chown(path, Some(uid), None)
        .map_err(|e| Error::io(format!("chown postfix {}", path.display()), e))
}
