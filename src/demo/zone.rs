//! The demo zone in memory: answers as an authoritative server gives them, and RFC 2136
//! UPDATE applied all or nothing — prerequisites (§2.4, checked as §3.2 says), a prescan of
//! the update section (§3.4.1), then the updates (§3.4.2), with the SOA serial bumped when
//! the zone changed.

use std::net::Ipv4Addr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, MX, NS, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// What a query finds.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The records (NOERROR, authoritative).
    Answer(Vec<Record>),
    /// The name exists but has no record of the type: NOERROR with the SOA in authority.
    NoData(Record),
    /// The name does not exist: NXDOMAIN with the SOA in authority.
    NxDomain(Record),
    /// Not in this zone: REFUSED (this server is no resolver).
    Refused,
}

#[derive(Debug, Clone)]
pub struct Zone {
    origin: Name,
    records: Vec<Record>,
}

/// The demo's hosts: the primary and backup MX and the name server, by address.
pub struct DemoHosts {
    pub ns: Ipv4Addr,
    pub primary: Ipv4Addr,
    pub backup: Ipv4Addr,
}

impl Zone {
    /// `origin` with SOA, NS, `@ MX 10 mx1`, `mx1`/`backup`/`ns` A records and an SPF TXT
    /// that allows both MX hosts; TTL 300 throughout.
    pub fn demo(origin: &Name, hosts: &DemoHosts) -> Result<Zone, String> {
        let name = |label: &str| -> Result<Name, String> {
            Name::from_ascii(label)
                .and_then(|l| l.append_domain(origin))
                .map_err(|e| format!("{label}: {e}"))
        };
        let (ns, mx1, backup) = (name("ns")?, name("mx1")?, name("backup")?);
        let rr = |owner: &Name, data: RData| Record::from_rdata(owner.clone(), 300, data);
        let soa = SOA::new(ns.clone(), name("hostmaster")?, 1, 3600, 600, 86400, 60);
        let spf = format!("v=spf1 ip4:{} ip4:{} -all", hosts.primary, hosts.backup);
        let records = vec![
            rr(origin, RData::SOA(soa)),
            rr(origin, RData::NS(NS(ns.clone()))),
            rr(origin, RData::MX(MX::new(10, mx1.clone()))),
            rr(origin, RData::TXT(TXT::new(vec![spf]))),
            rr(&ns, RData::A(A(hosts.ns))),
            rr(&mx1, RData::A(A(hosts.primary))),
            rr(&backup, RData::A(A(hosts.backup))),
        ];
        Ok(Zone {
            origin: origin.to_lowercase(),
            records,
        })
    }

    pub fn origin(&self) -> &Name {
        &self.origin
    }

    pub fn serial(&self) -> u32 {
        self.soa().map_or(0, |(_, soa)| soa.serial)
    }

    fn soa(&self) -> Option<(&Record, &SOA)> {
        self.records.iter().find_map(|r| match &r.data {
            RData::SOA(soa) if r.name == self.origin => Some((r, soa)),
            _ => None,
        })
    }

    /// The SOA for a negative answer, with the TTL capped by its minimum (RFC 2308 §3).
    fn negative_soa(&self) -> Option<Record> {
        self.soa().map(|(r, soa)| {
            let mut r = r.clone();
            r.ttl = r.ttl.min(soa.minimum);
            r
        })
    }

    /// True when `name` is at or below the origin.
    pub fn contains(&self, name: &Name) -> bool {
        self.origin.zone_of(name)
    }

    fn rrset(&self, name: &Name, rtype: RecordType) -> impl Iterator<Item = &Record> {
        let name = name.clone();
        self.records
            .iter()
            .filter(move |r| r.name == name && r.record_type() == rtype)
    }

    fn name_in_use(&self, name: &Name) -> bool {
        self.records.iter().any(|r| &r.name == name)
    }

