//! The demo: the whole plugin on the emulated fabric, driven over its real socket as kubelet
//! would, in private mount and network namespaces (the host is untouched). Plays the
//! scenarios of [`rds_harness::scenarios`], prints a timeline for each and a summary table,
//! and exits non-zero if any did not behave as described. Needs root.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use rds_harness::scenarios::{self, DynError};

#[derive(Debug, Parser)]
#[command(
    name = "rds-csi-demo",
    about = "Run the whole node plugin on an emulated NVMe/TCP fabric in private namespaces (needs root)"
)]
struct Args {
    /// Run one scenario only.
    #[arg(long, env = "DEMO_SCENARIO")]
    scenario: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The demo prints its own timeline; its logs only show errors unless RUST_LOG asks.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // Private mount and network namespaces, entered while single-threaded.
    if let Err(e) = rds_testkit::enter_private_namespaces() {
        eprintln!("the demo needs root: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args.scenario)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(only: Option<String>) -> Result<(), DynError> {
    let names: Vec<&str> = match &only {
        Some(o) => vec![o.as_str()],
        None => scenarios::ALL.to_vec(),
    };
    let dir = tempfile::Builder::new().prefix("rds-csi-demo").tempdir()?;
    println!(
        "rds-csi-node demo: an emulated NVMe/TCP fabric (loop devices behind an NVMe sysfs tree)"
    );
    println!(
        "in private mount and network namespaces under {}\n",
        dir.path().display()
    );
    let mut rows = Vec::new();
    let total = names.len();
    for (i, name) in names.iter().enumerate() {
        print!("[{}/{total}] {name} ... ", i + 1);
        let _ = std::io::stdout().flush();
        let started = Instant::now();
        let root = dir.path().join(name);
        let (t, err) = match scenarios::run(name, &root).await {
            Ok(t) => (t, None),
            Err((t, e)) => (t, Some(e.to_string())),
        };
        println!(
            "{} ({} ms)",
            if err.is_none() { "pass" } else { "FAIL" },
            started.elapsed().as_millis()
        );
        for (at, what) in &t.steps {
            println!("    {:>8.1} ms  {what}", at.as_secs_f64() * 1000.0);
        }
        if let Some(e) = &err {
            println!("    error: {e}");
        }
        println!();
        rows.push((name.to_string(), err, t.detected_after, started.elapsed()));
    }
    println!(
        "{:<22} {:<7} {:>14} {:>10}",
        "scenario", "result", "detected after", "took"
    );
    for (name, err, det, took) in &rows {
        let det = det
            .map(|d| format!("{} us", d.as_micros()))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<22} {:<7} {:>14} {:>8} ms",
            name,
            if err.is_none() { "pass" } else { "FAIL" },
            det,
            took.as_millis()
        );
    }
    let failed = rows.iter().filter(|r| r.1.is_some()).count();
    println!("\n{} passed, {} failed", rows.len() - failed, failed);
    if failed > 0 {
        return Err(format!("{failed} scenario(s) did not behave as described").into());
    }
    Ok(())
}
