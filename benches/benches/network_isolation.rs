//! What isolating internal networks costs, on a real engine and firewall
//! (run as root), alternating in one run:
//!
//! - creating and removing an internal network: `DockerRuntime` enforcing
//!   isolation vs `DockerRuntime` with `Isolation::Off` vs raw bollard; the
//!   time the rules add is set against its physical limit, the same rules
//!   appended and deleted by bare `iptables`/`ip6tables` calls;
//! - connecting (which reconciles) with internal networks present and
//!   nothing to change: enforcing vs off; the time reconciling adds is set
//!   against listing the chain with bare `iptables -S`/`ip6tables -S`.
//!
//!     cargo bench -p kisara-benches --bench network_isolation
//!
//! `KISARA_BENCH_ROUNDS` (default 15) and `KISARA_BENCH_NETWORKS` (default
//! 10) set the sample count and how many networks are present while
//! connecting; `KISARA_BENCH_SMOKE` makes both 2. Every network carries
//! `kisara-test-run=<run>` and is removed.
#![allow(clippy::print_stdout)]

use std::process::Command;
use std::time::Instant;

use bollard::models::NetworkCreateRequest;
use kisara_benches::{Samples, env_count, smoke};
use kisara_core::ContainerRuntime;
use kisara_core::model::NetworkSpec;
use kisara_docker::firewall::ISOLATION_CHAIN;
use kisara_docker::testing::{self, Cleanup, TEST_RUN_LABEL};
use kisara_docker::{DockerOptions, DockerRuntime, Isolation};

/// A unique internal network spec labelled with the run.
fn internal_spec(cleanup: &Cleanup) -> NetworkSpec {
    let mut spec = cleanup.network_spec(None);
    spec.internal = true;
    spec
}

/// Runs `program` with `args`, panicking when it fails.
fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

/// The physical limit of installing and removing one network's rules: the
/// four rules appended and deleted again in both families, by bare calls
/// (on an interface no network has).
fn bare_rules() {
    let bridge = "kis-benchfloor0";
    // Not a comment Kisara counts as its own, so no reconcile touches them.
    let comment = "kisara-bench-floor";
    let rules: [Vec<&str>; 4] = [
        vec!["-i", bridge, "-o", bridge],
        vec![
            "-i",
            bridge,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
        ],
        vec!["-i", bridge],
        vec!["-o", bridge],
    ];
    let verdicts = ["RETURN", "RETURN", "DROP", "DROP"];
    for program in ["iptables", "ip6tables"] {
        for action in ["-A", "-D"] {
            for (rule, verdict) in rules.iter().zip(verdicts) {
                let mut args = vec!["-w", "10", "-t", "filter", action, ISOLATION_CHAIN];
                args.extend(rule);
                args.extend(["-m", "comment", "--comment", comment, "-j", verdict]);
                run(program, &args);
            }
        }
    }
}

/// The physical limit of finding nothing to change: listing the chain in
/// both families.
fn bare_listing() {
    for program in ["iptables", "ip6tables"] {
        run(
            program,
            &["-w", "10", "-t", "filter", "-S", ISOLATION_CHAIN],
        );
    }
}

async fn raw_create_remove(runtime: &DockerRuntime, cleanup: &Cleanup) {
    let request = NetworkCreateRequest {
        name: kisara_core::testing::unique_name("kdn-raw"),
        driver: Some("bridge".to_owned()),
        internal: Some(true),
        labels: Some([(TEST_RUN_LABEL.to_owned(), cleanup.run().to_owned())].into()),
        ..NetworkCreateRequest::default()
    };
    let created = runtime
        .docker()
        .create_network(request)
        .await
        .expect("raw create");
    runtime
        .docker()
        .remove_network(&created.id)
        .await
        .expect("raw remove");
}

async fn kisara_create_remove(runtime: &DockerRuntime, cleanup: &Cleanup) {
    let network = runtime
        .create_network(&internal_spec(cleanup))
        .await
        .expect("create");
    runtime.remove_network(&network.id).await.expect("remove");
}

