//! `/proc/<pid>/mountinfo`: a borrowed, allocation-free line parser and the owned [`MountInfo`].
//!
//! The kernel prints one line per mount (see `proc_pid_mountinfo(5)`):
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2) (3)  (4)   (5)      (6)       (7)   (8) (9)   (10)         (11)
//! ```
//!
//! Paths, the source and the fs type are escaped by the kernel's `mangle()`: space, tab,
//! newline and backslash become `\040`, `\011`, `\012` and `\134`. Filesystem options printed
//! with `seq_show_option` additionally escape `,` and `=` inside values. Paths are bytes, not
//! UTF-8, so decoded paths are built with [`OsStrExt`] and never go through `String`.
//!
//! [`parse_line`] splits a line into borrowed, still-escaped fields ([`MountEntry`]) without
//! allocating; decoding happens only when a field is asked for. [`parse_table`] parses a whole
//! file into owned [`MountInfo`]s and collects per-line [`ParseError`]s instead of failing the
//! whole table: one odd line must not blind the monitor to all the others.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rds_types::DevNum;

/// One propagation tag from the optional fields (7) of a mountinfo line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OptionalField {
    /// `shared:N`: member of peer group N.
    Shared(u32),
    /// `master:N`: receives propagation from peer group N.
    Master(u32),
    /// `propagate_from:N`: the closest dominant peer group reachable from this namespace.
    PropagateFrom(u32),
    /// `unbindable`.
    Unbindable,
    /// A tag this parser does not know (future kernels), kept verbatim.
    Other(String),
}

impl OptionalField {
    fn parse(raw: &[u8]) -> Self {
        fn num(b: &[u8]) -> Option<u32> {
            parse_u32(b)
        }
        if raw == b"unbindable" {
            return Self::Unbindable;
        }
        if let Some(n) = raw.strip_prefix(b"shared:").and_then(num) {
            return Self::Shared(n);
        }
        if let Some(n) = raw.strip_prefix(b"master:").and_then(num) {
            return Self::Master(n);
        }
        if let Some(n) = raw.strip_prefix(b"propagate_from:").and_then(num) {
            return Self::PropagateFrom(n);
        }
        Self::Other(String::from_utf8_lossy(raw).into_owned())
    }
}

impl fmt::Display for OptionalField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shared(n) => write!(f, "shared:{n}"),
            Self::Master(n) => write!(f, "master:{n}"),
            Self::PropagateFrom(n) => write!(f, "propagate_from:{n}"),
            Self::Unbindable => f.write_str("unbindable"),
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// One mount, owned. Built from a mountinfo line ([`MountEntry::to_owned`]) or, by the
/// watcher, from `statmount(2)` (which also knows the 64-bit [`unique_id`](Self::unique_id)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The mountinfo mount id (32-bit, reused after unmount).
    pub id: u32,
    /// The parent's mountinfo mount id (itself for the namespace root).
    pub parent_id: u32,
    /// The superblock's device (`major:minor`), the real device even for bind mounts.
    pub dev: DevNum,
    /// The root of this mount inside its filesystem (`/` unless a bind mount of a subtree).
    pub root: PathBuf,
    /// Where it is mounted, relative to the reading process's root.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,relatime`), as printed.
    pub mount_options: String,
    /// Propagation tags.
    pub optional: Vec<OptionalField>,
    /// Filesystem type (`ext4`, `fuse.sshfs`), decoded.
    pub fs_type: String,
    /// Mount source (`/dev/loop3`, `tmpfs`, `none`), decoded; `None` when the kernel printed
    /// an empty field. Non-UTF-8 bytes are replaced (use the device number for identity).
    pub source: Option<String>,
    /// Superblock options (`rw,errors=remount-ro`), **as printed (still escaped)**, so that an
    /// escaped `,` inside a value cannot split it. Use [`MountInfo::super_option`] for a decoded
    /// value.
    pub super_options: String,
    /// `statmount(2)`'s 64-bit unique mount id, when known (never reused, unlike [`id`](Self::id)).
    pub unique_id: Option<u64>,
}

impl MountInfo {
    /// The mount itself is read-only (per-mount `ro`; the superblock may still be writable
    /// through another mount).
    pub fn is_read_only(&self) -> bool {
        self.mount_flag("ro")
    }

    /// The superblock is read-only (`ro` in the super options), e.g. after ext4's
    /// `errors=remount-ro` fired.
    pub fn is_super_read_only(&self) -> bool {
        self.super_flag("ro")
    }

    /// A per-mount flag such as `nosuid` or `noexec` is set.
    pub fn mount_flag(&self, name: &str) -> bool {
        has_flag(&self.mount_options, name)
    }

    /// A superblock flag such as `emergency_ro` or `shutdown` is present (as a bare word, not
    /// `name=value`).
    pub fn super_flag(&self, name: &str) -> bool {
        has_flag(&self.super_options, name)
    }

