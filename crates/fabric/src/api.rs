//! The fabric seam: request/outcome types, the error enum and the [`Fabric`] trait.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rds_types::Nqn;

use crate::loopdev::LoopError;

/// NVMe-oF transports this plugin speaks. Only TCP today; the enum keeps the options line honest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
}

impl Transport {
    /// The kernel's spelling (`transport=` option, `transport` sysfs attribute, `NVME_TRTYPE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything `/dev/nvme-fabrics` needs to connect one subsystem over one path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectRequest {
    pub nqn: Nqn,
    pub transport: Transport,
    pub traddr: IpAddr,
    pub trsvcid: u16,
    pub host_nqn: Option<String>,
    pub host_id: Option<String>,
    /// Seconds before a lost controller is deleted; `-1` reconnects forever.
    pub ctrl_loss_tmo: Option<i32>,
    pub reconnect_delay: Option<u32>,
    pub keep_alive_tmo: Option<u32>,
    /// The namespace size the volume context declares. Never on the options line (the kernel
    /// asks the target); an emulated fabric that creates its targets on first connect sizes
    /// them with it.
    #[serde(default)]
    pub capacity_hint: Option<u64>,
}

impl ConnectRequest {
    /// A TCP request with every optional field left to the kernel's default.
    pub fn tcp(nqn: Nqn, traddr: IpAddr, trsvcid: u16) -> Self {
        Self {
            nqn,
            transport: Transport::Tcp,
            traddr,
            trsvcid,
            host_nqn: None,
            host_id: None,
            ctrl_loss_tmo: None,
            reconnect_delay: None,
            keep_alive_tmo: None,
            capacity_hint: None,
        }
    }

    /// The one line written to `/dev/nvme-fabrics`, in the order nvme-cli uses:
    /// `transport=tcp,traddr=10.0.0.5,trsvcid=4420,nqn=…,hostnqn=…,hostid=…,ctrl_loss_tmo=-1,reconnect_delay=5[,keep_alive_tmo=N]`.
    ///
    /// Free-text values (host NQN, host id) are refused when they contain `,`, `=` or
    /// whitespace: the kernel splits on those, so such a value could smuggle in other options.
    pub fn to_options_line(&self) -> Result<String, FabricError> {
        let mut line = format!(
            "transport={},traddr={},trsvcid={},nqn={}",
            self.transport, self.traddr, self.trsvcid, self.nqn
        );
        for (key, value) in [("hostnqn", &self.host_nqn), ("hostid", &self.host_id)] {
            if let Some(v) = value {
                if v.is_empty()
                    || v.bytes().any(|b| {
                        b == b',' || b == b'=' || b.is_ascii_whitespace() || b.is_ascii_control()
                    })
                {
                    return Err(FabricError::InvalidOption {
                        key,
                        value: v.clone(),
                    });
                }
                line.push_str(&format!(",{key}={v}"));
            }
        }
        if let Some(v) = self.ctrl_loss_tmo {
            line.push_str(&format!(",ctrl_loss_tmo={v}"));
        }
        if let Some(v) = self.reconnect_delay {
            line.push_str(&format!(",reconnect_delay={v}"));
        }
        if let Some(v) = self.keep_alive_tmo {
            line.push_str(&format!(",keep_alive_tmo={v}"));
        }
        Ok(line)
    }

    /// The `address` sysfs attribute a controller for this request shows
    /// (`traddr=…,trsvcid=…`).
    pub fn address(&self) -> String {
        format!("traddr={},trsvcid={}", self.traddr, self.trsvcid)
    }
}

/// What a connect produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOutcome {
    /// The controller's kernel name, `nvmeN`.
    pub controller: String,
    /// True when a live controller for the same subsystem and address already existed and was
    /// reused (repeat connects are idempotent).
    pub already_connected: bool,
}

/// NVMe controller states as `/sys/class/nvme/nvmeN/state` prints them: the shared vocabulary.
pub use rds_types::ControllerState;

/// One controller as sysfs describes it. `subsysnqn` stays a string: controllers outside this
/// plugin (discovery controllers, boot volumes) need not follow the volume NQN rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo {
    /// `nvmeN`.
    pub name: String,
    pub subsysnqn: String,
    pub transport: String,
    /// The raw `address` attribute, e.g. `traddr=10.0.0.5,trsvcid=4420`.
    pub address: String,
    pub state: ControllerState,
}

