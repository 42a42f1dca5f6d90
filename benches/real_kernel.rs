//! Real-kernel latencies: the product binary (`serve --fabric kernel`) on Debian's 6.12 kernel
//! in a VM (virtme-ng, software emulation), against the kernel's own signals received in the
//! same run by bare listeners (netlink uevents, `/dev/kmsg`). Run with
//! `cargo bench --bench real_kernel`; `RDS_BENCH_ROUNDS` sets the rounds per case (default 12).
//!
//! Cases, each over the rounds:
//! - **port loss** (`ctrlLossTmo=-1`): the target's port goes away. Kernel: the NVMe core's
//!   `starting error recovery` log line (no uevent announces it). Plugin: the first
//!   NodeGetVolumeStats answer that says `controller_reconnecting`.
//! - **port back**: kernel: the controller's `change` uevent with `NVME_EVENT=connected`.
//!   Plugin: the first `healthy` answer.
//! - **controller deleted** (`ctrlLossTmo=1`): kernel: the namespace head's `remove` uevent.
//!   Plugin: the first answer that names the deletion (`device_removed`/`device_gone`; it was
//!   already abnormal, `controller_reconnecting`, before).
//! - **target back after deletion**: from re-exposing the port. Kernel: the namespace head's
//!   `add` uevent (after the plugin's own connect: this span is the plugin's reconnect backoff
//!   plus the connect). Plugin: the first `healthy` answer (remount onto the new device).
//!
//! The plugin side is sampled by NodeGetVolumeStats every 2 ms over its socket (each call
//! takes about a millisecond under emulation), so its figures include up to one period.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rds_harness::vm::{self, guest::*};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os(vm::GUEST_ENV).is_some() {
        return guest();
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches` runs this without --bench: nothing to check here.
        return ExitCode::SUCCESS;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("real-kernel-bench");
    match vm::run_self_in_guest(&dir, &["--bench"], Duration::from_secs(25 * 60)) {
        Ok(r) => {
            println!("{}", r.log);
            if r.rc == Some(0) {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "the guest failed ({:?}):\n{}",
                    r.rc,
                    vm::tail(&r.vm.console, 4000)
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("the real-kernel bench could not run: {e}");
            ExitCode::FAILURE
        }
    }
}

fn rounds() -> usize {
    std::env::var("RDS_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[derive(Default)]
struct Case {
    kernel: Vec<Duration>,
    plugin: Vec<Duration>,
    behind: Vec<Duration>,
}

impl Case {
    fn add(&mut self, t0: Instant, kernel: Instant, plugin: Instant) {
        self.kernel.push(kernel.saturating_duration_since(t0));
        self.plugin.push(plugin.saturating_duration_since(t0));
        self.behind.push(plugin.saturating_duration_since(kernel));
    }

    fn row(&mut self, name: &str) -> String {
        if self.kernel.is_empty() {
            return format!("| {name} | no rounds | | |");
        }
        format!(
            "| {name} | {} / {} | {} / {} | {} / {} |",
            ms(pct(&mut self.kernel, 0.5)),
            ms(pct(&mut self.kernel, 0.99)),
            ms(pct(&mut self.plugin, 0.5)),
            ms(pct(&mut self.plugin, 0.99)),
            ms(pct(&mut self.behind, 0.5)),
            ms(pct(&mut self.behind, 0.99)),
        )
    }
}

/// Poll the condition every 2 ms until `pred`; the time of the first answer that satisfies it.
async fn until(
    g: &mut Guest,
    vol: &str,
    path: &std::path::Path,
    pred: impl Fn(&Sample) -> bool,
) -> Result<Instant, Fail> {
    let started = Instant::now();
    loop {
        let s = g.sample(vol, path).await?;
        if pred(&s) {
            return Ok(s.at);
        }
        if started.elapsed() > WAIT {
            return Err(format!(
                "{vol}: condition not reached within {WAIT:?}; last {s:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn guest() -> ExitCode {
    let out = PathBuf::from(std::env::var("RDS_VM_OUT").unwrap_or_else(|_| "/tmp".into()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(out)) {
        Ok(table) => {
            println!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(out: PathBuf) -> Result<String, Fail> {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_rds-csi-node"));
    let mut g = Guest::start(binary, out).await?;
    let n = rounds();
    let mut loss = Case::default();
    let mut back = Case::default();
    let mut deleted = Case::default();
    let mut healed = Case::default();

    // Port loss and return with ctrlLossTmo=-1.
    let vol = "pvc-bench-loss";
    let nqn = Guest::nqn(vol);
    g.target(vol)?;
    let ctx = Guest::context(vol, &[("ctrlLossTmo", "-1")]);
    g.stage(vol, ext4(), ctx).await.map_err(|e| e.to_string())?;
    let staging = g.staging(vol);
    for _ in 0..n {
        until(&mut g, vol, &staging, |s| !s.abnormal).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        g.nvmet.hide(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        let plugin = until(&mut g, vol, &staging, |s| {
            s.kind == "controller_reconnecting"
        })
        .await?;
        let kernel = g
            .kmsg
            .wait_for(t0, WAIT, |l| l.contains("starting error recovery"))
            .ok_or("no 'starting error recovery' in the kernel log")?
            .at;
        loss.add(t0, kernel, plugin);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t1 = Instant::now();
        g.nvmet.expose(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        let plugin = until(&mut g, vol, &staging, |s| !s.abnormal).await?;
        let kernel = g
            .uevents
            .wait_for(t1, WAIT, |e| {
                e.subsystem == "nvme" && e.get("NVME_EVENT") == Some("connected")
            })
            .ok_or("no NVME_EVENT=connected uevent")?
            .at;
        back.add(t1, kernel, plugin);
    }
    g.clean(vol, &[]).await;

    // Past ctrl_loss_tmo: the kernel deletes the controller; the plugin reconnects.
    let vol = "pvc-bench-deleted";
    let nqn = Guest::nqn(vol);
    g.target(vol)?;
    let ctx = Guest::context(vol, &[("ctrlLossTmo", "1")]);
    g.stage(vol, ext4(), ctx).await.map_err(|e| e.to_string())?;
    let staging = g.staging(vol);
    for _ in 0..n {
        until(&mut g, vol, &staging, |s| !s.abnormal).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        g.nvmet.hide(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        let plugin = until(&mut g, vol, &staging, |s| {
            s.kind == "device_removed" || s.kind == "device_gone"
        })
        .await?;
        let kernel = g
            .uevents
            .wait_for(t0, WAIT, |e| {
                e.subsystem == "block"
                    && e.action.as_str() == "remove"
                    && e.kernel_name().starts_with("nvme")
            })
            .ok_or("no namespace remove uevent")?
            .at;
        deleted.add(t0, kernel, plugin);
        let t1 = Instant::now();
        g.nvmet.expose(&nqn, PORT_A.0).map_err(|e| e.to_string())?;
        let plugin = until(&mut g, vol, &staging, |s| !s.abnormal).await?;
        let kernel = g
            .uevents
            .wait_for(t1, WAIT, |e| {
                e.subsystem == "block"
                    && e.action.as_str() == "add"
                    && e.kernel_name().starts_with("nvme")
            })
            .ok_or("no namespace add uevent after the reconnect")?
            .at;
        healed.add(t1, kernel, plugin);
    }
    g.clean(vol, &[]).await;

    let mut t = String::new();
    t.push_str(&format!(
        "{n} rounds each; p50 / p99 (with {n} rounds p99 is the slowest round)\n\n"
    ));
    t.push_str("| from | kernel's signal | plugin's answer | plugin behind the kernel |\n|---|---|---|---|\n");
    t.push_str(&loss.row("port removed → `starting error recovery` / `controller_reconnecting`"));
    t.push('\n');
    t.push_str(&back.row("port back → `NVME_EVENT=connected` / `healthy`"));
    t.push('\n');
    t.push_str(&deleted.row("port removed, ctrl_loss_tmo 1 s → head `remove` / `device_removed`"));
    t.push('\n');
    t.push_str(
        &healed.row("port back after deletion → head `add` (plugin's reconnect) / `healthy`"),
    );
    t.push('\n');
    Ok(t)
}
