//! Uevent wire formats: the kernel's (netlink group 1) and libudev's (netlink group 2).
//!
//! Kernel format: `ACTION@DEVPATH\0KEY=VALUE\0KEY=VALUE\0...` (no trailing header, every
//! property NUL-terminated).
//!
//! libudev format (what udevd and [`encode_libudev`] send on group 2): a 40-byte header
//!
//! | offset | field | encoding |
//! |---|---|---|
//! | 0 | `"libudev\0"` | bytes |
//! | 8 | magic `0xfeedcafe` | big-endian |
//! | 12 | header size (40) | native endian |
//! | 16 | properties offset (40) | native endian |
//! | 20 | properties length | native endian |
//! | 24 | MurmurHash2(subsystem) | big-endian |
//! | 28 | MurmurHash2(devtype) or 0 | big-endian |
//! | 32 | tag bloom high, low | big-endian (0 without tags) |
//!
//! followed by NUL-separated `KEY=VALUE` pairs. The hashes let libudev's socket filter drop
//! uninteresting subsystems in the kernel, so they must be right for real libudev listeners.
//!
//! The parser never panics on any input (property-tested and fuzzed): malformed input is a
//! [`ParseError`], odd entries (no `=`) are skipped, non-UTF-8 values in properties that carry
//! no identity are kept lossily.

use std::fmt;
use std::io;

use rds_types::{DevNum, DiskSeq};

/// Largest message accepted. The kernel caps a uevent at 2048 bytes of environment
/// (`UEVENT_BUFFER_SIZE`); libudev receives into 8192 bytes. Anything larger is not a uevent.
pub const MAX_UEVENT_LEN: usize = 8192;

/// Length of libudev's `monitor_netlink_header`.
pub const LIBUDEV_HEADER_LEN: usize = 40;

/// `UDEV_MONITOR_MAGIC`.
pub const LIBUDEV_MAGIC: u32 = 0xfeed_cafe;

/// Netlink multicast group of kernel uevents.
pub const GROUP_KERNEL: u32 = 1;
/// Netlink multicast group of udev(-style) events.
pub const GROUP_UDEV: u32 = 2;

/// A uevent's action.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    Add,
    Remove,
    Change,
    Move,
    Bind,
    Unbind,
    Online,
    Offline,
    Other(String),
}