    /// Owns records, or is an empty non-terminal above a name that does.
    fn exists(&self, name: &Name) -> bool {
        self.records.iter().any(|r| name.zone_of(&r.name))
    }

    pub fn lookup(&self, name: &Name, rtype: RecordType) -> Lookup {
        if !self.contains(name) {
            return Lookup::Refused;
        }
        let mut found: Vec<Record> = match rtype {
            RecordType::ANY => self
                .records
                .iter()
                .filter(|r| &r.name == name)
                .cloned()
                .collect(),
            _ => self.rrset(name, rtype).cloned().collect(),
        };
        if found.is_empty() && rtype != RecordType::CNAME {
            found = self.rrset(name, RecordType::CNAME).cloned().collect();
        }
        let soa = match self.negative_soa() {
            Some(soa) => soa,
            None => return Lookup::Refused,
        };
        if !found.is_empty() {
            Lookup::Answer(found)
        } else if self.exists(name) {
            Lookup::NoData(soa)
        } else {
            Lookup::NxDomain(soa)
        }
    }

    /// The whole zone as a transfer sends it: SOA, every other record, SOA.
    pub fn transfer(&self) -> Vec<Record> {
        let Some((soa, _)) = self.soa() else {
            return Vec::new();
        };
        let mut out = vec![soa.clone()];
        out.extend(
            self.records
                .iter()
                .filter(|r| r.record_type() != RecordType::SOA)
                .cloned(),
        );
        out.push(soa.clone());
        out
    }

    /// Applies one UPDATE: prerequisites (the message's answer section) and updates (its
    /// authority section). Nothing changes unless the answer is NOERROR.
    pub fn update(&mut self, prerequisites: &[Record], updates: &[Record]) -> ResponseCode {
        if let Err(code) = self.check_prerequisites(prerequisites) {
            return code;
        }
        if let Err(code) = self.prescan(updates) {
            return code;
        }
        let before = self.canonical();
        for rr in updates {
            self.apply(rr);
        }
        if self.canonical() != before {
            if let Some(RData::SOA(soa)) = self
                .records
                .iter_mut()
                .find(|r| r.record_type() == RecordType::SOA)
                .map(|r| &mut r.data)
            {
                soa.serial = soa.serial.wrapping_add(1);
            }
        }
        ResponseCode::NoError
    }

    /// The records as a sorted list of text, to tell whether an update changed anything.
    fn canonical(&self) -> Vec<String> {
        let mut all: Vec<String> = self.records.iter().map(|r| r.to_string()).collect();
        all.sort();
        all
    }

    /// RFC 2136 §3.2.
    fn check_prerequisites(&self, prerequisites: &[Record]) -> Result<(), ResponseCode> {
        use ResponseCode as R;
        // value-dependent prerequisites, gathered per RRset (§3.2.3)
        let mut expected: Vec<(Name, RecordType, Vec<&RData>)> = Vec::new();
        for rr in prerequisites {
            if rr.ttl != 0 {
                return Err(R::FormErr);
            }
            if !self.contains(&rr.name) {
                return Err(R::NotZone);
            }
            let (name, rtype, empty) = (
                &rr.name,
                rr.record_type(),
                matches!(rr.data, RData::Update0(_)),
            );
            match rr.dns_class {
                DNSClass::ANY if !empty => return Err(R::FormErr),
                DNSClass::ANY if rtype == RecordType::ANY => {
                    if !self.name_in_use(name) {
                        return Err(R::NXDomain);
                    }
                }
                DNSClass::ANY => {
                    if self.rrset(name, rtype).next().is_none() {
                        return Err(R::NXRRSet);
                    }
                }
                DNSClass::NONE if !empty => return Err(R::FormErr),
                DNSClass::NONE if rtype == RecordType::ANY => {
                    if self.name_in_use(name) {
                        return Err(R::YXDomain);
                    }
                }
                DNSClass::NONE => {
                    if self.rrset(name, rtype).next().is_some() {
                        return Err(R::YXRRSet);
                    }
                }
                DNSClass::IN if !empty => {
                    match expected
                        .iter_mut()
                        .find(|(n, t, _)| n == name && *t == rtype)
                    {
                        Some((_, _, set)) => set.push(&rr.data),
                        None => expected.push((name.clone(), rtype, vec![&rr.data])),
                    }
                }
                _ => return Err(R::FormErr),
            }
        }
        for (name, rtype, want) in expected {
            let have: Vec<&RData> = self.rrset(&name, rtype).map(|r| &r.data).collect();
            let same =
                have.iter().all(|h| want.contains(h)) && want.iter().all(|w| have.contains(w));
            if !same {
                return Err(R::NXRRSet);
            }
        }
        Ok(())
    }

