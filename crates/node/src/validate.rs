//! Request validation: every CSI request is turned into a typed argument struct before the node
//! service sees it. Each rejection names the field, and maps to InvalidArgument.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use rds_types::Nqn;

use crate::csi;
use crate::defaults;
use crate::error::NodeError;

pub use rds_types::VolumeId;

/// A volume ID from a request field; a rejection names the field.
pub fn volume_id(field: &'static str, s: &str) -> Result<VolumeId, NodeError> {
    VolumeId::parse(s).map_err(|e| NodeError::invalid(field, e.to_string()))
}

/// An absolute, normalised path with no `..` components.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AbsPath(PathBuf);

impl AbsPath {
    pub fn parse(field: &'static str, s: &str) -> Result<Self, NodeError> {
        if s.is_empty() {
            return Err(NodeError::invalid(field, "must not be empty"));
        }
        if s.len() > 4096 {
            return Err(NodeError::invalid(field, "is longer than PATH_MAX"));
        }
        if s.contains('\0') {
            return Err(NodeError::invalid(field, "contains a NUL byte"));
        }
        let p = Path::new(s);
        if !p.is_absolute() {
            return Err(NodeError::invalid(
                field,
                format!("{} is not an absolute path", rds_types::quote(s)),
            ));
        }
        let mut out = PathBuf::from("/");
        for c in p.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => out.push(n),
                Component::ParentDir => {
                    return Err(NodeError::invalid(
                        field,
                        format!("{} contains '..'", rds_types::quote(s)),
                    ))
                }
                Component::Prefix(_) => {
                    return Err(NodeError::invalid(
                        field,
                        format!("{} is not a Unix path", rds_types::quote(s)),
                    ))
                }
            }
        }
        if out == Path::new("/") {
            return Err(NodeError::invalid(field, "must not be the root directory"));
        }
        Ok(Self(out))
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl std::fmt::Display for AbsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.display().fmt(f)
    }
}

impl AsRef<Path> for AbsPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// Filesystems this plugin creates and mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    pub fn parse(field: &'static str, s: &str) -> Result<Self, NodeError> {
        match s {
            "" | "ext4" => Ok(Self::Ext4),
            "xfs" => Ok(Self::Xfs),
            other => Err(NodeError::invalid(
                field,
                format!(
                    "filesystem {} is not supported (ext4, xfs)",
                    rds_types::quote(other)
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Xfs => "xfs",
        }
    }
}

/// How the volume is presented to the pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Access {
    /// A filesystem, with the mount options the capability asked for (already checked).
    Mount { fs_type: FsType, flags: Vec<String> },
    /// A raw block device.
    Block,
}

impl Access {
    pub fn is_block(&self) -> bool {
        matches!(self, Self::Block)
    }
}

/// Mount options a capability may carry. Anything else, and in particular `suid`, `dev` or
/// options that change what a bind means, is refused: a volume never gains device files or
/// set-uid binaries through its mount options.
/// Mount options a StorageClass may ask for, for every filesystem (per-mount flags and
/// superblock options both understand).
const COMMON_MOUNT_FLAGS: &[&str] = &[
    "ro",
    "rw",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "lazytime",
    "noexec",
    "exec",
    "nosuid",
    "nodev",
    "sync",
    "async",
    "dirsync",
    "discard",
    "nodiscard",
    "usrquota",
    "grpquota",
    "prjquota",
];
/// ext4's own options.
const EXT4_MOUNT_FLAGS: &[&str] = &[
    "nobarrier",
    "barrier",
    "noquota",
    "quota",
    "user_xattr",
    "nouser_xattr",
    "acl",
    "noacl",
];
/// XFS's own options.
const XFS_MOUNT_FLAGS: &[&str] = &["inode64", "largeio", "nouuid", "noquota"];

