//! Leader election of `wasmctl controller --leader-elect` against the real API server, through
//! the faults that split a naive one: a holder whose API server stops answering (its calls
//! hang; nothing fails), and a replica whose wall clock is an hour ahead. Both replicas' leader
//! gauges are sampled all along; two leaders at once fail the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use e2e::controller::{Controller, FAST};
use e2e::controlplane::ControlPlane;
use e2e::mesh::apply_manifests;
use e2e::stall::StallProxy;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_secs(4);

fn args(id: &'static str) -> Vec<&'static str> {
    let mut a = FAST.to_vec();
    a.extend([
        "--leader-elect",
        "wasm-system/wasmctl-controller",
        "--lease-duration",
        "4s",
        "--identity",
        id,
    ]);
    a
}

/// The admin kubeconfig with its server moved to `addr` (same certificate: the address is
/// still 127.0.0.1).
fn kubeconfig_via(cp: &ControlPlane, addr: std::net::SocketAddr, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    let mut kc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let server = kc["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_string();
    let moved = server.replace(&cp.endpoints.api.to_string(), &addr.to_string());
    assert_ne!(server, moved, "{server}");
    kc["clusters"][0]["cluster"]["server"] = moved.into();
    let path = dir.join("kubeconfig-via-relay");
    std::fs::write(&path, serde_json::to_vec(&kc).unwrap()).unwrap();
    path
}

/// Sample until `until` returns Some or `deadline`; panics the moment both lead. `b` is asked
/// before `a`: `b` never steps down in these tests, so `a` leading after `b` answered yes is
/// two leaders at one instant.
fn watch<T>(
    a: &mut Controller,
    b: &mut Controller,
    deadline: Instant,
    mut until: impl FnMut(&mut Controller, &mut Controller) -> Option<T>,
) -> Option<T> {
    loop {
        let b_leads = b.leads();
        let a_leads = a.running() && a.leads();
        assert!(
            !(a_leads && b_leads),
            "two leaders at once\n---- a ----\n{}\n---- b ----\n{}",
            a.log(),
            b.log()
        );
        if let Some(t) = until(a, b) {
            return Some(t);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_leads(c: &Controller, what: &str) {
    let led = e2e::poll_until(Instant::now() + Duration::from_secs(30), || {
        c.leads().then_some(())
    });
    assert!(led.is_some(), "{what} never led\n{}", c.log());
}

/// The holder's API server stalls (connections stay open, nothing is answered). The holder
/// stops leading within its renew deadline (2/3 of the lease) and exits; the other replica
/// takes the lease only after a whole lease with no change, so never while the first leads.
#[test]
fn a_stalled_api_server_never_leaves_two_leaders() {
    let cp = ControlPlane::start();
    apply_manifests(&cp);
    let dir = tempfile::tempdir().unwrap();
    let relay = StallProxy::start(cp.endpoints.api);
    let via_relay = kubeconfig_via(&cp, relay.addr, dir.path());
    let mut a = Controller::start_with(&via_relay, &args("replica-a"));
    wait_leads(&a, "replica-a");
    let mut b = Controller::start(&cp, &args("replica-b"));
    // A while of normal renewals: b waits.
    let quiet = Instant::now() + LEASE * 2;
    watch(&mut a, &mut b, quiet, |_, _| None::<()>);
    assert!(a.leads() && !b.leads(), "{}", b.log());

    relay.stall(true);
    let stalled = Instant::now();
    let mut stepped_down = None;
    let took = watch(
        &mut a,
        &mut b,
        Instant::now() + Duration::from_secs(30),
        |a, b| {
            if stepped_down.is_none() && !(a.running() && a.leads()) {
                stepped_down = Some(stalled.elapsed());
            }
            b.leads().then(|| stalled.elapsed())
        },
    );
    let took = took.unwrap_or_else(|| panic!("no hand-over\n{}", b.log()));
    let stepped_down = stepped_down.expect("a stepped down before b led");
    println!(
        "stalled API server: the holder stepped down after {stepped_down:?}, the other led after {took:?} (lease 4 s)"
    );
    // Renew deadline: 2/3 of 4 s from the last renewal sent, at most a retry period earlier.
    assert!(stepped_down <= LEASE, "stepped down after {stepped_down:?}");
    assert!(took >= LEASE * 2 / 3, "took over after {took:?}");
    let exited = e2e::poll_until(Instant::now() + Duration::from_secs(15), || {
        (!a.running()).then_some(())
    });
    assert!(exited.is_some(), "the holder kept running\n{}", a.log());
    assert!(a.log().contains("event=lease-lost"), "{}", a.log());
}

/// A replica whose wall clock is an hour ahead (libfaketime) judges the holder's renewals by
/// when it saw them change, not by their timestamps: it waits while the holder renews, and
/// takes over within a lease and two retries once the holder is killed.
#[test]
fn a_skewed_clock_never_leaves_two_leaders() {
    let cp = ControlPlane::start();
    apply_manifests(&cp);
    let mut a = Controller::start(&cp, &args("replica-a"));
    wait_leads(&a, "replica-a");
    let mut b = Controller::start_wrapped(
        &cp.kubeconfig,
        &args("replica-b"),
        &["faketime", "-f", "+1h"],
        &[("FAKETIME_DONT_FAKE_MONOTONIC", "1")],
    );
    let quiet = Instant::now() + LEASE * 3;
    watch(&mut a, &mut b, quiet, |_, _| None::<()>);
    assert!(a.leads() && !b.leads(), "{}", b.log());
    assert!(b.log().contains("event=waiting-for-lease"), "{}", b.log());
    // The skew is real: b's log lines are stamped an hour ahead.
    let stamp = |log: &str| -> i64 {
        let ts = log
            .lines()
            .find_map(|l| l.strip_prefix("ts="))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_string();
        // YYYY-MM-DDTHH:MM: minutes since the day began is enough for a one-hour skew.
        let h: i64 = ts[11..13].parse().unwrap();
        let m: i64 = ts[14..16].parse().unwrap();
        h * 60 + m
    };
    let skew = (stamp(&b.log()) - stamp(&a.log())).rem_euclid(24 * 60);
    assert!((55..=65).contains(&skew), "b's clock is {skew} min ahead");

    a.kill();
    let killed = Instant::now();
    let took = watch(
        &mut a,
        &mut b,
        Instant::now() + Duration::from_secs(30),
        |_, b| b.leads().then(|| killed.elapsed()),
    );
    let took = took.unwrap_or_else(|| panic!("no hand-over\n{}", b.log()));
    println!("skewed clock: hand-over {took:?} after the holder was killed (lease 4 s)");
    // Retry period 4 s * 2/15 = 533 ms: seen within one, expired a lease later, taken at the
    // next try.
    assert!(
        took <= LEASE + Duration::from_millis(3 * 533 + 1000),
        "hand-over took {took:?}"
    );
}