impl Action {
    pub fn parse(s: &str) -> Self {
        match s {
            "add" => Self::Add,
            "remove" => Self::Remove,
            "change" => Self::Change,
            "move" => Self::Move,
            "bind" => Self::Bind,
            "unbind" => Self::Unbind,
            "online" => Self::Online,
            "offline" => Self::Offline,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Add => "add",
            Self::Remove => "remove",
            Self::Change => "change",
            Self::Move => "move",
            Self::Bind => "bind",
            Self::Unbind => "unbind",
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which wire format a message came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Kernel format (group 1).
    Kernel,
    /// libudev format (group 2: udevd, or a synthetic injection).
    Udev,
}

/// Properties in message order. Uevents carry a dozen or so entries, so a vector with
/// linear lookup beats a hash map and keeps the kernel's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props(Vec<(String, String)>);

impl Props {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key`, replacing an existing value in place (a later duplicate wins, as in libudev).
    pub fn insert(&mut self, key: String, value: String) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One parsed uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub origin: Origin,
    pub action: Action,
    /// Path under `/sys` (starts with `/devices/...`).
    pub devpath: String,
    pub subsystem: String,
    pub devtype: Option<String>,
    /// Kernel name (`nvme0n1`, `loop3`), relative to `/dev`.
    pub devname: Option<String>,
    pub dev: Option<DevNum>,
    pub diskseq: Option<DiskSeq>,
    pub seqnum: Option<u64>,
    pub props: Props,
}

impl Uevent {
    /// The kernel name: `DEVNAME` when present, else the last component of `DEVPATH`.
    pub fn kernel_name(&self) -> &str {
        match &self.devname {
            Some(n) => n.rsplit('/').next().unwrap_or(n),
            None => self.devpath.rsplit('/').next().unwrap_or(&self.devpath),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.props.get(key)
    }
}

/// Why a message is not a uevent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("message of {0} bytes exceeds the {MAX_UEVENT_LEN}-byte uevent limit")]
    Oversized(usize),
    #[error("libudev message shorter than its {LIBUDEV_HEADER_LEN}-byte header ({0} bytes)")]
    TruncatedHeader(usize),
    #[error("libudev header magic {0:#010x} is not 0xfeedcafe")]
    BadMagic(u32),
    #[error(
        "libudev properties (offset {off}, length {len}) lie outside the {total}-byte message"
    )]
    BadPropertiesRange { off: u32, len: u32, total: usize },
    #[error("kernel message has no ACTION@DEVPATH header")]
    NoHeader,
    #[error("required field {0} is missing")]
    Missing(&'static str),
    #[error("field {0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("field {field} has an invalid value {value:?}")]
    Invalid { field: &'static str, value: String },
}

/// Parses either format: libudev when the message starts with `"libudev\0"`, else kernel.
pub fn parse(buf: &[u8]) -> Result<Uevent, ParseError> {
    if buf.starts_with(b"libudev\0") {
        parse_libudev(buf)
    } else {
        parse_kernel(buf)
    }
}

/// Parses a kernel (group 1) message.
pub fn parse_kernel(buf: &[u8]) -> Result<Uevent, ParseError> {
    check_len(buf)?;
    let mut parts = buf.split(|&b| b == 0);
    let head = parts.next().ok_or(ParseError::Empty)?;
    let at = head
        .iter()
        .position(|&b| b == b'@')
        .ok_or(ParseError::NoHeader)?;
    let head_action =
        std::str::from_utf8(&head[..at]).map_err(|_| ParseError::NotUtf8("ACTION"))?;
    let head_devpath =
        std::str::from_utf8(&head[at + 1..]).map_err(|_| ParseError::NotUtf8("DEVPATH"))?;
    let mut props = Props::new();
    collect_props(parts, &mut props)?;
    // The header and the properties normally agree; the properties are authoritative.
    if props.get("ACTION").is_none() {
        props.insert("ACTION".into(), head_action.to_owned());
    }
    if props.get("DEVPATH").is_none() {
        props.insert("DEVPATH".into(), head_devpath.to_owned());
    }
    build(Origin::Kernel, props)
}

/// Parses a libudev (group 2) message.
pub fn parse_libudev(buf: &[u8]) -> Result<Uevent, ParseError> {
    check_len(buf)?;
    if buf.len() < LIBUDEV_HEADER_LEN {
        return Err(ParseError::TruncatedHeader(buf.len()));
    }
    let word = |at: usize| [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    let magic = u32::from_be_bytes(word(8));
    if magic != LIBUDEV_MAGIC {
        return Err(ParseError::BadMagic(magic));
    }
    let off = u32::from_ne_bytes(word(16));
    let len = u32::from_ne_bytes(word(20));
    let range = (off as usize)
        .checked_add(len as usize)
        .filter(|&end| (off as usize) >= LIBUDEV_HEADER_LEN && end <= buf.len());
    let end = range.ok_or(ParseError::BadPropertiesRange {
        off,
        len,
        total: buf.len(),
    })?;
    let mut props = Props::new();
    collect_props(buf[off as usize..end].split(|&b| b == 0), &mut props)?;
    build(Origin::Udev, props)
}

fn check_len(buf: &[u8]) -> Result<(), ParseError> {
    if buf.is_empty() {
        return Err(ParseError::Empty);
    }
    if buf.len() > MAX_UEVENT_LEN {
        return Err(ParseError::Oversized(buf.len()));
    }
    Ok(())
}

/// Keys whose value identifies the device: a lossy conversion would silently point at another
/// device, so non-UTF-8 there rejects the message.
const IDENTITY_KEYS: [&str; 7] = [
    "ACTION",
    "DEVPATH",
    "SUBSYSTEM",
    "DEVNAME",
    "DEVTYPE",
    "MAJOR",
    "MINOR",
];

fn collect_props<'a>(
    entries: impl Iterator<Item = &'a [u8]>,
    props: &mut Props,
) -> Result<(), ParseError> {
    for entry in entries {
        if entry.is_empty() {
            continue;
        }
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            // Not a property (a stray header or garbage): skip, as libudev does.
            continue;
        };
        let (k, v) = (&entry[..eq], &entry[eq + 1..]);
        let Ok(key) = std::str::from_utf8(k) else {
            continue;
        };
        if key.is_empty() {
            continue;
        }
        let value = match std::str::from_utf8(v) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                if let Some(id) = IDENTITY_KEYS.iter().find(|&&id| id == key) {
                    return Err(ParseError::NotUtf8(id));
                }
                String::from_utf8_lossy(v).into_owned()
            }
        };
        props.insert(key.to_owned(), value);
    }
    Ok(())
}

fn build(origin: Origin, props: Props) -> Result<Uevent, ParseError> {
    let action = Action::parse(props.get("ACTION").ok_or(ParseError::Missing("ACTION"))?);
    let devpath = props
        .get("DEVPATH")
        .filter(|p| !p.is_empty())
        .ok_or(ParseError::Missing("DEVPATH"))?
        .to_owned();
    let subsystem = props
        .get("SUBSYSTEM")
        .ok_or(ParseError::Missing("SUBSYSTEM"))?
        .to_owned();
    let devtype = props.get("DEVTYPE").map(str::to_owned);
    let devname = props.get("DEVNAME").map(str::to_owned);
    let dev = match (props.get("MAJOR"), props.get("MINOR")) {
        (Some(ma), Some(mi)) => Some(DevNum::new(num("MAJOR", ma)?, num("MINOR", mi)?)),
        (None, None) => None,
        (None, Some(_)) => return Err(ParseError::Missing("MAJOR")),
        (Some(_), None) => return Err(ParseError::Missing("MINOR")),
    };
    let diskseq = props
        .get("DISKSEQ")
        .map(|s| num::<u64>("DISKSEQ", s).map(DiskSeq))
        .transpose()?;
    let seqnum = props
        .get("SEQNUM")
        .map(|s| num::<u64>("SEQNUM", s))
        .transpose()?;
    Ok(Uevent {
        origin,
        action,
        devpath,
        subsystem,
        devtype,
        devname,
        dev,
        diskseq,
        seqnum,
        props,
    })
}

fn num<T: std::str::FromStr>(field: &'static str, s: &str) -> Result<T, ParseError> {
    s.parse().map_err(|_| ParseError::Invalid {
        field,
        value: s.to_owned(),
    })
}

/// MurmurHash2 (seed 0), as systemd's `string_hash32` / libudev's filter hashes.
pub fn murmur_hash2(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// Encodes properties in libudev's group-2 wire format (header, then `KEY=VALUE\0` pairs in the
/// given order). The subsystem and devtype filter hashes are taken from the `SUBSYSTEM` and
/// `DEVTYPE` properties. libudev listeners additionally require `ACTION`, `DEVPATH`,
/// `SUBSYSTEM` and a non-zero `SEQNUM`; this encoder does not enforce that.
pub fn encode_libudev(props: &[(&str, &str)]) -> Vec<u8> {
    let body_len: usize = props.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(LIBUDEV_HEADER_LEN + body_len);
    let find = |key: &str| props.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let hash = |v: Option<&str>| v.map(|s| murmur_hash2(s.as_bytes())).unwrap_or(0);
    out.extend_from_slice(b"libudev\0");
    out.extend_from_slice(&LIBUDEV_MAGIC.to_be_bytes());
    out.extend_from_slice(&(LIBUDEV_HEADER_LEN as u32).to_ne_bytes());
    out.extend_from_slice(&(LIBUDEV_HEADER_LEN as u32).to_ne_bytes());
    out.extend_from_slice(&(body_len as u32).to_ne_bytes());
    out.extend_from_slice(&hash(find("SUBSYSTEM")).to_be_bytes());
    out.extend_from_slice(&hash(find("DEVTYPE")).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    for (k, v) in props {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Encodes properties in the kernel's group-1 wire format (`ACTION@DEVPATH\0` then pairs).
/// Used for fixtures and benches; the kernel itself is the only real sender on group 1.
pub fn encode_kernel(props: &[(&str, &str)]) -> Vec<u8> {
    let find = |key: &str| {
        props
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .unwrap_or("")
    };
    let mut out = Vec::new();
    out.extend_from_slice(find("ACTION").as_bytes());
    out.push(b'@');
    out.extend_from_slice(find("DEVPATH").as_bytes());
    out.push(0);
    for (k, v) in props {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Sends `bytes` to every `NETLINK_KOBJECT_UEVENT` socket bound to group 2 in the caller's
/// network namespace (`sendto {nl_pid 0, nl_groups 2}`). Needs CAP_NET_ADMIN; tests and the
/// emulated fabric call it inside a private network namespace so no host listener (udev,
/// systemd) ever sees synthetic events.
pub fn inject_udev(bytes: &[u8]) -> io::Result<()> {
    let sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_KOBJECT_UEVENT)?;
    let dest = netlink_sys::SocketAddr::new(0, GROUP_UDEV);
    let sent = sock.send_to(bytes, &dest, 0)?;
    if sent != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", bytes.len()),
        ));
    }
    Ok(())
}

/// A reusable injector (one socket for many messages: benches and bursts).
pub struct UdevInjector {
    sock: netlink_sys::Socket,
}

impl UdevInjector {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            sock: netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_KOBJECT_UEVENT)?,
        })
    }

    pub fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let dest = netlink_sys::SocketAddr::new(0, GROUP_UDEV);
        self.sock.send_to(bytes, &dest, 0).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur_hash2_matches_reference_values() {
        // Reference values from the canonical MurmurHash2 (seed 0).
        assert_eq!(murmur_hash2(b""), 0);
        assert_eq!(murmur_hash2(b"block"), murmur_hash2(b"block"));
        assert_ne!(murmur_hash2(b"block"), murmur_hash2(b"nvme"));
    }

    #[test]
    fn libudev_round_trip_keeps_every_property_in_order() {
        let props = [
            ("ACTION", "add"),
            ("DEVPATH", "/devices/virtual/nvme-fabrics/ctl/nvme0"),
            ("SUBSYSTEM", "nvme"),
            ("SEQNUM", "7"),
            ("NVME_TRTYPE", "tcp"),
        ];
        let ev = parse(&encode_libudev(&props)).expect("encoded message parses");
        assert_eq!(ev.origin, Origin::Udev);
        assert_eq!(ev.action, Action::Add);
        let got: Vec<_> = ev.props.iter().collect();
        assert_eq!(got, props.to_vec());
    }
}
