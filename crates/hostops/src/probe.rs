//! The data-safety guard for formatting (incident 2).
//!
//! The Go driver took "blkid gave no answer" for "blank" after a reconnect and ran `mkfs -F` on a
//! live volume. Here a device is [`Content::Empty`] only when all of these hold:
//! - the first and last MiB (or the whole device when smaller) were read back completely, with
//!   `O_DIRECT` when possible so the bytes came from the device now and not from cached pages;
//! - a sweep of the rest found only zeros: one 4 KiB block in every 64 KiB stripe of the first
//!   GiB and 4,096 evenly spaced blocks beyond ([`sweep_offsets`]; at most 20,464 reads, 80 MiB,
//!   whatever the size: on a 1 TiB namespace about 2 s at 100 µs per 4 KiB read);
//! - every probed byte is zero and no known signature is present;
//! - `blkid -p` (low-level probing, no cache) exited with status 2, "nothing found";
//!   a blkid that cannot run is an error unless the caller explicitly opted out.
//!
//! Any read error, short read or zero size is [`ProbeError::Unreadable`], never `Empty`. Any
//! disagreement between the two opinions is "not empty".
//!
//! [`Content::Empty`] carries the only [`FormatPermit`] there is: [`format`] demands one, and
//! re-checks, right before running mkfs, that the path still names the same device (number,
//! diskseq, size), that the probed regions are still zero and that nothing holds the device.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::blockdev::{self, Identity};
use crate::command::{self, Tool, ToolError};
use crate::signatures::{self, Regions, Scan};

/// Bytes probed at each end of the device (partition tables, LVM and md labels, filesystem
/// superblocks and their backups at the end all live there).
pub const PROBE_WINDOW: u64 = 1 << 20;

/// The sweep beyond the windows: one block of this size...
pub const SWEEP_BLOCK: u64 = 4096;
/// ...in every stripe of this size over the first [`SWEEP_DENSE`] bytes...
pub const SWEEP_STRIPE: u64 = 64 << 10;
pub const SWEEP_DENSE: u64 = 1 << 30;
/// ...and this many evenly spaced blocks over the rest of the device.
pub const SWEEP_SPARSE_BLOCKS: u64 = 4096;

/// The offsets the sweep reads on a device of `size` bytes with `sector`-byte sectors: the
/// start of every 64 KiB stripe of the first GiB (beyond the head window), then
/// [`SWEEP_SPARSE_BLOCKS`] blocks evenly spaced up to the tail window. Pure, for the count
/// and the tests.
pub fn sweep_offsets(size: u64, sector: u64) -> Vec<u64> {
    let sector = sector.max(512);
    let block = SWEEP_BLOCK.max(sector);
    let end = size.saturating_sub(PROBE_WINDOW);
    if end <= PROBE_WINDOW {
        return Vec::new();
    }
    let dense_end = end.min(SWEEP_DENSE);
    let mut out: Vec<u64> = (PROBE_WINDOW..dense_end)
        .step_by(SWEEP_STRIPE as usize)
        .filter(|o| o + block <= end)
        .collect();
    if end > SWEEP_DENSE {
        let span = end - SWEEP_DENSE;
        let step = (span / SWEEP_SPARSE_BLOCKS).max(block);
        let mut o = SWEEP_DENSE;
        while o + block <= end
            && (out.len() as u64) < SWEEP_DENSE / SWEEP_STRIPE + SWEEP_SPARSE_BLOCKS
        {
            out.push((o / sector) * sector);
            o += step;
        }
    }
    out
}

/// Read the sweep blocks; the offset of the first one holding a non-zero byte.
fn sweep(
    file: &std::fs::File,
    size: u64,
    sector: u64,
    direct: bool,
) -> std::io::Result<Option<u64>> {
    let block = SWEEP_BLOCK.max(sector) as usize;
    for off in sweep_offsets(size, sector) {
        let b = blockdev::read_exact_at(file, off, block, direct)?;
        if !signatures::all_zero(&b) {
            return Ok(Some(off));
        }
    }
    Ok(None)
}

