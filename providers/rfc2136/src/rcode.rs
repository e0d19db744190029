//! DNS response codes → [`ProviderError`]. The same code means different things for a query,
//! an UPDATE and a zone transfer, so the mapping takes the operation.

use hickory_proto::op::ResponseCode;
use mxguard_core::{Fqdn, ProviderError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Query,
    Update,
    Transfer,
}

/// `Ok` for success — and for NXDOMAIN on a query, which only says the name is absent.
/// TSIG failures (BADSIG/BADKEY/BADTIME, carried in the TSIG record with NOTAUTH) are
/// classified before this, in the exchange.
pub(crate) fn classify(op: Op, code: ResponseCode, zone: &Fqdn) -> Result<(), ProviderError> {
    use ResponseCode as R;
    match (code, op) {
        (R::NoError, _) | (R::NXDomain, Op::Query) => Ok(()),
        (R::ServFail, _) => Err(ProviderError::Transient(format!(
            "the server failed (SERVFAIL) on {zone}"
        ))),
        (R::Refused, Op::Query) => Err(ProviderError::NotFound(format!(
            "the server refused a query in {zone}: it does not serve the zone (or allow-query excludes mxguard)"
        ))),
        (R::Refused, Op::Update) => Err(ProviderError::Auth(format!(
            "the server refused the UPDATE to {zone} (REFUSED): the key is not allowed to change these names \
             (allow-update / update-policy), or a server check refused the content, e.g. an MX whose \
             in-zone target has no A/AAAA"
        ))),
        (R::Refused, Op::Transfer) => Err(ProviderError::Auth(format!(
            "the server refused the zone transfer of {zone} (REFUSED): allow-transfer must name mxguard's key"
        ))),
        (R::NotAuth, _) => Err(ProviderError::NotFound(format!(
            "the server is not authoritative for {zone} (NOTAUTH)"
        ))),
        (R::NotZone, _) => Err(ProviderError::NotFound(format!(
            "a name is not in zone {zone} as the server sees it (NOTZONE)"
        ))),
        (R::YXRRSet | R::NXRRSet | R::YXDomain | R::NXDomain, Op::Update) => {
            Err(ProviderError::Rejected {
                reason: format!(
                    "an RRset in {zone} is not what the change expected ({code}): it was changed since it was read"
                ),
            })
        }
        (R::BADSIG | R::BADKEY | R::BADTIME, _) => Err(ProviderError::Auth(format!(
            "the server refused mxguard's TSIG signature ({code})"
        ))),
        (R::FormErr, _) => Err(ProviderError::Rejected {
            reason: format!("the server could not parse the request for {zone} (FORMERR)"),
        }),
        (R::NotImp, _) => Err(ProviderError::Rejected {
            reason: format!("the server does not implement this operation for {zone} (NOTIMP)"),
        }),
        (other, _) => Err(ProviderError::Transient(format!(
            "unexpected response code {other} for {zone}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_maps_to_the_kind_the_controller_acts_on() {
        let zone = Fqdn::parse("example.test").unwrap();
        let kind = |op, code| classify(op, code, &zone).err().map(|e| e.kind());
        use ResponseCode as R;
        let table = [
            (Op::Update, R::NoError, None),
            (Op::Query, R::NXDomain, None),
            (Op::Query, R::Refused, Some("not_found")),
            (Op::Update, R::Refused, Some("auth")),
            (Op::Transfer, R::Refused, Some("auth")),
            (Op::Update, R::NotAuth, Some("not_found")),
            (Op::Transfer, R::NotAuth, Some("not_found")),
            (Op::Update, R::NotZone, Some("not_found")),
            (Op::Update, R::YXRRSet, Some("rejected")),
            (Op::Update, R::NXRRSet, Some("rejected")),
            (Op::Update, R::NXDomain, Some("rejected")),
            (Op::Update, R::BADSIG, Some("auth")),
            (Op::Query, R::BADKEY, Some("auth")),
            (Op::Update, R::ServFail, Some("transient")),
            (Op::Query, R::ServFail, Some("transient")),
            (Op::Update, R::FormErr, Some("rejected")),
            (Op::Update, R::NotImp, Some("rejected")),
        ];
        for (op, code, want) in table {
            assert_eq!(kind(op, code), want, "{op:?} {code}");
        }
    }
}
