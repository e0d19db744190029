//! Fuzz targets (proptest) for what the DNS probe reads from a server: arbitrary datagrams, and
//! answers built with hickory-proto (header bits, question and records drawn at random) and
//! then mutated on the wire. An answer is accepted only when it answers the query, and what
//! the probe keeps of an accepted one follows the rules of [`fill`]. Case counts are bounded so
//! each target runs in a few seconds in `cargo test` (CI).

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::OpCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, TXT};
use hickory_proto::rr::{DNSClass, Record};
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// Names the answers are made of: the queried one (and it in other case, which is the same
/// name), other names, and exchanges mxguard's `Fqdn` refuses.
const NAMES: &[&str] = &[
    "mx.example.test.",
    "MX.Example.TEST.",
    "other.example.test.",
    ".",
    "a.b.c.d.example.test.",
    "_srv._tcp.example.test.",
    "xn--nxasmq6b.test.",
];

fn name(i: usize) -> Name {
    Name::from_ascii(NAMES[i % NAMES.len()]).expect("a valid name")
}

const TYPES: [RecordType; 4] = [
    RecordType::Mx,
    RecordType::A,
    RecordType::Aaaa,
    RecordType::Txt,
];

fn query_of(rtype: RecordType) -> Message {
    let client = DnsClient::resolver(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 53)),
        Duration::from_secs(1),
    );
    client
        .request(&Fqdn::parse("mx.example.test").expect("a name"), rtype)
        .expect("a query")
}

/// How an answer's question relates to the query's.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Question {
    Same,
    /// The same name in other case: the same question.
    OtherCase,
    OtherName,
    OtherType,
    OtherClass,
    Missing,
    Twice,
}

#[derive(Clone, Debug)]
enum Data {
    A([u8; 4]),
    Aaaa([u8; 16]),
    Mx(u16, usize),
    Txt(Vec<Vec<u8>>),
    Cname(usize),
    Ns(usize),
}

impl Data {
    fn wire(&self) -> WireData {
        match self {
            Data::A(a) => WireData::A(A(Ipv4Addr::from(*a))),
            Data::Aaaa(a) => WireData::AAAA(AAAA(Ipv6Addr::from(*a))),
            Data::Mx(pref, n) => WireData::MX(MX::new(*pref, name(*n))),
            Data::Txt(strings) => {
                WireData::TXT(TXT::from_bytes(strings.iter().map(Vec::as_slice).collect()))
            }
            Data::Cname(n) => WireData::CNAME(CNAME(name(*n))),
            Data::Ns(n) => WireData::NS(NS(name(*n))),
        }
    }
}

fn data() -> impl Strategy<Value = Data> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(Data::A),
        any::<[u8; 16]>().prop_map(Data::Aaaa),
        (any::<u16>(), 0..NAMES.len()).prop_map(|(p, n)| Data::Mx(p, n)),
        // at least one string: an empty TXT rdata is not a valid record
        vec(vec(any::<u8>(), 0..256), 1..3).prop_map(Data::Txt),
        (0..NAMES.len()).prop_map(Data::Cname),
        (0..NAMES.len()).prop_map(Data::Ns),
    ]
}

/// An answer as a server might send it, before any damage on the wire.
#[derive(Clone, Debug)]
struct Answer {
    rtype: usize,
    same_id: bool,
    response: bool,
    op_code: OpCode,
    question: Question,
    rcode: ResponseCode,
    authoritative: bool,
    truncation: bool,
    /// Owner (index into [`NAMES`]), TTL, data.
    records: Vec<(usize, u32, Data)>,
}

fn answer() -> impl Strategy<Value = Answer> {
    let op_code = prop_oneof![
        8 => Just(OpCode::Query),
        1 => Just(OpCode::Status),
        1 => Just(OpCode::Notify),
        1 => Just(OpCode::Update),
    ];
    let question = prop_oneof![
        6 => Just(Question::Same),
        2 => Just(Question::OtherCase),
        1 => Just(Question::OtherName),
        1 => Just(Question::OtherType),
        1 => Just(Question::OtherClass),
        1 => Just(Question::Missing),
        1 => Just(Question::Twice),
    ];
    let rcode = prop_oneof![
        6 => Just(ResponseCode::NoError),
        2 => Just(ResponseCode::NXDomain),
        1 => Just(ResponseCode::ServFail),
        1 => Just(ResponseCode::Refused),
        1 => Just(ResponseCode::FormErr),
        1 => Just(ResponseCode::NotImp),
    ];
    let ttl = prop_oneof![3 => 0u32..86_400, 1 => any::<u32>()];
    (
        (
            0..TYPES.len(),
            prop::bool::weighted(0.9),
            prop::bool::weighted(0.9),
        ),
        (op_code, question, rcode, any::<bool>(), any::<bool>()),
        vec((0..NAMES.len(), ttl, data()), 0..8),
    )
        .prop_map(
            |(
                (rtype, same_id, response),
                (op_code, question, rcode, authoritative, truncation),
                records,
            )| Answer {
                rtype,
                same_id,
                response,
                op_code,
                question,
                rcode,
                authoritative,
                truncation,
                records,
            },
        )
}

