//! The `wasmctl` command line: run, bench, inspect, push, pull, login, agent, render, controller,
//! new, test, dev.
//!
//! Exit codes: 0 success; 1 an error (bad input, a module that fails to load, configure or
//! run, a registry failure) or a `test` scenario that failed; 2 bad usage (flags, or `run` of a
//! network filter without --tcp or of an HTTP filter with it); 3 `run --scenario` whose
//! expectations do not hold.

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wasmctl::oci::layout::Format;
use wasmctl::oci::registry::{self, Options, PushRequest};

/// Ship proxy-wasm filters through OCI registries, in the layouts Istio and Envoy Gateway load.
#[derive(Parser)]
#[command(name = "wasmctl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one request through a filter in the proxy-wasm harness and show what it did (with
    /// --tcp, one TCP connection through a network filter; with --service, run a bootstrap
    /// service and advance its clock)
    Run(RunCmd),
    /// Measure a filter in the harness: compile, plugin start, cost per request, memory growth
    Bench(BenchArgs),
    /// Push a wasm module as an image; prints the manifest digest and the digest-pinned reference
    Push(PushArgs),
    /// Pull the module of an image (any layout) into a file, verified, written atomically
    Pull(PullArgs),
    /// Store credentials for a registry where Docker and oras look (~/.docker/config.json)
    Login(LoginArgs),
    /// Describe a remote image (layout, digests, runtime config, where it loads) or a local module
    Inspect(InspectArgs),
    /// Sign an image's manifest digest with a cosign key pair; the signature is stored beside it
    /// as cosign stores it (tag sha256-<digest>.sig)
    Sign(SignArgs),
    /// Check that an image's current digest carries a signature that verifies with a cosign
    /// public key (offline: no transparency log)
    Verify(VerifyArgs),
    /// Node agent: keep DIR in step with an image list (pull by digest, atomic writes, ECDS files)
    Agent(AgentArgs),
    /// Render FilterDeployment resources into Istio EnvoyFilter/WasmPlugin objects, workload
    /// volume patches and the node agent's image list
    Render(RenderArgs),
    /// Keep every FilterDeployment in the cluster rendered, resolved, applied and reported
    /// (kubeconfig from KUBECONFIG, ~/.kube/config or the in-cluster service account)
    Controller(ControllerArgs),
    /// Create a filter project: a header filter on a proxy-wasm SDK (rust, go, assemblyscript),
    /// two scenarios, a README, a .gitignore and a CI workflow; it builds and passes as created
    New(wasmctl::new::NewArgs),
    /// Run scenario files against a module as a suite: a line per scenario, then "N passed,
    /// N failed"; exit 1 when any fails (module and scenarios from wasmctl.yaml when not given)
    Test(wasmctl::suite::TestArgs),
    /// Serve the module from a real Envoy (by ECDS) in front of an upstream or an echo server,
    /// and swap in every new build of it, checked in the harness first; Ctrl-C stops it all
    Dev(wasmctl::dev::DevArgs),
}

#[derive(Args)]
struct ControllerArgs {
    /// Watch only this namespace (repeat for several; default: all)
    #[arg(long = "namespace", short = 'n', value_name = "NAMESPACE")]
    namespaces: Vec<String>,
    /// How often a ready FilterDeployment's tag is re-resolved (a re-pushed tag rolls out)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    resync: std::time::Duration,
    /// First retry delay after a failure, doubled per consecutive failure
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    backoff_initial: std::time::Duration,
    /// Largest retry delay
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    backoff_max: std::time::Duration,
    /// HTTP listener: /healthz, /readyz, /metrics (Prometheus text), /status (JSON); "none": off
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9091")]
    listen: String,
    /// Elect a leader among replicas on a Lease NAMESPACE/NAME (only the holder reconciles)
    #[arg(long, value_name = "NAMESPACE/NAME")]
    leader_elect: Option<String>,
    /// How long other replicas wait, after the lease last changed, before they take it
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = duration)]
    lease_duration: std::time::Duration,
    /// How long the holder keeps leading without a successful renewal; shorter than the lease
    /// (default: two thirds of --lease-duration, as client-go's 10s of 15s)
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    renew_deadline: Option<std::time::Duration>,
    /// How often the holder renews and the others try (default: 2/15 of --lease-duration, as
    /// client-go's 2s of 15s)
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    retry_period: Option<std::time::Duration>,
    /// This replica's identity in the lease and in Events (default: $POD_NAME, else $HOSTNAME)
    #[arg(long, value_name = "ID")]
    identity: Option<String>,
    /// How long an envoyFilter rollout waits for the nodes' agents before Ready=False (the old
    /// module keeps serving)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    rollout_timeout: std::time::Duration,
    /// Largest module accepted, in bytes (default 256 MiB, as Istio)
    #[arg(long, value_name = "BYTES")]
    max_size: Option<u64>,
    #[command(flatten)]
    transport: Transport,
}

