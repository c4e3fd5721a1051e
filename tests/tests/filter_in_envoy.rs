//! The header filter in a real Envoy 1.40 (V8), in front of a recording upstream.

use e2e::envoy::{Envoy, bootstrap, wasm_filter};
use e2e::http1::{Client, Upstream, get};
use std::thread;
use std::time::{Duration, Instant};

const SEED: &str = r#"{"name":"resp-header-demo","value":"added by our filter"}"#;

fn start(upstream: &Upstream, config: &str) -> Envoy {
    let filter = wasm_filter("header_filter", "my_root_id", &e2e::filter_wasm(), config);
    Envoy::must_start(&bootstrap(upstream.addr(), vec![filter]))
}

#[test]
fn seed_configuration_adds_the_response_header() {
    let upstream = Upstream::start(&[
        ("x-upstream", "kept"),
        ("resp-header-demo", "from upstream"),
    ]);
    let envoy = start(&upstream, SEED);

    let resp = get(envoy.listener, "/productpage", &[]).unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.values("resp-header-demo"),
        ["from upstream", "added by our filter"],
        "appended after the upstream's own value"
    );
    assert_eq!(resp.header("x-upstream"), Some("kept"));
    assert!(
        resp.text().contains("host: "),
        "upstream body intact: {}",
        resp.text()
    );
    assert_eq!(upstream.last().path(), "/productpage");
    assert!(
        upstream.last().header("resp-header-demo").is_none(),
        "the short form touches responses only"
    );

    // Envoy's own direct responses pass through the filter too.
    let direct = get(envoy.listener, "/direct", &[]).unwrap();
    assert_eq!(direct.text(), "direct\n");
    assert_eq!(direct.values("resp-header-demo"), ["added by our filter"]);

    // Observability: the configure log, a debug line per applied rule, and the counter.
    let log = envoy.log();
    assert!(
        log.contains("header-filter: configured 1 rule(s) for plugin header_filter"),
        "{log}"
    );
    assert!(
        log.contains("header-filter: rule 0 (response append resp-header-demo): applied"),
        "{log}"
    );
    assert_eq!(
        envoy.stat_reaches("wasmcustom.header_filter.header_filter.rule_0.applied", 2),
        Some(2)
    );
    assert_eq!(
        envoy.stat("wasmcustom.header_filter.header_filter.rule_0.skipped"),
        Some(0)
    );
}

#[test]
fn raising_the_wasm_log_level_at_runtime_shows_each_rule() {
    let upstream = Upstream::start(&[]);
    let filter = wasm_filter("header_filter", "my_root_id", &e2e::filter_wasm(), SEED);
    let envoy = Envoy::start_with(
        &bootstrap(upstream.addr(), vec![filter]),
        &["--component-log-level", "wasm:info"],
    )
    .unwrap_or_else(|f| panic!("{}\n{}", f.reason, f.log));
    let debug_line = "header-filter: rule 0 (response append resp-header-demo): applied";
    get(envoy.listener, "/", &[]).unwrap();
    assert!(
        !envoy.log().contains(debug_line),
        "debug lines at info level"
    );

    let mut admin = Client::connect(envoy.admin).unwrap();
    assert_eq!(
        admin
            .request("POST", "/logging?wasm=debug", &[])
            .unwrap()
            .status(),
        200
    );
    // Each worker re-reads the level on its next tick (every second).
    let seen = e2e::poll_until(Instant::now() + Duration::from_secs(15), || {
        get(envoy.listener, "/", &[]).unwrap();
        envoy.log().contains(debug_line).then_some(())
    });
    assert!(seen.is_some(), "no debug line 15 s after raising the level");
}

#[test]
fn request_rules_reach_the_upstream() {
    let upstream = Upstream::start(&[]);
    let envoy = start(
        &upstream,
        r#"{"rules":[
            {"direction":"request","op":"set","name":"x-set","value":"by-filter"},
            {"direction":"request","op":"append","name":"x-append","value":"second"},
            {"direction":"request","op":"set-if-absent","name":"x-keep","value":"by-filter"},
            {"direction":"request","op":"set-if-absent","name":"x-fill","value":"by-filter"},
            {"direction":"request","op":"remove","name":"x-drop"}
        ]}"#,
    );
    let resp = get(
        envoy.listener,
        "/",
        &[
            ("x-set", "client"),
            ("x-set", "client-again"),
            ("x-append", "first"),
            ("x-keep", "client"),
            ("x-drop", "secret"),
        ],
    )
    .unwrap();
    assert_eq!(resp.status(), 200);
    let got = upstream.last();
    assert_eq!(got.values("x-set"), ["by-filter"]);
    assert_eq!(got.values("x-append"), ["first", "second"]);
    assert_eq!(got.values("x-keep"), ["client"]);
    assert_eq!(got.values("x-fill"), ["by-filter"]);
    assert!(got.values("x-drop").is_empty(), "{:?}", got.headers);
    assert_eq!(
        envoy.stat_reaches("wasmcustom.header_filter.header_filter.rule_2.skipped", 1),
        Some(1),
        "set-if-absent found the client's header"
    );
}