/// Default deadline for blkid and for mkfs.
pub const DEFAULT_BLKID_DEADLINE: Duration = Duration::from_secs(30);
pub const DEFAULT_MKFS_DEADLINE: Duration = Duration::from_secs(300);

/// What is on a device.
#[derive(Debug)]
pub enum Content {
    /// Proven readable and blank. Carries the permit to format exactly this device.
    Empty(FormatPermit),
    /// A mountable filesystem both opinions agree on.
    Filesystem {
        fs_type: String,
        uuid: Option<String>,
    },
    /// Something that is not a filesystem we may mount, and not blank: partition tables, LUKS,
    /// LVM, swap, data without a signature, or disagreeing opinions. Never format, never mount.
    Unrecognised(Vec<String>),
}

impl Content {
    pub fn is_empty(&self) -> bool {
        matches!(self, Content::Empty(_))
    }
}

/// Proof that a device was found readable and empty, required by [`format`].
///
/// It has private fields and no public constructor; the only way to obtain one is a
/// [`Content::Empty`] from [`probe_content`] of that very device. It is neither `Clone` nor
/// `Copy` and [`format`] consumes it, so one probe permits at most one mkfs.
///
/// ```compile_fail
/// // A permit cannot be forged outside this crate:
/// let permit = rds_hostops::probe::FormatPermit { device: "/dev/loop0".into() };
/// ```
///
/// ```compile_fail
/// // ...and there is no constructor function either:
/// let permit = rds_hostops::probe::FormatPermit::new("/dev/loop0");
/// ```
pub struct FormatPermit {
    device: PathBuf,
    identity: Identity,
}

impl FormatPermit {
    /// The device this permit is for.
    pub fn device(&self) -> &Path {
        &self.device
    }
}

impl fmt::Debug for FormatPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FormatPermit")
            .field("device", &self.device)
            .field("rdev", &self.identity.rdev)
            .field("diskseq", &self.identity.diskseq)
            .field("size", &self.identity.size)
            .finish()
    }
}

/// How the probe runs.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// blkid program (PATH lookup or absolute path).
    pub blkid: PathBuf,
    pub blkid_deadline: Duration,
    /// When true (the default) a missing blkid is an error; when false the native scan alone
    /// may conclude `Empty`.
    pub require_blkid: bool,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            blkid: PathBuf::from("blkid"),
            blkid_deadline: DEFAULT_BLKID_DEADLINE,
            require_blkid: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "{device} could not be read, so its content is unknown (never treated as empty): {reason}"
    )]
    Unreadable {
        device: PathBuf,
        reason: String,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("{device} changed (identity or content) while it was being probed; content unknown")]
    Changed { device: PathBuf },
    #[error("blkid's second opinion on {device} failed; content unknown")]
    SecondOpinion {
        device: PathBuf,
        #[source]
        source: ToolError,
    },
}

/// blkid's answer, after exit-code mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blkid {
    /// Exit 0: properties (`TYPE`, `UUID`, `USAGE`, `PTTYPE`, ...).
    Found(BTreeMap<String, String>),
    /// Exit 2: no signature found.
    Nothing,
    /// blkid is not installed (only acceptable when not required).
    Unavailable,
}

