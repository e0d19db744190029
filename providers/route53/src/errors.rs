//! SDK errors → [`ProviderError`]: by AWS error code first, then by HTTP status; errors that
//! never reached Route 53 (credentials, connection, timeout) by their kind.

use std::error::Error as StdError;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_route53::config::http::HttpResponse;
use aws_sdk_route53::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use mxguard_core::ProviderError;

const RATE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "PriorRequestNotComplete",
    "RequestLimitExceeded",
    "TooManyRequestsException",
];
const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidSignatureException",
    "ExpiredToken",
    "ExpiredTokenException",
    "AuthFailure",
    "OptInRequired",
];
const NOT_FOUND_CODES: &[&str] = &["NoSuchHostedZone", "HostedZoneNotFound", "NoSuchChange"];
const REJECT_CODES: &[&str] = &["InvalidChangeBatch", "InvalidInput", "InvalidArgument"];

/// What Route 53 said: its error code, message and HTTP status.
pub(crate) fn classify(
    code: Option<&str>,
    message: Option<&str>,
    status: u16,
    what: &str,
) -> ProviderError {
    let detail = format!(
        "{what}: Route 53 answered HTTP {status} {}: {}",
        code.unwrap_or("(no error code)"),
        message.unwrap_or("(no message)")
    );
    let code = code.unwrap_or("");
    if RATE_CODES.contains(&code) || status == 429 {
        return ProviderError::RateLimited { retry_after: None };
    }
    if AUTH_CODES.contains(&code) || status == 401 || status == 403 {
        return ProviderError::Auth(format!(
            "{detail} (mxguard needs route53:ListHostedZonesByName, GetHostedZone, ListResourceRecordSets, ChangeResourceRecordSets and GetChange)"
        ));
    }
    if NOT_FOUND_CODES.contains(&code) {
        return ProviderError::NotFound(detail);
    }
    if REJECT_CODES.contains(&code) {
        return ProviderError::Rejected { reason: detail };
    }
    if status >= 500 || code == "ServiceUnavailable" || code == "InternalFailure" {
        return ProviderError::Transient(detail);
    }
    if status == 404 {
        return ProviderError::NotFound(detail);
    }
    ProviderError::Rejected { reason: detail }
}

fn credentials_problem(e: &(dyn StdError + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<CredentialsError>() {
            return Some(DisplayErrorContext(c).to_string());
        }
        cur = err.source();
    }
    None
}

/// Any SDK error of an operation → [`ProviderError`].
pub(crate) fn from_sdk<E>(what: &str, err: SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    if let Some(why) = credentials_problem(&err) {
        return ProviderError::Auth(format!("{what}: no usable AWS credentials: {why}"));
    }
    match &err {
        SdkError::ServiceError(ctx) => classify(
            ctx.err().code(),
            ctx.err().message(),
            ctx.raw().status().as_u16(),
            what,
        ),
        SdkError::TimeoutError(_) => {
            ProviderError::Transient(format!("{what}: Route 53 did not answer in time"))
        }
        SdkError::DispatchFailure(_) => ProviderError::Transient(format!(
            "{what}: could not reach Route 53: {}",
            DisplayErrorContext(&err)
        )),
        SdkError::ResponseError(ctx) => ProviderError::Transient(format!(
            "{what}: Route 53's answer (HTTP {}) could not be read: {}",
            ctx.raw().status().as_u16(),
            DisplayErrorContext(&err)
        )),
        SdkError::ConstructionFailure(_) => ProviderError::Rejected {
            reason: format!(
                "{what}: the request could not be built: {}",
                DisplayErrorContext(&err)
            ),
        },
        _ => ProviderError::Transient(format!("{what}: {}", DisplayErrorContext(&err))),
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_map_to_kinds() {
        let k = |code: Option<&str>, status| classify(code, Some("m"), status, "t").kind();
        assert_eq!(k(Some("Throttling"), 400), "rate_limited");
        assert_eq!(k(Some("PriorRequestNotComplete"), 400), "rate_limited");
        assert_eq!(k(Some("InvalidChangeBatch"), 400), "rejected");
        assert_eq!(k(Some("InvalidClientTokenId"), 403), "auth");
        assert_eq!(k(None, 403), "auth");
        assert_eq!(k(Some("NoSuchHostedZone"), 404), "not_found");
        assert_eq!(k(Some("ServiceUnavailable"), 503), "transient");
        assert_eq!(k(None, 502), "transient");
        let e = classify(
            Some("InvalidChangeBatch"),
            Some("Tried to delete resource record set but it was not found"),
            400,
            "applying",
        );
        assert!(e.to_string().contains("Tried to delete"), "{e}");
    }
}