    /// RFC 2136 §3.4.1.
    fn prescan(&self, updates: &[Record]) -> Result<(), ResponseCode> {
        use RecordType as T;
        for rr in updates {
            if !self.contains(&rr.name) {
                return Err(ResponseCode::NotZone);
            }
            let (rtype, empty) = (rr.record_type(), matches!(rr.data, RData::Update0(_)));
            let meta = matches!(rtype, T::ANY | T::AXFR | T::IXFR | T::OPT | T::TSIG);
            let ok = match rr.dns_class {
                DNSClass::IN => !meta && !empty,
                DNSClass::ANY => rr.ttl == 0 && empty && !matches!(rtype, T::AXFR | T::IXFR),
                DNSClass::NONE => rr.ttl == 0 && !meta && !empty,
                _ => false,
            };
            if !ok {
                return Err(ResponseCode::FormErr);
            }
        }
        Ok(())
    }

    /// RFC 2136 §3.4.2, for one update RR that passed the prescan.
    fn apply(&mut self, rr: &Record) {
        use RecordType as T;
        let name = rr.name.to_lowercase();
        let rtype = rr.record_type();
        let apex = name == self.origin;
        match rr.dns_class {
            DNSClass::IN => {
                if rtype == T::SOA {
                    // replace only with a newer serial (serial arithmetic, RFC 1982)
                    if let (RData::SOA(new), true) = (&rr.data, apex) {
                        if (new.serial.wrapping_sub(self.serial()) as i32) > 0 {
                            self.records.retain(|r| r.record_type() != T::SOA);
                            self.records
                                .push(Record::from_rdata(name, rr.ttl, rr.data.clone()));
                        }
                    }
                    return;
                }
                let has_cname = self.rrset(&name, T::CNAME).next().is_some();
                let has_other = self
                    .records
                    .iter()
                    .any(|r| r.name == name && r.record_type() != T::CNAME);
                if (rtype == T::CNAME && has_other) || (rtype != T::CNAME && has_cname) {
                    return;
                }
                // one TTL per RRset (RFC 2181 §5.2): the latest added wins
                let mut duplicate = false;
                for r in self.records.iter_mut() {
                    if r.name == name && r.record_type() == rtype {
                        r.ttl = rr.ttl;
                        duplicate |= r.data == rr.data;
                    }
                }
                if !duplicate {
                    self.records
                        .push(Record::from_rdata(name, rr.ttl, rr.data.clone()));
                }
            }
            DNSClass::ANY => {
                let protected = |t: T| apex && matches!(t, T::SOA | T::NS);
                self.records.retain(|r| {
                    let t = r.record_type();
                    r.name != name || (rtype != T::ANY && t != rtype) || protected(t)
                });
            }
            DNSClass::NONE => {
                let last_ns = apex && rtype == T::NS && self.rrset(&name, T::NS).count() <= 1;
                if rtype == T::SOA || last_ns {
                    return;
                }
                self.records
                    .retain(|r| !(r.name == name && r.record_type() == rtype && r.data == rr.data));
            }
            _ => {}
        }
    }
}
