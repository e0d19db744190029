//! The domain vocabulary. Record types live in `mxguard-core` (shared with the provider
//! crates); this module re-exports them and adds what only the controller needs.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use mxguard_core::{
    DomainName, Fqdn, ModelError, MxRecord, Preference, RData, RecordSet, RecordType, Ttl,
};

/// Which set of targets: the primary MX hosts or the backup.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Primary,
    Backup,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Backup => "backup",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
