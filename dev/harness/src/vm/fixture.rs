//! What the kernel shows of an NVMe/TCP connection, recorded in the real-kernel tier and
//! committed as a fixture (`dev/harness/fixtures/kernel-6.12.json`), so that a host test can
//! hold the emulated fabric to it.
//!
//! Everything is kept as a *shape*: names and values with their numbers, UUIDs and long hex
//! runs replaced by placeholders (`nvme0n1` and `nvme3n1` are both `nvme#n#`), because what
//! must match is the form the product parses, not one run's numbers.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Attributes the product reads, per object kind: a difference there is an error, anything
/// else is reported.
pub const READ_ATTRIBUTES: &[(&str, &[&str])] = &[
    (
        "controller",
        &[
            "state",
            "subsysnqn",
            "transport",
            "address",
            "cntlid",
            "dev",
        ],
    ),
    ("subsystem", &["subsysnqn"]),
    (
        "head",
        // `inflight` and `stat` are read through `<sys>/dev/block/M:m`, which the emulation
        // points at the real loop device.
        &["dev", "diskseq", "size", "nsid", "uuid", "nguid", "wwid"],
    ),
    ("path", &["nsid", "uuid", "nguid", "wwid"]),
];

/// Event properties the product reads.
pub const READ_KEYS: &[&str] = &[
    "ACTION",
    "DEVPATH",
    "SUBSYSTEM",
    "MAJOR",
    "MINOR",
    "DEVNAME",
    "DEVTYPE",
    "DISKSEQ",
    "DISK_MEDIA_CHANGE",
    "NVME_EVENT",
];

/// Property values kept verbatim (shaped) in an event, beyond the key set.
const KEPT_VALUES: &[&str] = &["NVME_EVENT", "DEVTYPE", "NVME_TRTYPE", "DISK_MEDIA_CHANGE"];

/// The subsystems whose events the product consumes (the kernel also sends `bdi`, `hwmon`,
/// `nvme-generic` events, which the emulation does not model).
pub const EVENT_SUBSYSTEMS: &[&str] = &["nvme", "nvme-subsystem", "block"];

/// One sysfs object: where it lives and its attributes' shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub devpath: String,
    /// `true` when the object has a `dev` attribute (a device node exists).
    pub has_dev: bool,
    pub attributes: BTreeMap<String, String>,
}

/// One event, shaped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventShape {
    pub action: String,
    pub subsystem: String,
    pub name: String,
    pub keys: Vec<String>,
    pub values: BTreeMap<String, String>,
}

/// What one step made the kernel say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub events: Vec<EventShape>,
    /// NVMe kernel log lines, shaped.
    pub kmsg: Vec<String>,
}

/// The whole fixture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fixture {
    /// `uname -r` of the kernel recorded (informational).
    pub kernel: String,
    /// `controller`, `subsystem`, `head`, `path`, and `controller_after_loss` etc.
    pub objects: BTreeMap<String, Object>,
    /// The [`STEPS`].
    pub steps: BTreeMap<String, Step>,
    /// How long after the unexport the kernel deleted the controller (informational, not
    /// compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unexport_deleted_after_ms: Option<u64>,
}

/// The steps, in the order the recording runs them.
pub const STEPS: &[&str] = &[
    "connect",
    "port_lost",
    "port_restored",
    "deleted",
    "reconnected",
    "restored_replaced",
    "rescanned",
    "disconnected",
    "unexported",
];

