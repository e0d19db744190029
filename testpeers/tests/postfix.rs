//! Real Postfix instances: the MX accepts its domain and refuses relay, the open relay relays,
//! the options show, and stop / restart / drop leave nothing running.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::Smtp;
use mxguard_testpeers::{free_port_on, Ca, Postfix, PostfixConfig};

const MX1: &str = "mx1.example.test";
const RELAY: &str = "relay.example.test";

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// The master's pid, from the instance's pid file.
fn master_pid(p: &Postfix) -> u32 {
    let text = std::fs::read_to_string(p.dir().join("queue/pid/master.pid")).expect("master.pid");
    text.trim().parse().expect("a pid")
}

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

#[tokio::test]
async fn mx_accepts_its_domain_refuses_relay_and_open_relay_relays() {
    let ca = Ca::new().expect("CA");
    let port = free_port_on(&[ip(20), ip(21)]).expect("a port");
    let mx = PostfixConfig::mx(&ca, MX1, SocketAddr::new(ip(20), port)).expect("config");
    let relay =
        PostfixConfig::open_relay(&ca, RELAY, SocketAddr::new(ip(21), port)).expect("config");
    let peers = Postfix::start_all(vec![mx, relay])
        .await
        .expect("postfix starts");
    let (mx, relay) = (&peers[0], &peers[1]);

    let (mut smtp, banner) = Smtp::connect(mx.addr()).await;
    assert_eq!(banner.code, 220);
    assert!(banner.text().contains(MX1), "{banner:?}");
    let ehlo = smtp.cmd("EHLO probe.mxguard.test").await;
    assert!(ehlo.has("STARTTLS"), "{ehlo:?}");
    assert_eq!(smtp.cmd("MAIL FROM:<probe@mxguard.test>").await.code, 250);
    let ok = smtp.cmd("RCPT TO:<postmaster@example.test>").await;
    assert_eq!(ok.code, 250, "{ok:?}");
    let denied = smtp.cmd("RCPT TO:<user@foreign.example>").await;
    assert_eq!(denied.code, 554, "{denied:?}");
    assert!(denied.text().contains("Relay access denied"), "{denied:?}");
    assert_eq!(smtp.cmd("QUIT").await.code, 221);

    // STARTTLS with the CA's certificate for the MX's name.
    let (mut smtp, _) = Smtp::connect(mx.addr()).await;
    smtp.cmd("EHLO probe.mxguard.test").await;
    let mut tls = smtp
        .starttls(&ca, MX1)
        .await
        .expect("TLS handshake verifies");
    assert_eq!(tls.cmd("EHLO probe.mxguard.test").await.code, 250);
    assert_eq!(tls.cmd("QUIT").await.code, 221);

    let (mut smtp, _) = Smtp::connect(relay.addr()).await;
    smtp.cmd("EHLO probe.mxguard.test").await;
    assert_eq!(smtp.cmd("MAIL FROM:<probe@mxguard.test>").await.code, 250);
    let relayed = smtp.cmd("RCPT TO:<user@foreign.example>").await;
    assert_eq!(
        relayed.code, 250,
        "an open relay accepts foreign recipients: {relayed:?}"
    );
    assert_eq!(smtp.cmd("QUIT").await.code, 221);
}

#[tokio::test]
async fn options_stop_restart_and_drop() {
    let ca = Ca::new().expect("CA");
    let port = free_port_on(&[ip(22)]).expect("a port");
    let config = PostfixConfig::mx(&ca, MX1, SocketAddr::new(ip(22), port))
        .expect("config")
        .without_starttls()
        .with_banner("$myhostname ESMTP custom-banner-text");
    let mut mx = Postfix::start(config).await.expect("postfix starts");

    let (mut smtp, banner) = Smtp::connect(mx.addr()).await;
    assert_eq!(
        banner.lines,
        [format!("220 {MX1} ESMTP custom-banner-text")]
    );
    let ehlo = smtp.cmd("EHLO probe.mxguard.test").await;
    assert!(!ehlo.has("STARTTLS"), "{ehlo:?}");
    drop(smtp);

    let first = master_pid(&mx);
    mx.stop().await.expect("stops");
    assert!(!mx.is_running());
    assert!(!alive(first), "master {first} still running after stop");
    assert!(
        tokio::net::TcpStream::connect(mx.addr()).await.is_err(),
        "port still open"
    );

    mx.restart().await.expect("starts again");
    let (_, banner) = Smtp::connect(mx.addr()).await;
    assert_eq!(banner.code, 220);

    let (second, dir, addr) = (master_pid(&mx), mx.dir().to_path_buf(), mx.addr());
    drop(mx);
    assert!(!alive(second), "master {second} still running after drop");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "port still open after drop"
    );
}

#[tokio::test]
async fn orphans_of_a_dead_test_process_are_reaped() {
    let ca = Ca::new().expect("CA");
    let port = free_port_on(&[ip(23)]).expect("a port");
    let config = PostfixConfig::mx(&ca, MX1, SocketAddr::new(ip(23), port)).expect("config");
    let mx = Postfix::start(config).await.expect("postfix starts");
    let (pid, dir, addr) = (master_pid(&mx), mx.dir().to_path_buf(), mx.addr());
    // Pretend the owning test process died without running Drop.
    std::fs::write(dir.join("owner"), "999999999 0").expect("rewriting the owner");
    std::mem::forget(mx);

    tokio::task::spawn_blocking(mxguard_testpeers::reap_orphans)
        .await
        .expect("reaper ran");
    assert!(!alive(pid), "orphaned master {pid} still running");
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "port still open"
    );
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let ca = Ca::new().expect("CA");
    let taken = std::net::TcpListener::bind((ip(24), 0)).expect("binding a port");
    let addr = taken.local_addr().expect("address");
    let config = PostfixConfig::mx(&ca, MX1, addr).expect("config");
    let err = Postfix::start(config).await.expect_err("the port is taken");
    let text = err.to_string();
    assert!(text.contains("Address already in use"), "{text}");
}
