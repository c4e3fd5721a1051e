//! The local cluster itself (`scripts/cluster`, `e2e::cluster`): real nodes come up Ready, run
//! Pods scheduled across them, route Services through kube-proxy, resolve names through CoreDNS,
//! serve `kubectl exec` and `logs` through the API server, give Pods the in-cluster API, and
//! when taken down leave the host as they found it.

use e2e::cluster::Cluster;
use e2e::host_state::HostState;

const APPS: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: details
  namespace: demo
spec:
  replicas: 2
  selector:
    matchLabels: {app: details}
  template:
    metadata:
      labels: {app: details}
    spec:
      # one on each node: the Service then has to cross nodes for some requests
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {app: details}
      containers:
      - name: details
        image: APP_IMAGE
        ports:
        - containerPort: 9080
        readinessProbe:
          httpGet: {path: /details/0, port: 9080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: details
  namespace: demo
spec:
  selector: {app: details}
  ports:
  - {name: http, port: 9080}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: curl
  namespace: demo
spec:
  replicas: 1
  selector:
    matchLabels: {app: curl}
  template:
    metadata:
      labels: {app: curl}
    spec:
      containers:
      - name: curl
        image: CURL_IMAGE
";

#[test]
fn a_two_node_cluster_runs_pods_and_leaves_the_host_as_it_found_it() {
    assert!(
        e2e::is_root(),
        "the cluster needs root: namespaces, mounts, cgroups"
    );
    // (what an earlier run killed without unwinding left is taken down first, as every
    // cluster start does, so that it does not count as this run's change)
    e2e::cluster::reap_stale_nodes();
    let before = HostState::capture();
    {
        let c = Cluster::start(2);
        let ready = c.kubectl_ok(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status} {.spec.podCIDR}{\"\\n\"}{end}",
        ]);
        assert_eq!(
            ready.trim(),
            "node-1 True 10.244.1.0/24\nnode-2 True 10.244.2.0/24",
            "both nodes Ready with their Pod ranges"
        );
        let yaml = APPS
            .replace("APP_IMAGE", c.images.get("APP_IMAGE").expect("app image"))
            .replace(
                "CURL_IMAGE",
                c.images.get("CURL_IMAGE").expect("curl image"),
            );
        c.cp().apply(&yaml).expect("apply the demo apps");
        for d in ["details", "curl"] {
            c.kubectl_ok(&[
                "-n",
                "demo",
                "rollout",
                "status",
                &format!("deployment/{d}"),
                "--timeout=120s",
            ]);
        }
        let placed = c.kubectl_ok(&[
            "-n",
            "demo",
            "get",
            "pods",
            "-l",
            "app=details",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}",
        ]);
        let mut nodes: Vec<&str> = placed.lines().collect();
        nodes.sort();
        assert_eq!(
            nodes,
            ["node-1", "node-2"],
            "the scheduler spread the replicas"
        );

        // Through CoreDNS, kube-proxy and the bridge, from a Pod. Until kube-proxy has
        // programmed the Service's endpoints (a second or so after the Pods turn Ready) the
        // Service refuses connections; then every request is answered, several times: both
        // replicas answer, one of them on the other node.
        let request = [
            "-n",
            "demo",
            "exec",
            "deploy/curl",
            "--",
            "curl",
            "-sf",
            "http://details:9080/details/0",
        ];
        let first = e2e::poll_until(
            std::time::Instant::now() + std::time::Duration::from_secs(30),
            || c.kubectl(&request).status.success().then_some(()),
        );
        assert!(first.is_some(), "the Service never answered");
        for _ in 0..6 {
            let body = c.kubectl_ok(&request);
            assert!(body.contains("William Shakespeare"), "{body}");
        }
        // The in-cluster API address, as a Pod's client finds it.
        let version = c.kubectl_ok(&[
            "-n",
            "demo",
            "exec",
            "deploy/curl",
            "--",
            "sh",
            "-c",
            "curl -sf --cacert /var/run/secrets/kubernetes.io/serviceaccount/ca.crt \
             https://kubernetes.default.svc/version",
        ]);
        assert!(version.contains("\"gitVersion\": \"v1.37.2\""), "{version}");
        // Logs come from the kubelet through the API server's egress proxy.
        let logs = c.kubectl_ok(&["-n", "demo", "logs", "-l", "app=details", "--tail=50"]);
        let answered = logs.matches("response:200").count();
        assert!(
            answered >= 6,
            "httpd logged the requests it answered: {logs}"
        );
    }
    let changes = HostState::capture().changes_since(&before);
    assert!(
        changes.is_empty(),
        "the host changed across up and down:\n{}",
        changes.join("\n")
    );
}
