//! The libudev wire format we encode is accepted by real libudev (through the `udev` crate),
//! including its in-kernel socket filter on the subsystem/devtype hashes. This is what makes
//! the emulated fabric's events look like udevd's to any libudev listener.
//! Privileged: private mount and network namespaces (injections stay in this netns).

rds_testkit::private_namespaces!();

use std::os::fd::AsRawFd;

use rds_devices::uevent::{encode_libudev, inject_udev};

/// Waits (poll(2), generous deadline) until the monitor socket is readable.
fn wait_readable(fd: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = rds_testkit::devices::DEADLINE.as_millis() as libc::c_int;
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
}

#[test]
fn libudev_monitor_filtered_by_subsystem_and_devtype_receives_our_encoding() {
    rds_testkit::require_private_namespaces();
    let monitor = udev::MonitorBuilder::new()
        .and_then(|b| b.match_subsystem_devtype("block", "disk"))
        .and_then(|b| b.listen())
        .expect("libudev monitor on the udev group (needs /run/udev/control or devtmpfs /dev)");
    // First a message the filter must drop (other subsystem), then ours.
    inject_udev(&encode_libudev(&[
        ("ACTION", "add"),
        ("DEVPATH", "/devices/virtual/net/dummy9"),
        ("SUBSYSTEM", "net"),
        ("SEQNUM", "41"),
    ]))
    .unwrap();
    inject_udev(&encode_libudev(&[
        ("ACTION", "add"),
        ("DEVPATH", "/devices/virtual/nvme-fabrics/ctl/nvme0/nvme0n1"),
        ("SUBSYSTEM", "block"),
        ("MAJOR", "259"),
        ("MINOR", "3"),
        ("DEVNAME", "/dev/nvme0n1"),
        ("DEVTYPE", "disk"),
        ("DISKSEQ", "41"),
        ("SEQNUM", "42"),
    ]))
    .unwrap();
    assert!(
        wait_readable(monitor.as_raw_fd()),
        "libudev socket never became readable"
    );
    let ev = monitor
        .iter()
        .next()
        .expect("libudev must accept our message (header, magic, hashes, properties)");
    assert_eq!(
        ev.sequence_number(),
        42,
        "the net event must have been filtered out by libudev's subsystem hash filter"
    );
    assert_eq!(ev.event_type(), udev::EventType::Add);
    assert_eq!(
        ev.device()
            .property_value("DISKSEQ")
            .and_then(|v| v.to_str()),
        Some("41")
    );
    assert_eq!(
        ev.device().devnum(),
        Some(libc::makedev(259, 3)),
        "libudev reads MAJOR/MINOR"
    );
}
