//! A throwaway certificate authority (rcgen, ECDSA P-256) and leaf server certificates that
//! are valid, expired, expiring soon, or issued for the wrong name. PEM files are written into
//! the CA's temp dir; [`Ca::cert_path`] is what mxguard's `ca_file` should point at.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::util::write_file;
use crate::{Error, Result};

/// Days a [`CertKind::Valid`] (and [`CertKind::WrongName`]) certificate is valid for.
pub const VALID_DAYS: i64 = 90;
/// Days left on a [`CertKind::ExpiringSoon`] certificate.
pub const EXPIRING_SOON_DAYS: i64 = 3;
/// The only name on a [`CertKind::WrongName`] certificate.
pub const WRONG_NAME: &str = "wrong-name.invalid";

/// What kind of leaf certificate to issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// For the names asked, valid from yesterday for [`VALID_DAYS`].
    Valid,
    /// For the names asked, expired yesterday.
    Expired,
    /// For the names asked, expiring in [`EXPIRING_SOON_DAYS`].
    ExpiringSoon,
    /// Valid dates, but issued for [`WRONG_NAME`] only.
    WrongName,
}

/// A leaf certificate and its key, as PEM strings and as files in the CA's directory.
#[derive(Clone, Debug)]
pub struct LeafCert {
    pub kind: CertKind,
    /// The names on the certificate (for `WrongName`, [`WRONG_NAME`]).
    pub names: Vec<String>,
    pub not_after: OffsetDateTime,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl LeafCert {
    /// A rustls server config presenting this certificate (ring provider, TLS 1.2 and 1.3).
    pub fn rustls_server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let certs = vec![rustls::pki_types::CertificateDer::from(
            self.cert_der.clone(),
        )];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        Ok(Arc::new(config))
    }
}

/// The test CA. Its directory (and every PEM file in it) is removed on drop.
pub struct Ca {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_path: PathBuf,
    serial: AtomicU32,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA ("mxguard test CA", valid from yesterday for ten years), written to
    /// `<temp dir>/ca.pem`.
    pub fn new() -> Result<Ca> {
        let dir = tempfile::Builder::new()
            .prefix("mxguard-testpeers-ca-")
            .tempdir()
            .map_err(|e| Error::io("creating the CA's temp dir", e))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "mxguard test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_path = dir.path().join("ca.pem");
        write_file(&cert_path, &cert_pem)?;
        Ok(Ca {
            issuer: Issuer::new(params, key),
            dir,
            cert_pem,
            cert_path,
            serial: AtomicU32::new(1),
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate's file (for mxguard's `ca_file`, `openssl verify -CAfile`, swaks).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The directory holding the CA and every leaf it issued.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a server certificate of `kind` for `names` (DNS names; the first is also the CN)
    /// and writes `<first name>-<n>.pem` and `<first name>-<n>-key.pem`.
    pub fn leaf(&self, names: &[&str], kind: CertKind) -> Result<LeafCert> {
        let names: Vec<String> = match kind {
            CertKind::WrongName => vec![WRONG_NAME.to_string()],
            _ => names
                .iter()
                .map(|n| n.trim_end_matches('.').to_string())
                .collect(),
        };
        let first = names
            .first()
            .cloned()
            .ok_or_else(|| Error::peer("ca", "a leaf certificate needs at least one name"))?;
        let now = OffsetDateTime::now_utc();
        let (not_before, not_after) = match kind {
            CertKind::Valid | CertKind::WrongName => {
                (now - Duration::days(1), now + Duration::days(VALID_DAYS))
            }
            CertKind::Expired => (
                now - Duration::days(VALID_DAYS + 1),
                now - Duration::days(1),
            ),
            CertKind::ExpiringSoon => (
                now - Duration::days(1),
                now + Duration::days(EXPIRING_SOON_DAYS),
            ),
        };
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let cert_path = self.dir.path().join(format!("{first}-{n}.pem"));
        let key_path = self.dir.path().join(format!("{first}-{n}-key.pem"));
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        write_file(&cert_path, &cert_pem)?;
        write_file(&key_path, &key_pem)?;
        Ok(LeafCert {
            kind,
            names,
            not_after,
            cert_pem,
            key_pem,
            cert_path,
            key_path,
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }
}
