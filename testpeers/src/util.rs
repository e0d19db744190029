//! Ports, polling and binaries.

use std::fmt::Display;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::{Error, Result};

/// A port on 127.0.0.1 that is free for both TCP and UDP right now (the kernel picks it; it is
/// released before returning, so a peer can bind it).
pub fn free_port() -> Result<u16> {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for _ in 0..100 {
        let tcp = TcpListener::bind((localhost, 0))
            .map_err(|e| Error::io("binding a loopback TCP port", e))?;
        let port = tcp
            .local_addr()
            .map_err(|e| Error::io("reading a bound port", e))?
            .port();
        if UdpSocket::bind((localhost, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::peer(
        "free_port",
        "no port free for both TCP and UDP in 100 tries",
    ))
}

/// A TCP port that is free on every one of `ips` right now (e.g. 127.0.0.20, .21, .22 for
/// several MX hosts on one port).
pub fn free_port_on(ips: &[IpAddr]) -> Result<u16> {
    let first = ips
        .first()
        .copied()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for _ in 0..100 {
        let probe = TcpListener::bind((first, 0))
            .map_err(|e| Error::io(format!("binding a TCP port on {first}"), e))?;
        let port = probe
            .local_addr()
            .map_err(|e| Error::io("reading a bound port", e))?
            .port();
        let all: std::result::Result<Vec<_>, _> = ips
            .iter()
            .skip(1)
            .map(|ip| TcpListener::bind((*ip, port)))
            .collect();
        if all.is_ok() {
            return Ok(port);
        }
    }
    Err(Error::peer(
        "free_port_on",
        format!("no TCP port free on all of {ips:?} in 100 tries"),
    ))
}

/// Calls `attempt` until it returns `Ok`, pausing 25 ms growing to 250 ms between attempts.
/// Each attempt is cut off at the deadline too. On timeout the error names `what` and shows
/// the last attempt's error.
///
/// ```no_run
/// # async fn f(resolver: std::net::SocketAddr) -> mxguard_testpeers::Result<()> {
/// use std::time::Duration;
/// use mxguard_testpeers::{dns, poll_until};
/// use mxguard_testpeers::hickory_proto::rr::RecordType;
/// let answer = poll_until(Duration::from_secs(30), "the new MX at the resolver", || async {
///     let m = dns::query(resolver, "example.test.", RecordType::MX).await;
///     match m {
///         Ok(m) if !m.answers.is_empty() => Ok(m),
///         Ok(m) => Err(format!("no MX yet ({})", m.metadata.response_code)),
///         Err(e) => Err(e.to_string()),
///     }
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn poll_until<T, E, F, Fut>(deadline: Duration, what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
    E: Display,
{
    let start = Instant::now();
    let end = start + deadline;
    let mut pause = Duration::from_millis(25);
    let mut last = String::from("no attempt finished");
    loop {
        match tokio::time::timeout_at(end, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("the attempt itself was still running: {last}"),
        }
        let now = Instant::now();
        if now >= end {
            return Err(Error::Timeout {
                what: what.to_string(),
                waited: now - start,
                last,
            });
        }
        tokio::time::sleep(pause.min(end - now)).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Finds `binary` in `$PATH`, /usr/sbin, /sbin or /usr/local/sbin, or says which Debian
/// package provides it.
pub fn require_binary(binary: &'static str, package: &'static str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
        .ok_or(Error::MissingBinary { binary, package })
}

/// The last `lines` lines of a log file ("" when it cannot be read).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes `contents` to `path`, naming the file in the error.
pub(crate) fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Creates `path` and its parents, naming it in the error.
pub(crate) fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

/// Whether something accepts TCP connections at `addr` right now.
pub(crate) async fn tcp_open(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}