    /// The decoded value of a `name=value` superblock option (`Some("")` for `name=`).
    pub fn super_option(&self, name: &str) -> Option<String> {
        self.super_options.split(',').find_map(|opt| {
            let (k, v) = opt.split_once('=')?;
            (k == name).then(|| String::from_utf8_lossy(&unescape(v.as_bytes())).into_owned())
        })
    }

    /// The shared peer group (`shared:N`), if this mount is shared.
    pub fn shared_group(&self) -> Option<u32> {
        self.optional.iter().find_map(|o| match o {
            OptionalField::Shared(n) => Some(*n),
            _ => None,
        })
    }

    /// The master peer group (`master:N`), if this mount is a slave.
    pub fn master_group(&self) -> Option<u32> {
        self.optional.iter().find_map(|o| match o {
            OptionalField::Master(n) => Some(*n),
            _ => None,
        })
    }

    /// The mount is unbindable.
    pub fn is_unbindable(&self) -> bool {
        self.optional.contains(&OptionalField::Unbindable)
    }

    /// Equal in everything the kernel reports, ignoring [`unique_id`](Self::unique_id) (a
    /// mountinfo read does not know it, statmount does).
    pub fn same_mount_state(&self, other: &MountInfo) -> bool {
        self.id == other.id
            && self.parent_id == other.parent_id
            && self.dev == other.dev
            && self.root == other.root
            && self.mount_point == other.mount_point
            && self.mount_options == other.mount_options
            && self.optional == other.optional
            && self.fs_type == other.fs_type
            && self.source == other.source
            && self.super_options == other.super_options
    }

    /// The line the kernel would print for this mount (without the newline). Used by tests
    /// and fuzzing to check that parsing round-trips.
    pub fn to_line(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(format!("{} {} {} ", self.id, self.parent_id, self.dev).as_bytes());
        out.extend_from_slice(&escape(self.root.as_os_str().as_bytes()));
        out.push(b' ');
        out.extend_from_slice(&escape(self.mount_point.as_os_str().as_bytes()));
        out.push(b' ');
        out.extend_from_slice(self.mount_options.as_bytes());
        for o in &self.optional {
            out.push(b' ');
            out.extend_from_slice(o.to_string().as_bytes());
        }
        out.extend_from_slice(b" - ");
        out.extend_from_slice(&escape(self.fs_type.as_bytes()));
        out.push(b' ');
        if let Some(s) = &self.source {
            out.extend_from_slice(&escape(s.as_bytes()));
        }
        out.push(b' ');
        out.extend_from_slice(self.super_options.as_bytes());
        out
    }
}

fn has_flag(options: &str, name: &str) -> bool {
    options.split(',').any(|o| o == name)
}

/// A field exactly as the kernel printed it (octal escapes not yet decoded).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Escaped<'a>(&'a [u8]);

impl<'a> Escaped<'a> {
    /// The raw, still-escaped bytes.
    pub fn raw(&self) -> &'a [u8] {
        self.0
    }

    /// The decoded bytes; borrows when there is nothing to decode.
    pub fn decode(&self) -> Cow<'a, [u8]> {
        unescape(self.0)
    }

    /// The decoded bytes as a path (paths are bytes, not UTF-8).
    pub fn to_path_buf(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(&self.decode()))
    }

    /// The decoded bytes as text, replacing invalid UTF-8.
    pub fn to_string_lossy(&self) -> String {
        bytes_to_string(&self.decode())
    }

    /// Compare with an unescaped value without allocating.
    pub fn eq_decoded(&self, other: &[u8]) -> bool {
        if memchr::memchr(b'\\', self.0).is_none() {
            self.0 == other
        } else {
            *self.decode() == *other
        }
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.0))
    }
}

/// One mountinfo line, borrowed from the input. Numeric fields are parsed; text fields stay
/// escaped until asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountEntry<'a> {
    pub id: u32,
    pub parent_id: u32,
    pub dev: DevNum,
    pub root: Escaped<'a>,
    pub mount_point: Escaped<'a>,
    /// Per-mount options; the kernel never escapes these (a fixed set of words).
    pub mount_options: &'a [u8],
    /// The optional fields, space separated, possibly empty. See [`MountEntry::optional`].
    pub optional_raw: &'a [u8],
    pub fs_type: Escaped<'a>,
    pub source: Escaped<'a>,
    /// Superblock options as printed (escaped).
    pub super_options: &'a [u8],
}