/// Parse `blkid -o export` output (`KEY=value` lines).
pub fn parse_export(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Combine the native scan and blkid's answer (pure; see the module doc for the rules).
/// Returns `None` for "empty": the caller builds the permit.
pub fn decide(scan: &Scan, blkid: &Blkid) -> Option<Content> {
    let native: Vec<String> = scan.signatures.iter().map(|s| s.name.to_owned()).collect();
    match blkid {
        Blkid::Found(props) => {
            let ty = props.get("TYPE").cloned();
            let usage = props.get("USAGE").map(String::as_str);
            match (ty, usage) {
                (Some(ty), Some("filesystem")) => {
                    let native_fs: Vec<_> =
                        scan.signatures.iter().filter(|s| s.filesystem).collect();
                    if !native_fs.is_empty()
                        && !native_fs
                            .iter()
                            .any(|s| signatures::same_family(s.name, &ty))
                    {
                        let mut seen = native;
                        seen.push(format!("blkid:{ty}"));
                        return Some(Content::Unrecognised(seen));
                    }
                    let uuid = props
                        .get("UUID")
                        .cloned()
                        .or_else(|| native_fs.first().and_then(|s| s.uuid.clone()));
                    Some(Content::Filesystem { fs_type: ty, uuid })
                }
                (ty, _) => {
                    let mut seen = native;
                    if let Some(t) = ty {
                        seen.push(format!("blkid:{t}"));
                    }
                    if let Some(pt) = props.get("PTTYPE") {
                        seen.push(format!("blkid:partition table {pt}"));
                    }
                    if seen.is_empty() {
                        seen.push("blkid:unnamed signature".to_owned());
                    }
                    Some(Content::Unrecognised(seen))
                }
            }
        }
        Blkid::Nothing => {
            if !native.is_empty() {
                let mut seen = native;
                seen.push("blkid found nothing".to_owned());
                Some(Content::Unrecognised(seen))
            } else if scan.nonzero {
                Some(Content::Unrecognised(vec!["non-zero data".to_owned()]))
            } else {
                None
            }
        }
        Blkid::Unavailable => {
            let fs: Vec<_> = scan.signatures.iter().filter(|s| s.filesystem).collect();
            if scan.signatures.len() == 1 && fs.len() == 1 {
                Some(Content::Filesystem {
                    fs_type: fs[0].name.to_owned(),
                    uuid: fs[0].uuid.clone(),
                })
            } else if !native.is_empty() {
                Some(Content::Unrecognised(native))
            } else if scan.nonzero {
                Some(Content::Unrecognised(vec!["non-zero data".to_owned()]))
            } else {
                None
            }
        }
    }
}

/// Read the probe windows of `device`. Errors are "unreadable", with the reason.
fn read_windows(device: &Path) -> Result<(Identity, Scan), ProbeError> {
    let unreadable = |reason: String, source: Option<std::io::Error>| ProbeError::Unreadable {
        device: device.to_owned(),
        reason,
        source,
    };
    let (file, mut direct) =
        blockdev::open_direct(device).map_err(|e| unreadable("open failed".into(), Some(e)))?;
    let identity = blockdev::identity_of(&file)
        .map_err(|e| unreadable("size query failed".into(), Some(e)))?;
    let size = identity.size;
    if size == 0 {
        return Err(unreadable("the device reports size 0".into(), None));
    }
    let sector = blockdev::logical_sector_size(&file);
    if direct && size % sector != 0 {
        direct = false;
    }
    let reopen = |direct: bool| -> Result<std::fs::File, ProbeError> {
        if direct {
            Ok(blockdev::open_direct(device)
                .map_err(|e| unreadable("reopen failed".into(), Some(e)))?
                .0)
        } else {
            std::fs::File::open(device).map_err(|e| unreadable("reopen failed".into(), Some(e)))
        }
    };
    let file = if direct { file } else { reopen(false)? };
    let head_len = size.min(PROBE_WINDOW);
    let head = blockdev::read_exact_at(&file, 0, head_len as usize, direct).map_err(|e| {
        unreadable(
            format!("reading the first {head_len} bytes failed"),
            Some(e),
        )
    })?;
    let (tail, tail_offset) = if size <= PROBE_WINDOW {
        (head.clone(), 0)
    } else {
        let off = ((size - PROBE_WINDOW) / sector) * sector;
        let len = (size - off) as usize;
        let t = blockdev::read_exact_at(&file, off, len, direct).map_err(|e| {
            unreadable(
                format!("reading the last {len} bytes at offset {off} failed"),
                Some(e),
            )
        })?;
        (t, off)
    };
    let scan = signatures::scan(&Regions {
        head: &head,
        tail: &tail,
        tail_offset,
        size,
    });
    Ok((identity, scan))
}

/// The sweep over the whole device, on a fresh descriptor; the device must still be the one
/// probed.
fn sweep_device(device: &Path, identity: Identity) -> Result<Option<u64>, ProbeError> {
    let unreadable = |reason: String, source: Option<std::io::Error>| ProbeError::Unreadable {
        device: device.to_owned(),
        reason,
        source,
    };
    let (file, mut direct) =
        blockdev::open_direct(device).map_err(|e| unreadable("open failed".into(), Some(e)))?;
    if blockdev::identity_of(&file).ok() != Some(identity) {
        return Err(ProbeError::Changed {
            device: device.to_owned(),
        });
    }
    let sector = blockdev::logical_sector_size(&file);
    if direct && !identity.size.is_multiple_of(sector) {
        direct = false;
    }
    let file = if direct {
        file
    } else {
        std::fs::File::open(device).map_err(|e| unreadable("reopen failed".into(), Some(e)))?
    };
    let started = std::time::Instant::now();
    let found = sweep(&file, identity.size, sector, direct)
        .map_err(|e| unreadable("sweeping the device failed".into(), Some(e)))?;
    tracing::debug!(device = %device.display(), reads = sweep_offsets(identity.size, sector).len(),
        elapsed = ?started.elapsed(), ?found, "swept the device for data");
    Ok(found)
}

fn run_blkid(device: &Path, cfg: &ProbeConfig) -> Result<Blkid, ProbeError> {
    let tool = Tool::new(&cfg.blkid, cfg.blkid_deadline)
        .args(["-p", "-o", "export"])
        .arg(device);
    match command::run(&tool) {
        Ok(out) => Ok(Blkid::Found(parse_export(&out.stdout))),
        Err(ToolError::Exited { code: 2, .. }) => Ok(Blkid::Nothing),
        Err(ToolError::NotFound { .. }) if !cfg.require_blkid => Ok(Blkid::Unavailable),
        Err(source) => Err(ProbeError::SecondOpinion {
            device: device.to_owned(),
            source,
        }),
    }
}

/// Probe with the default configuration (blkid required). Blocking: wrap in
/// [`crate::deadline::run_blocking`].
pub fn probe_content(device: &Path) -> Result<Content, ProbeError> {
    probe_content_with(device, &ProbeConfig::default())
}

/// Probe `device` (see the module doc).
pub fn probe_content_with(device: &Path, cfg: &ProbeConfig) -> Result<Content, ProbeError> {
    let (identity, scan) = read_windows(device)?;
    let blkid = run_blkid(device, cfg)?;
    // The device must still be the same one after blkid ran; and an "empty" verdict needs
    // the bytes to still be blank (a live filesystem's changing superblock does not matter:
    // it is not empty either way).
    let (again, again_scan) = read_windows(device)?;
    if again != identity {
        return Err(ProbeError::Changed {
            device: device.to_owned(),
        });
    }
    let content = match decide(&scan, &blkid) {
        Some(content) => content,
        None if again_scan == Scan::default() => match sweep_device(device, identity)? {
            // Data without a signature between the ends (a filesystem whose superblock was
            // wiped, a database's raw file, encrypted blocks): never blank.
            Some(off) => Content::Unrecognised(vec![format!("non-zero data at offset {off}")]),
            None => Content::Empty(FormatPermit {
                device: device.to_owned(),
                identity,
            }),
        },
        None => {
            return Err(ProbeError::Changed {
                device: device.to_owned(),
            })
        }
    };
    tracing::info!(device = %device.display(), dev = ?identity.rdev, diskseq = ?identity.diskseq,
        content = ?content, blkid = ?blkid, "probed device content");
    Ok(content)
}

/// Filesystems this driver creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsKind {
    Ext4,
    Xfs,
}

