//! A small typed client for the calls mxguard makes: every request goes through the account's
//! budget (its pacing, and nothing sent while Cloudflare locks the account out), carries the
//! bearer token, and comes back as a result or a classified error. What each answer's
//! `Ratelimit` header says is left of the quota feeds the budget back (reference §9).

use std::time::Duration;

use mxguard_core::{Budget, ProviderError};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use url::Url;

use crate::config::{ApiToken, CloudflareConfig, ConfigError};
use crate::errors::{classify, parse_should_retry, transport, Failure};
use crate::wire::{ApiMessage, Envelope, ResultInfo};

pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
    token: ApiToken,
    budget: Budget,
}

/// A failed call, with what classification needs to look at again (the fallback from the
/// batch endpoint checks the status and codes).
pub(crate) struct CallError {
    pub error: ProviderError,
    pub status: Option<u16>,
    pub errors: Vec<ApiMessage>,
}

impl CallError {
    /// A failure without an HTTP answer to look at again.
    fn plain(error: ProviderError) -> Self {
        CallError {
            error,
            status: None,
            errors: Vec::new(),
        }
    }
}

impl From<CallError> for ProviderError {
    fn from(e: CallError) -> Self {
        e.error
    }
}

impl Client {
    /// The sustained requests per second this client paces itself to.
    pub fn rate(&self) -> f64 {
        self.budget.bucket().limit().per_second()
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    pub fn new(config: &CloudflareConfig, budget: Budget) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("mxguard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::Http(e.to_string()))?;
        Ok(Client {
            http,
            base: config.base_url.clone(),
            token: config.api_token.clone(),
            budget,
        })
    }

    fn url(&self, path: &[&str], query: &[(&str, String)]) -> Result<Url, ProviderError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ProviderError::Rejected {
                reason: format!("the base URL {} cannot take a path", self.base),
            })?
            .pop_if_empty()
            .extend(path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// One request; `what` names it in errors ("listing DNS records of example.com.").
    pub async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
        what: &str,
    ) -> Result<(T, Option<ResultInfo>), CallError> {
        let plain = CallError::plain;
        let url = self.url(path, query).map_err(plain)?;
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", self.token.expose())).map_err(|_| {
                plain(ProviderError::Auth(
                    "the API token cannot be sent in a header".into(),
                ))
            })?;
        auth.set_sensitive(true);
        let mut request = self
            .http
            .request(method.clone(), url)
            .header(AUTHORIZATION, auth);
        if let Some(body) = body {
            request = request.json(body);
        }
        // A lockout Cloudflare announced (429, or the quota spent) refuses anything sent before
        // it ends, and a request in it is one more 429: none is sent.
        if let Some(left) = self.budget.locked_for() {
            return Err(plain(ProviderError::RateLimited {
                retry_after: Some(left),
            }));
        }
        self.budget.bucket().acquire().await;
        tracing::debug!(%method, path = %path.join("/"), "cloudflare request");
        let response = request
            .send()
            .await
            .map_err(|e| plain(transport(what, &e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        if let Some((remaining, reset)) = headers
            .get("ratelimit")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_ratelimit)
        {
            self.budget.observe(remaining, reset);
        }
        if let Err(CallError {
            error:
                ProviderError::RateLimited {
                    retry_after: Some(after),
                },
            ..
        }) = &answer_probe(status, &headers)
        {
            self.budget.lock_out(*after);
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| plain(transport(what, &e)))?;
        read_answer(status, &headers, &bytes, what)
    }

    /// Every page of a list endpoint: asks for `page` 1, 2, … until a page comes back empty
    /// or `result_info.total_pages` is reached.
    pub async fn list_all<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, String)],
        per_page: u32,
        what: &str,
    ) -> Result<Vec<T>, ProviderError> {
        let mut out = Vec::new();
        let mut page: u32 = 1;
        loop {
            let mut q: Vec<(&str, String)> = query.to_vec();
            q.push(("page", page.to_string()));
            q.push(("per_page", per_page.to_string()));
            let (items, info): (Vec<T>, _) =
                self.call(Method::GET, path, &q, None::<&()>, what).await?;
            let got = items.len();
            out.extend(items);
            let last = match info.and_then(|i| i.total_pages) {
                Some(total) => page >= total,
                None => got < per_page as usize,
            };
            if got == 0 || last {
                return Ok(out);
            }
            page = page.checked_add(1).ok_or_else(|| {
                ProviderError::Transient(format!("{what}: more pages than mxguard can count"))
            })?;
        }
    }
}

