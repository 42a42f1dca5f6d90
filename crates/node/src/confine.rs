//! Kubelet's directory, the only place the node service creates, mounts on, unmounts or
//! removes anything.
//!
//! A path from a request must be where kubelet puts that kind of path, as it lays them out:
//! - staging paths under `plugins/kubernetes.io/csi/` (`<driver>/<hash>/globalmount`,
//!   `pv/<pv>/globalmount`, `volumeDevices/staging/<pv>`), never under the block publish
//!   directory;
//! - publish targets under `pods/<pod-uid>/volumes/` or
//!   `plugins/kubernetes.io/csi/volumeDevices/publish/`.
//!
//! Anything else is InvalidArgument before any action. The path is then opened beneath the
//! kubelet directory without following a symlink ([`rds_hostops::beneath`]); a symlink in it
//! is FailedPrecondition and nothing is touched.

use std::path::{Component, Path};

use rds_hostops::beneath::{BeneathError, Handle, Root};

use crate::error::NodeError;
use crate::validate::AbsPath;

/// Kubelet's directory, opened once at start-up.
#[derive(Debug)]
pub struct KubeletDir {
    root: Root,
}

/// Which kind of kubelet path a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Staging,
    Target,
    /// Either (NodeGetVolumeStats, NodeExpandVolume take both).
    Volume,
}

fn names(rel: &Path) -> Vec<&str> {
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(n) => n.to_str(),
            _ => None,
        })
        .collect()
}

/// Whether `rel` (relative to the kubelet directory) is where kubelet puts a path of `kind`.
pub fn layout_allows(kind: PathKind, rel: &Path) -> bool {
    let n = names(rel);
    let csi = n.len() >= 4 && n[..3] == ["plugins", "kubernetes.io", "csi"];
    let devices = csi && n[3] == "volumeDevices";
    let under_block_publish = devices && n.get(4) == Some(&"publish");
    // volumeDevices/publish/<pv>/<pod-uid>
    let block_publish = under_block_publish && n.len() >= 7;
    // pods/<uid>/volumes/<plugin>/<pv>[/mount]
    let pod_volume = n.len() >= 5 && n[0] == "pods" && n[2] == "volumes";
    // <driver>/<hash>/globalmount, pv/<pv>/globalmount, volumeDevices/staging/<pv>: never a
    // directory that holds other volumes' paths.
    let staging = csi && n.len() >= 5 && !under_block_publish && !(devices && n.len() < 6);
    let target = pod_volume || block_publish;
    match kind {
        PathKind::Staging => staging,
        PathKind::Target => target,
        PathKind::Volume => staging || target,
    }
}

/// A request path refused by the confinement: a path elsewhere is the caller's mistake
/// (InvalidArgument); a symlink or a non-directory where one is needed is the node's state
/// (FailedPrecondition); an absent path is NotFound.
pub fn refused(field: &'static str, e: BeneathError) -> NodeError {
    match e {
        BeneathError::Outside { .. } => NodeError::invalid(field, e.to_string()),
        BeneathError::Symlink { .. } | BeneathError::NotADirectory { .. } => {
            NodeError::FailedPrecondition(e.to_string())
        }
        BeneathError::NotFound { .. } => NodeError::NotFound(e.to_string()),
        BeneathError::Io { .. } => NodeError::internal("resolving a kubelet path", e),
    }
}

/// Kubelet's global map path of a raw block volume in a pod,
/// `plugins/kubernetes.io/csi/volumeDevices/<pv>/dev/<pod-uid>` (where kubelet asks
/// NodeGetVolumeStats), to the publish target it maps,
/// `plugins/kubernetes.io/csi/volumeDevices/publish/<pv>/<pod-uid>`. `None` for any other path.
pub fn block_publish_of_map_path(rel: &Path) -> Option<std::path::PathBuf> {
    let n = names(rel);
    match n.as_slice() {
        ["plugins", "kubernetes.io", "csi", "volumeDevices", pv, "dev", pod]
            if *pv != "publish" && *pv != "staging" =>
        {
            Some(
                [
                    "plugins",
                    "kubernetes.io",
                    "csi",
                    "volumeDevices",
                    "publish",
                    pv,
                    pod,
                ]
                .iter()
                .collect(),
            )
        }
        _ => None,
    }
}

impl KubeletDir {
    /// The publish target that kubelet's map path `p` stands for (see
    /// [`block_publish_of_map_path`]), as an absolute path beneath the kubelet directory.
    pub fn block_publish_of(&self, p: &Path) -> Option<std::path::PathBuf> {
        let rel = self.root.relative(p).ok()?;
        block_publish_of_map_path(rel).map(|r| self.root.path().join(r))
    }