#[derive(Args)]
struct AgentArgs {
    /// The image list (YAML `images:` or plain `IMAGE` / `NAME IMAGE` lines), e.g. a mounted
    /// ConfigMap key; re-read every --poll, so a ConfigMap's `..data` swap is seen
    #[arg(long, value_name = "FILE")]
    images: PathBuf,
    /// Where modules go: DIR/<sha256>.wasm, and DIR/<name>.wasm symlinks to them
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// How often tags are re-resolved (an unchanged digest costs one manifest request)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    resync: std::time::Duration,
    /// How long an unlisted entry's link and an unused module stay before they are deleted
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    grace: std::time::Duration,
    /// How often the image list file is re-read
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    poll: std::time::Duration,
    /// First retry delay after a failure, doubled per consecutive failure
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    backoff_initial: std::time::Duration,
    /// Largest retry delay
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    backoff_max: std::time::Duration,
    /// Pull secrets: an entry's `pullSecret: NAME` reads DIR/NAME/.dockerconfigjson
    #[arg(long, value_name = "DIR")]
    secrets_dir: Option<PathBuf>,
    /// A cosign public key: pull only digests signed with it (an entry's `verifyKey` overrides
    /// it); an unsigned or wrongly signed image keeps the last good module
    #[arg(long, value_name = "FILE")]
    verify_key: Option<PathBuf>,
    /// Status HTTP listener: /healthz, /readyz, /metrics (Prometheus text), /status (JSON)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    listen: String,
    /// Write the status JSON to this file (atomically) after each change
    #[arg(long, value_name = "FILE")]
    status_file: Option<PathBuf>,
    /// Publish the modules this node holds (ConfigMap wasm-node-NODE, for the controller's
    /// rollouts) through the Kubernetes API (in-cluster service account or KUBECONFIG)
    #[arg(long, value_name = "NODE", env = "NODE_NAME")]
    node_name: Option<String>,
    /// Namespace of the node report
    #[arg(long, value_name = "NAMESPACE", default_value = "wasm-system")]
    report_namespace: String,
    /// Largest module accepted, in bytes (default 256 MiB, as Istio)
    #[arg(long, value_name = "BYTES")]
    max_size: Option<u64>,
    #[command(flatten)]
    transport: Transport,
}

fn duration(text: &str) -> Result<std::time::Duration, String> {
    wasmctl::ops::time::parse_duration(text)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// EnvoyFilter + workload volume patch + agent image list (the node agent delivers the module)
    EnvoyFilter,
    /// Istio WasmPlugin (Istio's agent pulls the image)
    WasmPlugin,
    /// Istio TrafficExtension (Istio 1.30 and later; Istio's agent pulls the image)
    TrafficExtension,
}