impl FsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
        }
    }
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported filesystem type {0:?} (ext4 or xfs)")]
pub struct UnsupportedFs(pub String);

impl std::str::FromStr for FsKind {
    type Err = UnsupportedFs;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ext4" => Ok(FsKind::Ext4),
            "xfs" => Ok(FsKind::Xfs),
            other => Err(UnsupportedFs(other.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("the permit is for {permit}, not for {device}")]
    PermitForAnotherDevice { device: PathBuf, permit: PathBuf },
    #[error("{device} is no longer the device that was probed (number, diskseq or size changed); probe again")]
    DeviceChanged { device: PathBuf },
    #[error("{device} is no longer empty; refusing to format")]
    NoLongerEmpty { device: PathBuf },
    #[error("{device} is held by someone (mounted or opened exclusively); refusing to format")]
    DeviceBusy { device: PathBuf },
    #[error("re-checking {device} before formatting failed")]
    Recheck {
        device: PathBuf,
        #[source]
        source: Box<ProbeError>,
    },
    #[error("checking whether {device} is held failed")]
    Exclusive {
        device: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mkfs.{fs} on {device} failed")]
    Mkfs {
        device: PathBuf,
        fs: FsKind,
        #[source]
        source: ToolError,
    },
}

/// Create a filesystem on `device`, which a probe found empty (`permit`). Blocking, bounded by
/// `deadline`. No force flag is passed: mkfs.xfs then refuses any signature it finds itself.
pub fn format(
    device: &Path,
    fs: FsKind,
    permit: FormatPermit,
    deadline: Duration,
) -> Result<(), FormatError> {
    if permit.device != device {
        return Err(FormatError::PermitForAnotherDevice {
            device: device.to_owned(),
            permit: permit.device,
        });
    }
    let (identity, scan) = read_windows(device).map_err(|source| FormatError::Recheck {
        device: device.to_owned(),
        source: Box::new(source),
    })?;
    if identity != permit.identity {
        return Err(FormatError::DeviceChanged {
            device: device.to_owned(),
        });
    }
    if scan.nonzero || !scan.signatures.is_empty() {
        return Err(FormatError::NoLongerEmpty {
            device: device.to_owned(),
        });
    }
    match blockdev::exclusive_open_ok(device) {
        Ok(true) => {}
        Ok(false) => {
            return Err(FormatError::DeviceBusy {
                device: device.to_owned(),
            })
        }
        Err(source) => {
            return Err(FormatError::Exclusive {
                device: device.to_owned(),
                source,
            })
        }
    }
    let tool = match fs {
        // -E nodiscard: a discard of a large fresh NVMe namespace can outlast any deadline.
        FsKind::Ext4 => Tool::new("mkfs.ext4", deadline)
            .args(["-q", "-E", "nodiscard"])
            .arg(device),
        // -K: do not discard.
        FsKind::Xfs => Tool::new("mkfs.xfs", deadline)
            .args(["-q", "-K"])
            .arg(device),
    };
    tracing::info!(device = %device.display(), fs = %fs, dev = ?identity.rdev, diskseq = ?identity.diskseq, "formatting empty device");
    command::run(&tool).map_err(|source| FormatError::Mkfs {
        device: device.to_owned(),
        fs,
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signatures::Signature;

    #[test]
    fn the_sweep_covers_every_stripe_of_the_first_gib_and_spreads_over_the_rest() {
        // 64 MiB: every 64 KiB stripe between the two 1 MiB windows.
        let o = sweep_offsets(64 << 20, 512);
        assert_eq!(o.len() as u64, (62 << 20) / SWEEP_STRIPE);
        assert_eq!(o.first(), Some(&PROBE_WINDOW));
        assert!(o.windows(2).all(|w| w[1] - w[0] == SWEEP_STRIPE));
        // 1 TiB: the dense part plus the sparse blocks, bounded whatever the size.
        let tib = 1u64 << 40;
        let o = sweep_offsets(tib, 4096);
        let dense = ((SWEEP_DENSE - PROBE_WINDOW) / SWEEP_STRIPE) as usize;
        assert!(
            o.len() <= dense + SWEEP_SPARSE_BLOCKS as usize,
            "{}",
            o.len()
        );
        assert!(
            o.len() >= dense + SWEEP_SPARSE_BLOCKS as usize - 1,
            "{}",
            o.len()
        );
        assert!(o
            .iter()
            .all(|x| x % 4096 == 0 && x + SWEEP_BLOCK <= tib - PROBE_WINDOW));
        let last = *o.last().expect("offsets");
        assert!(
            last > tib - tib / 1000,
            "the sparse blocks reach the end: {last}"
        );
        // Tiny devices are all windows.
        assert!(sweep_offsets(2 << 20, 512).is_empty());
    }

    fn sig(name: &'static str, filesystem: bool) -> Signature {
        Signature {
            name,
            filesystem,
            uuid: None,
        }
    }

    fn found(pairs: &[(&str, &str)]) -> Blkid {
        Blkid::Found(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn all_zero_and_blkid_nothing_is_the_only_empty() {
        assert!(
            decide(&Scan::default(), &Blkid::Nothing).is_none(),
            "zeroes + blkid exit 2 must be empty"
        );
    }

    #[test]
    fn zeroes_but_blkid_found_something_is_not_empty() {
        let d = decide(
            &Scan::default(),
            &found(&[("TYPE", "zfs_member"), ("USAGE", "filesystem")]),
        );
        assert!(
            matches!(d, Some(Content::Filesystem { ref fs_type, .. }) if fs_type == "zfs_member"),
            "got {d:?}"
        );
        let d = decide(&Scan::default(), &found(&[("PTTYPE", "gpt")]));
        assert!(matches!(d, Some(Content::Unrecognised(_))), "got {d:?}");
    }

    #[test]
    fn non_zero_data_without_signature_is_unrecognised() {
        let s = Scan {
            signatures: vec![],
            nonzero: true,
        };
        let d = decide(&s, &Blkid::Nothing);
        assert!(
            matches!(d, Some(Content::Unrecognised(ref v)) if v == &["non-zero data"]),
            "got {d:?}"
        );
    }

    #[test]
    fn native_signature_that_blkid_does_not_see_is_unrecognised() {
        let s = Scan {
            signatures: vec![sig("ext4", true)],
            nonzero: true,
        };
        assert!(matches!(
            decide(&s, &Blkid::Nothing),
            Some(Content::Unrecognised(_))
        ));
    }

    #[test]
    fn disagreeing_filesystem_types_are_unrecognised() {
        let s = Scan {
            signatures: vec![sig("xfs", true)],
            nonzero: true,
        };
        let d = decide(&s, &found(&[("TYPE", "ext4"), ("USAGE", "filesystem")]));
        assert!(matches!(d, Some(Content::Unrecognised(_))), "got {d:?}");
    }

    #[test]
    fn agreeing_filesystem_is_reported_with_blkid_uuid() {
        let s = Scan {
            signatures: vec![sig("ext4", true)],
            nonzero: true,
        };
        let d = decide(
            &s,
            &found(&[("TYPE", "ext4"), ("USAGE", "filesystem"), ("UUID", "u-1")]),
        );
        assert!(
            matches!(d, Some(Content::Filesystem { ref fs_type, ref uuid }) if fs_type == "ext4" && uuid.as_deref() == Some("u-1")),
            "got {d:?}"
        );
    }

    #[test]
    fn crypto_and_raid_members_are_unrecognised() {
        let d = decide(
            &Scan {
                signatures: vec![sig("crypto_LUKS", false)],
                nonzero: true,
            },
            &found(&[("TYPE", "crypto_LUKS"), ("USAGE", "crypto")]),
        );
        assert!(matches!(d, Some(Content::Unrecognised(_))), "got {d:?}");
    }

    #[test]
    fn without_blkid_only_clean_zeroes_are_empty() {
        assert!(decide(&Scan::default(), &Blkid::Unavailable).is_none());
        let s = Scan {
            signatures: vec![sig("dos", false)],
            nonzero: true,
        };
        assert!(matches!(
            decide(&s, &Blkid::Unavailable),
            Some(Content::Unrecognised(_))
        ));
    }

    #[test]
    fn blkid_export_output_is_parsed() {
        let p = parse_export("DEVNAME=/dev/loop0\nUUID=abc\nTYPE=ext4\nUSAGE=filesystem\n");
        assert_eq!(p.get("TYPE").map(String::as_str), Some("ext4"));
        assert_eq!(p.get("UUID").map(String::as_str), Some("abc"));
    }
}