/// A valued option's value, checked (`None`: the option is not one this plugin knows).
fn check_valued(fs: FsType, key: &str, value: &str) -> Option<Result<(), String>> {
    let number = |lo: u64, hi: u64| match value.parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(()),
        _ => Err(format!(
            "{key}={}: expected a whole number from {lo} to {hi}",
            rds_types::quote(value)
        )),
    };
    let one_of = |allowed: &[&str]| {
        if allowed.contains(&value) {
            Ok(())
        } else {
            Err(format!(
                "{key}={}: expected one of {}",
                rds_types::quote(value),
                allowed.join(", ")
            ))
        }
    };
    Some(match (fs, key) {
        (FsType::Ext4, "data") => one_of(&["ordered", "writeback", "journal"]),
        (FsType::Ext4, "commit") => number(0, 300),
        // errors=panic would let one filesystem error on one volume panic the whole node.
        (FsType::Ext4, "errors") if value == "panic" => Err(
            "errors=panic is refused: one filesystem error on one volume would panic the node"
                .to_owned(),
        ),
        (FsType::Ext4, "errors") => one_of(&["continue", "remount-ro"]),
        (FsType::Xfs, "logbufs") => number(2, 8),
        (FsType::Xfs, "logbsize") => one_of(&["16k", "32k", "64k", "128k", "256k"]),
        (FsType::Xfs, "allocsize") => {
            let (n, unit) = value.split_at(
                value
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(value.len()),
            );
            let mult: u64 = match unit {
                "k" | "K" => 1 << 10,
                "m" | "M" => 1 << 20,
                "g" | "G" => 1 << 30,
                "" => 1,
                _ => 0,
            };
            match n.parse::<u64>().ok().map(|n| n.saturating_mul(mult)) {
                Some(b) if b.is_power_of_two() && ((4 << 10)..=(1 << 30)).contains(&b) => Ok(()),
                _ => Err(format!(
                    "{key}={}: expected a power of two from 4k to 1g",
                    rds_types::quote(value)
                )),
            }
        }
        _ => return None,
    })
}

fn check_mount_flags(fs: FsType, flags: &[String]) -> Result<Vec<String>, NodeError> {
    const FIELD: &str = "volume_capability.mount.mount_flags";
    let own = match fs {
        FsType::Ext4 => EXT4_MOUNT_FLAGS,
        FsType::Xfs => XFS_MOUNT_FLAGS,
    };
    let mut out = Vec::with_capacity(flags.len());
    for f in flags {
        for opt in f.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if matches!(opt, "suid" | "dev") {
                return Err(NodeError::invalid(
                    FIELD,
                    format!("{opt:?} is refused: volumes are always mounted nosuid,nodev"),
                ));
            }
            if COMMON_MOUNT_FLAGS.contains(&opt) || own.contains(&opt) {
                out.push(opt.to_owned());
                continue;
            }
            let verdict = opt
                .split_once('=')
                .and_then(|(k, v)| check_valued(fs, k, v));
            match verdict {
                Some(Ok(())) => out.push(opt.to_owned()),
                Some(Err(why)) => return Err(NodeError::invalid(FIELD, why)),
                None => {
                    return Err(NodeError::invalid(
                        FIELD,
                        format!(
                            "mount option {} is not supported for {}",
                            rds_types::quote(opt),
                            fs.as_str()
                        ),
                    ))
                }
            }
        }
    }
    Ok(out)
}

/// Access modes a node plugin for a single-attach block volume supports.
fn check_access_mode(cap: &csi::VolumeCapability, block: bool) -> Result<bool, NodeError> {
    use csi::volume_capability::access_mode::Mode;
    const FIELD: &str = "volume_capability.access_mode";
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| NodeError::invalid(FIELD, "is missing"))?
        .mode();
    match mode {
        Mode::SingleNodeWriter | Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter => {
            Ok(false)
        }
        Mode::SingleNodeReaderOnly => Ok(true),
        Mode::MultiNodeReaderOnly if block => Ok(true),
        Mode::MultiNodeMultiWriter if block => Ok(false),
        Mode::Unknown => Err(NodeError::invalid(FIELD, "is UNKNOWN")),
        other => Err(NodeError::invalid(
            FIELD,
            format!(
                "{} is not supported for {} volumes",
                other.as_str_name(),
                if block { "block" } else { "filesystem" }
            ),
        )),
    }
}

/// The capability, checked: the access kind and whether the mode is read-only.
pub fn capability(cap: Option<&csi::VolumeCapability>) -> Result<(Access, bool), NodeError> {
    use csi::volume_capability::AccessType;
    let cap = cap.ok_or_else(|| NodeError::invalid("volume_capability", "is missing"))?;
    let access = match &cap.access_type {
        Some(AccessType::Block(_)) => Access::Block,
        Some(AccessType::Mount(m)) => {
            let fs_type = FsType::parse("volume_capability.mount.fs_type", &m.fs_type)?;
            Access::Mount {
                fs_type,
                flags: check_mount_flags(fs_type, &m.mount_flags)?,
            }
        }
        None => {
            return Err(NodeError::invalid(
                "volume_capability.access_type",
                "is missing (block or mount)",
            ))
        }
    };
    let ro = check_access_mode(cap, access.is_block())?;
    Ok((access, ro))
}

