//! The two ways to deploy render the same objects: the kustomization in `deploy/` and the Helm
//! chart in `deploy/helm/rds-csi-node` with its default values (rendered by the real `helm
//! template`, which `dev/install-deps` installs). Each chart value reaches the objects it must,
//! and every environment variable the chart sets is one the binary reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const NAMESPACE: &str = "rds-csi";
const CHART: &str = "deploy/helm/rds-csi-node";

/// `$HELM`, else `helm` on the PATH; a missing helm fails the test (never a skip).
fn helm() -> PathBuf {
    let h = std::env::var_os("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("helm"));
    match Command::new(&h).arg("version").arg("--short").output() {
        Ok(o) if o.status.success() => h,
        other => panic!(
            "helm is needed to render the chart ({}: {other:?}); ./dev/install-deps installs it",
            h.display()
        ),
    }
}

fn docs(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn key(v: &Value) -> (String, String) {
    (
        v["kind"].as_str().unwrap_or("").to_owned(),
        v["metadata"]["name"].as_str().unwrap_or("").to_owned(),
    )
}

fn by_key(objs: Vec<Value>) -> BTreeMap<(String, String), Value> {
    let mut m = BTreeMap::new();
    for o in objs {
        assert!(
            m.insert(key(&o), o.clone()).is_none(),
            "duplicate {:?}",
            key(&o)
        );
    }
    m
}

/// The kustomization rendered as kustomize does for what it uses (`namespace` and
/// `resources`): every namespaced object gets the namespace.
fn kustomize() -> BTreeMap<(String, String), Value> {
    let dir = Path::new(ROOT).join("deploy");
    let k: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let known: Vec<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
    for field in &known {
        assert!(
            ["apiVersion", "kind", "namespace", "resources"].contains(field),
            "the kustomization uses {field:?}, which this test does not render: extend it"
        );
    }
    let ns = k["namespace"].as_str().unwrap();
    let mut out = Vec::new();
    for r in k["resources"].as_array().unwrap() {
        let text = std::fs::read_to_string(dir.join(r.as_str().unwrap())).unwrap();
        for mut o in docs(&text) {
            let cluster_scoped = matches!(
                o["kind"].as_str(),
                Some("Namespace" | "CSIDriver" | "ClusterRole" | "ClusterRoleBinding")
            );
            if !cluster_scoped {
                o["metadata"]["namespace"] = Value::from(ns);
            }
            out.push(o);
        }
    }
    by_key(out)
}

fn chart(set: &[&str]) -> BTreeMap<(String, String), Value> {
    let mut c = Command::new(helm());
    c.current_dir(ROOT)
        .args(["template", "rds-csi-node", CHART, "--namespace", NAMESPACE]);
    for s in set {
        c.arg("--set").arg(s);
    }
    let o = c.output().expect("run helm template");
    assert!(
        o.status.success(),
        "helm template {set:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    by_key(docs(&String::from_utf8(o.stdout).unwrap()))
}

fn daemonset(objs: &BTreeMap<(String, String), Value>) -> &Value {
    &objs[&("DaemonSet".to_owned(), "rds-csi-node".to_owned())]
}

fn container<'a>(ds: &'a Value, name: &str) -> &'a Value {
    ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env(c: &Value) -> BTreeMap<String, Value> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

#[test]
fn the_chart_with_its_defaults_renders_the_kustomization() {
    let mut k = kustomize();
    let ns = k
        .remove(&("Namespace".to_owned(), NAMESPACE.to_owned()))
        .expect("the kustomization creates its namespace");
    assert_eq!(ns["metadata"]["name"], NAMESPACE);
    let h = chart(&[]);
    assert_eq!(
        k.keys().collect::<Vec<_>>(),
        h.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (key, obj) in &k {
        assert_eq!(
            obj, &h[key],
            "{key:?} differs between deploy/ and the chart's defaults"
        );
    }
}

#[test]
fn every_chart_value_reaches_the_objects() {
    let h = chart(&[
        "kubeletDir=/var/lib/k0s/kubelet",
        "managedNqnPrefix=nqn.2000-02.com.example:vol-",
        "image.repository=registry.example/rds",
        "image.tag=9.9.9",
        "resources.limits.memory=1Gi",
        "metrics.port=9810",
        "evictPodsOnStale=true",
        "emulated.enabled=true",
        "emulated.defaultCapacity=5Gi",
        "nodeSelector.storage=rds",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Equal",
        "tolerations[0].value=storage",
    ]);
    let ds = daemonset(&h);
    let text = serde_json::to_string(ds).unwrap();
    assert!(
        !text.contains("/var/lib/kubelet"),
        "every kubelet path follows kubeletDir: {text}"
    );
    let node = container(ds, "csi-node");
    let e = env(node);
    assert_eq!(e["KUBELET_DIR"]["value"], "/var/lib/k0s/kubelet");
    assert_eq!(
        e["CSI_MANAGED_NQN_PREFIX"]["value"],
        "nqn.2000-02.com.example:vol-"
    );
    assert_eq!(node["image"], "registry.example/rds:9.9.9");
    assert_eq!(node["resources"]["limits"]["memory"], "1Gi");
    assert_eq!(e["METRICS_ADDRESS"]["value"], "0.0.0.0:9810");
    assert!(node["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["containerPort"] == 9810));
    assert_eq!(e["EVICT_PODS_ON_STALE"]["value"], "true");
    assert!(node["args"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "--fabric=emulated"));
    assert_eq!(e["EMULATED_DEFAULT_CAPACITY"]["value"], "5Gi");
    assert_eq!(
        e["EMULATED_BACKING_DIR"]["value"],
        "/var/lib/rds-csi-node/emulated"
    );
    let reg = container(ds, "node-driver-registrar");
    assert!(reg["args"].as_array().unwrap().iter().any(|a| a
        == "--kubelet-registration-path=/var/lib/k0s/kubelet/plugins/rds.csi.srvlab.io/csi.sock"));
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["nodeSelector"]["storage"], "rds");
    assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    // Eviction is granted only with the flag.
    let role = &h[&("ClusterRole".to_owned(), "rds-csi-node".to_owned())];
    let granted = |r: &Value, res: &str| {
        r["rules"].as_array().unwrap().iter().any(|rule| {
            rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == res)
        })
    };
    assert!(granted(role, "pods/eviction"));
    let plain = chart(&[]);
    let role = &plain[&("ClusterRole".to_owned(), "rds-csi-node".to_owned())];
    assert!(
        !granted(role, "pods/eviction") && !granted(role, "pods"),
        "no eviction, no pod access"
    );
}

#[test]
fn every_environment_variable_the_chart_sets_is_one_the_binary_reads() {
    let help = Command::new(env!("CARGO_BIN_EXE_rds-csi-node"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let h = chart(&[
        "metrics.port=9810",
        "evictPodsOnStale=true",
        "emulated.enabled=true",
    ]);
    for name in env(container(daemonset(&h), "csi-node")).keys() {
        assert!(
            help.contains(&format!("[env: {name}")),
            "the chart sets {name}, which `serve` does not read"
        );
    }
}
