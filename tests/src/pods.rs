//! Workloads for tests on the local cluster ([`crate::cluster`]): bookinfo's `details` in an
//! injected namespace, a curl Pod, a client Pod that sends continuously and prints one line per
//! request, the FilterDeployment of docs/deploy.md, and the waits and checks on them.
//!
//! ```no_run
//! use e2e::pods::*;
//! let c = e2e::cluster::Cluster::start(2);
//! c.cp().apply(&apps(c.images.get("APP_IMAGE").unwrap(), c.images.get("CURL_IMAGE").unwrap())).unwrap();
//! ```

use crate::cluster::{Cluster, cluster_registry};
use std::time::{Duration, Instant};

/// The namespace of the workloads (labelled for injection).
pub const NS: &str = "demo";

/// bookinfo's details (two replicas, one per node), a curl Pod to run requests from, and a
/// client that sends one request every 100 ms and prints, per request, the status and the two
/// headers the filter versions add (`hello` from the header filter, `x-as-filter` from the
/// AssemblyScript one).
pub fn apps(app: &str, curl: &str) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata:
  name: {NS}
  labels:
    istio-injection: enabled
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: details-v1
  namespace: {NS}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: details, version: v1}}
  template:
    metadata:
      labels: {{app: details, version: v1}}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {{app: details}}
      containers:
      - name: details
        image: {app}
        ports:
        - containerPort: 9080
---
apiVersion: v1
kind: Service
metadata:
  name: details
  namespace: {NS}
spec:
  selector: {{app: details}}
  ports:
  - {{name: http, port: 9080}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: curl
  namespace: {NS}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: curl}}
  template:
    metadata:
      labels: {{app: curl}}
    spec:
      containers:
      - name: curl
        image: {curl}
"
    )
}

/// The client Pod: one request to details every 100 ms, a line per request (`200 hello=...
/// as=...`, or `FAIL curl exit N`).
pub fn client(curl: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: {NS}
spec:
  containers:
  - name: client
    image: {curl}
    command:
    - sh
    - -c
    - |
      while :; do
        curl -s -o /dev/null --max-time 5 \
          -w '%{{http_code}} hello=%header{{hello}} as=%header{{x-as-filter}}\n' \
          http://details:9080/details/0 || echo "FAIL curl exit $?"
        sleep 0.1
      done
"#
    )
}

/// docs/deploy.md's FilterDeployment for details-v1, with `delivery`, the image
/// `filters/header-filter:v1` in the cluster's registry.
pub fn filter_deployment(delivery: &str) -> String {
    format!(
        "apiVersion: filters.envoy-wasm-toolkit.io/v1alpha1
kind: FilterDeployment
metadata:
  name: details-v1-wasmfiltering
  namespace: {NS}
spec:
  workload:
    kind: Deployment
    name: details-v1
    labels:
      app: details
      version: v1
  filter:
    image: {}/filters/header-filter:v1
    # the header filter takes any root id; the AssemblyScript one (the re-push) needs its own
    rootId: as_filter
    parameters: '{{\"name\":\"hello\",\"value\":\"hello details\"}}'
  placement:
    direction: inbound
    port: 9080
  failurePolicy: closed
  delivery: {delivery}
",
        cluster_registry()
    )
}

/// `kubectl ARGS -o jsonpath=PATH`.
pub fn jsonpath(c: &Cluster, args: &[&str], path: &str) -> String {
    let mut a = args.to_vec();
    let p = format!("jsonpath={path}");
    a.extend(["-o", &p]);
    c.kubectl_ok(&a)
}

/// `name restarts node` of each details Pod that is not going away, sorted.
pub fn details_pods(c: &Cluster) -> Vec<String> {
    let out = jsonpath(
        c,
        &["-n", NS, "get", "pods", "-l", "app=details"],
        "{range .items[*]}{.metadata.name} {.metadata.deletionTimestamp} {.status.containerStatuses[*].restartCount} {.spec.nodeName}{\"\\n\"}{end}",
    );
    let mut v: Vec<String> = out
        .lines()
        .filter(|l| l.split(' ').nth(1).is_none_or(|d| d.is_empty()))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    v.sort();
    v
}

