//! The vocabulary every part of the node plugin speaks: kernel identities (device numbers,
//! diskseq, NQNs), volume and mount identities, storm keys, NVMe controller states and
//! namespace identifiers, Kubernetes Event reasons and the volume condition.
//!
//! Identity is the kernel's, never a path string: a block device is its `major:minor` plus its
//! `diskseq` (a device that comes back under the same name and number is a new device when its
//! diskseq differs), and an NVMe subsystem is its NQN.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::fmt;
use std::str::FromStr;

pub mod condition;
pub mod event;
pub mod message;
pub mod nvme;
pub mod recovery;
pub mod storm;
pub mod volume;

pub use condition::{ConditionKind, Health};
pub use event::{EventReason, EventType};
pub use message::{Describe, Message};
pub use nvme::{ControllerState, NamespaceIds};
pub use recovery::RecoveryResult;
pub use storm::StormKey;
pub use volume::{MountKey, VolumeId, VolumeIdError};

/// An error and its sources on one line (`outer: cause: root cause`), a source whose text the
/// message already contains skipped.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        cur = c.source();
    }
    msg
}

/// At most this many bytes of any input are quoted in an error message or a log line.
pub const QUOTE_MAX: usize = 256;

/// `s` as a quoted string for a message, cut to [`QUOTE_MAX`] bytes (on a character boundary)
/// with its full length noted when longer.
pub fn quote(s: &str) -> String {
    if s.len() <= QUOTE_MAX {
        return format!("{s:?}");
    }
    let mut end = QUOTE_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &s[..end], s.len())
}

/// A device number as the kernel prints it (`259:3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// From a `dev_t` as returned by `stat(2)`.
    pub fn from_dev_t(dev: u64) -> Self {
        // glibc's gnu_dev_major/minor encoding.
        let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
        let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
        Self::new(major as u32, minor as u32)
    }

    /// To a `dev_t` for `mknod(2)`.
    pub fn to_dev_t(self) -> u64 {
        let (ma, mi) = (u64::from(self.major), u64::from(self.minor));
        ((ma & 0xffff_f000) << 32)
            | ((ma & 0x0000_0fff) << 8)
            | ((mi & 0xffff_ff00) << 12)
            | (mi & 0xff)
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device number {}: expected MAJOR:MINOR", quote(.0))]
pub struct DevNumError(pub String);

impl FromStr for DevNum {
    type Err = DevNumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (a, b) = t.split_once(':').ok_or_else(|| DevNumError(s.to_owned()))?;
        let major = a.parse().map_err(|_| DevNumError(s.to_owned()))?;
        let minor = b.parse().map_err(|_| DevNumError(s.to_owned()))?;
        Ok(Self::new(major, minor))
    }
}

/// The kernel's monotonically increasing disk sequence number (`/sys/block/X/diskseq`, uevent
/// `DISKSEQ`). Each attach of a loop device, each new NVMe namespace gets a fresh one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiskSeq(pub u64);

impl fmt::Display for DiskSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What identifies one incarnation of a block device. `diskseq` is optional because kernels
/// before 5.15 do not report it; when both sides know it, it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockIdentity {
    pub dev: DevNum,
    pub diskseq: Option<DiskSeq>,
}

impl BlockIdentity {
    /// True when `other` is provably the same incarnation: same number and, when both know
    /// their diskseq, the same diskseq.
    pub fn same_device(&self, other: &BlockIdentity) -> bool {
        self.dev == other.dev
            && match (self.diskseq, other.diskseq) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for BlockIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.diskseq {
            Some(s) => write!(f, "{} (diskseq {})", self.dev, s),
            None => write!(f, "{}", self.dev),
        }
    }
}

/// Maximum NQN length in bytes (NVMe base specification).
pub const NQN_MAX_LEN: usize = 223;

/// A validated NVMe Qualified Name: `^nqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9.-]+:[a-z0-9._-]+$`, at most
/// 223 bytes (the rules the existing controller uses for volume NQNs). Shared, not copied:
/// the monitor keys and labels much of its state with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nqn(std::sync::Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NqnError {
    #[error("NQN is empty")]
    Empty,
    #[error("NQN is {0} bytes long, the limit is 223")]
    TooLong(usize),
    #[error("NQN {} does not match nqn.YYYY-MM.<domain>:<name> (lowercase letters, digits, '.', '-', and '_' in the name)", quote(.0))]
    Malformed(String),
}