/// Errors of the fabric layer.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel reported `EALREADY` but no controller for the subsystem and address could be
    /// found afterwards (it was deleted in between).
    #[error("{nqn} at {address} is already connected, but its controller could not be found")]
    AlreadyConnected { nqn: Nqn, address: String },
    /// The kernel refused the connect (target unreachable, refused, bad options).
    #[error("connect to {nqn} at {address} refused: {source}")]
    Refused {
        nqn: Nqn,
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {what} {value:?}")]
    Parse { what: &'static str, value: String },
    /// The guard: nothing outside the managed NQN prefix is ever disconnected.
    #[error(
        "{what}: {subsysnqn:?} is outside the managed prefix {prefix:?}, refusing to touch it"
    )]
    NotManaged {
        /// What was refused: `connect` or `disconnect nvmeN`.
        what: String,
        subsysnqn: String,
        prefix: String,
    },
    #[error("no controller named {0:?}")]
    NoSuchController(String),
    #[error("invalid {key} option value {value:?}")]
    InvalidOption { key: &'static str, value: String },
    #[error("no emulated target {0}")]
    UnknownTarget(Nqn),
    #[error("{0} is not connected")]
    NotConnected(Nqn),
    #[error("emulated target {0} already exists")]
    TargetExists(Nqn),
    #[error("loop device: {0}")]
    Loop(#[from] LoopError),
    #[error("injecting a udev event for {devpath}: {source}")]
    Uevent {
        devpath: String,
        #[source]
        source: io::Error,
    },
}

impl FabricError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// The fabric seam. Methods block (device writes, sysfs reads that can stall on a dying
/// controller): run them with `spawn_blocking` and a deadline.
pub trait Fabric: Send + Sync {
    /// Connect, or return the existing live controller for the same subsystem and address.
    fn connect(&self, req: &ConnectRequest) -> Result<ConnectOutcome, FabricError>;
    /// Delete controller `nvmeN`. Refused with [`FabricError::NotManaged`] unless its
    /// subsystem NQN is covered by the managed prefix.
    fn disconnect(&self, controller: &str) -> Result<(), FabricError>;
    /// Every controller currently in sysfs.
    fn controllers(&self) -> Result<Vec<ControllerInfo>, FabricError>;
    /// Ask controller `nvmeN` to scan its namespaces again (`rescan_controller`): the kernel
    /// adds a namespace the target announced while nobody listened (after a reconnect it
    /// drops a namespace whose identifiers changed and only a scan brings the new one in).
    /// Non-destructive; refused outside the managed prefix like every other write.
    fn rescan(&self, controller: &str) -> Result<(), FabricError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> ConnectRequest {
        ConnectRequest::tcp(
            Nqn::parse("nqn.2000-02.com.mikrotik:pvc-1").unwrap(),
            "10.0.0.5".parse().unwrap(),
            4420,
        )
    }

    #[test]
    fn options_line_matches_the_kernel_format_with_every_field() {
        let mut r = req();
        r.host_nqn =
            Some("nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427".into());
        r.host_id = Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427".into());
        r.ctrl_loss_tmo = Some(-1);
        r.reconnect_delay = Some(5);
        r.keep_alive_tmo = Some(30);
        assert_eq!(
            r.to_options_line().unwrap(),
            "transport=tcp,traddr=10.0.0.5,trsvcid=4420,nqn=nqn.2000-02.com.mikrotik:pvc-1,\
             hostnqn=nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427,\
             hostid=1b4e28ba-2fa1-11d2-883f-0016d3cca427,ctrl_loss_tmo=-1,reconnect_delay=5,keep_alive_tmo=30"
        );
    }

    #[test]
    fn options_line_leaves_out_unset_fields() {
        assert_eq!(
            req().to_options_line().unwrap(),
            "transport=tcp,traddr=10.0.0.5,trsvcid=4420,nqn=nqn.2000-02.com.mikrotik:pvc-1"
        );
    }

    #[test]
    fn options_line_writes_ipv6_addresses_without_brackets() {
        let mut r = req();
        r.traddr = "fd00::5".parse().unwrap();
        assert!(
            r.to_options_line()
                .unwrap()
                .starts_with("transport=tcp,traddr=fd00::5,trsvcid=4420,"),
            "the kernel expects a bare IPv6 literal in traddr"
        );
    }

    #[test]
    fn options_line_refuses_values_that_would_inject_options() {
        for bad in [
            "x,nqn=nqn.2000-02.com.other:boot",
            "a=b",
            "has space",
            "",
            "line\n",
        ] {
            let mut r = req();
            r.host_nqn = Some(bad.into());
            assert!(
                matches!(
                    r.to_options_line(),
                    Err(FabricError::InvalidOption { key: "hostnqn", .. })
                ),
                "host NQN {bad:?} must be refused"
            );
        }
    }
}