/// Replace UUIDs, hex runs of 16 or more and decimal runs by placeholders, and runs of blanks
/// by one space.
pub fn shape(value: &str) -> String {
    let b = value.as_bytes();
    let mut out = String::with_capacity(value.len());
    let mut i = 0;
    let is_hex = |c: u8| c.is_ascii_hexdigit();
    while i < b.len() {
        // UUID: 8-4-4-4-12 hex.
        if b.len() - i >= 36 {
            let cand = &b[i..i + 36];
            let ok = cand.iter().enumerate().all(|(k, &c)| match k {
                8 | 13 | 18 | 23 => c == b'-',
                _ => is_hex(c),
            });
            if ok {
                out.push_str("<uuid>");
                i += 36;
                continue;
            }
        }
        let run = b[i..].iter().take_while(|&&c| is_hex(c)).count();
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        let word_start = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        if run >= 16 && word_start {
            out.push_str("<hex>");
            i += run;
        } else if digits > 0 {
            out.push('#');
            i += digits;
        } else if b[i] == b' ' || b[i] == b'\t' {
            // Column padding (`stat`, `inflight`) widens and narrows with the numbers.
            out.push(' ');
            i += b[i..]
                .iter()
                .take_while(|&&c| c == b' ' || c == b'\t')
                .count();
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Read every readable attribute of one sysfs directory (not recursing), shaped.
pub fn record_object(sys_root: &Path, dir: &Path) -> std::io::Result<Object> {
    let real = std::fs::canonicalize(dir)?;
    let sys = std::fs::canonicalize(sys_root)?;
    let devpath = real
        .strip_prefix(&sys)
        .map(|p| format!("/{}", p.display()))
        .unwrap_or_else(|_| real.display().to_string());
    let mut attributes = BTreeMap::new();
    for e in std::fs::read_dir(&real)? {
        let e = e?;
        let ft = e.file_type()?;
        if !ft.is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        let value = match std::fs::read_to_string(e.path()) {
            Ok(v) => {
                let first = v.lines().next().unwrap_or("").trim();
                shape(&first.chars().take(200).collect::<String>())
            }
            Err(_) => "<unreadable>".to_owned(),
        };
        attributes.insert(name, value);
    }
    Ok(Object {
        devpath: shape(&devpath),
        has_dev: attributes.contains_key("dev"),
        attributes,
    })
}

/// Shape one event given as properties (kernel or udev), or `None` for subsystems the
/// product does not consume.
pub fn shape_event(props: &[(&str, &str)]) -> Option<EventShape> {
    let get = |k: &str| props.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let subsystem = get("SUBSYSTEM")?;
    if !EVENT_SUBSYSTEMS.contains(&subsystem) {
        return None;
    }
    let devpath = get("DEVPATH").unwrap_or("");
    let name = devpath.rsplit('/').next().unwrap_or("");
    let mut keys: Vec<String> = props
        .iter()
        .map(|(k, _)| (*k).to_owned())
        .filter(|k| k != "SEQNUM")
        .collect();
    keys.sort();
    keys.dedup();
    let values = props
        .iter()
        .filter(|(k, _)| KEPT_VALUES.contains(k))
        .map(|(k, v)| ((*k).to_owned(), shape(v)))
        .collect();
    Some(EventShape {
        action: get("ACTION").unwrap_or("").to_owned(),
        subsystem: subsystem.to_owned(),
        name: shape(name),
        keys,
        values,
    })
}

/// Shape a line of the NVMe host's kernel log (`nvme nvme0: ...`), or `None` for other
/// lines (the target's `nvmet` lines included).
pub fn shape_kmsg(line: &str) -> Option<String> {
    line.starts_with("nvme nvme").then(|| shape(line))
}

/// One way the emulation differs from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The product reads what differs: the emulation must be fixed.
    pub matters: bool,
    pub what: String,
}

fn read_by_product(kind: &str, attr: &str) -> bool {
    let kind = kind.split('_').next().unwrap_or(kind);
    READ_ATTRIBUTES
        .iter()
        .any(|(k, attrs)| *k == kind && attrs.contains(&attr))
}

/// Every difference between the kernel's fixture and the emulation's, for the objects and
/// steps both have.
pub fn compare(kernel: &Fixture, emulated: &Fixture) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut diff = |matters: bool, what: String| out.push(Difference { matters, what });
    for (kind, k) in &kernel.objects {
        let Some(e) = emulated.objects.get(kind) else {
            diff(true, format!("object {kind}: the emulation has none"));
            continue;
        };
        if k.devpath != e.devpath {
            diff(
                true,
                format!(
                    "object {kind}: devpath {} (kernel {})",
                    e.devpath, k.devpath
                ),
            );
        }
        if k.has_dev != e.has_dev {
            diff(
                true,
                format!(
                    "object {kind}: has_dev {} (kernel {})",
                    e.has_dev, k.has_dev
                ),
            );
        }
        for (attr, kv) in &k.attributes {
            match e.attributes.get(attr) {
                None => diff(
                    read_by_product(kind, attr),
                    format!("object {kind}: no attribute {attr} (kernel {kv:?})"),
                ),
                Some(ev) if ev != kv => diff(
                    read_by_product(kind, attr),
                    format!("object {kind}: {attr} = {ev:?} (kernel {kv:?})"),
                ),
                Some(_) => {}
            }
        }
        for attr in e.attributes.keys() {
            if !k.attributes.contains_key(attr) {
                diff(
                    true,
                    format!("object {kind}: attribute {attr} that the kernel does not have"),
                );
            }
        }
    }
    for (name, ks) in &kernel.steps {
        let Some(es) = emulated.steps.get(name) else {
            diff(true, format!("step {name}: the emulation did not run it"));
            continue;
        };
        let k_seq: Vec<_> = ks
            .events
            .iter()
            .map(|e| (&e.action, &e.subsystem, &e.name))
            .collect();
        let e_seq: Vec<_> = es
            .events
            .iter()
            .map(|e| (&e.action, &e.subsystem, &e.name))
            .collect();
        if k_seq != e_seq {
            diff(
                true,
                format!("step {name}: events {e_seq:?} (kernel {k_seq:?})"),
            );
            continue;
        }
        for (k, e) in ks.events.iter().zip(&es.events) {
            let label = format!("step {name}: {} {} {}", k.action, k.subsystem, k.name);
            for key in &e.keys {
                if !k.keys.contains(key) {
                    diff(true, format!("{label}: key {key} the kernel does not send"));
                }
            }
            for key in &k.keys {
                if !e.keys.contains(key) {
                    diff(
                        READ_KEYS.contains(&key.as_str()),
                        format!("{label}: no key {key}"),
                    );
                }
            }
            if k.values != e.values {
                diff(
                    true,
                    format!("{label}: values {:?} (kernel {:?})", e.values, k.values),
                );
            }
        }
        if ks.kmsg != es.kmsg {
            diff(
                false,
                format!(
                    "step {name}: kernel log {:?} (kernel {:?})",
                    es.kmsg, ks.kmsg
                ),
            );
        }
    }
    out
}

/// Shape the events of one step (from a uevent recording).
pub fn step_of(events: &[rds_devices::uevent::Uevent], kmsg: &[String]) -> Step {
    Step {
        events: events
            .iter()
            .filter_map(|e| {
                let props: Vec<(&str, &str)> = e.props.iter().collect();
                shape_event(&props)
            })
            .collect(),
        kmsg: kmsg.iter().filter_map(|l| shape_kmsg(l)).collect(),
    }
}

/// Record the fixture on the real kernel (in the guest): connect a fresh subsystem through
/// the product's own [`rds_fabric::KernelFabric`] with `ctrl_loss_tmo=3`, lose and restore
/// the port, lose it past `ctrl_loss_tmo` (the kernel deletes the controller), connect
/// again, disconnect; the uevents and NVMe log lines of each step and the sysfs objects of a
/// connected controller.
pub async fn record_kernel(g: &super::guest::Guest) -> Result<Fixture, String> {
    use super::guest::{controllers, heads, wait_until, Guest, PORT_A};
    use rds_fabric::{ConnectRequest, Fabric, KernelFabric};
    use std::time::{Duration, Instant};

    let vol = "pvc-vm-fixture";
    let nqn = Guest::nqn(vol);
    g.target(vol)?;
    let managed = rds_types::ManagedPrefix::parse(crate::harness::MANAGED_PREFIX)
        .map_err(|e| e.to_string())?;
    let fabric = KernelFabric::new("/dev", "/sys", managed);
    let nqn_t = rds_types::Nqn::parse(&nqn).map_err(|e| e.to_string())?;
    let mut req = ConnectRequest::tcp(nqn_t, [127, 0, 0, 1].into(), PORT_A.1);
    req.ctrl_loss_tmo = Some(3);
    req.reconnect_delay = Some(1);
    let settle = Duration::from_millis(1500);
    let wait = Duration::from_secs(30);
    let mut f = Fixture {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        ..Fixture::default()
    };
    let take = |since: Instant| {
        let ev: Vec<_> = g
            .uevents
            .snapshot()
            .into_iter()
            .filter(|s| s.at >= since)
            .map(|s| s.value)
            .collect();
        let km: Vec<_> = g
            .kmsg
            .snapshot()
            .into_iter()
            .filter(|s| s.at >= since)
            .map(|s| s.value)
            .collect();
        step_of(&ev, &km)
    };
    let state = |nqn: &str| controllers(nqn).first().map(|c| c.state.clone());

    // connect
    let mark = Instant::now();
    let out = fabric.connect(&req).map_err(|e| format!("connect: {e}"))?;
    if !wait_until(wait, || !heads(&nqn).is_empty()).await {
        return Err("no namespace head after the connect".into());
    }
    tokio::time::sleep(settle).await;
    f.steps.insert("connect".into(), take(mark));
    let ctrl = out.controller;
    let cdir = Path::new("/sys/class/nvme").join(&ctrl);
    let head = heads(&nqn)
        .first()
        .map(|h| h.name.clone())
        .ok_or("no head")?;
    let hdir = Path::new("/sys/class/block").join(&head);
    let subsys = std::fs::canonicalize(&hdir)
        .map_err(|e| e.to_string())?
        .parent()
        .ok_or("head without parent")?
        .to_owned();
    let path = std::fs::read_dir(&cdir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("nvme") && n.contains('c') && n.contains('n'))
        })
        .ok_or("no hidden path disk under the controller")?;
    let sys = Path::new("/sys");
    let obj = |d: &Path| record_object(sys, d).map_err(|e| format!("{}: {e}", d.display()));
    f.objects.insert("controller".into(), obj(&cdir)?);
    f.objects.insert("subsystem".into(), obj(&subsys)?);
    f.objects.insert("head".into(), obj(&hdir)?);
    f.objects.insert("path".into(), obj(&path)?);

    // port lost: no uevent, the controller resets then connects
    let mark = Instant::now();
    g.nvmet.hide(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
    if !wait_until(wait, || state(&nqn).is_some_and(|s| s != "live")).await {
        return Err("the controller stayed live after its port went away".into());
    }
    tokio::time::sleep(settle).await;
    f.steps.insert("port_lost".into(), take(mark));
    f.objects.insert("controller_lost".into(), obj(&cdir)?);

    // port restored before ctrl_loss_tmo: live again, same controller
    let mark = Instant::now();
    g.nvmet.expose(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
    if !wait_until(wait, || state(&nqn).as_deref() == Some("live")).await {
        return Err("the controller did not come back live".into());
    }
    tokio::time::sleep(settle).await;
    f.steps.insert("port_restored".into(), take(mark));

    // port lost past ctrl_loss_tmo: the kernel deletes the controller
    let mark = Instant::now();
    g.nvmet.hide(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
    if !wait_until(wait, || controllers(&nqn).is_empty()).await {
        return Err("the kernel did not delete the controller after ctrl_loss_tmo".into());
    }
    tokio::time::sleep(settle).await;
    f.steps.insert("deleted".into(), take(mark));

    // port back: nothing happens by itself; a connect brings the namespace back
    g.nvmet.expose(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
    tokio::time::sleep(settle).await;
    if !controllers(&nqn).is_empty() {
        return Err("the kernel reconnected a deleted controller by itself".into());
    }
    let mark = Instant::now();
    let out = fabric
        .connect(&req)
        .map_err(|e| format!("connect again: {e}"))?;
    if !wait_until(wait, || !heads(&nqn).is_empty()).await {
        return Err("no namespace head after connecting again".into());
    }
    tokio::time::sleep(settle).await;
    f.steps.insert("reconnected".into(), take(mark));

    // the target changes the namespace while the port is away: after the reconnect the
    // kernel drops the namespace (identifiers changed) and does not add the new one
    g.nvmet.hide(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
    if !wait_until(wait, || state(&nqn).is_some_and(|s| s != "live")).await {
        return Err("the controller stayed live after its port went away".into());
    }
    g.nvmet
        .replace_namespace(
            &nqn,
            1,
            &Guest::backing("fixture-other"),
            super::guest::SIZE,
            "3c1d5e7f-9a2b-4c6d-8e0f-1a2b3c4d5e6f",
        )
        .map_err(|e| e.to_string())?;
    let mark = Instant::now();
    g.nvmet.expose(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
    if !wait_until(wait, || state(&nqn).as_deref() == Some("live")).await {
        return Err("the controller did not come back live".into());
    }
    tokio::time::sleep(settle).await;
    let kept = heads(&nqn);
    f.steps.insert("restored_replaced".into(), take(mark));
    if !kept.is_empty() {
        return Err(format!(
            "after a reconnect onto a changed namespace the kernel kept {kept:?}"
        ));
    }

    // a rescan brings the target's current namespace in
    let mark = Instant::now();
    fabric
        .rescan(&out.controller)
        .map_err(|e| format!("rescan: {e}"))?;
    if !wait_until(wait, || !heads(&nqn).is_empty()).await {
        return Err("no namespace head after the rescan".into());
    }
    tokio::time::sleep(settle).await;
    f.steps.insert("rescanned".into(), take(mark));

    // disconnected
    let mark = Instant::now();
    fabric
        .disconnect(&out.controller)
        .map_err(|e| format!("disconnect: {e}"))?;
    if !wait_until(wait, || controllers(&nqn).is_empty()).await {
        return Err("the controller was not deleted on disconnect".into());
    }
    tokio::time::sleep(settle).await;
    f.steps.insert("disconnected".into(), take(mark));

    // the target stops exporting the subsystem on a port that still serves another one: the
    // reconnect is answered "no such subsystem" with DNR and the kernel deletes the
    // controller at once, whatever ctrl_loss_tmo says
    let other = "nqn.2000-02.com.mikrotik:pvc-vm-fixture-neighbour";
    g.nvmet
        .add_subsystem(
            other,
            &Guest::backing("fixture-neighbour"),
            super::guest::SIZE,
            None,
        )
        .map_err(|e| e.to_string())?;
    g.nvmet.expose(other, PORT_A.0).map_err(|e| e.to_string())?;
    let mut forever = req.clone();
    forever.ctrl_loss_tmo = Some(-1);
    fabric
        .connect(&forever)
        .map_err(|e| format!("connect for unexport: {e}"))?;
    if !wait_until(wait, || !heads(&nqn).is_empty()).await {
        return Err("no namespace head before the unexport".into());
    }
    tokio::time::sleep(settle).await;
    let mark = Instant::now();
    g.nvmet.hide(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
    let deleted = wait_until(wait, || controllers(&nqn).is_empty()).await;
    let after = mark.elapsed();
    tokio::time::sleep(settle).await;
    f.steps.insert("unexported".into(), take(mark));
    let _ = g.nvmet.remove_subsystem(other);
    let _ = std::fs::remove_file(Guest::backing("fixture-neighbour"));
    let _ = std::fs::remove_file(Guest::backing("fixture-other"));
    if !deleted {
        return Err(
            "an unexported subsystem's controller (ctrl_loss_tmo -1) was not deleted".into(),
        );
    }
    f.unexport_deleted_after_ms = Some(after.as_millis() as u64);
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_hide_numbers_uuids_and_hex() {
        assert_eq!(shape("nvme0n1"), "nvme#n#");
        assert_eq!(shape("nvme12c3n1"), "nvme#c#n#");
        assert_eq!(shape("259:1"), "#:#");
        assert_eq!(
            shape("traddr=127.0.0.1,trsvcid=4420,src_addr=127.0.0.1"),
            "traddr=#.#.#.#,trsvcid=#,src_addr=#.#.#.#"
        );
        assert_eq!(
            shape("uuid.8f6b8a52-1c1e-4d55-9b1e-0a9d2cf2b4a1"),
            "uuid.<uuid>"
        );
        assert_eq!(shape("eui.0123456789abcdef0123456789abcdef"), "eui.<hex>");
        assert_eq!(shape("off"), "off");
        assert_eq!(shape("live"), "live");
        // sysfs `stat` pads its columns to the numbers' width: the shape does not depend on it.
        assert_eq!(
            shape("     153        0     6682      22"),
            shape("    1153        0    16682     122")
        );
    }

    #[test]
    fn only_consumed_subsystems_are_kept() {
        assert!(shape_event(&[("ACTION", "add"), ("SUBSYSTEM", "bdi")]).is_none());
        let e = shape_event(&[
            ("ACTION", "change"),
            ("DEVPATH", "/devices/virtual/nvme-fabrics/ctl/nvme0"),
            ("SUBSYSTEM", "nvme"),
            ("NVME_EVENT", "connected"),
            ("SEQNUM", "4411"),
        ])
        .expect("kept");
        assert_eq!(e.name, "nvme#");
        assert_eq!(e.keys, vec!["ACTION", "DEVPATH", "NVME_EVENT", "SUBSYSTEM"]);
        assert_eq!(
            e.values.get("NVME_EVENT").map(String::as_str),
            Some("connected")
        );
    }

    fn fixture(attr: &str, key: &str) -> Fixture {
        let mut f = Fixture::default();
        f.objects.insert(
            "controller".into(),
            Object {
                devpath: "/devices/virtual/nvme-fabrics/ctl/nvme#".into(),
                has_dev: true,
                attributes: BTreeMap::from([
                    ("state".into(), "live".into()),
                    (attr.into(), "x".into()),
                ]),
            },
        );
        f.steps.insert(
            "connect".into(),
            Step {
                events: vec![EventShape {
                    action: "add".into(),
                    subsystem: "nvme".into(),
                    name: "nvme#".into(),
                    keys: vec!["ACTION".into(), key.into()],
                    values: BTreeMap::new(),
                }],
                kmsg: vec![],
            },
        );
        f
    }

    #[test]
    fn differences_the_product_reads_matter_the_rest_is_reported() {
        let kernel = fixture("sqsize", "MAJOR");
        let same = compare(&kernel, &kernel);
        assert!(same.is_empty(), "{same:?}");

        // The emulation lacks an attribute nobody reads and a key the product reads.
        let mut emulated = fixture("sqsize", "MAJOR");
        emulated
            .objects
            .get_mut("controller")
            .expect("controller")
            .attributes
            .remove("sqsize");
        emulated.steps.get_mut("connect").expect("connect").events[0].keys = vec!["ACTION".into()];
        let d = compare(&kernel, &emulated);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(!d[0].matters && d[0].what.contains("sqsize"), "{d:?}");
        assert!(d[1].matters && d[1].what.contains("MAJOR"), "{d:?}");

        // An attribute the kernel does not have always matters.
        let emulated = fixture("invented", "MAJOR");
        let d = compare(&kernel, &emulated);
        assert!(
            d.iter().any(|d| d.matters && d.what.contains("invented")),
            "{d:?}"
        );
    }
}
