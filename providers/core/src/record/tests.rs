//! Tests of the record model.

use super::*;
use proptest::prelude::*;

fn name(s: &str) -> Fqdn {
    Fqdn::parse(s).unwrap()
}

fn mx_set(records: &[&str]) -> Result<RecordSet, ModelError> {
    RecordSet::parse(
        name("example.com"),
        RecordType::Mx,
        Ttl::new(300).unwrap(),
        records,
    )
}

#[test]
fn mx_parses_and_prints_canonically() {
    let mx = MxRecord::parse("10 MX1.Example.com").unwrap();
    assert_eq!(mx.to_string(), "10 mx1.example.com.");
    assert!(MxRecord::parse("mx1.example.com").is_err());
    assert!(MxRecord::parse("70000 mx1.example.com").is_err());
    assert!(MxRecord::parse("10 mx1.example.com extra").is_err());
}

#[test]
fn null_mx_is_representable_and_stands_alone() {
    let set = mx_set(&["0 ."]).unwrap();
    assert!(set.mx_records().all(|m| m.is_null()));
    assert_eq!(set.to_string(), "example.com. 300 IN MX 0 .");
    assert!(matches!(
        mx_set(&["0 .", "10 mx.example.com."]),
        Err(ModelError::NullMxNotAlone { .. })
    ));
    assert!(MxRecord::parse("10 .").is_err());
}

#[test]
fn set_equality_ignores_order_and_case() {
    let a = mx_set(&["10 mx1.example.com.", "20 mx2.example.com."]).unwrap();
    let b = mx_set(&["20 MX2.example.com", "10 mx1.example.com."]).unwrap();
    assert_eq!(a, b);
}

#[test]
fn ttl_is_part_of_equality_but_not_of_same_records() {
    let a = mx_set(&["10 mx1.example.com."]).unwrap();
    let b = a.with_ttl(Ttl::new(60).unwrap());
    assert_ne!(a, b);
    assert!(a.same_records(&b));
}

#[test]
fn rejects_empty_duplicate_and_mixed_sets() {
    assert!(matches!(
        mx_set(&[]),
        Err(ModelError::EmptyRecordSet { .. })
    ));
    assert!(matches!(
        mx_set(&["10 mx1.example.com.", "10 MX1.example.com"]),
        Err(ModelError::DuplicateRecord { .. })
    ));
    let mixed = RecordSet::new(
        name("example.com"),
        RecordType::A,
        Ttl::new(60).unwrap(),
        [RData::Aaaa("2001:db8::1".parse().unwrap())],
    );
    assert!(matches!(mixed, Err(ModelError::MixedTypes { .. })));
}

#[test]
fn ttl_bounds() {
    assert!(Ttl::new(Ttl::MAX).is_ok());
    assert!(Ttl::new(Ttl::MAX + 1).is_err());
}

#[test]
fn txt_quoted_and_bare() {
    let q = RData::parse(RecordType::Txt, r#""v=spf1 " "ip4:192.0.2.1 -all""#).unwrap();
    let b = RData::parse(RecordType::Txt, "v=spf1 ip4:192.0.2.1 -all").unwrap();
    assert_eq!(q, b);
    assert!(RData::parse(RecordType::Txt, r#""unterminated"#).is_err());
    let esc = RData::Txt(r#"a "quoted" \ word"#.to_string());
    assert_eq!(
        RData::parse(RecordType::Txt, &esc.to_string()).unwrap(),
        esc
    );
}

#[test]
fn txt_reads_decimal_escapes_and_any_number_of_strings() {
    let esc = RData::parse(RecordType::Txt, r#""v=spf1\032-all" "\059x""#).unwrap();
    assert_eq!(esc, RData::Txt("v=spf1 -all;x".into()));
    let long = "a".repeat(600);
    let chunked = txt::encode_presentation(&long, Escapes::Decimal);
    assert_eq!(chunked.matches('"').count(), 6, "{chunked}");
    assert_eq!(
        RData::parse(RecordType::Txt, &chunked).unwrap(),
        RData::Txt(long)
    );
    assert!(RData::parse(RecordType::Txt, r#""\300""#).is_err());
    assert!(RData::parse(RecordType::Txt, r#""\255""#).is_err());
    // a backslash in the text is written escaped, so the digits after it stay digits
    let digits = RData::Txt(r"C:\123".into());
    assert_eq!(digits.to_string(), r#""C:\\123""#);
    assert_eq!(
        RData::parse(RecordType::Txt, &digits.to_string()).unwrap(),
        digits
    );
}

#[test]
fn serde_round_trip_and_validation() {
    let set = mx_set(&["20 mx2.example.com.", "10 mx1.example.com."]).unwrap();
    let json = serde_json::to_string(&set).unwrap();
    assert_eq!(
        json,
        r#"{"name":"example.com.","type":"MX","ttl":300,"records":["10 mx1.example.com.","20 mx2.example.com."]}"#
    );
    let back: RecordSet = serde_json::from_str(&json).unwrap();
    assert_eq!(back, set);
    let dup = r#"{"name":"example.com.","type":"MX","ttl":300,"records":["10 a.example.","10 A.example."]}"#;
    assert!(serde_json::from_str::<RecordSet>(dup).is_err());
    let empty = r#"{"name":"example.com.","type":"A","ttl":300,"records":[]}"#;
    assert!(serde_json::from_str::<RecordSet>(empty).is_err());
}

fn arb_mx() -> impl Strategy<Value = RData> {
    (0u16..100, "[a-z]{1,8}(\\.[a-z]{1,8}){1,2}")
        .prop_map(|(p, h)| RData::Mx(MxRecord::new(p, Fqdn::parse(&h).unwrap())))
}

proptest! {
    #[test]
    fn any_permutation_gives_the_same_set(recs in proptest::collection::btree_set(arb_mx(), 1..6), seed in any::<u64>()) {
        let mut shuffled: Vec<RData> = recs.iter().cloned().collect();
        // deterministic shuffle from the seed
        let n = shuffled.len();
        for i in 0..n {
            let j = (seed.wrapping_mul(i as u64 + 7) % n as u64) as usize;
            shuffled.swap(i, j);
        }
        let ttl = Ttl::new(60).unwrap();
        let a = RecordSet::new(name("example.com"), RecordType::Mx, ttl, recs.iter().cloned()).unwrap();
        let b = RecordSet::new(name("example.com"), RecordType::Mx, ttl, shuffled).unwrap();
        prop_assert_eq!(&a, &b);
        let json = serde_json::to_string(&a).unwrap();
        let back: RecordSet = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, a);
    }
}
