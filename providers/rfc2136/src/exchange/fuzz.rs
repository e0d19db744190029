//! Fuzz targets (proptest) for the answers the RFC 2136 provider reads ([`Exchange::accept`]):
//! arbitrary bytes, and answers built with hickory-proto — signed with mxguard's key, with
//! another key, not at all, or carrying a TSIG error — then damaged on the wire. Nothing is
//! accepted that mxguard's key did not sign for this request, and what is accepted is what was
//! signed. Case counts are bounded so each target runs in a few seconds in `cargo test` (CI).

use hickory_proto::op::MessageType;
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::TSigResponseContext;
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::rcode::{self, Op};

const SECRET: &[u8] = b"mxguard-fuzzing-secret-32-bytes!";

fn key_name() -> Name {
    Name::from_ascii("mxguard-key.").expect("a key name")
}

fn signer(secret: &[u8]) -> TSigner {
    TSigner::new(secret.to_vec(), TsigAlgorithm::HmacSha256, key_name(), 300).expect("a signer")
}

fn exchange() -> Exchange {
    Exchange::new(
        SocketAddr::from(([127, 0, 0, 1], 53)),
        signer(SECRET),
        Duration::from_secs(1),
    )
}

/// A signed query for the zone's SOA, and the verifier its answer must satisfy.
fn signed_query(x: &Exchange) -> (Message, TSigVerifier) {
    let mut msg = Message::query();
    msg.add_query(Query::query(
        Name::from_ascii("example.test.").expect("a name"),
        RecordType::SOA,
    ));
    let (_, verifier) = x.sign(&mut msg).expect("signed");
    (msg, verifier)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How the server signed its answer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Signing {
    Ours,
    OtherKey,
    Unsigned,
    /// Unsigned, with BADSIG (RFC 8945 5.3.2: the server could not verify the request).
    BadSig,
    /// Unsigned, with BADKEY.
    BadKey,
    /// Signed, with BADTIME.
    BadTime,
}

#[derive(Clone, Debug)]
struct Answer {
    same_id: bool,
    signing: Signing,
    rcode: ResponseCode,
    records: Vec<([u8; 4], u32)>,
}

fn answer() -> impl Strategy<Value = Answer> {
    let signing = prop_oneof![
        4 => Just(Signing::Ours),
        1 => Just(Signing::OtherKey),
        1 => Just(Signing::Unsigned),
        1 => Just(Signing::BadSig),
        1 => Just(Signing::BadKey),
        1 => Just(Signing::BadTime),
    ];
    let rcode = prop::sample::select(
        &[
            ResponseCode::NoError,
            ResponseCode::NXDomain,
            ResponseCode::ServFail,
            ResponseCode::Refused,
            ResponseCode::NotAuth,
            ResponseCode::NotZone,
            ResponseCode::YXRRSet,
            ResponseCode::NXRRSet,
            ResponseCode::FormErr,
        ][..],
    );
    (
        prop::bool::weighted(0.9),
        signing,
        rcode,
        vec(any::<([u8; 4], u32)>(), 0..4),
    )
        .prop_map(|(same_id, signing, rcode, records)| Answer {
            same_id,
            signing,
            rcode,
            records,
        })
}

impl Answer {
    /// The response a server would send to `request`, unsigned.
    fn message(&self, request: &Message) -> Message {
        let id = if self.same_id {
            request.metadata.id
        } else {
            request.metadata.id.wrapping_add(1)
        };
        let mut msg = Message::new(id, MessageType::Response, request.metadata.op_code);
        msg.metadata.response_code = self.rcode;
        msg.add_queries(request.queries.clone());
        for (ip, ttl) in &self.records {
            msg.add_answer(Record::from_rdata(
                Name::from_ascii("example.test.").expect("a name"),
                *ttl,
                hickory_proto::rr::RData::A(A(std::net::Ipv4Addr::from(*ip))),
            ));
        }
        msg
    }

    /// The response as sent: `message` with the TSIG record its signing calls for.
    fn wire(&self, request: &Message) -> Vec<u8> {
        let mut msg = self.message(request);
        let unsigned = msg.to_vec().expect("an encodable response");
        let mac = request
            .signature()
            .map(|r| r.data.mac.clone())
            .unwrap_or_default();
        let id = request.metadata.id;
        let context = match self.signing {
            Signing::Unsigned => return unsigned,
            Signing::Ours => TSigResponseContext::new(id, now(), signer(SECRET), mac, None),
            Signing::OtherKey => {
                TSigResponseContext::new(id, now(), signer(b"another-secret"), mac, None)
            }
            Signing::BadSig => TSigResponseContext::bad_signature(id, now(), signer(SECRET)),
            Signing::BadKey => TSigResponseContext::unknown_key(id, now(), key_name()),
            Signing::BadTime => {
                TSigResponseContext::new(id, now(), signer(SECRET), mac, Some(TsigError::BadTime))
            }
        };
        msg.set_signature(context.sign(&unsigned).expect("a TSIG record"));
        msg.to_vec().expect("an encodable response")
    }
}

/// Damage on the wire: a byte changed, the message cut short, or bytes after it.
#[derive(Clone, Debug)]
enum Damage {
    None,
    Flip(usize, u8),
    Cut(usize),
    Append(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => Just(Damage::None),
        2 => (any::<usize>(), 1..=255u8).prop_map(|(at, x)| Damage::Flip(at, x)),
        1 => any::<usize>().prop_map(Damage::Cut),
        1 => vec(any::<u8>(), 1..32).prop_map(Damage::Append),
    ]
}

impl Damage {
    fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            Damage::None => {}
            Damage::Flip(at, x) => {
                let at = at % bytes.len();
                bytes[at] ^= x;
            }
            Damage::Cut(at) => bytes.truncate(at % bytes.len()),
            Damage::Append(more) => bytes.extend_from_slice(more),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Any bytes (half of them starting with the request's id): no panic, and never accepted.
    #[test]
    fn any_bytes_are_never_accepted(with_id in any::<bool>(), bytes in vec(any::<u8>(), 0..400)) {
        let x = exchange();
        let (request, mut verifier) = signed_query(&x);
        let mut bytes = bytes;
        if with_id && bytes.len() >= 2 {
            bytes[..2].copy_from_slice(&request.metadata.id.to_be_bytes());
        }
        let accepted = x.accept(&bytes, request.metadata.id, &mut verifier);
        prop_assert!(!matches!(accepted, Ok(Some(_))), "accepted {:?}", accepted);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Answers built and signed as a server would: accepted only when signed with mxguard's
    /// key for this request and intact, and then exactly as signed; another id is not an
    /// answer (waited past); a TSIG error, another key or no signature is an `Auth` failure.
    #[test]
    fn only_what_our_key_signed_is_accepted(a in answer(), damage in damage()) {
        let x = exchange();
        let (request, mut verifier) = signed_query(&x);
        let sent = a.message(&request);
        let mut bytes = a.wire(&request);
        damage.apply(&mut bytes);
        let accepted = x.accept(&bytes, request.metadata.id, &mut verifier);
        if let Ok(Some(got)) = &accepted {
            prop_assert!(a.same_id && a.signing == Signing::Ours, "accepted {:?}", a);
            prop_assert_eq!(&got.answers, &sent.answers);
            prop_assert_eq!(&got.queries, &sent.queries);
            prop_assert_eq!(got.metadata.response_code, sent.metadata.response_code);
            let zone = mxguard_core::Fqdn::parse("example.test").expect("a name");
            for op in [Op::Query, Op::Update, Op::Transfer] {
                let _ = rcode::classify(op, got.metadata.response_code, &zone);
            }
        }
        if matches!(damage, Damage::None) {
            match (a.same_id, a.signing) {
                (false, _) => prop_assert!(matches!(accepted, Ok(None)), "{:?}", accepted),
                (true, Signing::Ours) => prop_assert!(matches!(accepted, Ok(Some(_))), "{:?}", accepted),
                (true, _) => prop_assert!(matches!(accepted, Err(ProviderError::Auth(_))), "{:?}", accepted),
            }
        }
    }
}