impl Nqn {
    pub fn parse(s: &str) -> Result<Self, NqnError> {
        if s.is_empty() {
            return Err(NqnError::Empty);
        }
        if s.len() > NQN_MAX_LEN {
            return Err(NqnError::TooLong(s.len()));
        }
        let bad = || NqnError::Malformed(s.to_owned());
        let rest = s.strip_prefix("nqn.").ok_or_else(bad)?;
        let b = rest.as_bytes();
        // YYYY-MM.
        if b.len() < 8
            || !b[..4].iter().all(u8::is_ascii_digit)
            || b[4] != b'-'
            || !b[5..7].iter().all(u8::is_ascii_digit)
            || b[7] != b'.'
        {
            return Err(bad());
        }
        let (domain, name) = rest[8..].split_once(':').ok_or_else(bad)?;
        let domain_ok = !domain.is_empty()
            && domain
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
        let name_ok = !name.is_empty()
            && name.bytes().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'_' || c == b'-'
            });
        if !domain_ok || !name_ok {
            return Err(bad());
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Nqn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Nqn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Nqn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Nqn::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for Nqn {
    type Err = NqnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The NQN prefix this plugin manages. Nothing outside it is ever disconnected, unmounted or
/// formatted (diskless nodes boot their own root over NVMe-oF from the same storage box).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedPrefix(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("managed NQN prefix {} is invalid: it must look like nqn.YYYY-MM.<domain>:<name-prefix> with a non-empty name prefix", quote(.0))]
pub struct ManagedPrefixError(pub String);

impl ManagedPrefix {
    /// A prefix is valid when it is itself the start of a valid NQN with a non-empty name part
    /// (so `nqn.2000-02.com.mikrotik:` alone, which would also cover boot volumes, is refused).
    pub fn parse(s: &str) -> Result<Self, ManagedPrefixError> {
        let err = || ManagedPrefixError(s.to_owned());
        // Appending a name character must give a valid NQN, and the prefix must already
        // contain a name part.
        let (_, name) = s.split_once(':').ok_or_else(err)?;
        if name.is_empty() {
            return Err(err());
        }
        Nqn::parse(&format!("{s}x")).map_err(|_| err())?;
        Ok(Self(s.to_owned()))
    }

    pub fn covers(&self, nqn: &Nqn) -> bool {
        nqn.as_str().starts_with(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ManagedPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_t_round_trips_for_large_numbers() {
        for (ma, mi) in [(7, 0), (259, 3), (4095, 1_048_575), (0, 0), (8, 256)] {
            let d = DevNum::new(ma, mi);
            assert_eq!(DevNum::from_dev_t(d.to_dev_t()), d, "{d}");
        }
        assert_eq!(
            DevNum::from_dev_t(libc_makedev(259, 3)),
            DevNum::new(259, 3)
        );
    }

    fn libc_makedev(ma: u64, mi: u64) -> u64 {
        ((ma & 0xfffff000) << 32) | ((ma & 0xfff) << 8) | ((mi & 0xffffff00) << 12) | (mi & 0xff)
    }

    #[test]
    fn devnum_parses_kernel_format_and_rejects_garbage() {
        assert_eq!("259:3".parse::<DevNum>().unwrap(), DevNum::new(259, 3));
        assert_eq!("259:3\n".parse::<DevNum>().unwrap(), DevNum::new(259, 3));
        for bad in ["", "259", ":3", "a:b", "1:2:3", "-1:2"] {
            assert!(bad.parse::<DevNum>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn same_device_requires_equal_diskseq_when_both_known() {
        let a = BlockIdentity {
            dev: DevNum::new(259, 0),
            diskseq: Some(DiskSeq(5)),
        };
        let b = BlockIdentity {
            dev: DevNum::new(259, 0),
            diskseq: Some(DiskSeq(9)),
        };
        let c = BlockIdentity {
            dev: DevNum::new(259, 0),
            diskseq: None,
        };
        assert!(
            !a.same_device(&b),
            "same number, new diskseq is a new device"
        );
        assert!(a.same_device(&c));
        assert!(!a.same_device(&BlockIdentity {
            dev: DevNum::new(259, 1),
            diskseq: Some(DiskSeq(5))
        }));
    }

    #[test]
    fn nqn_validation_follows_the_controller_rules() {
        assert!(
            Nqn::parse("nqn.2000-02.com.mikrotik:pvc-0b5a6c1e-1234-4d2b-9c3a-7f8e9d0a1b2c").is_ok()
        );
        assert_eq!(Nqn::parse(""), Err(NqnError::Empty));
        let long = format!("nqn.2000-02.com.mikrotik:{}", "a".repeat(200));
        assert_eq!(Nqn::parse(&long), Err(NqnError::TooLong(long.len())));
        for bad in [
            "nqn.2000-02.com.mikrotik:PVC",
            "nqn.200-02.com.mikrotik:pvc",
            "nqn.2000-02.com.mikrotik",
            "nqn.2000-02.:pvc",
            "nqn.2000-02.com.mikrotik:",
            "iqn.2000-02.com.mikrotik:pvc",
            "nqn.2000-02.com mikrotik:pvc",
            "nqn.2000-02.com.mikrotik:pvc/x",
        ] {
            assert!(
                matches!(Nqn::parse(bad), Err(NqnError::Malformed(_))),
                "{bad:?} should be malformed"
            );
        }
    }

    #[test]
    fn managed_prefix_covers_only_its_names() {
        let p = ManagedPrefix::parse("nqn.2000-02.com.mikrotik:pvc-").unwrap();
        assert!(p.covers(&Nqn::parse("nqn.2000-02.com.mikrotik:pvc-abc").unwrap()));
        assert!(!p.covers(&Nqn::parse("nqn.2000-02.com.mikrotik:boot-node1").unwrap()));
        assert!(
            ManagedPrefix::parse("nqn.2000-02.com.mikrotik:").is_err(),
            "a bare domain prefix would cover boot volumes"
        );
        assert!(ManagedPrefix::parse("").is_err());
        assert!(ManagedPrefix::parse("nqn.2000-02.com.mikrotik:PVC-").is_err());
    }
}
