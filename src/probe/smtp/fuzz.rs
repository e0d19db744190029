//! Fuzz targets (proptest) for what the SMTP probe reads from a server: the reply reader on
//! arbitrary bytes and on well-formed replies with out-of-place codes and continuation markers,
//! and whole probes against a scripted server, checking that every text the report keeps stays
//! within [`MAX_REPLY_TEXT`]. Case counts are bounded so each target runs in a few seconds in
//! `cargo test` (CI).

use std::io::Cursor;
use std::sync::{Arc, Mutex, OnceLock};

use proptest::collection::vec;
use proptest::prelude::*;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use super::*;

/// A failure's detail holds at most one cut reply (or quoted line) and a fixed sentence; the
/// longest sentence is the open relay's ("accepted RCPT TO:<mxguard-relay-probe@example.net>
/// from a stranger: 250 ").
const DETAIL_ROOM: usize = 100;

/// An in-memory connection that serves `bytes` and swallows what is written to it.
fn conn(bytes: Vec<u8>) -> BufReader<Box<dyn Io>> {
    BufReader::new(Box::new(tokio::io::join(
        Cursor::new(bytes),
        tokio::io::sink(),
    )))
}

/// Reads replies from `bytes` until the reader fails; running out of bytes is the failure
/// "connection closed". No runtime: an in-memory source never makes the reader wait.
fn read_all(bytes: Vec<u8>) -> (Vec<Reply>, (FailureKind, String)) {
    let mut conn = conn(bytes);
    let mut replies = Vec::new();
    loop {
        match futures::executor::block_on(read_reply(&mut conn)) {
            Ok(r) => replies.push(r),
            Err(e) => return (replies, e),
        }
    }
}

/// Bytes drawn mostly from what replies are made of, so that random input gets past the code.
/// Mapped from plain bytes rather than drawn from a union per byte, which costs ten times more.
fn replyish_bytes() -> impl Strategy<Value = Vec<u8>> {
    const ALPHABET: &[u8] = b"0123456789012345678922224455-- \r\n\nab\xff\xc3";
    vec(any::<u8>(), 0..3000).prop_map(|bytes| {
        bytes
            .into_iter()
            .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()])
            .collect()
    })
}

/// Reply text: mostly short, sometimes long enough to pass [`MAX_REPLY_TEXT`] or [`MAX_LINE`].
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => "[^\r\n]{0,40}",
        1 => ("[^\r\n]", 400..2100usize).prop_map(|(c, n)| c.repeat(n / c.len())),
    ]
}

/// One line of a reply as a server sends it.
#[derive(Clone, Debug)]
struct Line {
    code: u16,
    /// `-`: more lines follow.
    more: bool,
    text: String,
    crlf: bool,
}

impl Line {
    fn wire(&self) -> String {
        format!(
            "{}{}{}{}",
            self.code,
            if self.more { '-' } else { ' ' },
            self.text,
            if self.crlf { "\r\n" } else { "\n" }
        )
    }
}

/// A well-formed reply of 1 to 5 lines or of about [`MAX_REPLY_LINES`], sometimes with one line
/// changed: its continuation marker flipped (a reply that ends early or runs on into the next),
/// or its code replaced by another, which may not be a reply code at all.
fn reply() -> impl Strategy<Value = Vec<Line>> {
    (200u16..600, prop_oneof![4 => 1usize..6, 1 => 98usize..103])
        .prop_flat_map(|(code, n)| {
            (
                Just(code),
                vec((text(), any::<bool>()), n),
                0..n,
                0u8..8,
                0u16..1000,
            )
        })
        .prop_map(|(code, texts, at, mutation, other)| {
            let n = texts.len();
            let mut lines: Vec<Line> = texts
                .into_iter()
                .enumerate()
                .map(|(i, (text, crlf))| Line {
                    code,
                    more: i + 1 < n,
                    text,
                    crlf,
                })
                .collect();
            match mutation {
                0 => lines[at].more = !lines[at].more,
                1 => lines[at].code = other,
                _ => {}
            }
            lines
        })
}

