//! Reading NVMe controllers from `<sys>/class/nvme`, and the small parsers the fabric needs.
//!
//! Both fabrics read controllers through this module, so the emulated tree is read by the same
//! code that reads a real kernel's.

use std::io;
use std::net::IpAddr;
use std::path::Path;

use crate::api::{ControllerInfo, ControllerState, FabricError};

/// `<sys>/class/nvme`.
pub fn class_nvme(sys_root: &Path) -> std::path::PathBuf {
    sys_root.join("class").join("nvme")
}

/// True for a controller kernel name `nvmeN` (and nothing that could walk out of the class
/// directory).
pub fn is_controller_name(name: &str) -> bool {
    name.strip_prefix("nvme")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The instance number of `nvmeN`.
pub fn controller_instance(name: &str) -> Option<u32> {
    if is_controller_name(name) {
        name[4..].parse().ok()
    } else {
        None
    }
}

/// Parse the `/dev/nvme-fabrics` reply `instance=N,cntlid=M` into `(N, M)`.
pub fn parse_connect_reply(reply: &str) -> Result<(u32, u16), FabricError> {
    let bad = || FabricError::Parse {
        what: "nvme-fabrics reply",
        value: reply.to_owned(),
    };
    let mut instance = None;
    let mut cntlid = None;
    for part in reply.trim().split(',') {
        let (k, v) = part.split_once('=').ok_or_else(bad)?;
        match k {
            "instance" => instance = Some(v.parse().map_err(|_| bad())?),
            "cntlid" => cntlid = Some(v.parse().map_err(|_| bad())?),
            _ => {}
        }
    }
    Ok((instance.ok_or_else(bad)?, cntlid.ok_or_else(bad)?))
}

/// `traddr` and `trsvcid` from an `address` attribute (`traddr=10.0.0.5,trsvcid=4420`, newer
/// kernels append `,src_addr=…`). `None` when either is missing or malformed.
pub fn parse_address(address: &str) -> Option<(IpAddr, u16)> {
    let mut traddr = None;
    let mut trsvcid = None;
    for part in address.trim().split(',') {
        match part.split_once('=') {
            Some(("traddr", v)) => traddr = v.parse().ok(),
            Some(("trsvcid", v)) => trsvcid = v.parse().ok(),
            _ => {}
        }
    }
    Some((traddr?, trsvcid?))
}

/// Read one attribute, trimmed. `Ok(None)` when it does not exist (the controller is going away
/// or the kernel does not have that attribute).
pub fn read_attr(dir: &Path, attr: &str) -> Result<Option<String>, FabricError> {
    let path = dir.join(attr);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim_end_matches('\n').to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FabricError::io("read", &path, e)),
    }
}

/// One controller, or `None` when it vanished while being read.
pub fn read_controller(sys_root: &Path, name: &str) -> Result<Option<ControllerInfo>, FabricError> {
    if !is_controller_name(name) {
        return Err(FabricError::NoSuchController(name.to_owned()));
    }
    let dir = class_nvme(sys_root).join(name);
    let (Some(subsysnqn), Some(state)) = (read_attr(&dir, "subsysnqn")?, read_attr(&dir, "state")?)
    else {
        return Ok(None);
    };
    Ok(Some(ControllerInfo {
        name: name.to_owned(),
        subsysnqn,
        transport: read_attr(&dir, "transport")?.unwrap_or_default(),
        address: read_attr(&dir, "address")?.unwrap_or_default(),
        state: ControllerState::parse(&state),
    }))
}

/// Every controller under `<sys>/class/nvme`, sorted by instance. A missing class directory
/// (no `nvme_core` loaded) is an empty list.
pub fn scan_controllers(sys_root: &Path) -> Result<Vec<ControllerInfo>, FabricError> {
    let dir = class_nvme(sys_root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(FabricError::io("read_dir", &dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| FabricError::io("read_dir", &dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_controller_name(&name) {
            continue;
        }
        if let Some(info) = read_controller(sys_root, &name)? {
            out.push(info);
        }
    }
    out.sort_by_key(|c| controller_instance(&c.name));
    Ok(out)
}

/// The controller serving `nqn` over `transport` at `traddr:trsvcid` that a connect could
/// reuse (any state but deleting).
pub fn find_controller<'a>(
    controllers: &'a [ControllerInfo],
    nqn: &str,
    transport: &str,
    traddr: IpAddr,
    trsvcid: u16,
) -> Option<&'a ControllerInfo> {
    controllers.iter().find(|c| {
        c.subsysnqn == nqn
            && c.transport == transport
            && !c.state.is_deleting()
            && parse_address(&c.address) == Some((traddr, trsvcid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_reply_parses_instance_and_cntlid() {
        assert_eq!(
            parse_connect_reply("instance=3,cntlid=17\n").unwrap(),
            (3, 17)
        );
        for bad in [
            "",
            "instance=3",
            "cntlid=1",
            "instance=x,cntlid=1",
            "garbage",
        ] {
            assert!(parse_connect_reply(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn address_parses_with_and_without_source_address() {
        let v4 = "10.0.0.5".parse().unwrap();
        assert_eq!(
            parse_address("traddr=10.0.0.5,trsvcid=4420\n"),
            Some((v4, 4420))
        );
        assert_eq!(
            parse_address("traddr=10.0.0.5,trsvcid=4420,src_addr=10.0.0.9"),
            Some((v4, 4420))
        );
        assert_eq!(
            parse_address("traddr=fd00:0::5,trsvcid=4420"),
            Some(("fd00::5".parse().unwrap(), 4420)),
            "IPv6 spellings must compare as addresses"
        );
        assert_eq!(parse_address("trsvcid=4420"), None);
        assert_eq!(parse_address(""), None);
    }

    #[test]
    fn controller_names_are_strict() {
        assert!(is_controller_name("nvme0"));
        assert!(is_controller_name("nvme12"));
        for bad in [
            "nvme",
            "nvme0n1",
            "nvme-subsys0",
            "../nvme0",
            "nvme1/..",
            "loop0",
        ] {
            assert!(!is_controller_name(bad), "{bad:?} is not a controller name");
        }
        assert_eq!(controller_instance("nvme12"), Some(12));
    }
}
