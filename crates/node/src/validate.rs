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
                format!("{s:?} is not an absolute path"),
            ));
        }
        let mut out = PathBuf::from("/");
        for c in p.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => out.push(n),
                Component::ParentDir => {
                    return Err(NodeError::invalid(field, format!("{s:?} contains '..'")))
                }
                Component::Prefix(_) => {
                    return Err(NodeError::invalid(
                        field,
                        format!("{s:?} is not a Unix path"),
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
                format!("filesystem {other:?} is not supported (ext4, xfs)"),
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
const ALLOWED_MOUNT_FLAGS: &[&str] = &[
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
    "nobarrier",
    "barrier",
    "noquota",
    "quota",
    "usrquota",
    "grpquota",
    "prjquota",
    "user_xattr",
    "nouser_xattr",
    "acl",
    "noacl",
    "inode64",
    "largeio",
    "nouuid",
];
const ALLOWED_VALUED_MOUNT_FLAGS: &[&str] = &[
    "data=",
    "commit=",
    "errors=",
    "logbufs=",
    "logbsize=",
    "allocsize=",
];

fn check_mount_flags(flags: &[String]) -> Result<Vec<String>, NodeError> {
    const FIELD: &str = "volume_capability.mount.mount_flags";
    let mut out = Vec::with_capacity(flags.len());
    for f in flags {
        for opt in f.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            if matches!(opt, "suid" | "dev") {
                return Err(NodeError::invalid(
                    FIELD,
                    format!("{opt:?} is refused: volumes are always mounted nosuid,nodev"),
                ));
            }
            let allowed = ALLOWED_MOUNT_FLAGS.contains(&opt)
                || ALLOWED_VALUED_MOUNT_FLAGS.iter().any(|p| {
                    opt.starts_with(p) && opt.len() > p.len() && !opt.contains(char::is_whitespace)
                });
            if !allowed {
                return Err(NodeError::invalid(
                    FIELD,
                    format!("mount option {opt:?} is not supported"),
                ));
            }
            out.push(opt.to_owned());
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
        Some(AccessType::Mount(m)) => Access::Mount {
            fs_type: FsType::parse("volume_capability.mount.fs_type", &m.fs_type)?,
            flags: check_mount_flags(&m.mount_flags)?,
        },
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
}

fn ctx_int<T: std::str::FromStr>(
    ctx: &HashMap<String, String>,
    key: &'static str,
    field: &'static str,
) -> Result<Option<T>, NodeError> {
    match ctx.get(key) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Err(NodeError::invalid(field, "is empty")),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| NodeError::invalid(field, format!("{v:?} is not a valid number"))),
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
        let address: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| NodeError::invalid(addr_key, format!("{addr:?} is not an IP address")))?;
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
        Ok(Self {
            nqn,
            address,
            port,
            ctrl_loss_tmo,
            reconnect_delay,
            keep_alive_tmo,
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
