//! The text of an instance's main.cf and master.cf.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use super::{PostfixConfig, Profile};

pub(super) fn main_cf(c: &PostfixConfig, dir: &Path) -> String {
    let d = dir.display();
    let protocols = if c.listen.is_ipv4() { "ipv4" } else { "all" };
    let mynetworks = match c.profile {
        // Nobody on loopback is trusted: every test client is a stranger.
        Profile::Mx => "127.0.0.254/32",
        // The misconfiguration: the whole loopback network may relay.
        Profile::OpenRelay => "127.0.0.0/8",
    };
    let mut text = format!(
        "# mxguard-testpeers: {profile:?} {host} on {listen}\n\
         compatibility_level = 3.6\n\
         queue_directory = {d}/queue\n\
         data_directory = {d}/data\n\
         maillog_file = {d}/maillog\n\
         inet_interfaces = all\n\
         inet_protocols = {protocols}\n\
         myhostname = {host}\n\
         mydestination =\n\
         local_recipient_maps =\n\
         alias_maps =\n\
         alias_database =\n\
         biff = no\n\
         relay_domains = {domain}\n\
         transport_maps = inline:{{ {domain}=discard: }}\n\
         default_transport = discard:\n\
         relay_transport = discard:\n\
         local_transport = discard:\n\
         mynetworks = {mynetworks}\n\
         smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
         smtpd_peername_lookup = no\n",
        profile = c.profile,
        host = c.hostname,
        listen = c.listen,
        domain = c.domain,
    );
    if let Some(banner) = &c.banner {
        let _ = writeln!(text, "smtpd_banner = {banner}");
    }
    match &c.cert {
        Some(_) => {
            let _ = write!(
                text,
                "smtpd_tls_security_level = may\n\
                 smtpd_tls_cert_file = {d}/conf/cert.pem\n\
                 smtpd_tls_key_file = {d}/conf/key.pem\n"
            );
        }
        None => text.push_str("smtpd_tls_security_level = none\n"),
    }
    for line in &c.settings {
        let _ = writeln!(text, "{line}");
    }
    text
}

/// One smtpd on `listen`, the services a queue needs, no chroot anywhere.
pub(super) fn master_cf(listen: SocketAddr) -> String {
    let endpoint = match listen {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    format!(
        "{endpoint} inet n - n - - smtpd\n\
         pickup     unix  n - n 60    1 pickup\n\
         cleanup    unix  n - n -     0 cleanup\n\
         qmgr       unix  n - n 300   1 qmgr\n\
         tlsmgr     unix  - - n 1000? 1 tlsmgr\n\
         rewrite    unix  - - n -     - trivial-rewrite\n\
         bounce     unix  - - n -     0 bounce\n\
         defer      unix  - - n -     0 bounce\n\
         trace      unix  - - n -     0 bounce\n\
         verify     unix  - - n -     1 verify\n\
         flush      unix  n - n 1000? 0 flush\n\
         proxymap   unix  - - n -     - proxymap\n\
         proxywrite unix  - - n -     1 proxymap\n\
         smtp       unix  - - n -     - smtp\n\
         relay      unix  - - n -     - smtp\n\
         showq      unix  n - n -     - showq\n\
         error      unix  - - n -     - error\n\
         retry      unix  - - n -     - error\n\
         discard    unix  - - n -     - discard\n\
         local      unix  - n n -     - local\n\
         anvil      unix  - - n -     1 anvil\n\
         scache     unix  - - n -     1 scache\n\
         postlog    unix-dgram n - n - 1 postlogd\n"
    )
}
