//! systemd's readiness protocol (`sd_notify`): with `Type=notify`, `serve` says `READY=1` once
//! the store is open and migrated, the engine runs and the API listens, and `STOPPING=1` when a
//! shutdown begins, so `systemctl start` returns only when mxguard can answer and units ordered
//! after it start on a working service. Without `NOTIFY_SOCKET` (not under systemd) nothing is
//! sent.
//!
//! The protocol is one datagram to a Unix socket; std has what it needs, so no crate for it.

/// Sends `state` (e.g. `READY=1`) to systemd's notification socket, if there is one. Failure
/// is logged, never fatal: the service works the same without its supervisor knowing.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!(error = %e, socket = ?path, "cannot notify systemd");
    }
}

#[cfg(unix)]
fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;

    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    match bytes.strip_prefix(b"@") {
        // An abstract socket: systemd uses these in some setups (and containers do).
        Some(name) => send_abstract(&socket, name, state),
        None => socket.send_to(state.as_bytes(), path).map(|_| ()),
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(
    socket: &std::os::unix::net::UnixDatagram,
    name: &[u8],
    state: &str,
) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(state.as_bytes(), &addr).map(|_| ())
}

#[cfg(all(unix, not(target_os = "linux")))]
fn send_abstract(
    _socket: &std::os::unix::net::UnixDatagram,
    _name: &[u8],
    _state: &str,
) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

#[cfg(not(unix))]
fn send(_path: &std::ffi::OsStr, _state: &str) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_state_reaches_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        send(path.as_os_str(), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
