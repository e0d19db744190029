//! The SDK client, built without the SDK's own retries (mxguard's `Guarded` retries), and the
//! five calls mxguard makes, each paced by the account's token bucket.

use std::sync::Arc;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_route53::operation::change_resource_record_sets::ChangeResourceRecordSetsError;
use aws_sdk_route53::types::{Change, ChangeBatch, ChangeStatus, ResourceRecordSet, RrType};
use aws_sdk_route53::Client as Sdk;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider as TlsProvider};
use mxguard_core::{Fqdn, ProviderError, TokenBucket};

use crate::config::Route53Config;
use crate::errors::{classify, from_sdk};
use crate::wire;

#[derive(Clone)]
pub(crate) struct Api {
    sdk: Sdk,
    credentials: Option<SharedCredentialsProvider>,
    bucket: Arc<TokenBucket>,
}

/// One page of `ListResourceRecordSets`, and where the next one starts.
pub(crate) struct Page {
    pub sets: Vec<ResourceRecordSet>,
    pub next: Option<(String, RrType, Option<String>)>,
}

impl Api {
    pub async fn new(config: &Route53Config, bucket: Arc<TokenBucket>) -> Api {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(TlsProvider::Rustls(CryptoMode::Ring))
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(config.timeout)
            .operation_attempt_timeout(config.timeout)
            .operation_timeout(config.timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(config.region.clone()))
            .timeout_config(timeouts)
            .retry_config(RetryConfig::disabled());
        match &config.credentials {
            crate::Credentials::DefaultChain => {}
            crate::Credentials::Profile(p) => loader = loader.profile_name(p),
            crate::Credentials::Static { .. } => {
                if let Some((id, secret, token)) = config.credentials.secret() {
                    let creds = aws_credential_types::Credentials::new(
                        id,
                        secret,
                        token.map(str::to_string),
                        None,
                        "mxguard-config",
                    );
                    loader = loader.credentials_provider(creds);
                }
            }
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_route53::config::Builder::from(&shared);
        if let Some(url) = &config.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        Api {
            sdk: Sdk::from_conf(builder.build()),
            credentials: shared.credentials_provider(),
            bucket,
        }
    }

    /// The credentials provider the client signs with (the default chain, unless configured).
    /// The sustained requests per second this client paces itself to.
    pub fn rate(&self) -> f64 {
        self.bucket.limit().per_second()
    }

    pub fn credentials(&self) -> Option<&SharedCredentialsProvider> {
        self.credentials.as_ref()
    }

    pub async fn zone_id_by_name(&self, zone: &Fqdn) -> Result<Option<String>, ProviderError> {
        self.bucket.acquire().await;
        let what = format!("looking up hosted zone {zone}");
        let out = self
            .sdk
            .list_hosted_zones_by_name()
            .dns_name(zone.as_str())
            .max_items(10)
            .send()
            .await
            .map_err(|e| from_sdk(&what, e))?;
        let mut matching = out
            .hosted_zones()
            .iter()
            .filter(|z| wire::fqdn(z.name()).is_ok_and(|n| &n == zone));
        match (matching.next(), matching.next()) {
            (None, _) => Ok(None),
            (Some(z), None) => Ok(Some(bare_id(z.id()).to_string())),
            (Some(_), Some(_)) => Err(ProviderError::Rejected {
                reason: format!("{zone}: more than one hosted zone has this name (public and private?): set hosted_zone_id on its [[domains]] entries"),
            }),
        }
    }

    /// The name of the hosted zone `id` (for configured ids: checks they exist and match).
    pub async fn zone_name(&self, id: &str) -> Result<Fqdn, ProviderError> {
        self.bucket.acquire().await;
        let what = format!("reading hosted zone {id}");
        let out = self
            .sdk
            .get_hosted_zone()
            .id(id)
            .send()
            .await
            .map_err(|e| from_sdk(&what, e))?;
        let zone = out
            .hosted_zone()
            .ok_or_else(|| ProviderError::Transient(format!("{what}: no zone in the answer")))?;
        wire::fqdn(zone.name()).map_err(|e| ProviderError::Rejected {
            reason: format!("{what}: {e}"),
        })
    }

    pub async fn list(
        &self,
        zone_id: &str,
        start: Option<(String, RrType, Option<String>)>,
        max_items: i32,
        what: &str,
    ) -> Result<Page, ProviderError> {
        self.bucket.acquire().await;
        let mut req = self
            .sdk
            .list_resource_record_sets()
            .hosted_zone_id(zone_id)
            .max_items(max_items);
        if let Some((name, rtype, identifier)) = start {
            req = req
                .start_record_name(name)
                .start_record_type(rtype)
                .set_start_record_identifier(identifier);
        }
        let out = req.send().await.map_err(|e| from_sdk(what, e))?;
        let next = match (
            out.is_truncated(),
            out.next_record_name(),
            out.next_record_type(),
        ) {
            (true, Some(name), Some(rtype)) => Some((
                name.to_string(),
                rtype.clone(),
                out.next_record_identifier().map(str::to_string),
            )),
            _ => None,
        };
        Ok(Page {
            sets: out.resource_record_sets().to_vec(),
            next,
        })
    }

    /// One `ChangeResourceRecordSets`; returns the change id and its status.
    pub async fn change(
        &self,
        zone_id: &str,
        changes: Vec<Change>,
        what: &str,
    ) -> Result<(String, ChangeStatus), ProviderError> {
        let batch = ChangeBatch::builder()
            .comment("mxguard")
            .set_changes(Some(changes))
            .build()
            .map_err(|e| ProviderError::Rejected {
                reason: format!("{what}: {e}"),
            })?;
        self.bucket.acquire().await;
        let sent = self
            .sdk
            .change_resource_record_sets()
            .hosted_zone_id(zone_id)
            .change_batch(batch)
            .send()
            .await;
        let out = match sent {
            Ok(out) => out,
            Err(e) => {
                // InvalidChangeBatch carries every reason in `messages`, not in `message`.
                if let Some(ChangeResourceRecordSetsError::InvalidChangeBatch(icb)) =
                    e.as_service_error()
                {
                    let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(400);
                    let all = icb.messages().join("; ");
                    let message = if all.is_empty() {
                        icb.message().unwrap_or_default().to_string()
                    } else {
                        all
                    };
                    return Err(classify(
                        Some("InvalidChangeBatch"),
                        Some(&message),
                        status,
                        what,
                    ));
                }
                return Err(from_sdk(what, e));
            }
        };
        let info = out.change_info().ok_or_else(|| {
            ProviderError::Transient(format!("{what}: no ChangeInfo in the answer"))
        })?;
        Ok((info.id().to_string(), info.status().clone()))
    }

    pub async fn get_change(&self, id: &str) -> Result<ChangeStatus, ProviderError> {
        self.bucket.acquire().await;
        let what = format!("following change {id}");
        let out = self
            .sdk
            .get_change()
            .id(bare_id(id))
            .send()
            .await
            .map_err(|e| from_sdk(&what, e))?;
        let info = out.change_info().ok_or_else(|| {
            ProviderError::Transient(format!("{what}: no ChangeInfo in the answer"))
        })?;
        Ok(info.status().clone())
    }
}

/// `/hostedzone/Z123` or `/change/C123` → `Z123` / `C123`.
pub(crate) fn bare_id(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}
