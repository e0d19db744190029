//! The default AWS credential chain, fed from the environment as in production. Alone in its
//! test binary: it sets process environment variables before any other thread exists.

mod common;

use common::{fqdn, Peer, KEY_ID, SECRET};
use mxguard_core::{DnsProvider, RecordType, RrsetKey};
use mxguard_route53::{Credentials, Outcome};

#[test]
fn the_default_chain_reads_credentials_from_the_environment() {
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_PROFILE", "mxguard-test-no-such-profile"),
        ("AWS_CONFIG_FILE", "/nonexistent/mxguard/aws/config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/mxguard/aws/credentials",
        ),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        std::env::set_var(k, v);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let peer = Peer::start().await;
        peer.create_zone("chain.r53.test").await;
        let config = peer
            .config(KEY_ID, SECRET)
            .with_credentials(Credentials::DefaultChain);
        let p = common::provider(config).await;
        let zone = fqdn("chain.r53.test");
        let key = RrsetKey::new(zone.clone(), RecordType::Mx);
        assert_eq!(
            p.read(&zone, &[key]).await,
            Ok(vec![]),
            "signed with the environment's key"
        );
        let report = p.verify_access(&zone).await;
        let creds = report
            .checks
            .iter()
            .find(|c| c.check == "credentials")
            .map(|c| c.outcome.clone());
        assert!(
            matches!(creds, Some(Outcome::Passed { ref detail }) if detail.contains(KEY_ID)),
            "{report}"
        );

        std::env::remove_var("AWS_ACCESS_KEY_ID");
        std::env::remove_var("AWS_SECRET_ACCESS_KEY");
        let config = peer
            .config(KEY_ID, SECRET)
            .with_credentials(Credentials::DefaultChain);
        let none = common::provider(config).await;
        let report = none.verify_access(&zone).await;
        assert!(!report.is_ok(), "{report}");
        let got = none
            .read(&zone, &[RrsetKey::new(zone.clone(), RecordType::Mx)])
            .await;
        assert!(
            matches!(&got, Err(mxguard_core::ProviderError::Auth(m)) if m.contains("credentials")),
            "{got:?}"
        );
    });
}
