//! Volume and mount identities.

use std::fmt;

use crate::DevNum;

/// A CSI volume ID. The controller uses the PV name (`pvc-<uuid>`); any name that is safe as
/// a file name for the per-volume record is accepted: 1 to 128 bytes of ASCII letters, digits,
/// `-`, `_` and `.`, starting with a letter or digit. Shared, not copied: the monitor keys its
/// state, actions and published conditions with it.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeId(std::sync::Arc<str>);

/// Why a string is not a volume ID (the message quotes at most [`crate::QUOTE_MAX`] bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeIdError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} bytes long, the limit is {max}", max = VolumeId::MAX_LEN)]
    TooLong(usize),
    #[error("{0} may only contain letters, digits, '-', '_' and '.', and must start with a letter or digit")]
    Invalid(String),
}

impl VolumeId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, VolumeIdError> {
        if s.is_empty() {
            return Err(VolumeIdError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(VolumeIdError::TooLong(s.len()));
        }
        let ok_first = s.as_bytes()[0].is_ascii_alphanumeric();
        let ok_rest = s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !ok_first || !ok_rest {
            return Err(VolumeIdError::Invalid(crate::quote(s)));
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for VolumeId {
    type Error = VolumeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<VolumeId> for String {
    fn from(v: VolumeId) -> String {
        v.0.as_ref().to_owned()
    }
}

impl std::str::FromStr for VolumeId {
    type Err = VolumeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// One mount as the kernel identifies it: its mount id (mountinfo's first field, what
/// `statx(STATX_MNT_ID)` reports) and the `major:minor` of its superblock. Paths are not
/// identity: the same path can be mounted over, a symlinked kubelet dir has two spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MountKey {
    pub id: u64,
    pub dev: DevNum,
}

impl fmt::Display for MountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mount {} on {}", self.id, self.dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_must_be_safe_file_names() {
        assert!(VolumeId::parse("pvc-0b5a6c1e-1234-4d2b-9c3a-7f8e9d0a1b2c").is_ok());
        for bad in ["", "../x", "a/b", "-x", ".x", &"a".repeat(129)] {
            assert!(VolumeId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_long_bad_id_is_quoted_short() {
        let long = format!("/{}", "x".repeat(100_000));
        let e = VolumeId::parse(&long[..128]).unwrap_err().to_string();
        assert!(e.len() < 400, "{}", e.len());
    }

    #[test]
    fn serde_refuses_an_invalid_id() {
        assert!(serde_json::from_str::<VolumeId>("\"../etc\"").is_err());
        assert_eq!(
            serde_json::from_str::<VolumeId>("\"pvc-1\"")
                .unwrap()
                .as_str(),
            "pvc-1"
        );
    }
}
