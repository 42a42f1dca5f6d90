//! `demo`: the whole plugin on the emulated fabric, driven over its real socket as kubelet
//! would, in private mount and network namespaces (the host is untouched). Exits non-zero if
//! any step did not behave as described.

use std::io::Write;
use std::time::Instant;

use crate::csi;
use crate::csi::volume_capability::access_mode::Mode;
use crate::harness::*;

type DynError = Box<dyn std::error::Error + Send + Sync>;

struct Step {
    name: String,
    ok: bool,
    detail: String,
}

pub fn enter_sandbox() -> Result<(), String> {
    rds_testkit::enter_private_namespaces()
}

pub async fn run(only: Option<String>) -> Result<(), DynError> {
    let dir = tempfile::Builder::new().prefix("rds-csi-demo").tempdir()?;
    println!(
        "rds-csi-node demo: emulated NVMe/TCP fabric under {}",
        dir.path().display()
    );
    let plugin = Plugin::start(dir.path(), None).await?;
    let mut k = plugin.kubelet().await?;
    let mut steps: Vec<Step> = Vec::new();
    let vols: [(&str, &str, u64); 3] = [
        ("pvc-demo-ext4", "ext4", 64 << 20),
        ("pvc-demo-xfs", "xfs", 320 << 20),
        ("pvc-demo-block", "block", 64 << 20),
    ];
    for (vol, kind, size) in vols {
        if only.as_deref().is_some_and(|o| o != kind) {
            continue;
        }
        plugin.fabric.add_target(&nqn_for(vol), size)?;
        let r = lifecycle(&plugin, &mut k, vol, kind).await;
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(e) => (false, e.to_string()),
        };
        println!(
            "  {} {vol} ({kind}): {detail}",
            if ok { "PASS" } else { "FAIL" }
        );
        steps.push(Step {
            name: format!("{kind} volume lifecycle"),
            ok,
            detail,
        });
    }
    plugin.stop().await?;
    println!("\n{:<28} {:<6} detail", "scenario", "result");
    for s in &steps {
        println!(
            "{:<28} {:<6} {}",
            s.name,
            if s.ok { "pass" } else { "FAIL" },
            s.detail
        );
    }
    let _ = std::io::stdout().flush();
    if steps.is_empty() {
        return Err(format!(
            "no scenario named {:?} (ext4, xfs, block)",
            only.unwrap_or_default()
        )
        .into());
    }
    if steps.iter().any(|s| !s.ok) {
        return Err("some scenarios failed".into());
    }
    Ok(())
}

async fn lifecycle(p: &Plugin, k: &mut Kubelet, vol: &str, kind: &str) -> Result<String, DynError> {
    let cap = if kind == "block" {
        block_capability()
    } else {
        mount_capability(kind, Mode::SingleNodeWriter)
    };
    let t0 = Instant::now();
    k.node
        .node_stage_volume(stage_request(p, vol, cap.clone()))
        .await?;
    let staged = t0.elapsed();
    k.node
        .node_publish_volume(publish_request(p, vol, "demo-pod", cap.clone(), false))
        .await?;
    let target = p.target_path("demo-pod", vol);
    let payload = format!("written by the demo into {vol}");
    if kind == "block" {
        let mut f = std::fs::OpenOptions::new().write(true).open(&target)?;
        f.write_all(payload.as_bytes())?;
        f.sync_all()?;
    } else {
        std::fs::write(target.join("demo.txt"), &payload)?;
    }
    let stats = k
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: vol.into(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await?
        .into_inner();
    let total = stats.usage.first().map(|u| u.total).unwrap_or(0);
    let cond = stats
        .volume_condition
        .map(|c| c.message)
        .unwrap_or_default();
    // Tear down completely, stage again, and read the data back.
    k.node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: vol.into(),
            target_path: target.display().to_string(),
        })
        .await?;
    let staging = p.staging_path(vol).display().to_string();
    k.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: vol.into(),
            staging_target_path: staging.clone(),
        })
        .await?;
    k.node
        .node_stage_volume(stage_request(p, vol, cap.clone()))
        .await?;
    k.node
        .node_publish_volume(publish_request(p, vol, "demo-pod-2", cap.clone(), false))
        .await?;
    let target2 = p.target_path("demo-pod-2", vol);
    let back = if kind == "block" {
        let mut buf = vec![0u8; payload.len()];
        std::io::Read::read_exact(&mut std::fs::File::open(&target2)?, &mut buf)?;
        buf
    } else {
        std::fs::read(target2.join("demo.txt"))?
    };
    if back != payload.as_bytes() {
        return Err("data written before unstage was not there after restage".into());
    }
    k.node
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: vol.into(),
            target_path: target2.display().to_string(),
        })
        .await?;
    k.node
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: vol.into(),
            staging_target_path: staging,
        })
        .await?;
    Ok(format!(
        "staged in {} ms, {} bytes, condition {cond:?}, data intact after unstage/restage",
        staged.as_millis(),
        total
    ))
}
