//! A `moto_server` for the tests: started on a free loopback port, polled until it answers,
//! killed on drop. Without `moto_server` installed the tests fail, saying how to install it;
//! they never skip.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_DEADLINE: Duration = Duration::from_secs(60);
const XMLNS: &str = "https://route53.amazonaws.com/doc/2013-04-01/";
/// moto routes a request to its service by the credential scope of the signature, and checks
/// nothing else: an unsigned request with this header reaches its Route 53.
const SCOPE: &str = "AWS4-HMAC-SHA256 Credential=AKIAMOTOSETUP/20260101/us-east-1/route53/aws4_request, SignedHeaders=host, Signature=00";

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

pub struct Moto {
    child: Option<Child>,
    log: PathBuf,
    pub url: String,
}

fn find_moto() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Some(home) = std::env::var_os("HOME") {
        let home = PathBuf::from(home);
        dirs.extend([home.join(".local/bin"), home.join(".pyenv/shims")]);
    }
    dirs.extend(["/usr/local/bin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("moto_server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`moto_server` is not installed, and the Route 53 tests need it as their peer. \
                 Install it: pip install 'moto[server]'"
            )
        })
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    l.local_addr().expect("local address").port()
}

impl Moto {
    pub async fn start() -> Moto {
        let bin = find_moto();
        let mut last = String::new();
        for _ in 0..3 {
            match Moto::try_start(&bin).await {
                Ok(m) => return m,
                Err(log) => last = log,
            }
        }
        panic!("moto_server did not start (3 tries); its last output:\n{last}");
    }

    async fn try_start(bin: &PathBuf) -> Result<Moto, String> {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("mxguard-moto-{}-{port}.log", std::process::id()));
        let out =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        // moto is itself an AWS client: keep the tests' AWS settings away from it
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}. Install it: pip install 'moto[server]'",
                    bin.display()
                )
            });
        let mut moto = Moto {
            child: Some(child),
            log,
            url: format!("http://127.0.0.1:{port}"),
        };
        moto.wait_ready().await?;
        Ok(moto)
    }

    /// Polls moto's own API until it answers, the process dies, or the deadline passes.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .map_err(|e| e.to_string())?;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("moto_server exited ({status}):\n{}", self.log()));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "moto_server did not answer within {START_DEADLINE:?}:\n{}",
                    self.log()
                ));
            }
            if http
                .get(format!("{}/moto-api/", self.url))
                .send()
                .await
                .is_ok()
            {
                return Ok(());
            }
            // pace the polling a little; readiness is decided by the answer, not the wait
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates a public hosted zone (moto checks no signature) and returns its id.
    pub async fn create_zone(&self, name: &str) -> String {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><CreateHostedZoneRequest xmlns=\"{XMLNS}\"><Name>{name}</Name><CallerReference>mxguard-test-{name}</CallerReference></CreateHostedZoneRequest>"
        );
        let text = self.post("/2013-04-01/hostedzone", body).await;
        let id = between(&text, "<Id>", "</Id>")
            .unwrap_or_else(|| panic!("moto's CreateHostedZone answer has no <Id>: {text}"));
        id.rsplit('/').next().unwrap_or(id).to_string()
    }

    /// Creates one record set (`rtype`, `ttl`, each value as Route 53 writes it) in zone `id`.
    pub async fn create_rrset(&self, id: &str, name: &str, rtype: &str, ttl: u32, values: &[&str]) {
        let records: String = values
            .iter()
            .map(|v| format!("<ResourceRecord><Value>{v}</Value></ResourceRecord>"))
            .collect();
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ChangeResourceRecordSetsRequest xmlns=\"{XMLNS}\"><ChangeBatch><Changes><Change><Action>CREATE</Action><ResourceRecordSet><Name>{name}</Name><Type>{rtype}</Type><TTL>{ttl}</TTL><ResourceRecords>{records}</ResourceRecords></ResourceRecordSet></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>"
        );
        self.post(&format!("/2013-04-01/hostedzone/{id}/rrset"), body)
            .await;
    }

    /// Every record set of zone `id`: (name, type, TTL, values as Route 53 writes them).
    pub async fn rrsets(&self, id: &str) -> Vec<(String, String, u32, Vec<String>)> {
        let url = format!("{}/2013-04-01/hostedzone/{id}/rrset", self.url);
        let Ok(resp) = reqwest::Client::new()
            .get(url)
            .header("authorization", SCOPE)
            .send()
            .await
        else {
            return Vec::new();
        };
        let text = resp.text().await.unwrap_or_default();
        let mut out = Vec::new();
        for chunk in text.split("<ResourceRecordSet>").skip(1) {
            let field = |tag: &str| {
                between(chunk, &format!("<{tag}>"), &format!("</{tag}>")).unwrap_or_default()
            };
            let values = chunk
                .split("<Value>")
                .skip(1)
                .filter_map(|v| v.split("</Value>").next())
                .map(str::to_string)
                .collect();
            out.push((
                field("Name").to_string(),
                field("Type").to_string(),
                field("TTL").parse().unwrap_or(0),
                values,
            ));
        }
        out
    }

    async fn post(&self, path: &str, body: String) -> String {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .header("content-type", "text/xml")
            .header("authorization", SCOPE)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} to moto: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {path} to moto: {status}: {text}");
        text
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the server and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}
