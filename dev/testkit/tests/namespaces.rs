rds_testkit::private_namespaces!();

#[test]
fn mounts_made_in_a_test_do_not_reach_the_host_namespace() {
    rds_testkit::require_private_namespaces();
    let own = std::fs::read_link("/proc/self/ns/mnt").expect("own mount ns");
    let parent = format!("/proc/{}/ns", nix::unistd::getppid());
    let init = std::fs::read_link(format!("{parent}/mnt")).expect("parent mount ns");
    assert_ne!(
        own, init,
        "the test process should be in a mount namespace of its own, not its parent's"
    );
    let net = std::fs::read_link("/proc/self/ns/net").expect("own net ns");
    let init_net = std::fs::read_link(format!("{parent}/net")).expect("parent net ns");
    assert_ne!(
        net, init_net,
        "the test process should be in a private network namespace"
    );
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = mi
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    assert!(
        !root.contains("shared:"),
        "/ must have private propagation: {root}"
    );
}
