//! The real-kernel tier: every scenario here runs in a VM on Debian's 6.12 kernel with its own
//! NVMe/TCP host and nvmet-tcp target on 127.0.0.1, against the product binary
//! (`rds-csi-node serve --fabric kernel`) driven over its socket as kubelet drives it.
//!
//! On the host this binary boots the VM (virtme-ng, software emulation) and runs itself in
//! it with `RDS_VM_GUEST=1`; the guest writes one result per scenario and the recorded
//! kernel fixture into a shared directory; the host prints them, fails if any scenario
//! failed or the kernel no longer matches the committed fixture, and fails loudly when the
//! VM cannot boot. Arguments that are not flags filter scenarios by substring, as libtest
//! does; `--list` lists them.

mod scenarios;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rds_harness::vm::{self, fixture::Fixture};
use serde::{Deserialize, Serialize};

/// The guest must finish within this (boot about 1 min, scenarios a few minutes).
const VM_TIMEOUT: Duration = Duration::from_secs(14 * 60);
/// The committed fixture.
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/dev/harness/fixtures/kernel-6.12.json"
);

#[derive(Debug, Serialize, Deserialize)]
struct Outcome {
    name: String,
    passed: bool,
    seconds: f64,
    error: Option<String>,
    notes: Vec<String>,
}

fn selected(args: &[String]) -> Vec<&'static str> {
    let mut filters = Vec::new();
    let mut skip_next = false;
    for a in args {
        if skip_next {
            skip_next = false;
            continue;
        }
        if matches!(
            a.as_str(),
            "--skip" | "--test-threads" | "--format" | "--color" | "-Z" | "--logfile"
        ) {
            skip_next = true;
            continue;
        }
        if !a.starts_with('-') {
            filters.push(a.clone());
        }
    }
    let exact = args.iter().any(|a| a == "--exact");
    scenarios::ALL
        .iter()
        .map(|(name, _)| *name)
        .filter(|n| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    if exact {
                        n == f
                    } else {
                        n.contains(f.as_str())
                    }
                })
        })
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in scenarios::ALL {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    // Benchmarks run through `cargo bench`; nothing to do here.
    if args.iter().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    let names = selected(&args);
    if std::env::var_os(vm::GUEST_ENV).is_some() {
        return guest(&names);
    }
    host(&names)
}

