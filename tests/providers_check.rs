//! `mxguard providers check [--write]` and `serve`'s start check of provider access, through
//! the binary: against the strict Cloudflare fake (full, DNS-read-only, account-owned and
//! Zone:Read-less tokens) and against BIND `named` (a TSIG key allowed to update, and one that
//! `update-policy` refuses for MX).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::lab::{mxguard_bin, Mxguard};
use common::poll;
use mxguard_testpeers::cloudflare::{FakeCloudflare, FakeConfig, Perms};
use mxguard_testpeers::hickory_proto::rr::{RData, RecordType};
use mxguard_testpeers::{LimitedKey, Named, TsigKey, Zone};

const FULL: &str = "cf-full-token-7d1e5a0c9b";
const READ_ONLY: &str = "cf-read-only-token-41f0aa";
const NO_ZONE_READ: &str = "cf-no-zone-read-token-9e2c";
const ACCOUNT_TOKEN: &str = "cf-account-token-c4b8e1";
const ACCOUNT: &str = "0a0b0c0d0e0f00112233445566778899";
const READ_API_TOKEN: &str = "providers-check-read-token";

const DOMAIN: &str = r#"
[checks]
resolvers = ["127.0.0.1:9"]
resolver_quorum = 1
interval = "1h"

[[domains]]
name = "example.test"
provider = "cf"
primary = ["10 mx1.example.test."]
backup = ["10 backup.example.test."]
"#;

async fn fake() -> FakeCloudflare {
    let fake = FakeCloudflare::start(FakeConfig::default()).await;
    fake.add_token(FULL, Perms::FULL);
    fake.add_token(READ_ONLY, Perms::READ_ONLY);
    fake.add_token(
        NO_ZONE_READ,
        Perms {
            zone_read: false,
            ..Perms::FULL
        },
    );
    fake.account(ACCOUNT).token(ACCOUNT_TOKEN, Perms::FULL);
    fake.add_zone("example.test");
    fake.edit("example.test", |records, id| {
        records.push(mxguard_testpeers::cloudflare::Record {
            id: id(),
            rtype: "MX".into(),
            name: "example.test".into(),
            content: "mx1.example.test".into(),
            priority: Some(10),
            ttl: 300,
            proxied: false,
        })
    });
    fake
}

fn cloudflare_config(dir: &Path, fake: &FakeCloudflare, extra: &str) -> std::path::PathBuf {
    let path = dir.join("mxguard.toml");
    let text = format!(
        "[providers.cf]\nkind = \"cloudflare\"\napi_token_env = \"MXGUARD_TEST_CF_TOKEN\"\napi_url = \"{}\"\n{extra}\n{DOMAIN}",
        fake.base_url
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn run(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(mxguard_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run mxguard")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn providers_check_write_proves_cloudflare_tokens_can_write_without_writing() {
    let fake = fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = cloudflare_config(dir.path(), &fake, "");
    let check = ["providers", "check", "--write"];

    let o = run(&config, &[("MXGUARD_TEST_CF_TOKEN", FULL)], &check);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("provider cf: OK, zone example.test. readable, publishes the primary records"),
        "{out}"
    );
    assert!(
        out.contains("ok      dns_write   DNS:Edit on example.test. — an empty batch was accepted"),
        "{out}"
    );
    assert_eq!(fake.writes(), 1, "one empty batch, accepted");
    assert_eq!(fake.records("example.test").len(), 1, "nothing changed");

    // DNS:Read only: reads pass, the write check names the missing permission
    let o = run(&config, &[("MXGUARD_TEST_CF_TOKEN", READ_ONLY)], &check);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("MISSING dns_write   DNS:Edit on example.test."),
        "{out}"
    );
    assert!(out.contains("Permission"), "{out}");
    assert!(!out.contains(READ_ONLY), "the token leaked: {out}");
    // without --write the same token passes: nothing it was asked needs DNS:Edit
    let o = run(
        &config,
        &[("MXGUARD_TEST_CF_TOKEN", READ_ONLY)],
        &["providers", "check"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("skipped dns_write"), "{}", text(&o));

    // an account-owned token: refused at the user endpoint, with the key to set …
    let o = run(&config, &[("MXGUARD_TEST_CF_TOKEN", ACCOUNT_TOKEN)], &check);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("an account-owned token? set providers.cf.account_id"),
        "{out}"
    );
    assert!(!out.contains(ACCOUNT_TOKEN), "the token leaked: {out}");
    // … and verified at its account once it is set
    let config = cloudflare_config(dir.path(), &fake, &format!("account_id = \"{ACCOUNT}\""));
    let o = run(&config, &[("MXGUARD_TEST_CF_TOKEN", ACCOUNT_TOKEN)], &check);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        fake.requests()
            .iter()
            .any(|r| r == &format!("GET /client/v4/accounts/{ACCOUNT}/tokens/verify")),
        "{:?}",
        fake.requests()
    );

    // a malformed account id is a configuration error naming the field and the file
    let config = cloudflare_config(dir.path(), &fake, "account_id = \"acme-corp\"");
    let o = run(&config, &[("MXGUARD_TEST_CF_TOKEN", FULL)], &check);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(&format!(
            "{}: providers.cf.account_id: account id \"acme-corp\"",
            config.display()
        )),
        "{out}"
    );
}

