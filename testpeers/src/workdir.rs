//! One directory per peer under [`peers_dir`], and the sweep that stops peers whose test
//! process died without running `Drop` (killed, or Ctrl-C for Postfix, which daemonises).
//!
//! Each peer directory holds `owner` ("pid starttime" of the test process) and `daemons`
//! (one "pid starttime" line per process it spawned). A directory whose owner is gone is an
//! orphan: its daemons are killed (only if pid and start time still match, so a reused pid
//! is never hit), a Postfix instance in it is stopped, and the directory is removed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, SystemTime};

use crate::util::create_dir;
use crate::{Error, Result};

const OWNER: &str = "owner";
const DAEMONS: &str = "daemons";

/// Where peers live: `$MXGUARD_TESTPEERS_DIR`, else `/var/tmp/mxguard-testpeers` (under `/var`
/// because Postfix only writes its `maillog_file` below `/var` by default).
pub fn peers_dir() -> PathBuf {
    std::env::var_os("MXGUARD_TESTPEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/mxguard-testpeers"))
}

/// A peer's directory; removed on drop.
#[derive(Debug)]
pub(crate) struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    /// Creates `<peers_dir>/<kind>-XXXXXX`, mode 0755 (Postfix's unprivileged processes must
    /// reach their queue and data directories inside it), owned by this process.
    pub(crate) fn new(kind: &str) -> Result<Workdir> {
        static SWEEP: Once = Once::new();
        let base = peers_dir();
        create_dir(&base)?;
        SWEEP.call_once(|| sweep_orphans(&base));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{kind}-"))
            .tempdir_in(&base)
            .map_err(|e| {
                Error::io(
                    format!("creating a peer directory in {}", base.display()),
                    e,
                )
            })?;
        set_mode(dir.path(), 0o755)?;
        let me = identity(std::process::id())
            .ok_or_else(|| Error::peer("workdir", "cannot read /proc/self/stat"))?;
        crate::util::write_file(&dir.path().join(OWNER), me)?;
        Ok(Workdir { dir })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Notes a spawned process so that a later sweep can kill it if this test process dies.
    pub(crate) fn record_daemon(&self, pid: u32) {
        use std::io::Write;
        if let Some(line) = identity(pid) {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path().join(DAEMONS));
            if let Ok(mut f) = file {
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {mode:o} {}", path.display()), e))
}

/// "pid starttime" for a live, non-zombie process; `None` otherwise.
pub(crate) fn identity(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); starttime is field 22.
    let state = fields.first()?;
    if *state == "Z" || *state == "X" {
        return None;
    }
    Some(format!("{pid} {}", fields.get(19)?))
}

/// Whether the process an identity line names is still the same live process.
pub(crate) fn still_alive(line: &str) -> bool {
    let pid = line.split_whitespace().next().and_then(|p| p.parse().ok());
    pid.and_then(identity).is_some_and(|now| now == line.trim())
}

/// Sends SIGKILL to `target` ("1234", or "-1234" for a process group).
pub(crate) fn kill9(target: &str) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops and removes the peers of test processes that died without dropping them. Runs by
/// itself once per process, when the first peer is created.
pub fn reap_orphans() {
    sweep_orphans(&peers_dir());
}

fn sweep_orphans(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        let orphan = match std::fs::read_to_string(dir.join(OWNER)) {
            Ok(owner) => !still_alive(&owner),
            // A directory another process is creating right now has no owner file yet.
            Err(_) => older_than(&dir, Duration::from_secs(600)),
        };
        if orphan {
            stop_orphan(&dir);
        }
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|d| d > age)
}

fn stop_orphan(dir: &Path) {
    crate::postfix::stop_orphan_instance(dir);
    let daemons = std::fs::read_to_string(dir.join(DAEMONS)).unwrap_or_default();
    for line in daemons.lines().filter(|l| still_alive(l)) {
        if let Some(pid) = line.split_whitespace().next() {
            kill9(pid);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