/// Wait until `cond` holds on the FilterDeployment's `Ready` reason and digest.
pub fn wait_fd(c: &Cluster, what: &str, within: Duration, cond: impl Fn(&str, &str) -> bool) {
    let mut last = String::new();
    let ok = crate::poll_until(Instant::now() + within, || {
        last = jsonpath(
            c,
            &[
                "-n",
                NS,
                "get",
                "filterdeployment",
                "details-v1-wasmfiltering",
            ],
            "{.status.conditions[?(@.type==\"Ready\")].reason} {.status.digest}",
        );
        let (reason, digest) = last.split_once(' ').unwrap_or((&last, ""));
        cond(reason, digest).then_some(())
    });
    assert!(ok.is_some(), "{what}: not within {within:?}; last {last}");
}

/// The client's lines so far.
/// (A kubelet that has just restarted may answer a moment with NotFound: asked again for up to
/// 30 s.)
pub fn client_lines(c: &Cluster) -> Vec<String> {
    let mut err = String::new();
    let text = crate::poll_until(Instant::now() + Duration::from_secs(30), || {
        let out = c.kubectl(&["-n", NS, "logs", "client"]);
        err = String::from_utf8_lossy(&out.stderr).into_owned();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    let text = text.unwrap_or_else(|| panic!("kubectl logs client: {err}"));
    text.lines().map(str::to_string).collect()
}

/// Wait until the client's last `n` responses after line `from` all carry `marker`: every
/// Pod behind the Service serves that version (two sidecars switch at their own moments, so a
/// count of responses with it says nothing of the other Pod).
pub fn wait_client_all(c: &Cluster, from: usize, marker: &str, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let ok = crate::poll_until(Instant::now() + Duration::from_secs(240), || {
        lines = client_lines(c);
        let after = lines.get(from..).unwrap_or_default();
        (after.len() >= n && after.iter().rev().take(n).all(|l| l.contains(marker))).then_some(())
    });
    assert!(
        ok.is_some(),
        "the client's last {n} responses never all carried {marker}: {:?}",
        &lines[lines.len().saturating_sub(n)..]
    );
    lines
}

/// Wait until the client has seen `n` responses with `marker` after line `from`.
pub fn wait_client(c: &Cluster, from: usize, marker: &str, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let ok = crate::poll_until(Instant::now() + Duration::from_secs(240), || {
        lines = client_lines(c);
        (lines
            .iter()
            .skip(from)
            .filter(|l| l.contains(marker))
            .count()
            >= n)
            .then_some(())
    });
    assert!(
        ok.is_some(),
        "the client never saw {n} responses with {marker}: {:?}",
        &lines[lines.len().saturating_sub(10)..]
    );
    lines
}

/// Every line a 200.
pub fn assert_clean(lines: &[String]) {
    let bad: Vec<&String> = lines.iter().filter(|l| !l.starts_with("200 ")).collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed: {:?}",
        bad.len(),
        lines.len(),
        &bad[..bad.len().min(10)]
    );
}

/// One request from the curl Pod to details in `namespace`: the response's head and body as
/// `curl -si` prints them, or the error.
pub fn curl_details(c: &Cluster, namespace: &str) -> Result<String, String> {
    let out = c.kubectl(&[
        "-n",
        namespace,
        "exec",
        "deploy/curl",
        "-c",
        "curl",
        "--",
        "curl",
        "-si",
        "http://details:9080/details/0",
    ]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Wait until the curl Pod's response holds `line` (a header line, `hello: hello details`).
pub fn wait_curl(c: &Cluster, namespace: &str, line: &str, within: Duration) {
    let mut last = Err(String::new());
    let ok = crate::poll_until(Instant::now() + within, || {
        last = curl_details(c, namespace);
        last.as_ref()
            .is_ok_and(|r| r.lines().any(|l| l.trim_end() == line))
            .then_some(())
    });
    assert!(ok.is_some(), "curl never saw {line:?}; last {last:?}");
}

/// `kubectl rollout status deployment/NAME` in `namespace`, up to 3 minutes.
pub fn rollout(c: &Cluster, namespace: &str, name: &str) {
    c.kubectl_ok(&[
        "-n",
        namespace,
        "rollout",
        "status",
        &format!("deployment/{name}"),
        "--timeout=180s",
    ]);
}

/// Start the client Pod ([`client`]) and wait until it is Ready.
pub fn start_client(c: &Cluster, curl: &str) {
    c.cp().apply(&client(curl)).expect("start the client");
    c.kubectl_ok(&[
        "-n",
        NS,
        "wait",
        "pod/client",
        "--for=condition=Ready",
        "--timeout=120s",
    ]);
}