#[derive(Args)]
struct RenderArgs {
    /// FilterDeployment files (YAML, several documents allowed), and optionally the Deployment,
    /// StatefulSet or DaemonSet manifests to patch
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Delivery mode for every resource (default: each resource's spec.delivery)
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Do not ask the registry for digests (tags stay tags; no module is pulled)
    #[arg(long)]
    no_resolve: bool,
    /// Check the parameters against this module (run its on_configure in the harness) instead of
    /// the pulled one; with --no-resolve, the EnvoyFilter names the node's file by its sha256
    #[arg(long, value_name = "FILE.wasm")]
    module: Option<PathBuf>,
    /// Write one file per object into this directory instead of a YAML stream on stdout
    #[arg(short, long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// A cosign public key: every image's resolved digest must carry a signature verifying
    /// with it (needed when a FilterDeployment sets spec.filter.verification, whose keyRef is in
    /// the cluster)
    #[arg(long, value_name = "FILE")]
    verify_key: Option<PathBuf>,
    #[command(flatten)]
    transport: Transport,
}

#[derive(Args)]
struct Transport {
    /// Speak plain HTTP to the registry (default: HTTPS)
    #[arg(long, env = "WASMCTL_PLAIN_HTTP")]
    plain_http: bool,
    /// Accept the registry's TLS certificate even if it is self-signed or invalid
    #[arg(long, env = "WASMCTL_INSECURE")]
    insecure: bool,
    /// Credentials file in the Docker config format, e.g. a Kubernetes dockerconfigjson pull secret
    /// (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json)
    #[arg(long, value_name = "FILE")]
    registry_config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// Config blob as manifest config and layer 0, module as layer 1: what Istio and Envoy Gateway load
    Solo,
    /// One tar.gz layer holding plugin.wasm (annotation module.wasm.image/variant=compat)
    Compat,
    /// CNCF wasm artifact (application/wasm); Istio does not load it
    Cncf,
}

#[derive(Args)]
struct PushArgs {
    /// Target: REGISTRY/REPOSITORY:TAG (several tags: REPOSITORY:TAG1,TAG2)
    reference: String,
    /// The wasm module
    module: PathBuf,
    /// Image layout
    #[arg(long, value_enum, default_value = "solo")]
    format: FormatArg,
    /// Root id for the runtime config (repeatable)
    #[arg(long = "root-id", value_name = "ID")]
    root_ids: Vec<String>,
    /// Use this runtime config JSON instead of generating one
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Manifest annotation KEY=VALUE (repeatable)
    #[arg(long = "annotation", short = 'a', value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// A further tag (repeatable)
    #[arg(long = "tag", short = 't', value_name = "TAG")]
    tags: Vec<String>,
    /// Push even if the file is not a valid proxy-wasm module
    #[arg(long)]
    force: bool,
    /// No progress bar
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    transport: Transport,
}

#[derive(Args)]
struct PullArgs {
    /// Image: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST
    reference: String,
    /// Where to write the module
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Largest module accepted, in bytes (default 256 MiB, as Istio)
    #[arg(long, value_name = "BYTES")]
    max_size: Option<u64>,
    /// No progress bar
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    transport: Transport,
}

#[derive(Args)]
struct SignArgs {
    /// Image: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST (the digest a tag
    /// names now is what is signed)
    reference: String,
    /// cosign private key file (cosign.key; its password from COSIGN_PASSWORD)
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// An annotation in the signed payload, KEY=VALUE (repeat for more)
    #[arg(short = 'a', long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    #[command(flatten)]
    transport: Transport,
}

#[derive(Args)]
struct VerifyArgs {
    /// Image: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST
    reference: String,
    /// cosign public key file (cosign.pub)
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    #[command(flatten)]
    transport: Transport,
}

#[derive(Args)]
struct LoginArgs {
    /// Registry host[:port]
    registry: String,
    /// User name
    #[arg(short, long)]
    username: String,
    /// Read the password from standard input (the only way: it never appears in `ps`)
    #[arg(long, required = true)]
    password_stdin: bool,
    #[command(flatten)]
    transport: Transport,
}

#[derive(Args)]
struct RunArgs {
    /// The filter module (.wasm)
    module: PathBuf,
    /// Root id of the plugin (Envoy's config.root_id)
    #[arg(long, value_name = "ID")]
    root_id: Option<String>,
    /// Plugin configuration: the text itself, or @FILE to read it from a file
    #[arg(long, value_name = "JSON|@FILE")]
    config: Option<String>,
    /// A scenario file (YAML): request, upstream and cluster answers, expectations; or a TCP
    /// connection's steps (`connection:`, run as with --tcp)
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// VM configuration (vm_config.configuration, read in proxy_on_vm_start): the text, or @FILE
    #[arg(long, value_name = "TEXT|@FILE")]
    vm_config: Option<String>,
    /// Request method
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request path
    #[arg(long, default_value = "/")]
    path: String,
    /// A request header, NAME:VALUE (repeat for more)
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// Request body
    #[arg(long, value_name = "TEXT")]
    body: Option<String>,
    /// Upstream's status
    #[arg(long, value_name = "CODE")]
    status: Option<u16>,
    /// An upstream response header, NAME:VALUE (repeat for more)
    #[arg(long = "response-header", value_name = "NAME:VALUE")]
    response_headers: Vec<String>,
    /// Upstream's response body
    #[arg(long, value_name = "TEXT")]
    response_body: Option<String>,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunCmd {
    #[command(flatten)]
    run: RunArgs,
    /// Run the module as a bootstrap service (Envoy's envoy.bootstrap.wasm WasmService,
    /// singleton): VM start and configure, no request
    #[arg(long)]
    service: bool,
    /// With --service: advance the simulated clock by DURATION (250ms, 3s, 1m30s), firing
    /// ticks, queued work and the answers to HTTP calls in time order
    #[arg(long, value_name = "DURATION", value_parser = duration, requires = "service")]
    advance: Option<std::time::Duration>,
    /// Run the module as a network (TCP) filter, as Envoy runs envoy.filters.network.wasm
    /// before tcp_proxy: one connection, whose steps come from the scenario's `connection:`
    /// and then --send and --reply in the order given; an end left open closes at the end (the
    /// client first). Shows what each end sent and received, the closes, logs and metrics.
    /// Implied by --send, --reply and a scenario with `connection:`
    #[arg(long, conflicts_with_all = HTTP_FLAGS)]
    tcp: bool,
    /// Bytes the client sends on the connection (one read of the proxy; repeat for more)
    #[arg(long, value_name = "TEXT", conflicts_with_all = HTTP_FLAGS)]
    send: Vec<String>,
    /// Bytes the upstream sends back on the connection (repeat for more)
    #[arg(long, value_name = "TEXT", conflicts_with_all = HTTP_FLAGS)]
    reply: Vec<String>,
}

/// The `run` flags that describe an HTTP request, which a connection (`--tcp`) has not.
const HTTP_FLAGS: [&str; 8] = [
    "service",
    "method",
    "path",
    "headers",
    "body",
    "status",
    "response_headers",
    "response_body",
];

/// `--send` and `--reply` of `run`, as connection steps in the order given.
fn tcp_steps(matches: &clap::ArgMatches) -> Vec<proxy_wasm_harness::scenario::Step> {
    use proxy_wasm_harness::scenario::Step;
    let Some(("run", m)) = matches.subcommand() else {
        return Vec::new();
    };
    let mut steps: Vec<(usize, Step)> = Vec::new();
    for (id, step) in [
        ("send", Step::Downstream as fn(String) -> Step),
        ("reply", Step::Upstream),
    ] {
        if let (Some(at), Some(values)) = (m.indices_of(id), m.get_many::<String>(id)) {
            steps.extend(at.zip(values).map(|(i, v)| (i, step(v.clone()))));
        }
    }
    steps.sort_by_key(|(i, _)| *i);
    steps.into_iter().map(|(_, s)| s).collect()
}

/// The scenario of `run --tcp`: `s` as a connection (its own steps, then `steps`). A scenario
/// file describing an HTTP request is refused, naming its fields.
fn as_connection(
    mut s: proxy_wasm_harness::scenario::Scenario,
    steps: Vec<proxy_wasm_harness::scenario::Step>,
    file: Option<&Path>,
) -> anyhow::Result<proxy_wasm_harness::scenario::Scenario> {
    use proxy_wasm_harness::scenario::check_steps;
    let http = s.http_fields_given();
    let file = file.map(|f| f.display().to_string()).unwrap_or_default();
    if !http.is_empty() && s.is_connection() {
        // Only flags can have set them: `from_yaml` refuses them beside `connection:`.
        bail!(
            "the scenario {file} is a TCP connection (`connection:`), and HTTP flags were given \
             ({}): --method, --path, --header, --body, --status, --response-header and \
             --response-body describe a request",
            http.join(", ")
        );
    }
    if !http.is_empty() {
        bail!(
            "--tcp: the scenario {file} describes an HTTP request ({}); a connection \
             scenario has `connection:` (drop --tcp, --send and --reply to run the request)",
            http.join(", ")
        );
    }
    let mut all = s.connection.take().unwrap_or_default();
    all.extend(steps);
    check_steps(&all)
        .map_err(|e| anyhow::anyhow!("--send/--reply after the scenario's steps: {e}"))?;
    s.connection = Some(all);
    Ok(s)
}

#[derive(Args)]
struct BenchArgs {
    /// The request, as for `wasmctl run`
    #[command(flatten)]
    run: RunArgs,
    /// How many requests to time
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
}

#[derive(Args)]
struct InspectArgs {
    /// An existing local .wasm file, or a remote image reference
    target: String,
    /// Largest layer fetched to look inside a compat tar.gz, in bytes
    #[arg(long, value_name = "BYTES")]
    max_size: Option<u64>,
    #[command(flatten)]
    transport: Transport,
}

fn options(t: &Transport, quiet: bool, max_size: Option<u64>) -> Options {
    Options {
        plain_http: t.plain_http,
        insecure: t.insecure,
        registry_config: t.registry_config.clone(),
        progress: !quiet,
        max_size,
    }
}

fn parse_annotations(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!("--annotation {item:?}: expected KEY=VALUE");
        };
        if k.trim().is_empty() {
            bail!("--annotation {item:?}: empty key");
        }
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn inspect_local(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.display().to_string();
    let s = wasmctl::module::check(&bytes, &name)?;
    let mut out = String::new();
    let _ = writeln!(out, "file:      {name}");
    let _ = writeln!(out, "size:      {} bytes", s.size);
    let _ = writeln!(
        out,
        "sha256:    {}",
        wasmctl::oci::layout::sha256_digest(&bytes)
    );
    if s.abi_versions.is_empty() {
        let _ = writeln!(
            out,
            "proxy-wasm ABI: none (no proxy_abi_version_* export): not a proxy-wasm module"
        );
    } else {
        let _ = writeln!(out, "proxy-wasm ABI: {}", s.abi_versions.join(", "));
    }
    // What Envoy's host (and the harness) provide: anything else makes Envoy refuse the module.
    let unsupported = match proxy_wasm_harness::Module::from_bytes(
        &proxy_wasm_harness::Runtime::shared(),
        &bytes,
    ) {
        Ok(m) => {
            if let Some((min, max)) = m.memory_pages() {
                let max = max.map_or("no maximum".to_string(), |p| format!("max {p} pages"));
                let _ = writeln!(
                    out,
                    "memory:    {min} pages ({} KiB) initial, {max}",
                    min * 64
                );
            }
            m.unsupported_imports()
        }
        Err(e) => {
            let _ = writeln!(out, "harness:   cannot load it: {e}");
            Vec::new()
        }
    };
    let _ = writeln!(out, "imports ({}):", s.imports.len());
    for i in &s.imports {
        let mark = if unsupported.contains(i) {
            "   <- not provided by Envoy: Envoy refuses to load this module"
        } else {
            ""
        };
        let _ = writeln!(out, "  {i}{mark}");
    }
    let _ = writeln!(out, "exports ({}):", s.exports.len());
    for e in &s.exports {
        let _ = writeln!(out, "  {e}");
    }
    print_out(&out)
}

/// Print to stdout; a closed pipe (`| head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn header_pairs(flag: &str, raw: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    raw.iter()
        .map(|h| match h.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_ascii_lowercase(), v.trim().to_string()))
            }
            _ => bail!("{flag} {h:?}: expected NAME:VALUE"),
        })
        .collect()
}