const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ=";
const TXT_ONLY_SECRET: &str = "dHh0LW9ubHktc2VjcmV0LXR4dC1vbmx5LXNlY3JldC0=";

async fn serial(named: &Named) -> u32 {
    let answer = mxguard_testpeers::dns::query(named.addr(), "example.test.", RecordType::SOA)
        .await
        .expect("SOA query");
    answer
        .answers
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
        .expect("an SOA")
}

#[tokio::test(flavor = "multi_thread")]
async fn providers_check_write_proves_a_tsig_key_may_update_without_changing_the_zone() {
    let key = |name: &str, secret: &str| TsigKey {
        name: format!("{name}."),
        algorithm: "hmac-sha256".into(),
        secret_b64: secret.into(),
    };
    let zone = Zone::new(
        "example.test",
        "@ 300 IN MX 10 mx1\nmx1 300 IN A 127.0.0.20\n",
    );
    let named = Named::start_with_limited(
        &[zone],
        Some(&key("mxguard-test", SECRET)),
        &[LimitedKey {
            key: key("txt-only", TXT_ONLY_SECRET),
            types: "TXT".into(),
        }],
    )
    .await
    .expect("named (package bind9)");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |key_name: &str| {
        let path = dir.path().join(format!("{key_name}.toml"));
        let text = format!(
            "[providers.cf]\nkind = \"rfc2136\"\nserver = \"{}\"\ntsig_name = \"{key_name}\"\ntsig_secret_env = \"MXGUARD_TEST_TSIG\"\n{DOMAIN}",
            named.addr()
        );
        std::fs::write(&path, text).expect("write config");
        path
    };
    let before = serial(&named).await;

    let o = run(
        &config("mxguard-test"),
        &[("MXGUARD_TEST_TSIG", SECRET)],
        &["providers", "check", "--write"],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("ok      dns_write   UPDATE of example.test. MX by key mxguard-test."),
        "{out}"
    );
    assert_eq!(
        serial(&named).await,
        before,
        "the write check changed the zone"
    );

    // a key the server knows, allowed to update only TXT: reads pass, the MX update is refused
    let o = run(
        &config("txt-only"),
        &[("MXGUARD_TEST_TSIG", TXT_ONLY_SECRET)],
        &["providers", "check", "--write"],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("ok      credentials"), "{out}");
    assert!(out.contains("MISSING dns_write"), "{out}");
    assert!(out.contains("REFUSED"), "{out}");
    assert!(!out.contains(TXT_ONLY_SECRET), "the secret leaked: {out}");
    assert_eq!(serial(&named).await, before);
}

fn serve(dir: &Path, config: &Path, token: &str) -> Mxguard {
    let port = mxguard_testpeers::free_port().expect("port");
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new(mxguard_bin());
    cmd.arg("--config")
        .arg(config)
        .args(["serve", "--listen", &listen.to_string()])
        .current_dir(dir)
        .env(
            "MXGUARD_STORE_URL",
            format!("sqlite://{}", dir.join("mxguard.db").display()),
        )
        .env("MXGUARD_TEST_CF_TOKEN", token)
        .env_remove("MXGUARD_FAILPOINT");
    Mxguard::spawn(cmd, listen)
}