impl Answer {
    /// The message a server would send in reply to `request`.
    fn message(&self, request: &Message) -> Message {
        let id = if self.same_id {
            request.metadata.id
        } else {
            request.metadata.id.wrapping_add(1)
        };
        let kind = if self.response {
            MessageType::Response
        } else {
            MessageType::Query
        };
        let mut msg = Message::new(id, kind, self.op_code);
        msg.metadata.response_code = self.rcode;
        msg.metadata.authoritative = self.authoritative;
        msg.metadata.truncation = self.truncation;
        let asked = request.queries[0].clone();
        let mut other = asked.clone();
        match self.question {
            Question::Same => {
                msg.add_query(asked);
            }
            Question::OtherCase => {
                other.name = name(1);
                msg.add_query(other);
            }
            Question::OtherName => {
                other.name = name(2);
                msg.add_query(other);
            }
            Question::OtherType => {
                // the probe never asks for NS of a host
                other.query_type = WireType::NS;
                msg.add_query(other);
            }
            Question::OtherClass => {
                other.query_class = DNSClass::CH;
                msg.add_query(other);
            }
            Question::Missing => {}
            Question::Twice => {
                msg.add_query(asked.clone());
                msg.add_query(asked);
            }
        }
        for (owner, ttl, data) in &self.records {
            msg.add_answer(Record::from_rdata(name(*owner), *ttl, data.wire()));
        }
        msg
    }

    /// Whether the message answers the query, by the rules written out independently.
    fn answers_the_query(&self) -> bool {
        self.same_id
            && self.response
            && self.op_code == OpCode::Query
            && matches!(self.question, Question::Same | Question::OtherCase)
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

/// What the probe makes of `msg` when it asked for `rtype`: the rules of [`fill`], checked
/// against the message itself.
fn check_fill(msg: &Message, rtype: RecordType) -> Result<(), TestCaseError> {
    let mut answer = DnsAnswer {
        server: SocketAddr::from((Ipv4Addr::LOCALHOST, 53)),
        name: Fqdn::parse("mx.example.test").expect("a name"),
        rtype,
        status: DnsStatus::Timeout,
        records: Vec::new(),
        ttl: None,
        authoritative: false,
        via_tcp: false,
        latency_ms: 0,
        reused: false,
    };
    fill(&mut answer, msg);
    prop_assert_eq!(answer.authoritative, msg.metadata.authoritative);
    let want = wire_type(rtype);
    // the TTL kept is the smallest of the records of the asked type that mxguard can hold
    let ttl = msg
        .answers
        .iter()
        .filter(|r| r.record_type() == want && convert(&r.data).is_some())
        .map(|r| r.ttl)
        .min();
    match msg.metadata.response_code {
        ResponseCode::NoError => {
            if ttl.is_some() {
                prop_assert_eq!(&answer.status, &DnsStatus::NoError);
            } else {
                prop_assert_eq!(&answer.status, &DnsStatus::NoData);
            }
        }
        ResponseCode::NXDomain => prop_assert_eq!(&answer.status, &DnsStatus::NxDomain),
        ResponseCode::ServFail => prop_assert_eq!(&answer.status, &DnsStatus::ServFail),
        ResponseCode::Refused => prop_assert_eq!(&answer.status, &DnsStatus::Refused),
        _ => prop_assert!(
            matches!(answer.status, DnsStatus::Rcode(_)),
            "{:?}",
            answer.status
        ),
    }
    if answer.status == DnsStatus::NoError {
        prop_assert_eq!(answer.ttl, ttl);
        prop_assert!(answer.records.iter().all(|r| r.rtype() == rtype));
        prop_assert!(
            answer.records.windows(2).all(|w| w[0] < w[1]),
            "sorted, without duplicates"
        );
        let at_most = msg
            .answers
            .iter()
            .filter(|r| r.record_type() == want)
            .count();
        prop_assert!(!answer.records.is_empty() && answer.records.len() <= at_most);
    } else {
        prop_assert!(answer.records.is_empty() && answer.ttl.is_none());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any datagram at all (half of them starting with the query's id and a response's flags):
    /// no panic, and nothing is accepted that does not answer the query.
    #[test]
    fn any_datagram_is_accepted_only_as_an_answer(
        rtype in 0..TYPES.len(),
        header in any::<bool>(),
        bytes in vec(any::<u8>(), 0..600),
    ) {
        let rtype = TYPES[rtype];
        let request = query_of(rtype);
        let mut bytes = bytes;
        if header && bytes.len() >= 4 {
            bytes[..2].copy_from_slice(&request.metadata.id.to_be_bytes());
            bytes[2] = 0x80 | (bytes[2] & 0x07);
        }
        if let Ok(msg) = parse_answer(&request, &bytes) {
            prop_assert!(answers(&request, &msg));
        }
        // the record rules hold for any message, accepted or not
        if let Ok(msg) = Message::from_vec(&bytes) {
            check_fill(&msg, rtype)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Answers built with hickory-proto: accepted exactly when the id, the QR bit, the opcode
    /// and the question match the query (the same name in other case is the same question);
    /// after damage on the wire, never accepted unless they still do; and what is kept of
    /// an accepted one follows the record rules.
    #[test]
    fn built_answers_are_accepted_exactly_when_they_answer(a in answer(), damage in damage()) {
        let rtype = TYPES[a.rtype];
        let request = query_of(rtype);
        let msg = a.message(&request);
        // some drawn messages cannot be encoded (e.g. a name that does not fit); nothing to send
        let Ok(mut bytes) = msg.to_vec() else {
            return Ok(());
        };
        damage.apply(&mut bytes);
        match parse_answer(&request, &bytes) {
            Ok(got) => {
                prop_assert!(answers(&request, &got));
                prop_assert_eq!(got.metadata.id, request.metadata.id);
                prop_assert_eq!(got.metadata.message_type, MessageType::Response);
                prop_assert_eq!(got.metadata.op_code, OpCode::Query);
                prop_assert_eq!(&got.queries, &request.queries);
                if matches!(damage, Damage::None) {
                    prop_assert!(a.answers_the_query(), "accepted {:?}", a);
                }
                check_fill(&got, rtype)?;
            }
            Err(e) => {
                if matches!(damage, Damage::None) {
                    prop_assert!(!a.answers_the_query(), "refused {:?}: {}", a, e);
                }
            }
        }
    }
}
