//! A real browser for the dashboard's tests: Debian's headless Chromium driven by
//! `chromedriver` (both installed by `scripts/peers.sh`) over the W3C WebDriver protocol — a
//! few JSON calls, made with the `reqwest` client the tests already use. Missing binaries fail
//! the test, naming the package.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The key W3C WebDriver names an element reference with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A `chromedriver` process and one headless Chromium session on it.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
}

fn find(binary: &str, package: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
        let path = format!("{dir}/{binary}");
        if std::path::Path::new(&path).exists() {
            return path;
        }
    }
    panic!("{binary} not found: install Debian's {package} package (scripts/peers.sh does)")
}

impl Browser {
    pub async fn start() -> Browser {
        let chromium = find("chromium", "chromium");
        let chromedriver = find("chromedriver", "chromium-driver");
        let port = mxguard_testpeers::free_port().expect("port");
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100"],
            },
        }}});
        let started = Instant::now();
        let session = loop {
            let answer = http
                .post(format!("http://127.0.0.1:{port}/session"))
                .json(&caps)
                .send()
                .await;
            if let Ok(resp) = answer {
                let v: Value = resp.json().await.unwrap_or_default();
                match v["value"]["sessionId"].as_str() {
                    Some(id) => break id.to_string(),
                    None => panic!("chromedriver did not start a Chromium session: {v}"),
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "chromedriver did not answer in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let base = format!("http://127.0.0.1:{port}/session/{session}");
        Browser {
            http,
            session: base,
            driver,
        }
    }

    /// One WebDriver command: its `value`, or the driver's error.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let v: Value = resp.json().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(v["value"]["message"]
                .as_str()
                .unwrap_or("error")
                .to_string())
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url}))
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The references of the elements matching `css`.
    pub async fn find_all(&self, css: &str) -> Vec<String> {
        let found = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        found
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
            .collect()
    }

    /// The text of the first element matching `css`, or "" while there is none.
    pub async fn text(&self, css: &str) -> String {
        let Some(el) = self.find_all(css).await.into_iter().next() else {
            return String::new();
        };
        self.get(&format!("/element/{el}/text"))
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub async fn source(&self) -> String {
        self.get("/source")
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Polls until `css` matches at least one element (the page refreshes itself).
    pub async fn wait_for(&self, css: &str, deadline: Duration) {
        let started = Instant::now();
        while self.find_all(css).await.is_empty() {
            assert!(
                started.elapsed() < deadline,
                "nothing matches {css} after {deadline:?}; the page:\n{}",
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Polls until `css`'s text contains `want` (the page refreshes itself; nothing reloads it).
    pub async fn wait_text(&self, css: &str, want: &str, deadline: Duration) -> String {
        let started = Instant::now();
        loop {
            let got = self.text(css).await;
            if got.contains(want) {
                return got;
            }
            assert!(
                started.elapsed() < deadline,
                "{css} shows {got:?}, waited {deadline:?} for {want:?}; the page:\n{}",
                self.source().await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Types into the named inputs of the form matching `form` and clicks its submit button.
    pub async fn submit(&self, form: &str, fields: &[(&str, &str)]) {
        for (name, value) in fields {
            let css = format!("{form} [name='{name}']");
            let el = self
                .find_all(&css)
                .await
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("no field {css}"));
            self.post(&format!("/element/{el}/clear"), json!({}))
                .await
                .unwrap_or_else(|e| panic!("clear {css}: {e}"));
            self.post(&format!("/element/{el}/value"), json!({"text": value}))
                .await
                .unwrap_or_else(|e| panic!("type into {css}: {e}"));
        }
        let button = format!("{form} button[type='submit']");
        let el = self
            .find_all(&button)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no {button}"));
        self.post(&format!("/element/{el}/click"), json!({}))
            .await
            .unwrap_or_else(|e| panic!("click {button}: {e}"));
    }

    /// The page as the browser draws it, PNG.
    pub async fn screenshot(&self) -> Vec<u8> {
        let b64 = self.get("/screenshot").await.expect("screenshot");
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("the screenshot is base64")
    }

    pub async fn close(mut self) {
        let _ = self.call(reqwest::Method::DELETE, "", None).await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