/// A 429's lockout, read before the body (so the budget closes even when the body is lost).
fn answer_probe(status: StatusCode, headers: &HeaderMap) -> Result<(), CallError> {
    if status != StatusCode::TOO_MANY_REQUESTS {
        return Ok(());
    }
    let retry_after = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok());
    Err(failed(
        status,
        Vec::new(),
        retry_after,
        None,
        "a rate-limited call",
    ))
}

/// The `Ratelimit` header, `"default";r=<remaining>;t=<seconds to reset>` (reference §9): what
/// is left of the account's quota and when it resets. Anything else reads as nothing.
pub(crate) fn parse_ratelimit(value: &str) -> Option<(u32, Duration)> {
    let mut remaining = None;
    let mut reset = None;
    for param in value.split(';').skip(1) {
        let (key, v) = param.trim().split_once('=')?;
        match key.trim() {
            "r" => remaining = v.trim().parse::<u32>().ok(),
            "t" => reset = v.trim().parse::<u64>().ok(),
            _ => {}
        }
    }
    Some((remaining?, Duration::from_secs(reset?.min(86_400))))
}

/// What one answer means: its result, or the failure classified. Apart from the request, so
/// that any status, headers and body a server can send are checked without a server.
pub(crate) fn read_answer<T: DeserializeOwned>(
    status: StatusCode,
    headers: &HeaderMap,
    bytes: &[u8],
    what: &str,
) -> Result<(T, Option<ResultInfo>), CallError> {
    let retry_after = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok());
    let should_retry = headers
        .get("x-should-retry")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_should_retry);
    let envelope: Result<Envelope<T>, _> = serde_json::from_slice(bytes);
    match envelope {
        Ok(env) if status.is_success() && env.success => match env.result {
            Some(result) => Ok((result, env.result_info)),
            None => Err(CallError::plain(ProviderError::Transient(format!(
                "{what}: Cloudflare answered success without a result"
            )))),
        },
        Ok(env) => Err(failed(status, env.errors, retry_after, should_retry, what)),
        Err(e) if status.is_success() => Err(CallError::plain(ProviderError::Transient(format!(
            "{what}: Cloudflare's answer could not be read: {e}"
        )))),
        Err(_) => {
            // a failure without the JSON envelope (a proxy's error page, a 429 from the edge)
            let errors = serde_json::from_slice::<Envelope<serde_json::Value>>(bytes)
                .map(|e| e.errors)
                .unwrap_or_default();
            Err(failed(status, errors, retry_after, should_retry, what))
        }
    }
}

fn failed(
    status: StatusCode,
    errors: Vec<ApiMessage>,
    retry_after: Option<&str>,
    should_retry: Option<bool>,
    what: &str,
) -> CallError {
    let error = classify(&Failure {
        status: status.as_u16(),
        errors: &errors,
        retry_after,
        should_retry,
        what,
    });
    tracing::debug!(status = status.as_u16(), error = %error, "cloudflare call failed");
    CallError {
        error,
        status: Some(status.as_u16()),
        errors,
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratelimit_header_reads_as_remaining_and_reset() {
        assert_eq!(
            parse_ratelimit(r#""default";r=50;t=30"#),
            Some((50, Duration::from_secs(30)))
        );
        assert_eq!(
            parse_ratelimit(r#""default"; t=0; r=0"#),
            Some((0, Duration::ZERO))
        );
        assert_eq!(parse_ratelimit(r#""default";r=50"#), None);
        assert_eq!(parse_ratelimit(r#""default";r=-1;t=3"#), None);
        assert_eq!(parse_ratelimit("garbage"), None);
        assert_eq!(
            parse_ratelimit(r#""default";r=1;t=99999999999"#),
            Some((1, Duration::from_secs(86_400)))
        );
    }
}