async fn get(mx: &Mxguard, path: &str) -> Option<(u16, String, String)> {
    let resp = reqwest::Client::new()
        .get(format!("http://{}{path}", mx.listen))
        .bearer_auth(READ_API_TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Some((status, kind, resp.text().await.ok()?))
}

fn api_section() -> String {
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(READ_API_TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "[server]\nopen_readyz = true\n\n[[tokens]]\nname = \"test\"\nsha256 = \"{digest}\"\nscopes = [\"read\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_reports_a_provider_failing_its_access_check_on_readyz_and_in_the_timeline() {
    let fake = fake().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = cloudflare_config(dir.path(), &fake, "");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{}\n{text}", api_section())).expect("config");
    let deadline = Duration::from_secs(60);

    // a token without Zone:Read: /readyz turns 503, naming the provider, zone and permission
    let mx = serve(dir.path(), &config, NO_ZONE_READ);
    let (kind, body) = poll("/readyz to report the provider", deadline, || async {
        match get(&mx, "/readyz").await {
            Some((503, kind, body)) => Some((kind, body)),
            _ => None,
        }
    })
    .await;
    assert_eq!(kind, "application/problem+json", "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        problem["type"], "https://mxguard.dev/problems/provider-access",
        "{body}"
    );
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("provider cf (cloudflare), zone example.test.: zone (Zone:Read on example.test.): Permission"),
        "{detail}"
    );
    assert_eq!(problem["providers"][0]["failed"][0]["check"], "zone");
    assert!(!body.contains(NO_ZONE_READ), "the token leaked: {body}");

    // … and the domain's timeline has one alert saying the same
    let events = poll("the alert in the timeline", deadline, || async {
        let (status, _, body) = get(&mx, "/v1/domains/example.test/events").await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let alerts: Vec<serde_json::Value> = v["events"]
            .as_array()?
            .iter()
            .filter(|e| e["kind"] == "alert.provider_access")
            .cloned()
            .collect();
        (status == 200 && !alerts.is_empty()).then_some(alerts)
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    let message = events[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Zone:Read on example.test."), "{message}");
    assert!(
        !mx.log().contains(NO_ZONE_READ),
        "the token leaked into the log"
    );
    drop(mx);

    // a good token: ready, once the check has run
    let mx = serve(dir.path(), &config, FULL);
    mx.wait_for_log("provider access checks passed", deadline)
        .await;
    let (status, _, body) = poll("/readyz", deadline, || get(&mx, "/readyz")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn providers_check_write_proves_route53_credentials_can_change_records_without_changing_them()
{
    use mxguard_testpeers::route53::{Moto, Op, Proxy};
    const KEY: &str = "AKIAMXGUARDCHECK0001";
    const READER: &str = "AKIAMXGUARDCHECK0002";
    const SECRET_KEY: &str = "providers/check/secret/0123456789abcdef";
    let moto = Moto::start().await;
    let proxy = Proxy::start(&moto.url).await;
    let zone_id = moto.create_zone("example.test.").await;
    moto.create_rrset(
        &zone_id,
        "example.test.",
        "MX",
        300,
        &["10 mx1.example.test."],
    )
    .await;
    // the reader's IAM policy leaves out ChangeResourceRecordSets
    proxy
        .state()
        .denied
        .insert(READER.into(), [Op::ChangeRecordSets].into_iter().collect());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mxguard.toml");
    std::fs::write(
        &config,
        format!(
            "[providers.cf]\nkind = \"route53\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n{DOMAIN}",
            proxy.url
        ),
    )
    .expect("write config");
    let check = |key: &str| {
        let mut cmd = Command::new(mxguard_bin());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--config")
            .arg(&config)
            .args(["providers", "check", "--write"])
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("RUST_LOG", "warn")
            .output()
            .expect("run mxguard")
    };
    let before = moto.rrsets(&zone_id).await;

    let o = check(KEY);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("ok      dns_write     route53:ChangeResourceRecordSets"),
        "{out}"
    );
    assert_eq!(moto.rrsets(&zone_id).await, before, "nothing changed");

    let o = check(READER);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("MISSING dns_write     route53:ChangeResourceRecordSets — Permission"),
        "{out}"
    );
    assert!(!out.contains(SECRET_KEY), "the secret leaked: {out}");
    assert_eq!(moto.rrsets(&zone_id).await, before, "nothing changed");
}