impl<'a> MountEntry<'a> {
    /// The propagation tags.
    pub fn optional(&self) -> impl Iterator<Item = OptionalField> + 'a {
        self.optional_raw
            .split(|&b| b == b' ')
            .filter(|f| !f.is_empty())
            .map(OptionalField::parse)
    }

    /// An owned copy with every field decoded.
    #[allow(clippy::should_implement_trait, clippy::wrong_self_convention)]
    pub fn to_owned(&self) -> MountInfo {
        let source = if self.source.0.is_empty() {
            None
        } else {
            Some(self.source.to_string_lossy())
        };
        MountInfo {
            id: self.id,
            parent_id: self.parent_id,
            dev: self.dev,
            root: self.root.to_path_buf(),
            mount_point: self.mount_point.to_path_buf(),
            mount_options: bytes_to_string(self.mount_options),
            optional: if self.optional_raw.is_empty() {
                Vec::new()
            } else {
                self.optional().collect()
            },
            fs_type: self.fs_type.to_string_lossy(),
            source,
            super_options: bytes_to_string(self.super_options),
            unique_id: None,
        }
    }
}

fn bytes_to_string(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

/// Why a mountinfo line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("empty line")]
    Empty,
    #[error("missing field {0}")]
    MissingField(&'static str),
    #[error("field {field} is not a decimal number: {text:?}")]
    BadNumber { field: &'static str, text: String },
    #[error("device field is not MAJOR:MINOR: {0:?}")]
    BadDevice(String),
    #[error("mount point {0:?} is not absolute")]
    RelativeMountPoint(String),
    #[error("no ' - ' separator before the filesystem type")]
    MissingSeparator,
    #[error("{0} unexpected field(s) after the super options (an unescaped space?)")]
    TrailingFields(usize),
    #[error("the final line has no newline: the read was truncated")]
    Truncated,
}

/// A rejected line: its 1-based number in the input and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mountinfo line {line}: {kind}")]
pub struct ParseError {
    pub line: usize,
    #[source]
    pub kind: ParseErrorKind,
}

/// Parse one mountinfo line (a trailing `\n` is allowed). Errors report line 1; use
/// [`parse_table`] for numbered errors.
pub fn parse_line(line: &[u8]) -> Result<MountEntry<'_>, ParseError> {
    parse_line_numbered(line, 1)
}

struct Fields<'a> {
    rest: &'a [u8],
    done: bool,
}

impl<'a> Fields<'a> {
    #[inline]
    fn next_field(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        match memchr::memchr(b' ', self.rest) {
            Some(i) => {
                let f = &self.rest[..i];
                self.rest = &self.rest[i + 1..];
                Some(f)
            }
            None => {
                self.done = true;
                Some(self.rest)
            }
        }
    }
}

#[inline]
fn take<'a>(f: &mut Fields<'a>, name: &'static str, line: usize) -> Result<&'a [u8], ParseError> {
    f.next_field().ok_or(ParseError {
        line,
        kind: ParseErrorKind::MissingField(name),
    })
}

#[inline]
fn parse_u32(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 10 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(c - b'0');
    }
    u32::try_from(n).ok()
}

fn parse_line_numbered(line: &[u8], lineno: usize) -> Result<MountEntry<'_>, ParseError> {
    let err = |kind| ParseError { line: lineno, kind };
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.is_empty() {
        return Err(err(ParseErrorKind::Empty));
    }
    let mut f = Fields {
        rest: line,
        done: false,
    };
    let num = |name: &'static str, b: &[u8]| {
        parse_u32(b).ok_or_else(|| {
            err(ParseErrorKind::BadNumber {
                field: name,
                text: String::from_utf8_lossy(b).into_owned(),
            })
        })
    };
    let id = num("mount id", take(&mut f, "mount id", lineno)?)?;
    let parent_id = num("parent id", take(&mut f, "parent id", lineno)?)?;
    let dev_raw = take(&mut f, "major:minor", lineno)?;
    let dev = parse_dev(dev_raw).ok_or_else(|| {
        err(ParseErrorKind::BadDevice(
            String::from_utf8_lossy(dev_raw).into_owned(),
        ))
    })?;
    let root = Escaped(take(&mut f, "root", lineno)?);
    let mount_point = take(&mut f, "mount point", lineno)?;
    if mount_point.first() != Some(&b'/') {
        return Err(err(ParseErrorKind::RelativeMountPoint(
            String::from_utf8_lossy(mount_point).into_owned(),
        )));
    }
    let mount_options = take(&mut f, "mount options", lineno)?;
    // Optional fields up to the lone "-".
    let opt_start = f.rest;
    let mut opt_end = 0usize;
    loop {
        let offset = opt_start.len() - f.rest.len();
        match f.next_field() {
            None => return Err(err(ParseErrorKind::MissingSeparator)),
            Some(b"-") => break,
            Some(tag) => opt_end = offset + tag.len(),
        }
    }
    let optional_raw = &opt_start[..opt_end];
    let fs_type = Escaped(take(&mut f, "filesystem type", lineno)?);
    let source = Escaped(take(&mut f, "mount source", lineno)?);
    let super_options = take(&mut f, "super options", lineno)?;
    let mut extra = 0;
    while f.next_field().is_some() {
        extra += 1;
    }
    if extra > 0 {
        return Err(err(ParseErrorKind::TrailingFields(extra)));
    }
    Ok(MountEntry {
        id,
        parent_id,
        dev,
        root,
        mount_point: Escaped(mount_point),
        mount_options,
        optional_raw,
        fs_type,
        source,
        super_options,
    })
}