/// The scenario `wasmctl run` executes: the file if given, with flags on top.
/// A flag's value: the text itself, or the contents of FILE for `@FILE`.
fn text_or_file(flag: &str, value: &str) -> anyhow::Result<String> {
    match value.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("{flag} @{file}: cannot read the file")),
        None => Ok(value.to_string()),
    }
}

fn scenario(a: &RunArgs) -> anyhow::Result<proxy_wasm_harness::scenario::Scenario> {
    use proxy_wasm_harness::scenario::Scenario;
    let mut s = match &a.scenario {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read scenario {}", file.display()))?;
            Scenario::from_yaml(&text).map_err(|message| wasmctl::Error::Scenario {
                file: file.clone(),
                message,
            })?
        }
        None => Scenario::from_yaml("name: command line").map_err(anyhow::Error::msg)?,
    };
    if let Some(id) = &a.root_id {
        s.root_id = id.clone();
    }
    if let Some(c) = &a.config {
        s.configuration = text_or_file("--config", c)?;
    }
    if let Some(c) = &a.vm_config {
        s.vm_configuration = text_or_file("--vm-config", c)?;
    }
    if a.scenario.is_none() || a.method != "GET" {
        s.request.method = a.method.clone();
    }
    if a.scenario.is_none() || a.path != "/" {
        s.request.path = a.path.clone();
    }
    s.request
        .headers
        .extend(header_pairs("--header", &a.headers)?);
    if let Some(b) = &a.body {
        s.request.body = b.clone();
    }
    if let Some(st) = a.status {
        s.upstream.status = st;
    }
    s.upstream
        .headers
        .extend(header_pairs("--response-header", &a.response_headers)?);
    if let Some(b) = &a.response_body {
        s.upstream.body = b.clone();
    }
    Ok(s)
}