fn host(names: &[&str]) -> ExitCode {
    if names.is_empty() {
        println!("real_kernel: no scenario matches the filter");
        return ExitCode::SUCCESS;
    }
    println!(
        "real_kernel: booting the 6.12 kernel under qemu (software emulation) for {} scenarios",
        names.len()
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("real-kernel");
    let started = Instant::now();
    let mut args = vec!["--exact"];
    args.extend(names.iter().copied());
    let mut attempt = vm::run_self_in_guest(&dir, &args, VM_TIMEOUT);
    // A VM that exited before the guest wrote a line (vng once exited 255 with no output at
    // all, and the next boot ran every scenario): said loudly, and booted once more. A guest
    // that started is never retried.
    if let Err(vm::VmError::Boot(e)) = &attempt {
        let log = std::fs::read_to_string(dir.join("guest.log")).unwrap_or_default();
        if log.trim().is_empty() {
            eprintln!("real_kernel: the VM exited before its guest ran ({e}); booting once more");
            attempt = vm::run_self_in_guest(&dir, &args, VM_TIMEOUT);
        }
    }
    let run = match attempt {
        Ok(r) => r,
        Err(e) => {
            eprintln!("real_kernel: the VM tier could not run: {e}");
            let log = std::fs::read_to_string(dir.join("guest.log")).unwrap_or_default();
            eprintln!("--- guest log (tail) ---\n{}", vm::tail(&log, 20_000));
            return ExitCode::FAILURE;
        }
    };
    println!("{}", run.log);
    let outcomes: Vec<Outcome> = std::fs::read_to_string(dir.join("results.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let mut failed = false;
    if run.rc != Some(0) {
        eprintln!(
            "real_kernel: the guest exited with {:?}; console:\n{}",
            run.rc,
            vm::tail(&run.vm.console, 6000)
        );
        failed = true;
    }
    for n in names {
        match outcomes.iter().find(|o| o.name == *n) {
            Some(o) if o.passed => println!("test {n} ... ok ({:.1} s)", o.seconds),
            Some(o) => {
                println!(
                    "test {n} ... FAILED ({:.1} s): {}",
                    o.seconds,
                    o.error.as_deref().unwrap_or("")
                );
                failed = true;
            }
            None => {
                println!("test {n} ... FAILED: no result (the guest did not get to it)");
                failed = true;
            }
        }
    }
    if names.contains(&"kernel_fixture") {
        failed |= !check_fixture(&dir.join("kernel-fixture.json"));
    }
    println!(
        "real_kernel: {} scenarios in {:.0} s (VM {:.0} s)",
        names.len(),
        started.elapsed().as_secs_f64(),
        run.vm.elapsed.as_secs_f64()
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The kernel's shapes must be the committed ones (`RDS_UPDATE_FIXTURES=1` rewrites them).
fn check_fixture(recorded: &Path) -> bool {
    let Some(now) = std::fs::read_to_string(recorded)
        .ok()
        .and_then(|s| serde_json::from_str::<Fixture>(&s).ok())
    else {
        eprintln!("real_kernel: the guest recorded no fixture");
        return false;
    };
    if std::env::var_os("RDS_UPDATE_FIXTURES").is_some() {
        let text = serde_json::to_string_pretty(&now).expect("fixture serializes") + "\n";
        if let Err(e) = std::fs::write(FIXTURE, text) {
            eprintln!("real_kernel: writing {FIXTURE}: {e}");
            return false;
        }
        println!("real_kernel: fixture rewritten at {FIXTURE}");
        return true;
    }
    let committed: Fixture = match std::fs::read_to_string(FIXTURE)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("real_kernel: reading {FIXTURE}: {e}");
            return false;
        }
    };
    // The shapes of objects and events must be the same; the kernel log varies from run to
    // run (how many reconnect attempts fit into ctrl_loss_tmo) and is only informational.
    let structural = |f: &Fixture| {
        let mut f = f.clone();
        f.kernel.clear();
        f.unexport_deleted_after_ms = None;
        for s in f.steps.values_mut() {
            s.kmsg.clear();
        }
        f
    };
    let (a, b) = (structural(&committed), structural(&now));
    if a != b {
        eprintln!(
            "real_kernel: kernel {} no longer shows what {FIXTURE} records (kernel {}):",
            now.kernel, committed.kernel
        );
        for d in vm::fixture::compare(&a, &b) {
            eprintln!("  {}", d.what);
        }
        eprintln!("  rerun with RDS_UPDATE_FIXTURES=1 to take the new shapes, then fix the emulation until `cargo test -p rds-harness --test kernel_fixture` passes");
        return false;
    }
    true
}

/// Says where the guest is stuck when a scenario outlives its timeout without the timeout
/// firing (a kernel call that blocks the runtime's thread, so the whole VM would just run
/// out of time): a thread of its own prints the blocked tasks (sysrq `w`, into the kernel
/// log) and this process's kernel stacks, once per scenario, into the log the host shows.
struct Watchdog {
    armed: std::sync::Arc<std::sync::Mutex<Option<(&'static str, Instant)>>>,
}

impl Watchdog {
    fn start(after: Duration) -> Self {
        let armed = std::sync::Arc::new(std::sync::Mutex::new(None::<(&'static str, Instant)>));
        let a = armed.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            let due = {
                let mut g = a.lock().unwrap_or_else(|p| p.into_inner());
                match *g {
                    Some((name, at)) if at.elapsed() > after => {
                        *g = None;
                        Some(name)
                    }
                    _ => None,
                }
            };
            let Some(name) = due else { continue };
            eprintln!(
                "real_kernel watchdog: {name} is still running after {after:?}; where it waits:"
            );
            let _ = std::fs::write("/proc/sysrq-trigger", b"w");
            if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
                for t in tasks.flatten() {
                    let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                    let stack = std::fs::read_to_string(t.path().join("stack")).unwrap_or_default();
                    if !stack.trim().is_empty() {
                        eprintln!("  task {:?} ({}):\n{stack}", t.file_name(), comm.trim());
                    }
                }
            }
            if let Ok(o) = std::process::Command::new("dmesg").output() {
                eprintln!("{}", vm::tail(&String::from_utf8_lossy(&o.stdout), 8000));
            }
        });
        Self { armed }
    }

    fn arm(&self, name: &'static str) {
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = Some((name, Instant::now()));
    }
}

fn guest(names: &[&str]) -> ExitCode {
    let out = PathBuf::from(std::env::var("RDS_VM_OUT").unwrap_or_else(|_| "/tmp".into()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_rds-csi-node"));
        let mut g = match vm::guest::Guest::start(binary, out.clone()).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("guest set-up failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut outcomes = Vec::new();
        let watchdog = Watchdog::start(Duration::from_secs(250));
        for (name, run) in scenarios::ALL {
            if !names.contains(name) {
                continue;
            }
            println!("=== {name}");
            watchdog.arm(name);
            let started = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(240), run(&mut g)).await;
            let r = match r {
                Ok(r) => r,
                Err(_) => Err("the scenario did not finish within 240 s".into()),
            };
            let seconds = started.elapsed().as_secs_f64();
            let (passed, error, notes) = match r {
                Ok(notes) => (true, None, notes),
                Err(e) => (false, Some(e), Vec::new()),
            };
            for n in &notes {
                println!("    {n}");
            }
            match &error {
                None => println!("--- {name}: ok ({seconds:.1} s)"),
                Some(e) => {
                    println!("--- {name}: FAILED ({seconds:.1} s): {e}");
                    println!(
                        "    plugin log (tail):\n{}",
                        vm::tail(&g.plugin.log(), 6000)
                    );
                }
            }
            outcomes.push(Outcome {
                name: (*name).to_owned(),
                passed,
                seconds,
                error,
                notes,
            });
            let text = serde_json::to_string_pretty(&outcomes).unwrap_or_default();
            let _ = std::fs::write(out.join("results.json"), text);
        }
        let _ = std::fs::copy(g.plugin.dirs.log(), out.join("plugin.log"));
        if outcomes.iter().all(|o| o.passed) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}