/// Where and how to reach the volume's NVMe/TCP subsystem, from the volume context.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub nqn: Nqn,
    pub address: IpAddr,
    pub port: u16,
    pub ctrl_loss_tmo: i32,
    pub reconnect_delay: u32,
    pub keep_alive_tmo: Option<u32>,
    /// `emulatedCapacity`: the size of the target the emulated fabric creates on first connect
    /// (cluster mode without NVMe hardware). The kernel's fabric never reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_hint: Option<u64>,
}

/// A Kubernetes quantity of bytes: a plain number, or one with a binary (`Ki`, `Mi`, `Gi`,
/// `Ti`) or decimal (`k`, `M`, `G`, `T`) suffix.
pub fn parse_bytes(field: &'static str, v: &str) -> Result<u64, NodeError> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(NodeError::invalid(
                field,
                format!(
                    "{} is not a size (bytes, or with Ki, Mi, Gi, Ti, k, M, G, T)",
                    rds_types::quote(v)
                ),
            ))
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| NodeError::invalid(field, format!("{} is not a size", rds_types::quote(v))))?;
    match n.checked_mul(mult) {
        Some(0) => Err(NodeError::invalid(field, "must be above 0")),
        Some(b) => Ok(b),
        None => Err(NodeError::invalid(
            field,
            format!("{} is too large", rds_types::quote(v)),
        )),
    }
}

fn ctx_int<T: std::str::FromStr>(
    ctx: &HashMap<String, String>,
    key: &'static str,
    field: &'static str,
) -> Result<Option<T>, NodeError> {
    match ctx.get(key) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Err(NodeError::invalid(field, "is empty")),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            NodeError::invalid(
                field,
                format!("{} is not a valid number", rds_types::quote(v)),
            )
        }),
    }
}

impl Target {
    pub fn from_context(ctx: &HashMap<String, String>) -> Result<Self, NodeError> {
        let nqn_s = ctx
            .get("nqn")
            .ok_or_else(|| NodeError::invalid("volume_context.nqn", "is missing"))?;
        let nqn = Nqn::parse(nqn_s)
            .map_err(|e| NodeError::invalid("volume_context.nqn", e.to_string()))?;
        let (addr_key, addr) = match (ctx.get("nvmeAddress"), ctx.get("rdsAddress")) {
            (Some(a), _) => ("volume_context.nvmeAddress", a),
            (None, Some(a)) => ("volume_context.rdsAddress", a),
            (None, None) => {
                return Err(NodeError::invalid(
                    "volume_context.nvmeAddress",
                    "is missing (nor rdsAddress given)",
                ))
            }
        };
        if addr.trim().is_empty() {
            return Err(NodeError::invalid(addr_key, "is empty"));
        }
        let address: IpAddr = addr.trim().parse().map_err(|_| {
            NodeError::invalid(
                addr_key,
                format!("{} is not an IP address", rds_types::quote(addr)),
            )
        })?;
        let port = match ctx_int::<u32>(ctx, "nvmePort", "volume_context.nvmePort")? {
            None => defaults::NVME_PORT,
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => {
                return Err(NodeError::invalid(
                    "volume_context.nvmePort",
                    format!("{p} is outside 1-65535"),
                ))
            }
        };
        let ctrl_loss_tmo = match ctx_int::<i32>(ctx, "ctrlLossTmo", "volume_context.ctrlLossTmo")?
        {
            None => defaults::CTRL_LOSS_TMO,
            Some(v) if v >= -1 => v,
            Some(v) => {
                return Err(NodeError::invalid(
                    "volume_context.ctrlLossTmo",
                    format!("{v} is below -1"),
                ))
            }
        };
        let reconnect_delay =
            match ctx_int::<u32>(ctx, "reconnectDelay", "volume_context.reconnectDelay")? {
                None => defaults::RECONNECT_DELAY,
                Some(0) => {
                    return Err(NodeError::invalid(
                        "volume_context.reconnectDelay",
                        "must be at least 1",
                    ))
                }
                Some(v) => v,
            };
        let keep_alive_tmo = ctx_int::<u32>(ctx, "keepAliveTmo", "volume_context.keepAliveTmo")?;
        let capacity_hint = ctx
            .get("emulatedCapacity")
            .map(|v| parse_bytes("volume_context.emulatedCapacity", v))
            .transpose()?;
        Ok(Self {
            nqn,
            address,
            port,
            ctrl_loss_tmo,
            reconnect_delay,
            keep_alive_tmo,
            capacity_hint,
        })
    }
}

