//! Signed request/response exchanges with one server: queries over UDP with a TCP fallback
//! on truncation, UPDATE and AXFR over TCP. Every request carries a TSIG signature and every
//! answer's signature is verified.
//!
//! Built on hickory-proto's message codec and `TSigner` rather than hickory-net's `Client`:
//! RFC 8945 §5.3.2 makes a server answer a bad signature or unknown key with an *unsigned*
//! NOTAUTH carrying BADSIG/BADKEY, and hickory-net's verifier turns that into an opaque
//! protocol error, losing the code mxguard needs to report `Auth`.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType, TSigVerifier, TSigner};
use mxguard_core::ProviderError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The UDP payload mxguard advertises (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

pub(crate) struct Exchange {
    server: SocketAddr,
    signer: TSigner,
    timeout: Duration,
}

impl Exchange {
    pub(crate) fn new(server: SocketAddr, signer: TSigner, timeout: Duration) -> Self {
        Exchange {
            server,
            signer,
            timeout,
        }
    }

    pub(crate) fn server(&self) -> SocketAddr {
        self.server
    }

    /// A signed query for `name`/`rtype`; over TCP again when the UDP answer is truncated.
    pub(crate) async fn query(
        &self,
        name: &Name,
        rtype: RecordType,
    ) -> Result<Message, ProviderError> {
        let build = || {
            let mut msg = Message::query();
            msg.metadata.recursion_desired = false;
            msg.add_query(Query::query(name.clone(), rtype));
            msg.edns = Some({
                let mut edns = Edns::new();
                edns.set_max_payload(EDNS_PAYLOAD);
                edns
            });
            msg
        };
        let answer = self.within(self.udp(build())).await?;
        if !answer.metadata.truncation {
            return Ok(answer);
        }
        tracing::debug!(server = %self.server, %name, %rtype, "truncated over UDP; asking again over TCP");
        self.within(self.tcp(build())).await
    }

    /// A signed UPDATE. TCP: no size limit, and no retransmission that could apply it twice.
    pub(crate) async fn update(&self, mut msg: Message) -> Result<Message, ProviderError> {
        msg.metadata.op_code = OpCode::Update;
        msg.metadata.recursion_desired = false;
        self.within(self.tcp(msg)).await
    }

    /// A signed AXFR of `zone`: the response code of the first message and, when that is
    /// NOERROR, every record between the opening and the closing SOA.
    pub(crate) async fn axfr(
        &self,
        zone: &Name,
    ) -> Result<(ResponseCode, Vec<Record>), ProviderError> {
        self.within(self.axfr_inner(zone)).await
    }

    async fn within<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::Transient(format!(
                    "no complete answer from {} within {:?}",
                    self.server, self.timeout
                )))
            })
    }

    fn sign(&self, msg: &mut Message) -> Result<(Vec<u8>, TSigVerifier), ProviderError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let verifier = msg
            .finalize(&self.signer, now)
            .map_err(|e| rejected(format!("cannot sign the request: {e}")))?
            .ok_or_else(|| rejected("the TSIG signer gave no response verifier".into()))?;
        let bytes = msg
            .to_vec()
            .map_err(|e| rejected(format!("cannot encode the request: {e}")))?;
        Ok((bytes, verifier))
    }

    /// Parses and authenticates one response to request `id`; `None` if it answers another id.
    fn accept(
        &self,
        bytes: &[u8],
        id: u16,
        verifier: &mut TSigVerifier,
    ) -> Result<Option<Message>, ProviderError> {
        let msg = Message::from_vec(bytes).map_err(|e| {
            ProviderError::Transient(format!("malformed answer from {}: {e}", self.server))
        })?;
        if msg.metadata.id != id {
            return Ok(None);
        }
        if let Some(error) = msg.signature().and_then(|tsig| tsig.data.error.as_ref()) {
            let hint = match error {
                hickory_proto::rr::rdata::tsig::TsigError::BadTime => {
                    "the clocks of mxguard and the server differ by more than the fudge"
                }
                hickory_proto::rr::rdata::tsig::TsigError::BadKey => {
                    "the server does not know this key name and algorithm"
                }
                _ => "the secret (or algorithm) differs from the server's",
            };
            return Err(ProviderError::Auth(format!(
                "{} refused mxguard's TSIG signature ({error:?}, rcode {}): {hint}",
                self.server, msg.metadata.response_code
            )));
        }
        verifier.verify(bytes).map_err(|e| {
            ProviderError::Auth(format!(
                "the answer from {} is not signed with mxguard's key ({}): {e}",
                self.server, msg.metadata.response_code
            ))
        })?;
        Ok(Some(msg))
    }

    async fn udp(&self, mut msg: Message) -> Result<Message, ProviderError> {
        let (bytes, mut verifier) = self.sign(&mut msg)?;
        let local: SocketAddr = if self.server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| self.io("bind a UDP socket for", e))?;
        socket
            .connect(self.server)
            .await
            .map_err(|e| self.io("connect UDP to", e))?;
        socket
            .send(&bytes)
            .await
            .map_err(|e| self.io("send to", e))?;
        let mut buf = vec![0u8; 65_535];
        loop {
            let n = socket
                .recv(&mut buf)
                .await
                .map_err(|e| self.io("receive from", e))?;
            if let Some(answer) = self.accept(&buf[..n], msg.metadata.id, &mut verifier)? {
                return Ok(answer);
            }
        }
    }

    async fn tcp(&self, mut msg: Message) -> Result<Message, ProviderError> {
        let (bytes, mut verifier) = self.sign(&mut msg)?;
        let mut stream = self.connect().await?;
        self.write(&mut stream, &bytes).await?;
        let answer = self.read(&mut stream).await?;
        self.accept(&answer, msg.metadata.id, &mut verifier)?
            .ok_or_else(|| {
                ProviderError::Transient(format!("{} answered another request", self.server))
            })
    }

    async fn axfr_inner(&self, zone: &Name) -> Result<(ResponseCode, Vec<Record>), ProviderError> {
        let mut msg = Message::query();
        msg.metadata.recursion_desired = false;
        msg.add_query(Query::query(zone.clone(), RecordType::AXFR));
        let (bytes, mut verifier) = self.sign(&mut msg)?;
        let mut stream = self.connect().await?;
        self.write(&mut stream, &bytes).await?;
        let mut records = Vec::new();
        let mut soas = 0;
        loop {
            let raw = self.read(&mut stream).await?;
            let answer = self
                .accept(&raw, msg.metadata.id, &mut verifier)?
                .ok_or_else(|| {
                    ProviderError::Transient(format!("{} answered another transfer", self.server))
                })?;
            if answer.metadata.response_code != ResponseCode::NoError {
                return Ok((answer.metadata.response_code, Vec::new()));
            }
            if soas == 0 && answer.answers.is_empty() {
                return Err(ProviderError::Transient(format!(
                    "empty zone transfer from {}",
                    self.server
                )));
            }
            for record in answer.answers {
                if record.record_type() == RecordType::SOA {
                    soas += 1;
                    if soas == 2 {
                        return Ok((ResponseCode::NoError, records));
                    }
                } else if soas == 1 {
                    records.push(record);
                }
            }
        }
    }

    async fn connect(&self) -> Result<TcpStream, ProviderError> {
        TcpStream::connect(self.server)
            .await
            .map_err(|e| self.io("connect TCP to", e))
    }

    async fn write(&self, stream: &mut TcpStream, bytes: &[u8]) -> Result<(), ProviderError> {
        let len = u16::try_from(bytes.len()).map_err(|_| {
            rejected(format!(
                "the request is {} bytes, more than a DNS message holds; split the change",
                bytes.len()
            ))
        })?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(bytes);
        stream
            .write_all(&framed)
            .await
            .map_err(|e| self.io("send to", e))
    }

    async fn read(&self, stream: &mut TcpStream) -> Result<Vec<u8>, ProviderError> {
        let mut len = [0u8; 2];
        stream
            .read_exact(&mut len)
            .await
            .map_err(|e| self.io("read from", e))?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| self.io("read from", e))?;
        Ok(buf)
    }

    fn io(&self, what: &str, e: io::Error) -> ProviderError {
        ProviderError::Transient(format!("cannot {what} {}: {e}", self.server))
    }
}

fn rejected(reason: String) -> ProviderError {
    ProviderError::Rejected { reason }
}

#[cfg(test)]
mod fuzz;
