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

impl Side {
    pub const BOTH: [Side; 2] = [Side::Primary, Side::Backup];
}

/// One value per side, where a map keyed by the side's name would let a typo through.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct BySide<T> {
    pub primary: T,
    pub backup: T,
}

impl<T> BySide<T> {
    /// Both sides' values, primary first.
    pub fn iter(&self) -> impl Iterator<Item = (Side, &T)> {
        [(Side::Primary, &self.primary), (Side::Backup, &self.backup)].into_iter()
    }
}

impl<T> BySide<Option<T>> {
    /// The values present, primary first.
    pub fn present(&self) -> impl Iterator<Item = &T> {
        self.primary.iter().chain(self.backup.iter())
    }

    /// Takes every value out, leaving `None`s.
    pub fn take(&mut self) -> impl Iterator<Item = T> {
        [self.primary.take(), self.backup.take()]
            .into_iter()
            .flatten()
    }
}

impl<T> std::ops::Index<Side> for BySide<T> {
    type Output = T;
    fn index(&self, side: Side) -> &T {
        match side {
            Side::Primary => &self.primary,
            Side::Backup => &self.backup,
        }
    }
}

impl<T> std::ops::IndexMut<Side> for BySide<T> {
    fn index_mut(&mut self, side: Side) -> &mut T {
        match side {
            Side::Primary => &mut self.primary,
            Side::Backup => &mut self.backup,
        }
    }
}