#[test]
fn response_ops_conditions_and_placeholders() {
    let upstream = Upstream::start(&[
        ("x-a", "upstream"),
        ("x-b", "upstream"),
        ("x-gone", "upstream"),
    ]);
    let envoy = start(
        &upstream,
        r#"{"rules":[
            {"direction":"response","op":"set","name":"x-a","value":"filter"},
            {"direction":"response","op":"set-if-absent","name":"x-b","value":"filter"},
            {"direction":"response","op":"set-if-absent","name":"x-c","value":"filter"},
            {"direction":"response","op":"remove","name":"x-gone"},
            {"direction":"response","name":"x-api","value":"yes","when":{"path_prefix":"/api"}},
            {"direction":"response","name":"x-post","value":"yes","when":{"method":"POST"}},
            {"direction":"response","name":"x-debug","value":"on","when":{"header_present":"x-debug"}},
            {"direction":"response","name":"x-route","value":"${request.method} ${request.path}"},
            {"direction":"request","op":"set","name":"x-user-copy","value":"user=${request.header.x-user}"},
            {"direction":"request","op":"set","name":"x-user-only","value":"${request.header.x-user}"},
            {"direction":"response","name":"x-where","value":"${plugin.root_id}@${node.id}/${node.cluster}"}
        ]}"#,
    );

    let resp = get(envoy.listener, "/api/items?x=1", &[("x-user", "ann")]).unwrap();
    assert_eq!(resp.values("x-a"), ["filter"]);
    assert_eq!(resp.values("x-b"), ["upstream"]);
    assert_eq!(resp.values("x-c"), ["filter"]);
    assert!(resp.values("x-gone").is_empty());
    assert_eq!(resp.values("x-api"), ["yes"]);
    assert!(resp.values("x-post").is_empty());
    assert!(resp.values("x-debug").is_empty());
    assert_eq!(resp.values("x-route"), ["GET /api/items?x=1"]);
    assert_eq!(
        resp.values("x-where"),
        ["my_root_id@test-node/test-cluster"]
    );
    assert_eq!(upstream.last().values("x-user-copy"), ["user=ann"]);
    assert_eq!(upstream.last().values("x-user-only"), ["ann"]);

    let mut c = Client::connect(envoy.listener).unwrap();
    let resp = c.request("POST", "/other", &[("x-debug", "1")]).unwrap();
    assert!(resp.values("x-api").is_empty());
    assert_eq!(resp.values("x-post"), ["yes"]);
    assert_eq!(resp.values("x-debug"), ["on"]);
    assert_eq!(resp.values("x-route"), ["POST /other"]);
    assert_eq!(
        upstream.last().values("x-user-copy"),
        ["user="],
        "a missing header renders as nothing"
    );
    assert!(
        upstream.last().values("x-user-only").is_empty(),
        "a value that renders empty skips the rule"
    );
}

/// The placeholders the other tests leave out, each with the value Envoy 1.40 gives: the request
/// attributes of the stream and the connection's two addresses.
#[test]
fn connection_and_request_placeholders_take_envoys_values() {
    let upstream = Upstream::start(&[]);
    let envoy = start(
        &upstream,
        r#"{"rules":[
            {"direction":"response","name":"x-host","value":"${request.host}"},
            {"direction":"response","name":"x-scheme","value":"${request.scheme}"},
            {"direction":"response","name":"x-id","value":"${request.id}"},
            {"direction":"response","name":"x-protocol","value":"${request.protocol}"},
            {"direction":"response","name":"x-source","value":"${source.address}"},
            {"direction":"response","name":"x-destination","value":"${destination.address}"}
        ]}"#,
    );
    let mut c = Client::connect(envoy.listener).unwrap();
    let client = c.local_addr().unwrap();
    let resp = c.request("GET", "/p", &[]).unwrap();
    assert_eq!(resp.status(), 200);
    // The client's Host header (the listener's address), as the upstream received it too.
    assert_eq!(resp.values("x-host"), [envoy.listener.to_string()]);
    assert_eq!(upstream.last().values("host"), [envoy.listener.to_string()]);
    assert_eq!(resp.values("x-scheme"), ["http"]);
    assert_eq!(resp.values("x-protocol"), ["HTTP/1.1"]);
    assert_eq!(resp.values("x-source"), [client.to_string()]);
    assert_eq!(resp.values("x-destination"), [envoy.listener.to_string()]);
    // Envoy generates the request id and sends it upstream as x-request-id.
    let sent = upstream.last();
    let id = sent.header("x-request-id").unwrap_or("");
    assert_eq!(id.len(), 36, "a UUID: {id:?}");
    assert_eq!(resp.values("x-id"), [id]);
}

