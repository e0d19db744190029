//! Bearer tokens with scopes. Tokens are kept only as SHA-256 digests (a token given by
//! environment variable is hashed at startup) and compared in constant time; every configured
//! token is compared on every request. Scopes nest: admin ⊇ operate ⊇ read. Tokens are never
//! logged: only a token's configured `name` appears in logs and events.

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::{Scope, TokenConfig, TokenSecret};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token (only `/healthz` and `/openapi.yaml`, and `/readyz` / `/metrics` when opened).
    Open,
    Need(Scope),
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Open => "open",
            Access::Need(Scope::Read) => "read",
            Access::Need(Scope::Operate) => "operate",
            Access::Need(Scope::Admin) => "admin",
        }
    }
}

/// The authenticated caller: the token's configured name and its highest scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub scope: Scope,
}

struct Entry {
    name: String,
    digest: [u8; 32],
    scope: Option<Scope>,
}

/// The configured tokens, as digests.
pub struct Tokens {
    entries: Vec<Entry>,
    configured: usize,
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Tokens {
    /// Digests every configured token; a token whose environment variable is unset is disabled
    /// (with a warning naming the variable, never a value).
    pub fn from_config(tokens: &[TokenConfig]) -> Tokens {
        let entries = tokens
            .iter()
            .filter_map(|t| {
                let digest = match &t.secret {
                    TokenSecret::Sha256(d) => *d,
                    TokenSecret::Env(var) => match std::env::var(var) {
                        Ok(v) if !v.is_empty() => sha256(v.as_bytes()),
                        _ => {
                            tracing::warn!(token = %t.name, variable = %var, "API token disabled: its environment variable is not set");
                            return None;
                        }
                    },
                };
                Some(Entry {
                    name: t.name.clone(),
                    digest,
                    scope: t.scopes.iter().copied().max(),
                })
            })
            .collect();
        Tokens {
            entries,
            configured: tokens.len(),
        }
    }

    /// Who is calling, from the `Authorization` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.configured == 0 {
            return Err(ApiError::Unauthorized {
                detail: "no API tokens are configured on this server: add a [[tokens]] section \
                         to the configuration (name = \"bot\", sha256 = \"<hex SHA-256 of the \
                         token>\" or env = \"VARIABLE_HOLDING_THE_TOKEN\", scopes = [\"read\", \
                         \"operate\"]) and restart; then send Authorization: Bearer <token>"
                    .into(),
                no_tokens: true,
                invalid: false,
            });
        }
        let missing = |detail: &str| ApiError::Unauthorized {
            detail: detail.into(),
            no_tokens: false,
            invalid: false,
        };
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| missing("send the API token as Authorization: Bearer <token>"))?;
        let value = value
            .to_str()
            .map_err(|_| missing("the Authorization header is not ASCII"))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(missing("expected Authorization: Bearer <token>")),
        };
        self.authenticate_secret(token)
    }

    /// Who holds `token` (the dashboard's cookie carries it instead of a header).
    pub fn authenticate_secret(&self, token: &str) -> Result<Caller, ApiError> {
        if self.configured == 0 {
            return Err(ApiError::Unauthorized {
                detail: "no API tokens are configured on this server".into(),
                no_tokens: true,
                invalid: false,
            });
        }
        let digest = sha256(token.as_bytes());
        // Compare with every entry, without stopping at the first match.
        let mut found: Option<&Entry> = None;
        for e in &self.entries {
            if bool::from(e.digest.ct_eq(&digest)) {
                found = Some(e);
            }
        }
        let entry = found.ok_or(ApiError::Unauthorized {
            detail: "the bearer token is not one of the configured API tokens".into(),
            no_tokens: false,
            invalid: true,
        })?;
        let scope = entry
            .scope
            .ok_or_else(|| ApiError::Forbidden(format!("token {:?} has no scopes", entry.name)))?;
        Ok(Caller {
            name: entry.name.clone(),
            scope,
        })
    }

    /// Checks `access` for a request; `None` when the route is open.
    pub fn check(&self, access: Access, headers: &HeaderMap) -> Result<Option<Caller>, ApiError> {
        let Access::Need(needed) = access else {
            return Ok(None);
        };
        let caller = self.authenticate(headers)?;
        if caller.scope < needed {
            return Err(ApiError::Forbidden(format!(
                "token {:?} has the {} scope; this route needs {}",
                caller.name,
                Access::Need(caller.scope).as_str(),
                access.as_str()
            )));
        }
        Ok(Some(caller))
    }
}