/// What the reader must make of `lines` sent back to back: the replies before the first fault,
/// and the words the fault is reported with (running out of lines: the connection closed).
/// The rules of RFC 5321 §4.2.1 as the reader applies them, written out independently.
fn expected(lines: &[Line]) -> (Vec<(u16, Vec<String>)>, &'static str) {
    let mut replies = Vec::new();
    let mut current: Option<(u16, Vec<String>)> = None;
    for l in lines {
        if l.wire().len() > MAX_LINE {
            return (replies, "reply line longer than");
        }
        if !(200..600).contains(&l.code) {
            return (replies, "not an SMTP reply");
        }
        let (code, texts) = current.get_or_insert_with(|| (l.code, Vec::new()));
        if *code != l.code {
            return (replies, "reply code changed mid-reply");
        }
        // the reader trims each line's end (CR LF and any trailing blanks)
        texts.push(l.text.trim_end().to_string());
        if !l.more {
            replies.extend(current.take());
        } else if texts.len() >= MAX_REPLY_LINES {
            return (replies, "lines");
        }
    }
    (replies, "connection closed by the server")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any bytes at all: no panic, and whatever is read obeys the reader's limits.
    #[test]
    fn any_bytes_read_as_replies_within_the_limits(
        bytes in prop_oneof![vec(any::<u8>(), 0..1500), replyish_bytes()],
    ) {
        let (replies, (_, detail)) = read_all(bytes);
        for r in &replies {
            prop_assert!((200..600).contains(&r.code), "code {}", r.code);
            prop_assert!(!r.lines.is_empty() && r.lines.len() <= MAX_REPLY_LINES);
            // lossy decoding turns each invalid byte into a 3-byte U+FFFD
            prop_assert!(r.lines.iter().all(|l| l.len() <= 3 * MAX_LINE));
            prop_assert!(r.text().len() <= MAX_REPLY_TEXT, "text of {} bytes", r.text().len());
        }
        prop_assert!(detail.len() <= MAX_REPLY_TEXT + DETAIL_ROOM, "detail of {} bytes", detail.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Replies sent back to back (as a pipelining server does) are read one by one with exactly
    /// their code and lines, and the first fault is the one the rules name.
    #[test]
    fn well_formed_replies_read_back_exactly(replies in vec(reply(), 1..4)) {
        let lines: Vec<Line> = replies.into_iter().flatten().collect();
        let wire: String = lines.iter().map(Line::wire).collect();
        let (want, fault) = expected(&lines);
        let (got, (kind, detail)) = read_all(wire.into_bytes());
        let got: Vec<(u16, Vec<String>)> = got.into_iter().map(|r| (r.code, r.lines)).collect();
        prop_assert_eq!(got, want);
        prop_assert!(detail.contains(fault), "expected {:?}, got {:?}: {}", fault, kind, detail);
        let network = fault.starts_with("connection closed");
        prop_assert_eq!(kind == FailureKind::Network, network, "{}", detail);
        prop_assert!(detail.len() <= MAX_REPLY_TEXT + DETAIL_ROOM, "detail of {} bytes", detail.len());
    }
}

/// One reply of a scripted server: usually what a healthy MX says (so probes get deep into the
/// dialogue), sometimes a refusal, a stray code, an extension list, or bytes that are no reply.
fn scripted() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        24 => Just(250u16),
        2 => Just(220u16),
        2 => Just(251u16),
        1 => Just(421u16),
        1 => Just(450u16),
        1 => Just(550u16),
        1 => Just(554u16),
        2 => 200u16..600,
    ];
    let line = prop_oneof![
        8 => text(),
        1 => Just("PIPELINING".to_string()),
        1 => Just("STARTTLS".to_string()),
    ]
    .boxed();
    // a reply of about MAX_REPLY_LINES repeats one text: drawing a hundred costs more than the probe
    let texts = prop_oneof![
        8 => vec(line.clone(), 1..4),
        1 => (line, 99usize..102).prop_map(|(text, n)| vec![text; n]),
    ];
    let reply = (code, texts).prop_map(|(code, texts)| {
        let n = texts.len();
        texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| {
                Line {
                    code,
                    more: i + 1 < n,
                    text,
                    crlf: true,
                }
                .wire()
            })
            .collect::<String>()
            .into_bytes()
    });
    prop_oneof![12 => reply, 1 => vec(any::<u8>(), 0..64)]
}

