//! A real BIND `named` for the tests: started in a temp dir on a free loopback port with a
//! fresh TSIG key, polled until every zone answers its SOA, killed on drop. Without `named`
//! installed the tests fail, saying how to install it; they never skip.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use mxguard_core::Fqdn;
use mxguard_rfc2136::{Rfc2136Config, Rfc2136Provider, TsigAlgorithm, TsigSecret};

pub const KEY_NAME: &str = "mxguard-test.";
const START_DEADLINE: Duration = Duration::from_secs(30);

/// One zone for the test server.
#[derive(Clone, Debug)]
pub struct ZoneSpec {
    pub name: String,
    /// Extra zone-file lines (relative names are under the zone).
    pub records: String,
    pub allow_transfer: bool,
}

impl ZoneSpec {
    pub fn new(name: &str) -> Self {
        ZoneSpec {
            name: name.trim_end_matches('.').to_string(),
            records: String::new(),
            allow_transfer: true,
        }
    }
}

pub struct Named {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub algorithm: TsigAlgorithm,
    pub secret_b64: String,
    pub zones: Vec<Fqdn>,
}

/// Random base64 secret of `len` bytes, from the kernel.
pub fn random_secret(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn find_named() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("named"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "BIND's `named` is not installed, and the RFC 2136 tests need a real one. \
                 Install it: apt-get install -y bind9 bind9-utils bind9-dnsutils"
            )
        })
}

fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("binding a loopback TCP port");
        let port = tcp.local_addr().expect("local address").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Named {
    pub fn start(algorithm: TsigAlgorithm, zones: &[ZoneSpec]) -> Named {
        let named = find_named();
        let mut last_log = String::new();
        for _ in 0..5 {
            match Named::try_start(&named, algorithm, zones) {
                Ok(n) => return n,
                Err(log) => last_log = log,
            }
        }
        panic!("named did not start (5 tries); its last output:\n{last_log}");
    }

    fn try_start(
        bin: &PathBuf,
        algorithm: TsigAlgorithm,
        zones: &[ZoneSpec],
    ) -> Result<Named, String> {
        let dir = tempfile::tempdir().expect("creating a temp dir");
        let d = dir.path().display().to_string();
        let port = free_port();
        let secret_b64 = random_secret(if algorithm == TsigAlgorithm::HmacSha512 {
            64
        } else {
            32
        });
        let key = KEY_NAME.trim_end_matches('.');
        let mut conf = format!(
            "options {{ directory \"{d}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n\
             pid-file none; session-keyfile \"{d}/session.key\"; managed-keys-directory \"{d}\";\n\
             recursion no; dnssec-validation no; notify no; allow-query {{ any; }}; }};\n\
             controls {{ }};\n\
             key \"{key}\" {{ algorithm {algorithm}; secret \"{secret_b64}\"; }};\n"
        );
        for z in zones {
            let transfer = if z.allow_transfer {
                format!("key \"{key}\";")
            } else {
                "none;".into()
            };
            let _ = writeln!(
                conf,
                "zone \"{0}\" {{ type primary; file \"{d}/{0}.db\"; allow-update {{ key \"{key}\"; }}; allow-transfer {{ {transfer} }}; }};",
                z.name
            );
            let file = format!(
                "$TTL 300\n@ IN SOA ns.{0}. hostmaster.{0}. 1 3600 600 86400 60\n@ IN NS ns.{0}.\nns IN A 127.0.0.1\n{1}\n",
                z.name, z.records
            );
            std::fs::write(dir.path().join(format!("{}.db", z.name)), file)
                .expect("writing a zone file");
        }
        let conf_path = dir.path().join("named.conf");
        std::fs::write(&conf_path, conf).expect("writing named.conf");
        let log = std::fs::File::create(dir.path().join("named.log")).expect("creating named.log");
        let child = Command::new(bin)
            .args(["-g", "-u", "root", "-c"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning a file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let mut named = Named {
            child: Some(child),
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            algorithm,
            secret_b64,
            zones: zones
                .iter()
                .map(|z| Fqdn::parse(&z.name).expect("zone names in tests are valid"))
                .collect(),
        };
        named.wait_ready()?;
        Ok(named)
    }

    /// Polls every zone's SOA until it answers, the process dies, or the deadline passes.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let socket = UdpSocket::bind("127.0.0.1:0").expect("binding a UDP socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("setting a read timeout");
        let mut pending: Vec<Fqdn> = self.zones.clone();
        while !pending.is_empty() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("named exited ({status}):\n{}", self.log()));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "named did not answer SOA within {START_DEADLINE:?}:\n{}",
                    self.log()
                ));
            }
            if soa_answers(&socket, self.addr, &pending[0]) {
                pending.remove(0);
            } else {
                // pace the polling a little; readiness is decided by the answer, not the wait
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    pub fn config(&self, secret_b64: &str) -> Rfc2136Config {
        Rfc2136Config::new(
            "test-named",
            self.addr,
            Fqdn::parse(KEY_NAME).expect("valid key name"),
            self.algorithm,
            TsigSecret::from_base64(secret_b64).expect("valid base64"),
        )
        .with_timeout(Duration::from_secs(3))
    }

    pub fn provider(&self) -> Rfc2136Provider {
        Rfc2136Provider::new(self.config(&self.secret_b64)).expect("valid provider config")
    }

    /// A provider whose secret the server does not know.
    pub fn provider_with_wrong_secret(&self) -> Rfc2136Provider {
        let len = if self.algorithm == TsigAlgorithm::HmacSha512 {
            64
        } else {
            32
        };
        Rfc2136Provider::new(self.config(&random_secret(len))).expect("valid provider config")
    }

    /// Kills the server and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        self.stop();
    }
}

fn soa_answers(socket: &UdpSocket, server: SocketAddr, zone: &Fqdn) -> bool {
    let Ok(name) = Name::from_ascii(zone.as_str()) else {
        return false;
    };
    let mut msg = Message::query();
    msg.add_query(Query::query(name, RecordType::SOA));
    let Ok(bytes) = msg.to_vec() else {
        return false;
    };
    if socket.send_to(&bytes, server).is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    let Ok((n, _)) = socket.recv_from(&mut buf) else {
        return false;
    };
    Message::from_vec(&buf[..n]).is_ok_and(|m| {
        m.metadata.id == msg.metadata.id
            && m.metadata.response_code == ResponseCode::NoError
            && !m.answers.is_empty()
    })
}