#[tokio::main]
async fn main() {
    let (default_rounds, default_networks) = if smoke() { (2, 2) } else { (15, 10) };
    let rounds = env_count("KISARA_BENCH_ROUNDS", default_rounds).max(1);
    let networks = env_count("KISARA_BENCH_NETWORKS", default_networks);
    let off_options = DockerOptions {
        isolation: Isolation::Off,
        ..DockerOptions::default()
    };
    let enforcing = testing::connect_default().await;
    let off = testing::connect(off_options.clone()).await;
    // Removes every bench network on the way out, even after a panic.
    let cleanup = Cleanup::new(&enforcing);

    // Warm up each path once.
    kisara_create_remove(&enforcing, &cleanup).await;
    kisara_create_remove(&off, &cleanup).await;
    raw_create_remove(&enforcing, &cleanup).await;
    bare_rules();

    let (mut with_rules, mut without, mut raw, mut floor) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    for i in 0..rounds {
        // Rotate the order so no method always goes first.
        for method in (0..4).map(|m| (m + i) % 4) {
            let started = Instant::now();
            match method {
                0 => {
                    kisara_create_remove(&enforcing, &cleanup).await;
                    with_rules.push(started.elapsed());
                }
                1 => {
                    kisara_create_remove(&off, &cleanup).await;
                    without.push(started.elapsed());
                }
                2 => {
                    raw_create_remove(&enforcing, &cleanup).await;
                    raw.push(started.elapsed());
                }
                _ => {
                    bare_rules();
                    floor.push(started.elapsed());
                }
            }
        }
    }
    let (w, o, r, f) = (
        with_rules.median(),
        without.median(),
        raw.median(),
        floor.median(),
    );
    println!("create + remove an internal network, median of {rounds} (ms, [range]):");
    println!("  DockerRuntime, enforcing         {with_rules}");
    println!("  DockerRuntime, Isolation::Off    {without}");
    println!("  raw bollard                      {raw}");
    println!("  bare iptables: the rules alone   {floor}");
    println!("  off / raw                        {:8.3}", o / r);
    println!(
        "  rules' cost / bare rules         {:8.3}   ((enforcing - off) / bare)",
        (w - o) / f
    );

    // Networks present while connecting: reconciling checks every one.
    let mut present = Vec::new();
    for _ in 0..networks {
        present.push(
            enforcing
                .create_network(&internal_spec(&cleanup))
                .await
                .expect("create"),
        );
    }
    let (mut connect_enforcing, mut connect_off, mut listing) =
        (Samples::default(), Samples::default(), Samples::default());
    for i in 0..rounds {
        for method in (0..3).map(|m| (m + i) % 3) {
            let started = Instant::now();
            match method {
                0 => {
                    let runtime = DockerRuntime::connect_default().await.expect("connect");
                    connect_enforcing.push(started.elapsed());
                    assert!(runtime.firewall().is_some());
                }
                1 => {
                    let runtime = DockerRuntime::connect(off_options.clone())
                        .await
                        .expect("connect");
                    connect_off.push(started.elapsed());
                    assert!(runtime.firewall().is_none());
                }
                _ => {
                    bare_listing();
                    listing.push(started.elapsed());
                }
            }
        }
    }
    let (ce, co, l) = (
        connect_enforcing.median(),
        connect_off.median(),
        listing.median(),
    );
    println!(
        "connect with {networks} internal networks present, nothing to change, median of {rounds} (ms):"
    );
    println!("  enforcing (detect + reconcile)   {connect_enforcing}");
    println!("  Isolation::Off                   {connect_off}");
    println!("  bare iptables -S, both families  {listing}");
    println!(
        "  reconciling's cost / bare -S     {:8.3}   ((enforcing - off) / bare)",
        (ce - co) / l
    );
    for network in present {
        enforcing.remove_network(&network.id).await.expect("remove");
    }
    cleanup.clean().await;
}