/// NodeStageVolume, validated.
#[derive(Debug, Clone)]
pub struct StageArgs {
    pub volume_id: VolumeId,
    pub staging_path: AbsPath,
    pub access: Access,
    pub read_only: bool,
    pub target: Target,
}

impl StageArgs {
    pub fn from_request(r: &csi::NodeStageVolumeRequest) -> Result<Self, NodeError> {
        let volume_id = crate::validate::volume_id("volume_id", &r.volume_id)?;
        let staging_path = AbsPath::parse("staging_target_path", &r.staging_target_path)?;
        let (access, read_only) = capability(r.volume_capability.as_ref())?;
        let target = Target::from_context(&r.volume_context)?;
        Ok(Self {
            volume_id,
            staging_path,
            access,
            read_only,
            target,
        })
    }
}

/// NodePublishVolume, validated.
#[derive(Debug, Clone)]
pub struct PublishArgs {
    pub volume_id: VolumeId,
    pub staging_path: AbsPath,
    pub target_path: AbsPath,
    pub access: Access,
    pub read_only: bool,
}

impl PublishArgs {
    pub fn from_request(r: &csi::NodePublishVolumeRequest) -> Result<Self, NodeError> {
        let volume_id = crate::validate::volume_id("volume_id", &r.volume_id)?;
        // We claim STAGE_UNSTAGE_VOLUME, so the CO must pass the staging path.
        let staging_path = AbsPath::parse("staging_target_path", &r.staging_target_path)?;
        let target_path = AbsPath::parse("target_path", &r.target_path)?;
        if target_path == staging_path {
            return Err(NodeError::invalid(
                "target_path",
                "must differ from staging_target_path",
            ));
        }
        let (access, mode_ro) = capability(r.volume_capability.as_ref())?;
        Ok(Self {
            volume_id,
            staging_path,
            target_path,
            access,
            read_only: r.readonly || mode_ro,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const NQN: &str = "nqn.2000-02.com.mikrotik:pvc-1";

    #[test]
    fn target_defaults_follow_the_existing_driver() {
        let t = Target::from_context(&ctx(&[("nqn", NQN), ("nvmeAddress", "10.0.0.5")])).unwrap();
        assert_eq!(
            (t.port, t.ctrl_loss_tmo, t.reconnect_delay, t.keep_alive_tmo),
            (4420, -1, 5, None)
        );
    }

    #[test]
    fn emulated_capacity_takes_kubernetes_quantities() {
        let base = [("nqn", NQN), ("nvmeAddress", "10.0.0.5")];
        let t = Target::from_context(&ctx(&base)).unwrap();
        assert_eq!(t.capacity_hint, None, "absent: the fabric's default");
        for (v, bytes) in [
            ("1048576", 1u64 << 20),
            ("64Mi", 64 << 20),
            ("2Gi", 2 << 30),
            ("1G", 1_000_000_000),
            (" 5k ", 5_000),
        ] {
            let mut c = ctx(&base);
            c.insert("emulatedCapacity".into(), v.into());
            assert_eq!(
                Target::from_context(&c).unwrap().capacity_hint,
                Some(bytes),
                "{v}"
            );
        }
        for v in ["", "0", "-1", "1.5Gi", "1GB", "99999999999Ti", "Gi"] {
            let mut c = ctx(&base);
            c.insert("emulatedCapacity".into(), v.into());
            assert_eq!(
                invalid_field(Target::from_context(&c)),
                "volume_context.emulatedCapacity",
                "{v:?}"
            );
        }
    }

    #[test]
    fn rds_address_is_the_fallback_address_key() {
        let t = Target::from_context(&ctx(&[("nqn", NQN), ("rdsAddress", "fd00::5")])).unwrap();
        assert_eq!(t.address, "fd00::5".parse::<IpAddr>().unwrap());
    }

    fn invalid_field(r: Result<Target, NodeError>) -> String {
        match r {
            Err(NodeError::InvalidArgument { field, .. }) => field.to_owned(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_context_value_names_its_field() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("nvmeAddress", "10.0.0.5")], "volume_context.nqn"),
            (
                &[("nqn", ""), ("nvmeAddress", "10.0.0.5")],
                "volume_context.nqn",
            ),
            (
                &[("nqn", "nqn.bad"), ("nvmeAddress", "10.0.0.5")],
                "volume_context.nqn",
            ),
            (&[("nqn", NQN)], "volume_context.nvmeAddress"),
            (
                &[("nqn", NQN), ("nvmeAddress", "")],
                "volume_context.nvmeAddress",
            ),
            (
                &[("nqn", NQN), ("nvmeAddress", "rds.example.com")],
                "volume_context.nvmeAddress",
            ),
            (
                &[("nqn", NQN), ("nvmeAddress", "10.0.0.5"), ("nvmePort", "0")],
                "volume_context.nvmePort",
            ),
            (
                &[
                    ("nqn", NQN),
                    ("nvmeAddress", "10.0.0.5"),
                    ("nvmePort", "65536"),
                ],
                "volume_context.nvmePort",
            ),
            (
                &[("nqn", NQN), ("nvmeAddress", "10.0.0.5"), ("nvmePort", "")],
                "volume_context.nvmePort",
            ),
            (
                &[("nqn", NQN), ("nvmeAddress", "10.0.0.5"), ("nvmePort", "x")],
                "volume_context.nvmePort",
            ),
            (
                &[
                    ("nqn", NQN),
                    ("nvmeAddress", "10.0.0.5"),
                    ("ctrlLossTmo", "-2"),
                ],
                "volume_context.ctrlLossTmo",
            ),
            (
                &[
                    ("nqn", NQN),
                    ("nvmeAddress", "10.0.0.5"),
                    ("reconnectDelay", "0"),
                ],
                "volume_context.reconnectDelay",
            ),
        ];
        for (c, field) in cases {
            assert_eq!(
                invalid_field(Target::from_context(&ctx(c))),
                *field,
                "context {c:?}"
            );
        }
    }

    #[test]
    fn paths_must_be_absolute_without_dotdot() {
        assert!(AbsPath::parse("p", "/var/lib/kubelet/x").is_ok());
        assert_eq!(
            AbsPath::parse("p", "/a//b/./c/").unwrap().as_path(),
            Path::new("/a/b/c")
        );
        for bad in ["", "relative/x", "/a/../b", "/..", "/", "/a\0b"] {
            assert!(
                AbsPath::parse("p", bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn a_bad_volume_id_names_its_field() {
        match volume_id("volume_id", "../x") {
            Err(NodeError::InvalidArgument { field, .. }) => assert_eq!(field, "volume_id"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn mount_cap(
        fs: &str,
        flags: &[&str],
        mode: csi::volume_capability::access_mode::Mode,
    ) -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
            access_type: Some(csi::volume_capability::AccessType::Mount(
                csi::volume_capability::MountVolume {
                    fs_type: fs.into(),
                    mount_flags: flags.iter().map(|s| s.to_string()).collect(),
                    volume_mount_group: String::new(),
                },
            )),
        }
    }

    #[test]
    fn capability_refuses_suid_dev_and_unknown_options() {
        use csi::volume_capability::access_mode::Mode;
        assert!(capability(Some(&mount_cap(
            "ext4",
            &["noatime"],
            Mode::SingleNodeWriter
        )))
        .is_ok());
        for bad in [
            &["suid"][..],
            &["dev"],
            &["nosuid,dev"],
            &["bind"],
            &["remount"],
            &["shared"],
        ] {
            assert!(
                capability(Some(&mount_cap("ext4", bad, Mode::SingleNodeWriter))).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn capability_checks_fs_type_and_mode() {
        use csi::volume_capability::access_mode::Mode;
        assert!(capability(Some(&mount_cap("btrfs", &[], Mode::SingleNodeWriter))).is_err());
        assert!(capability(Some(&mount_cap("ext4", &[], Mode::MultiNodeMultiWriter))).is_err());
        assert!(capability(Some(&mount_cap("ext4", &[], Mode::Unknown))).is_err());
        let (a, ro) = capability(Some(&mount_cap("", &[], Mode::SingleNodeReaderOnly))).unwrap();
        assert_eq!(
            a,
            Access::Mount {
                fs_type: FsType::Ext4,
                flags: vec![]
            }
        );
        assert!(ro);
        assert!(capability(None).is_err());
    }
}
