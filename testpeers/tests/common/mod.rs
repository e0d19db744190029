//! A small SMTP client (with STARTTLS) for checking what the peers say.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mxguard_testpeers::Ca;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub const STEP: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    pub fn has(&self, word: &str) -> bool {
        self.lines
            .iter()
            .any(|l| l.to_ascii_uppercase().contains(word))
    }
}

pub struct Smtp<S> {
    io: BufReader<S>,
}

impl Smtp<TcpStream> {
    /// Connects and reads the banner.
    pub async fn connect(addr: SocketAddr) -> (Smtp<TcpStream>, Reply) {
        let stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let mut smtp = Smtp {
            io: BufReader::new(stream),
        };
        let banner = smtp.reply().await;
        (smtp, banner)
    }

    /// STARTTLS (expects 220), then the TLS handshake verifying `name` against `ca`.
    pub async fn starttls(
        mut self,
        ca: &Ca,
        name: &str,
    ) -> Result<Smtp<TlsStream<TcpStream>>, std::io::Error> {
        let go = self.cmd("STARTTLS").await;
        assert_eq!(go.code, 220, "STARTTLS refused: {go:?}");
        let tcp = self.io.into_inner();
        let tls = tokio::time::timeout(
            STEP,
            connector(ca).connect(
                ServerName::try_from(name.to_string()).expect("valid name"),
                tcp,
            ),
        )
        .await
        .expect("TLS handshake timed out")?;
        Ok(Smtp {
            io: BufReader::new(tls),
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Smtp<S> {
    /// Reads one (possibly multi-line) reply.
    pub async fn reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(STEP, self.io.read_line(&mut line))
                .await
                .expect("reply timed out")
                .expect("reading a reply");
            assert!(n > 0, "connection closed; got so far: {lines:?}");
            let line = line.trim_end().to_string();
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Reply { code, lines };
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.io
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("sending a command");
        self.reply().await
    }

    /// Whether the server closed the connection (EOF) within `STEP`.
    pub async fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(STEP, self.io.read_line(&mut line)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// A rustls client trusting only the test CA (ring provider, webpki verification).
pub fn connector(ca: &Ca) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).expect("CA PEM parses");
    roots.add(der).expect("CA cert accepted as a root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}