/// Set when `test` ran a scenario that failed: exit code 1, after the suite's own report.
static TESTS_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set when `run` found unmet expectations: exit code 3.
static EXPECTATIONS_FAILED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn render(a: RenderArgs) -> anyhow::Result<()> {
    use wasmctl::render;
    let mut all = Vec::new();
    for f in &a.files {
        all.push(render::parse_file(f)?);
    }
    let inputs = render::merge(all)?;
    if inputs.deployments.is_empty() {
        bail!(
            "no FilterDeployment in {}",
            a.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let opts = render::Options {
        mode: a.mode.map(|m| match m {
            ModeArg::EnvoyFilter => render::spec::Delivery::EnvoyFilter,
            ModeArg::WasmPlugin => render::spec::Delivery::WasmPlugin,
            ModeArg::TrafficExtension => render::spec::Delivery::TrafficExtension,
        }),
    };
    for s in &inputs.deployments {
        if let Some(v) = &s.deployment.spec.filter.verification {
            let r = &v.key_ref;
            if a.no_resolve {
                bail!(
                    "{}: spec.filter.verification: a signature is checked on the image's digest, which --no-resolve does not ask for",
                    s.origin
                );
            }
            if a.verify_key.is_none() {
                bail!(
                    "{}: spec.filter.verification: its key is in the cluster ({:?} {}, key {}); pass the same public key with --verify-key FILE (the controller reads it itself)",
                    s.origin,
                    r.kind,
                    r.name,
                    r.key
                );
            }
        }
    }
    let pulled_dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let resolved = if a.no_resolve {
        if a.verify_key.is_some() {
            bail!("--verify-key checks the images' digests, which --no-resolve does not ask for");
        }
        // Nothing is asked of a registry; a module named on the command line is still run, and
        // names the node's file by its sha256 (the agent's content-addressed name), so that
        // another module renders another EnvoyFilter and reaches running sidecars.
        let mut resolved = render::Resolved::default();
        if let Some(m) = &a.module {
            for s in &inputs.deployments {
                render::check_parameters(s, m)?;
            }
            let bytes = std::fs::read(m).with_context(|| format!("cannot read {}", m.display()))?;
            let sha = wasmctl::oci::layout::sha256_hex(&bytes);
            for image in render::images(&inputs) {
                resolved.modules.insert(image, sha.clone());
            }
            eprintln!(
                "note: --no-resolve --module: the EnvoyFilter names {}/{sha}.wasm; the image must hold exactly that module",
                render::NODE_DIR
            );
        }
        resolved
    } else {
        let ropts = options(&a.transport, true, None);
        let key = match &a.verify_key {
            Some(path) => Some(wasmctl::oci::sign::load_public_key(path)?),
            None => None,
        };
        let modules = a.module.is_none().then_some(pulled_dir.path());
        runtime()?.block_on(wasmctl::pipeline::prepare_all(
            &inputs,
            &ropts,
            key.as_ref(),
            modules,
            a.module.as_deref(),
        ))?
    };
    let objects = render::render(&inputs, &opts, &resolved)?;
    for n in render::notes(&inputs, &opts, &resolved) {
        eprintln!("note: {n}");
    }
    match &a.output {
        Some(dir) => {
            for p in render::write_dir(&objects, dir)? {
                println!("wrote {}", p.display());
            }
        }
        None => print_out(&render::to_yaml(&objects)?)?,
    }
    Ok(())
}

/// A report on stdout: pretty JSON with `--json`, else as text.
fn print_report<R: serde::Serialize + std::fmt::Display>(
    json: bool,
    report: &R,
) -> anyhow::Result<()> {
    if json {
        let text = serde_json::to_string_pretty(report).context("cannot serialize the report")?;
        print_out(&format!("{text}\n"))
    } else {
        print_out(&report.to_string())
    }
}

fn run(cli: Cli, tcp_steps: &[proxy_wasm_harness::scenario::Step]) -> anyhow::Result<()> {
    match cli.command {
        Command::Render(a) => return render(a),
        Command::New(a) => wasmctl::new::run(&a)?,
        Command::Test(a) => {
            if !wasmctl::suite::run(&a)? {
                TESTS_FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Command::Dev(a) => wasmctl::dev::run(&a)?,
        Command::Run(RunCmd {
            run: a,
            service: true,
            advance,
            ..
        }) => {
            let s = scenario(&a)?;
            let advance = advance.unwrap_or_default();
            let report = wasmctl::run::run_service(&a.module, &s, advance)?;
            print_report(a.json, &report)?;
        }
        Command::Run(RunCmd {
            run: a,
            tcp,
            send,
            reply,
            ..
        }) => {
            let mut s = scenario(&a)?;
            if tcp || !send.is_empty() || !reply.is_empty() || s.is_connection() {
                s = as_connection(s, tcp_steps.to_vec(), a.scenario.as_deref())?;
            }
            let report = wasmctl::run::run(&a.module, &s)?;
            print_report(a.json, &report)?;
            if !report.failed_expectations().is_empty() {
                EXPECTATIONS_FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Command::Bench(a) => {
            let s = scenario(&a.run)?;
            if s.is_connection() {
                bail!(
                    "bench measures HTTP requests, and the scenario describes a TCP connection \
                     (`connection:`)"
                );
            }
            let report = wasmctl::bench::bench(&a.run.module, &s, a.requests)?;
            print_report(a.run.json, &report)?;
        }
        Command::Push(a) => {
            let req = PushRequest {
                reference: a.reference,
                extra_tags: a.tags,
                module: a.module,
                format: match a.format {
                    FormatArg::Solo => Format::Solo,
                    FormatArg::Compat => Format::Compat,
                    FormatArg::Cncf => Format::Cncf,
                },
                root_ids: a.root_ids,
                config: a.config,
                annotations: parse_annotations(&a.annotations)?,
                force: a.force,
            };
            let opts = options(&a.transport, a.quiet, None);
            let pushed = runtime()?.block_on(registry::push(&req, &opts))?;
            for w in &pushed.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "pushed {} bytes as {} format: {} blob(s) uploaded, {} already present",
                pushed.module_size, req.format, pushed.uploaded, pushed.skipped
            );
            for t in &pushed.tagged {
                println!("tagged: {t}");
            }
            println!("digest: {}", pushed.digest);
            println!("pinned: {}", pushed.pinned);
        }
        Command::Pull(a) => {
            let opts = options(&a.transport, a.quiet, a.max_size);
            let pulled = runtime()?.block_on(registry::pull(&a.reference, &a.output, &opts))?;
            println!(
                "pulled {} ({}, {} bytes) to {}",
                a.reference,
                pulled.layout,
                pulled.size,
                pulled.path.display()
            );
            println!("digest: {}", pulled.digest);
        }
        Command::Login(a) => {
            let mut password = String::new();
            if std::io::stdin().is_terminal() {
                eprintln!("password for {} (end with Ctrl-D):", a.username);
            }
            std::io::stdin()
                .read_to_string(&mut password)
                .context("cannot read the password from standard input")?;
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                bail!("--password-stdin: standard input was empty");
            }
            let opts = options(&a.transport, true, None);
            let file =
                runtime()?.block_on(registry::login(&a.registry, &a.username, password, &opts))?;
            println!(
                "login succeeded for {} at {}; credentials stored in {}",
                a.username,
                a.registry,
                file.display()
            );
        }
        Command::Sign(a) => {
            let password = std::env::var("COSIGN_PASSWORD").unwrap_or_default();
            let key = wasmctl::oci::sign::load_private_key(&a.key, password.as_bytes())?;
            let annotations = parse_annotations(&a.annotations)?;
            let opts = options(&a.transport, true, None);
            let signed = runtime()?.block_on(wasmctl::oci::sign::sign(
                &a.reference,
                &key,
                &annotations,
                &opts,
            ))?;
            println!("signed: {}", signed.digest);
            println!(
                "signature: {} ({} signature(s) for this digest)",
                signed.signature_reference, signed.count
            );
        }
        Command::Verify(a) => {
            let key = wasmctl::oci::sign::load_public_key(&a.key)?;
            let opts = options(&a.transport, true, None);
            let v = runtime()?.block_on(wasmctl::oci::sign::verify(&a.reference, &key, &opts))?;
            println!(
                "verified: {} signed by {} ({} signature(s))",
                v.digest,
                a.key.display(),
                v.claims.len()
            );
            for c in &v.claims {
                for (k, val) in &c.annotations {
                    println!("  {k}={val}");
                }
            }
        }
        Command::Inspect(a) => {
            let path = Path::new(&a.target);
            if path.is_file() {
                return inspect_local(path);
            }
            let opts = options(&a.transport, true, a.max_size);
            let found = runtime()?.block_on(registry::inspect(&a.target, &opts))?;
            print_out(&found.to_string())?;
        }
        Command::Agent(a) => {
            let mut cfg = wasmctl::agent::Config::new(a.images, a.dir);
            cfg.resync = a.resync;
            cfg.grace = a.grace;
            cfg.poll = a.poll;
            cfg.backoff_initial = a.backoff_initial;
            cfg.backoff_max = a.backoff_max;
            cfg.registry = options(&a.transport, true, a.max_size);
            cfg.secrets_dir = a.secrets_dir;
            cfg.verify_key = a.verify_key;
            cfg.status_file = a.status_file;
            cfg.node_report = a.node_name.map(|n| (n, a.report_namespace));
            cfg.listen = match a.listen.as_str() {
                "" | "none" | "off" => None,
                text => Some(text.parse().with_context(|| {
                    format!("--listen {text:?}: expected IP:PORT, e.g. 127.0.0.1:9090")
                })?),
            };
            wasmctl::ops::log::init();
            runtime()?.block_on(wasmctl::agent::run(cfg, shutdown_signal()))?;
        }
        Command::Controller(a) => {
            let mut cfg = wasmctl::controller::Config {
                namespaces: a.namespaces,
                resync: a.resync,
                backoff_initial: a.backoff_initial,
                backoff_max: a.backoff_max,
                registry: options(&a.transport, true, a.max_size),
                lease: {
                    let t = wasmctl::controller::lease::Timing::for_lease(a.lease_duration);
                    wasmctl::controller::lease::Timing {
                        renew_deadline: a.renew_deadline.unwrap_or(t.renew_deadline),
                        retry_period: a.retry_period.unwrap_or(t.retry_period),
                        ..t
                    }
                },
                rollout_timeout: a.rollout_timeout,
                ..wasmctl::controller::Config::default()
            };
            if let Some(id) = a.identity {
                cfg.identity = id;
            }
            cfg.listen = match a.listen.as_str() {
                "" | "none" | "off" => None,
                text => Some(text.parse().with_context(|| {
                    format!("--listen {text:?}: expected IP:PORT, e.g. 127.0.0.1:9091")
                })?),
            };
            if let Some(l) = a.leader_elect {
                let (ns, name) = l.split_once('/').with_context(|| {
                    format!("--leader-elect {l:?}: expected NAMESPACE/NAME, e.g. wasm-system/wasmctl-controller")
                })?;
                cfg.lease_name = Some((ns.to_string(), name.to_string()));
                cfg.lease.check().map_err(anyhow::Error::msg)?;
            }
            wasmctl::ops::log::init();
            runtime()?.block_on(wasmctl::controller::run(cfg, shutdown_signal()))?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli, &tcp_steps(&matches)) {
        Ok(()) if EXPECTATIONS_FAILED.load(std::sync::atomic::Ordering::Relaxed) => {
            ExitCode::from(3)
        }
        Ok(()) if TESTS_FAILED.load(std::sync::atomic::Ordering::Relaxed) => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A module run as the other kind of filter (network vs HTTP) is bad usage.
            match e.downcast_ref::<wasmctl::Error>() {
                Some(wasmctl::Error::FilterKind { .. }) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use clap::CommandFactory as _;
    use proxy_wasm_harness::scenario::{End, Scenario, Step};

    fn matches(args: &[&str]) -> Result<clap::ArgMatches, clap::Error> {
        let mut all = vec!["wasmctl", "run", "m.wasm"];
        all.extend(args);
        Cli::command().try_get_matches_from(all)
    }

    #[test]
    fn send_and_reply_are_steps_in_the_order_given() {
        let m = matches(&["--send", "a", "--reply", "b", "--send", "c", "--tcp"]).unwrap();
        assert_eq!(
            tcp_steps(&m),
            [
                Step::Downstream("a".into()),
                Step::Upstream("b".into()),
                Step::Downstream("c".into()),
            ]
        );
        assert_eq!(tcp_steps(&matches(&[]).unwrap()), []);
    }

    #[test]
    fn a_connection_takes_no_http_flag() {
        for (flag, value) in [
            ("--path", "/x"),
            ("--method", "POST"),
            ("--header", "a: b"),
            ("--body", "b"),
            ("--status", "500"),
            ("--response-body", "b"),
        ] {
            for tcp in [&["--tcp"][..], &["--send", "x"], &["--reply", "x"]] {
                let mut args = tcp.to_vec();
                args.extend([flag, value]);
                let e = matches(&args).err().unwrap_or_else(|| panic!("{args:?}"));
                assert_eq!(
                    e.kind(),
                    clap::error::ErrorKind::ArgumentConflict,
                    "{args:?}"
                );
            }
        }
        assert!(matches(&["--tcp", "--service"]).is_err());
        // Their defaults do not count.
        assert!(matches(&["--tcp", "--send", "x", "--reply", "y"]).is_ok());
    }

    #[test]
    fn a_scenario_becomes_a_connection_unless_it_describes_a_request() {
        let s = Scenario::from_yaml("name: s\nconfiguration: c\n").unwrap();
        let c = as_connection(s, vec![Step::Downstream("a".into())], None).unwrap();
        assert_eq!(c.connection, Some(vec![Step::Downstream("a".into())]));
        let s = Scenario::from_yaml("name: s\nconnection: [{close: downstream}]\n").unwrap();
        let e = as_connection(s, vec![Step::Downstream("a".into())], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--send/--reply after the scenario's steps: connection[1]: the client sends after it closed (connection[0])"
        );
        let s = Scenario::from_yaml("name: s\nconnection: [{close: downstream}]\n").unwrap();
        let c = as_connection(s, vec![Step::Upstream("z".into())], None).unwrap();
        assert_eq!(
            c.connection,
            Some(vec![
                Step::Close(End::Downstream),
                Step::Upstream("z".into())
            ])
        );
        let s =
            Scenario::from_yaml("name: s\nrequest: {path: /x}\nexpect: {status: 200}\n").unwrap();
        let e = as_connection(s, Vec::new(), Some(Path::new("s.yaml"))).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "--tcp: the scenario s.yaml describes an HTTP request (request, expect.status)"
            ),
            "{e}"
        );
        // A connection file with an HTTP flag on top (here --path /y).
        let mut s = Scenario::from_yaml("name: s\nconnection: []\n").unwrap();
        s.request.path = "/y".into();
        let e = as_connection(s, Vec::new(), Some(Path::new("c.yaml"))).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "the scenario c.yaml is a TCP connection (`connection:`), and HTTP flags were given (request)"
            ),
            "{e}"
        );
    }
}