#[inline]
fn parse_dev(b: &[u8]) -> Option<DevNum> {
    let colon = memchr::memchr(b':', b)?;
    Some(DevNum::new(
        parse_u32(&b[..colon])?,
        parse_u32(&b[colon + 1..])?,
    ))
}

/// Every line of a mountinfo file: the mounts that parsed and the lines that did not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedTable {
    pub entries: Vec<MountInfo>,
    pub errors: Vec<ParseError>,
}

/// Iterate over the lines of a mountinfo buffer as borrowed entries, numbering lines from 1.
/// A final line without its newline is reported as [`ParseErrorKind::Truncated`]: a cut
/// line can look valid (`rw,errors=remount-r`) and must never become a silently wrong entry.
pub fn entries(bytes: &[u8]) -> impl Iterator<Item = Result<MountEntry<'_>, ParseError>> {
    let mut rest = bytes;
    let mut lineno = 0usize;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        lineno += 1;
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                let line = &rest[..i];
                rest = &rest[i + 1..];
                Some(parse_line_numbered(line, lineno))
            }
            None => {
                rest = &[];
                Some(Err(ParseError {
                    line: lineno,
                    kind: ParseErrorKind::Truncated,
                }))
            }
        }
    })
}

/// Parse a whole mountinfo file into owned entries, collecting per-line errors.
pub fn parse_table(bytes: &[u8]) -> ParsedTable {
    // A mountinfo line is rarely shorter than 60 bytes; reserving avoids regrowth.
    let mut table = ParsedTable {
        entries: Vec::with_capacity(bytes.len() / 96 + 1),
        errors: Vec::new(),
    };
    for e in entries(bytes) {
        match e {
            Ok(e) => table.entries.push(e.to_owned()),
            Err(e) => table.errors.push(e),
        }
    }
    table
}

/// The path of a process's mountinfo under a proc root (`<proc_root>/<pid>/mountinfo`).
pub fn mountinfo_path(proc_root: &Path, pid: &str) -> PathBuf {
    proc_root.join(pid).join("mountinfo")
}

/// Read and parse `<proc_root>/<pid>/mountinfo` (pid is usually `"self"`).
pub fn read_mountinfo(proc_root: &Path, pid: &str) -> io::Result<ParsedTable> {
    let bytes = read_mountinfo_bytes(proc_root, pid)?;
    Ok(parse_table(&bytes))
}

/// Read the raw bytes of `<proc_root>/<pid>/mountinfo` in one pass.
pub fn read_mountinfo_bytes(proc_root: &Path, pid: &str) -> io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(mountinfo_path(proc_root, pid))?;
    let mut buf = Vec::with_capacity(64 * 1024);
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Decode the kernel's octal escapes (`\ooo`, value at most 0o377). A backslash not followed
/// by three octal digits is kept as is (the kernel always escapes a literal backslash, so
/// this only happens on corrupt input). Borrows when there is nothing to decode.
pub fn unescape(b: &[u8]) -> Cow<'_, [u8]> {
    let Some(first) = memchr::memchr(b'\\', b) else {
        return Cow::Borrowed(b);
    };
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[..first]);
    let mut i = first;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            if let Some(v) = octal3(&b[i + 1..]) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    Cow::Owned(out)
}

#[inline]
fn octal3(b: &[u8]) -> Option<u8> {
    if b.len() < 3 {
        return None;
    }
    let d = |c: u8| (b'0'..=b'7').contains(&c).then(|| c - b'0');
    let (a, m, l) = (d(b[0])?, d(b[1])?, d(b[2])?);
    if a > 3 {
        return None;
    }
    Some(a << 6 | m << 3 | l)
}

/// Escape bytes the way the kernel's `mangle()` does for paths and sources: space, tab,
/// newline and backslash as three-digit octal.
pub fn escape(b: &[u8]) -> Cow<'_, [u8]> {
    if !b.iter().any(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\\')) {
        return Cow::Borrowed(b);
    }
    let mut out = Vec::with_capacity(b.len() + 8);
    for &c in b {
        match c {
            b' ' | b'\t' | b'\n' | b'\\' => {
                out.push(b'\\');
                out.push(b'0' + (c >> 6));
                out.push(b'0' + ((c >> 3) & 7));
                out.push(b'0' + (c & 7));
            }
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}