/// A probe's whole conversation: the server's script, the policy's STARTTLS setting, and the
/// number of domains whose postmaster is asked (sometimes more than one transaction's worth).
/// Each reply is more often what a healthy server says than not, so that a good share of the
/// probes reach the recipients before something goes wrong.
fn conversation() -> impl Strategy<Value = (Vec<u8>, StartTls, Option<(usize, bool)>)> {
    let healthy = |reply: &'static [u8]| Just(reply.to_vec());
    let banner = prop_oneof![6 => healthy(b"220 mx.test ESMTP\r\n"), 1 => scripted()];
    let ehlo = prop_oneof![
        2 => healthy(b"250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
        2 => healthy(b"250-mx.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n"),
        2 => healthy(b"250-mx.test\r\n250 SIZE 10240000\r\n"),
        1 => scripted(),
    ];
    let next = prop_oneof![3 => healthy(b"250 2.1.5 Ok\r\n"), 1 => scripted()];
    // Replies past the first few are read only by a probe asking more than one transaction's
    // worth of recipients; a run of plain acceptances gets it there without drawing each one.
    let script = (
        banner,
        ehlo,
        vec(next, 0..12),
        prop_oneof![3 => Just(0usize), 1 => 90usize..220],
        vec(scripted(), 0..4),
    )
        .prop_map(|(banner, ehlo, first, accepted, last)| {
            let mut all = banner;
            all.extend(ehlo);
            all.extend(first.into_iter().flatten());
            all.extend(b"250 2.1.5 Ok\r\n".repeat(accepted));
            all.extend(last.into_iter().flatten());
            all
        });
    let starttls = prop_oneof![
        2 => Just(StartTls::Off),
        1 => Just(StartTls::Opportunistic),
        1 => Just(StartTls::Require)
    ];
    let rcpt = proptest::option::weighted(
        0.8,
        (
            prop_oneof![4 => 0usize..4, 1 => 99usize..103],
            any::<bool>(),
        ),
    );
    (script, starttls, rcpt)
}

/// The probe's TLS client, built once: loading the system roots costs more than a case.
fn tls() -> Arc<rustls::ClientConfig> {
    static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    TLS.get_or_init(|| crate::probe::tls::client_config(None).expect("the probe's TLS client"))
        .clone()
}

/// Probes a loopback server that sends `script` on every connection and then closes its side,
/// so every read of the probe ends (in a reply, garbage, or end of file) and no case waits on a
/// timeout. Returns the report and every byte the probe sent.
async fn probe_scripted(
    script: Vec<u8>,
    starttls: StartTls,
    rcpt: Option<(usize, bool)>,
) -> (SmtpReport, Vec<u8>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let sent = Arc::new(Mutex::new(Vec::new()));
    let tracker = TaskTracker::new();
    let accepting = {
        let (tracker, sent) = (tracker.clone(), sent.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (script, sent) = (script.clone(), sent.clone());
                tracker.spawn(async move {
                    let (mut rx, mut tx) = stream.into_split();
                    // chunk by chunk: a probe that closes with part of the script unread
                    // resets the connection, and what it sent must still be counted
                    let reading = async {
                        let mut chunk = [0u8; 4096];
                        while let Ok(n @ 1..) = rx.read(&mut chunk).await {
                            sent.lock()
                                .expect("not poisoned")
                                .extend_from_slice(&chunk[..n]);
                        }
                    };
                    let writing = async {
                        let _ = tx.write_all(&script).await;
                        let _ = tx.shutdown().await;
                    };
                    tokio::join!(reading, writing);
                });
            }
        })
    };
    let policy = SmtpPolicy {
        keep_chain: false,
        port: addr.port(),
        timeout: Duration::from_secs(10),
        deadline: Some(Duration::from_secs(30)),
        starttls,
        ehlo_name: Fqdn::parse("probe.mxguard.test").expect("a name"),
        cert_min_days: 7,
        tls: tls(),
        rcpt: rcpt.map(|(n, refuse_relay)| RcptCheck {
            domains: (0..n)
                .map(|i| Fqdn::parse(&format!("d{i:03}.example.test")).expect("a name"))
                .collect(),
            refuse_relay,
        }),
    };
    let host = Fqdn::parse("mx.test").expect("a name");
    let report = probe(&host, addr.ip(), &policy, Utc::now()).await;
    // Every connection was accepted before the probe could read from it; each server task
    // ends once the probe, now done, has closed its side.
    accepting.abort();
    tracker.close();
    tracker.wait().await;
    let sent = std::mem::take(&mut *sent.lock().expect("not poisoned"));
    (report, sent)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// A whole probe against a server answering anything: no panic, never DATA, a pass has no
    /// failure, and every text the report keeps (phases, recipients, failure, warnings) stays
    /// within [`MAX_REPLY_TEXT`] and the fixed words around it, however long the replies were.
    #[test]
    fn any_server_leaves_a_bounded_report((script, starttls, rcpt) in conversation()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (report, sent) = runtime.block_on(probe_scripted(script, starttls, rcpt));

        let sent = String::from_utf8_lossy(&sent);
        prop_assert!(!sent.lines().any(|l| l.eq_ignore_ascii_case("DATA")), "sent DATA:\n{}", sent);
        prop_assert_eq!(report.pass, report.failure.is_none());
        for p in &report.phases {
            prop_assert!(p.text.len() <= MAX_REPLY_TEXT, "{:?}: {} bytes", p.phase, p.text.len());
            prop_assert!(p.phase != Phase::RcptPostmaster, "recipients are kept apart from phases");
        }
        let bound = MAX_REPLY_TEXT + DETAIL_ROOM;
        for r in &report.recipients {
            prop_assert!(r.text.len() <= MAX_REPLY_TEXT, "{}: {} bytes", r.domain, r.text.len());
            prop_assert!(r.failure.as_ref().is_none_or(|f| f.detail.len() <= bound));
        }
        prop_assert!(report.recipients.windows(2).all(|w| w[0].domain < w[1].domain), "sorted, once each");
        if let Some(f) = &report.failure {
            prop_assert!(f.detail.len() <= bound, "{:?} in {:?}: {} bytes", f.kind, f.phase, f.detail.len());
            let code = f.detail.get(..3).and_then(|c| c.parse::<u16>().ok());
            match f.kind {
                FailureKind::TempReject => prop_assert!(code.is_some_and(|c| (400..500).contains(&c)), "{}", f.detail),
                FailureKind::PermReject => prop_assert!(code.is_some_and(|c| (500..600).contains(&c)), "{}", f.detail),
                _ => {}
            }
        }
        for w in &report.warnings {
            // "opportunistic TLS failed: " and a failure's Display around its detail
            prop_assert!(w.len() <= bound + 100, "warning of {} bytes", w.len());
        }
    }
}