#[test]
fn bad_configuration_is_refused_with_the_filters_error() {
    let upstream = Upstream::start(&[]);
    let bad = r#"{"rules":[{"direction":"response","op":"sett","name":"x","value":"v"}]}"#;
    let filter = wasm_filter("header_filter", "my_root_id", &e2e::filter_wasm(), bad);
    let Err(failure) = Envoy::start(&bootstrap(upstream.addr(), vec![filter])) else {
        panic!("envoy accepted a configuration the filter rejects");
    };
    assert!(failure.reason.contains("exited"), "{}", failure.reason);
    assert!(
        failure.log.contains(
            "header-filter: invalid configuration: rules[0].op: unknown value \"sett\" at line 1 column 40, expected one of: append, set, set-if-absent, remove"
        ),
        "{}",
        failure.log
    );
    assert!(
        failure.log.contains("Unable to create Wasm"),
        "{}",
        failure.log
    );
}

#[test]
fn malformed_json_names_line_and_column() {
    let upstream = Upstream::start(&[]);
    let filter = wasm_filter(
        "header_filter",
        "my_root_id",
        &e2e::filter_wasm(),
        "{\"name\": \"x\",\n \"value\": \"y\",\n}",
    );
    let failure = Envoy::start(&bootstrap(upstream.addr(), vec![filter]))
        .err()
        .expect("envoy must refuse malformed JSON");
    assert!(
        failure.log.contains(
            "header-filter: invalid configuration: malformed JSON: unexpected '}', expected a field name in double quotes at line 3 column 1"
        ),
        "{}",
        failure.log
    );
}

#[test]
fn thousand_keepalive_requests_carry_the_header_and_leak_no_state() {
    keepalive_load("1");
}

/// With two workers each has its own VM, its own streams and its own summed counters; Envoy's
/// counters must still add up to every request.
#[test]
fn two_workers_keep_streams_apart_and_their_counters_add_up() {
    keepalive_load("2");
}

/// The body of the two tests above: a test helper, where a failed expectation should fail loudly.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
fn keepalive_load(concurrency: &str) {
    let upstream = Upstream::start(&[]);
    let filter = wasm_filter(
        "header_filter",
        "my_root_id",
        &e2e::filter_wasm(),
        r#"{"rules":[
            {"direction":"response","name":"resp-header-demo","value":"added by our filter"},
            {"direction":"response","name":"x-n","value":"${request.header.x-n}","when":{"header_present":"x-odd"}}
        ]}"#,
    );
    let mut config = bootstrap(upstream.addr(), vec![filter]);
    // Connections spread evenly over the workers, so that each worker's VM serves some.
    config["static_resources"]["listeners"][0]["connection_balance_config"] =
        serde_json::json!({"exact_balance": {}});
    let envoy = Envoy::start_with(
        &config,
        &[
            "--concurrency",
            concurrency,
            "--component-log-level",
            "wasm:debug",
        ],
    )
    .unwrap_or_else(|f| panic!("{}\n---- envoy log ----\n{}", f.reason, f.log));
    const CONNECTIONS: usize = 4;
    const PER_CONNECTION: usize = 250;
    let addr = envoy.listener;
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            thread::spawn(move || {
                let mut client = Client::connect(addr).unwrap();
                for i in 0..PER_CONNECTION {
                    let n = (c * PER_CONNECTION + i).to_string();
                    let mut headers = vec![("x-n", n.as_str())];
                    if i % 2 == 1 {
                        headers.push(("x-odd", "1"));
                    }
                    let resp = client.get("/", &headers).unwrap();
                    assert_eq!(resp.status(), 200, "request {n}");
                    assert_eq!(
                        resp.values("resp-header-demo"),
                        ["added by our filter"],
                        "request {n}"
                    );
                    if i % 2 == 1 {
                        assert_eq!(resp.values("x-n"), [n.as_str()], "request {n}");
                    } else {
                        assert!(
                            resp.values("x-n").is_empty(),
                            "request {n} got another stream's value"
                        );
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
    let total = (CONNECTIONS * PER_CONNECTION) as u64;
    assert_eq!(upstream.received().len() as u64, total);
    // Every worker served connections (so every worker's VM counted some requests).
    let per_worker = get(
        envoy.admin,
        "/stats?filter=worker_.*downstream_cx_total",
        &[],
    )
    .unwrap()
    .text();
    let workers: usize = concurrency.parse().unwrap();
    for w in 0..workers {
        let served = per_worker.lines().any(|l| {
            l.starts_with("listener.")
                && l.contains(&format!(".worker_{w}.downstream_cx_total: "))
                && !l.ends_with(": 0")
        });
        assert!(served, "worker {w} took no connection:\n{per_worker}");
    }
    assert_eq!(
        envoy.stat_reaches(
            "wasmcustom.header_filter.header_filter.rule_0.applied",
            total
        ),
        Some(total)
    );
    assert_eq!(
        envoy.stat_reaches(
            "wasmcustom.header_filter.header_filter.rule_1.applied",
            total / 2
        ),
        Some(total / 2)
    );
}

#[test]
fn example_envoy_config_in_the_readme_validates() {
    e2e::filter_wasm();
    let out = std::process::Command::new(e2e::envoy::envoy_bin())
        .current_dir(e2e::workspace_root())
        .args([
            "--mode",
            "validate",
            "-c",
            "filter/envoy.yaml",
            "--disable-hot-restart",
        ])
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("configured 4 rule(s) for plugin header_filter"),
        "{log}"
    );
}