    /// Open kubelet's directory (it must exist).
    pub fn open(dir: &Path) -> Result<Self, NodeError> {
        let root = Root::open(dir).map_err(|e| {
            NodeError::FailedPrecondition(format!("the kubelet directory cannot be used: {e}"))
        })?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    /// Create `p` (and missing parents) beneath the kubelet directory without following a
    /// symlink; the directory opened, and whether this call created it.
    pub fn mkdir(&self, field: &'static str, p: &Path) -> Result<(Handle, bool), NodeError> {
        self.root.mkdir_all(p).map_err(|e| refused(field, e))
    }

    /// Open the existing directory `p` without following a symlink.
    pub fn dir(&self, field: &'static str, p: &Path) -> Result<Handle, NodeError> {
        self.root.dir(p).map_err(|e| refused(field, e))
    }

    /// The parent of `p`, opened without following a symlink, and `p`'s last component:
    /// `parent.child_proc_path(&name)` names `p` for calls that do not follow it (unmount,
    /// rmdir, unlink, mknod).
    pub fn parent(
        &self,
        field: &'static str,
        p: &Path,
    ) -> Result<(Handle, std::ffi::OsString), NodeError> {
        self.root.parent(p).map_err(|e| refused(field, e))
    }

    /// The path is beneath the kubelet directory where kubelet puts a path of `kind`; the
    /// error names `field` and says where it must be.
    pub fn check(&self, field: &'static str, kind: PathKind, p: &AbsPath) -> Result<(), NodeError> {
        let rel = self
            .root
            .relative(p.as_path())
            .map_err(|e| refused(field, e))?;
        if layout_allows(kind, rel) {
            return Ok(());
        }
        let k = self.root.path().display();
        let want = match kind {
            PathKind::Staging => format!("under {k}/plugins/kubernetes.io/csi/"),
            PathKind::Target => format!(
                "under {k}/pods/<pod>/volumes/ or {k}/plugins/kubernetes.io/csi/volumeDevices/publish/"
            ),
            PathKind::Volume => format!("a staging path or a publish target under {k}"),
        };
        Err(NodeError::invalid(
            field,
            format!("{p} is not where kubelet puts it: it must be {want}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_path_names_its_block_publish() {
        assert_eq!(
            block_publish_of_map_path(Path::new(
                "plugins/kubernetes.io/csi/volumeDevices/pvc-1/dev/1234-abcd"
            )),
            Some("plugins/kubernetes.io/csi/volumeDevices/publish/pvc-1/1234-abcd".into())
        );
        for other in [
            "plugins/kubernetes.io/csi/volumeDevices/publish/pvc-1/1234",
            "plugins/kubernetes.io/csi/volumeDevices/pvc-1/dev",
            "plugins/kubernetes.io/csi/volumeDevices/pvc-1/dev/a/b",
            "pods/1234/volumes/kubernetes.io~csi/pvc-1/mount",
        ] {
            assert_eq!(block_publish_of_map_path(Path::new(other)), None, "{other}");
        }
    }

    #[test]
    fn kubelets_layout() {
        let ok_staging = [
            "plugins/kubernetes.io/csi/rds.csi.srvlab.io/0a1b2c/globalmount",
            "plugins/kubernetes.io/csi/pv/pvc-1/globalmount",
            "plugins/kubernetes.io/csi/volumeDevices/staging/pvc-1",
        ];
        let ok_target = [
            "pods/1234-abcd/volumes/kubernetes.io~csi/pvc-1/mount",
            "plugins/kubernetes.io/csi/volumeDevices/publish/pvc-1/1234-abcd",
        ];
        for s in ok_staging {
            assert!(layout_allows(PathKind::Staging, Path::new(s)), "{s}");
            assert!(!layout_allows(PathKind::Target, Path::new(s)), "{s}");
        }
        for t in ok_target {
            assert!(layout_allows(PathKind::Target, Path::new(t)), "{t}");
            assert!(!layout_allows(PathKind::Staging, Path::new(t)), "{t}");
        }
        for bad in [
            "",
            "plugins",
            "plugins/kubernetes.io/csi",
            "plugins/kubernetes.io/csi/volumeDevices",
            "pods/1234/etc",
            "pods/1234/volumes/kubernetes.io~csi",
            "plugins/kubernetes.io/csi/rds.csi.srvlab.io",
            "plugins/kubernetes.io/csi/volumeDevices/publish",
            "plugins/kubernetes.io/csi/volumeDevices/publish/pvc-1",
            "plugins/kubernetes.io/csi/volumeDevices/staging",
            "pods",
            "plugins_registry/x",
            "etc/passwd",
        ] {
            assert!(!layout_allows(PathKind::Volume, Path::new(bad)), "{bad:?}");
        }
    }
}
