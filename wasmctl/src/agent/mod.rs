//! The node agent (`wasmctl agent`): keeps a directory of proxy-wasm modules in step with an
//! image list, the way a DaemonSet does for the sidecars of its node.
//!
//! For each entry of the list ([`list`]) it resolves the image's tag to a manifest digest, pulls
//! the module when the digest is new (any layout [`crate::oci::registry::fetch`] reads, verified
//! against every digest, the wasm magic and a validator), writes it as `DIR/<sha256>.wasm` and
//! points the symlink `DIR/<name>.wasm` at it; both writes are atomic. It re-resolves every
//! `resync`; an unchanged digest costs one manifest request. A failure (registry down, 401,
//! unknown tag, digest mismatch, disk full, a module that is not wasm) leaves the last good module
//! in place and is retried with capped exponential backoff, without holding up other entries.
//! Entries removed from the list, and module versions no entry uses, are deleted `grace` after
//! they stopped being used, never while listed. An entry may carry an `ecds` block: the agent
//! then writes an Envoy ECDS file for it whenever its module or that block changes (what the
//! control plane's ECDS push does in a mesh).
//!
//! The list file is polled (its resolved content, so a ConfigMap's `..data` symlink swap is
//! seen); a list that does not parse is reported and the previous one kept.
//!
//! ```no_run
//! # async fn demo() -> wasmctl::Result<()> {
//! use wasmctl::agent::{self, Config};
//! let config = Config::new("/etc/wasm-agent/images/images.yaml", "/var/local/lib/wasm-filters");
//! agent::run(config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod list;
pub mod node;
pub mod store;

use crate::error::{Error, Result};
use crate::oci::registry::{Fetched, Options};
use crate::ops::log::log;
use crate::ops::metrics;
use crate::ops::server::{self, Published};
use crate::ops::time::{self, unix_now};
use list::Entry;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Current, State};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The image list file (a mounted ConfigMap key).
    pub images: PathBuf,
    /// The module directory.
    pub dir: PathBuf,
    /// How often tags are re-resolved.
    pub resync: Duration,
    /// How long unused modules and removed entries stay before they are deleted.
    pub grace: Duration,
    /// How often the image list file is re-read.
    pub poll: Duration,
    /// First retry delay after a failure; doubled per consecutive failure.
    pub backoff_initial: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Registry transport and the credentials file for entries without a pull secret.
    pub registry: Options,
    /// Where pull secrets are mounted: `<secrets-dir>/<pullSecret>/.dockerconfigjson`.
    pub secrets_dir: Option<PathBuf>,
    /// A cosign public key: every entry without a `verifyKey` of its own is pulled only when
    /// its digest carries a signature that verifies with it.
    pub verify_key: Option<PathBuf>,
    /// The status HTTP listener (`/healthz`, `/readyz`, `/metrics`, `/status`); `None`: none.
    pub listen: Option<SocketAddr>,
    /// A file the status JSON is written to (atomically) after each change.
    pub status_file: Option<PathBuf>,
    /// Publish the modules this node holds as `(node, namespace)`'s report
    /// ([`node::report`]); `None`: no report (no Kubernetes API needed).
    pub node_report: Option<(String, String)>,
}

impl Config {
    /// The defaults: resync 60 s, grace 5 min, list polled every second, backoff 1 s to 5 min,
    /// status on 127.0.0.1:9090.
    pub fn new(images: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> Config {
        Config {
            images: images.into(),
            dir: dir.into(),
            resync: Duration::from_secs(60),
            grace: Duration::from_secs(300),
            poll: Duration::from_secs(1),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            registry: Options::default(),
            secrets_dir: None,
            verify_key: None,
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            status_file: None,
            node_report: None,
        }
    }
}

/// Counters of one entry.
#[derive(Debug, Default, Clone)]
struct Counters {
    resolves: u64,
    pulls: u64,
    bytes: u64,
    failures: u64,
    last_success: Option<f64>,
}

/// One listed entry and what the agent knows about it.
struct Slot {
    entry: Entry,
    /// Bumped whenever the entry changes, so that late results of an older version are dropped.
    generation: u64,
    current: Option<Current>,
    next_due: Instant,
    in_flight: bool,
    failures_in_row: u32,
    last_error: Option<String>,
    counters: Counters,
}

/// The result of one resolve/pull, computed off the main loop.
struct Outcome {
    name: String,
    generation: u64,
    result: Result<Fetched>,
}

struct Agent {
    cfg: Config,
    dir_abs: PathBuf,
    slots: BTreeMap<String, Slot>,
    state: State,
    list_loaded: bool,
    list_text: Option<Vec<u8>>,
    list_error: Option<String>,
    list_errors: u64,
    next_generation: u64,
    listen: Option<SocketAddr>,
    published: Arc<Mutex<Published>>,
    last_status: String,
    /// The modules the listed entries hold (what the node report says).
    held: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

/// Run the agent until `shutdown` completes (SIGTERM in `wasmctl agent`), then stop cleanly: no
/// write is left half-done (every write is a rename), the status file is written a last time.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    std::fs::create_dir_all(&cfg.dir)
        .map_err(|e| Error::io("cannot create the module directory", &cfg.dir, e))?;
    let dir_abs = std::fs::canonicalize(&cfg.dir)
        .map_err(|e| Error::io("cannot resolve the module directory", &cfg.dir, e))?;
    store::remove_stale_temporaries(&dir_abs);
    let (mut state, state_error) = State::load(&dir_abs);
    if let Some(e) = state_error {
        log("warn", "state-ignored", &[("reason", &e)]);
    }
    // Only modules still intact count as in place.
    state.images.retain(|name, c| {
        let ok = store::verify(&dir_abs, &c.sha256);
        if !ok {
            log(
                "warn",
                "module-missing",
                &[
                    ("name", name),
                    ("sha256", &c.sha256),
                    (
                        "reason",
                        "the file is missing or does not match its sha256; it will be pulled again",
                    ),
                ],
            );
        }
        ok
    });
    let published = Arc::new(Mutex::new(Published::default()));
    let mut server = None;
    let mut listen = None;
    if let Some(addr) = cfg.listen {
        let listener = server::bind(addr)
            .await
            .map_err(|e| Error::Usage(format!("--listen {addr}: cannot listen there: {e}")))?;
        listen = listener.local_addr().ok();
        server = Some(tokio::spawn(server::serve(listener, published.clone())));
    }
    let mut agent = Agent {
        dir_abs,
        slots: BTreeMap::new(),
        state,
        list_loaded: false,
        list_text: None,
        list_error: None,
        list_errors: 0,
        next_generation: 0,
        listen,
        published,
        last_status: String::new(),
        held: Arc::default(),
        cfg,
    };
    log(
        "info",
        "started",
        &[
            ("images", &agent.cfg.images.display().to_string()),
            ("dir", &agent.dir_abs.display().to_string()),
            ("listen", &listen.map(|a| a.to_string()).unwrap_or_default()),
            ("resync", &format!("{:?}", agent.cfg.resync)),
            ("grace", &format!("{:?}", agent.cfg.grace)),
            ("known_modules", &agent.state.images.len().to_string()),
        ],
    );
    let reporter = agent.cfg.node_report.clone().map(|(node, namespace)| {
        let (held, poll, refresh) = (agent.held.clone(), agent.cfg.poll, agent.cfg.resync);
        tokio::spawn(async move { node::report(held, &node, &namespace, poll, refresh).await })
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_poll = Instant::now();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(outcome) = rx.recv() => agent.apply(outcome),
            _ = tick.tick() => {
                if Instant::now() >= next_poll {
                    agent.poll_list();
                    next_poll = Instant::now() + agent.cfg.poll;
                }
                agent.spawn_due(&mut tasks, &tx);
                agent.collect_garbage();
                while tasks.try_join_next().is_some() {}
            }
        }
        agent.publish();
    }
    log("info", "stopping", &[("reason", "shutdown signal")]);
    if let Some(r) = reporter {
        r.abort();
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    agent.publish();
    if let Some(s) = server {
        s.abort();
    }
    log("info", "stopped", &[]);
    Ok(())
}

impl Agent {
    fn poll_list(&mut self) {
        let path = &self.cfg.images;
        let text = match std::fs::read(path) {
            Ok(t) => t,
            // No list yet: nothing deployed through the agent (the image-list ConfigMap is
            // created by the controller or a rendered manifest, and mounted optional).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => b"images: []\n".to_vec(),
            Err(e) => {
                let reason = format!("cannot read {}: {e}", path.display());
                if self.list_error.as_deref() != Some(reason.as_str()) {
                    self.list_errors += 1;
                    log(
                        "error",
                        "list-failed",
                        &[
                            ("file", &path.display().to_string()),
                            ("error", &reason),
                            ("action", "keeping the previous list"),
                        ],
                    );
                    self.list_error = Some(reason);
                    self.list_text = None;
                }
                return;
            }
        };
        if self.list_text.as_deref() == Some(text.as_slice()) {
            return;
        }
        self.list_text = Some(text.clone());
        let parsed = std::str::from_utf8(&text)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(list::parse);
        let entries = match parsed {
            Ok(l) => l,
            Err(reason) => {
                let err = Error::ImageList {
                    file: path.clone(),
                    reason,
                }
                .to_string();
                self.list_errors += 1;
                log(
                    "error",
                    "list-failed",
                    &[("error", &err), ("action", "keeping the previous list")],
                );
                self.list_error = Some(err);
                return;
            }
        };
        self.list_error = None;
        self.apply_list(entries);
    }

    fn apply_list(&mut self, entries: Vec<Entry>) {
        let now = Instant::now();
        let t = unix_now();
        let names: BTreeSet<String> = entries.iter().map(|e| e.name.clone()).collect();
        let gone: Vec<String> = self
            .slots
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.slots.remove(&name);
            log(
                "info",
                "unlisted",
                &[
                    ("name", &name),
                    (
                        "action",
                        &format!("module kept for {:?}, then deleted", self.cfg.grace),
                    ),
                ],
            );
        }
        // Names the previous run had in place but this list lacks leave the list now.
        for name in self.state.images.keys() {
            if !names.contains(name) && !self.state.removed.contains_key(name) {
                self.state.removed.insert(name.clone(), t);
            }
        }
        let mut changed = 0;
        for e in entries {
            self.state.removed.remove(&e.name);
            match self.slots.get_mut(&e.name) {
                Some(slot) if slot.entry == e => {}
                Some(slot) => {
                    changed += 1;
                    let image_changed =
                        slot.entry.image != e.image || slot.entry.pull_secret != e.pull_secret;
                    slot.entry = e;
                    self.next_generation += 1;
                    slot.generation = self.next_generation;
                    if image_changed {
                        slot.in_flight = false;
                        slot.failures_in_row = 0;
                        slot.next_due = now;
                    }
                    let name = slot.entry.name.clone();
                    self.write_ecds(&name);
                }
                None => {
                    changed += 1;
                    self.next_generation += 1;
                    let current = self.state.images.get(&e.name).cloned();
                    let name = e.name.clone();
                    self.slots.insert(
                        e.name.clone(),
                        Slot {
                            entry: e,
                            generation: self.next_generation,
                            current,
                            next_due: now,
                            in_flight: false,
                            failures_in_row: 0,
                            last_error: None,
                            counters: Counters::default(),
                        },
                    );
                    // A module from the previous run serves at once; the sync confirms it.
                    if self.slots.get(&name).is_some_and(|s| s.current.is_some()) {
                        self.ensure_link(&name);
                        self.write_ecds(&name);
                    }
                }
            }
        }
        self.list_loaded = true;
        log(
            "info",
            "list-loaded",
            &[
                ("file", &self.cfg.images.display().to_string()),
                ("entries", &self.slots.len().to_string()),
                ("changed", &changed.to_string()),
            ],
        );
        self.save_state();
    }

    fn options_for(&self, e: &Entry) -> Result<Options> {
        let mut o = self.cfg.registry.clone();
        o.progress = false;
        if let Some(secret) = &e.pull_secret {
            let Some(dir) = &self.cfg.secrets_dir else {
                return Err(Error::Usage(format!(
                    "entry {}: pullSecret {secret:?} given, but the agent has no --secrets-dir",
                    e.name
                )));
            };
            o.registry_config = Some(dir.join(secret).join(".dockerconfigjson"));
        }
        Ok(o)
    }

    fn spawn_due(
        &mut self,
        tasks: &mut tokio::task::JoinSet<()>,
        tx: &tokio::sync::mpsc::UnboundedSender<Outcome>,
    ) {
        let now = Instant::now();
        let due: Vec<String> = self
            .slots
            .values()
            .filter(|s| !s.in_flight && s.next_due <= now)
            .map(|s| s.entry.name.clone())
            .collect();
        for name in due {
            let Some(slot) = self.slots.get(&name) else {
                continue;
            };
            let opts = self.options_for(&slot.entry);
            // The digest in place is only worth comparing with while its file is intact.
            let known = slot
                .current
                .as_ref()
                .filter(|c| store::verify(&self.dir_abs, &c.sha256))
                .map(|c| c.manifest_digest.clone());
            // A digest-pinned image never changes: once its module is in place, no request.
            let pinned = slot.entry.image.split_once('@').map(|(_, d)| d.to_string());
            if pinned.is_some() && pinned == known {
                if let Some(slot) = self.slots.get_mut(&name)
                    && let Some(c) = slot.current.as_mut()
                {
                    c.image = slot.entry.image.clone();
                }
                self.succeeded(&name);
                continue;
            }
            let (image, generation, tx) = (slot.entry.image.clone(), slot.generation, tx.clone());
            let want_config = slot.entry.ecds.is_some();
            let key = slot
                .entry
                .verify_key
                .clone()
                .or_else(|| self.cfg.verify_key.clone());
            if let Some(slot) = self.slots.get_mut(&name) {
                slot.in_flight = true;
            }
            tasks.spawn(async move {
                let result = match opts {
                    Ok(opts) => {
                        fetch_checked(&image, &opts, known.as_deref(), want_config, key.as_deref())
                            .await
                    }
                    Err(e) => Err(e),
                };
                let _ = tx.send(Outcome {
                    name,
                    generation,
                    result,
                });
            });
        }
    }

    fn apply(&mut self, o: Outcome) {
        let Some(slot) = self.slots.get_mut(&o.name) else {
            return;
        };
        if slot.generation != o.generation {
            return;
        }
        slot.in_flight = false;
        slot.counters.resolves += 1;
        match o.result {
            Ok(Fetched::Unchanged { digest }) => {
                if let Some(c) = slot.current.as_mut() {
                    c.image = slot.entry.image.clone();
                }
                let _ = digest;
                self.succeeded(&o.name);
            }
            Ok(Fetched::Module(m)) => {
                slot.counters.pulls += 1;
                slot.counters.bytes += m.downloaded;
                let sha = crate::oci::layout::sha256_hex(&m.module);
                let previous = slot.current.clone();
                let installed = store::write_module(&self.dir_abs, &sha, &m.module)
                    .and_then(|_| store::link(&self.dir_abs, &o.name, &sha));
                match installed {
                    Err(e) => self.failed(&o.name, &e.to_string()),
                    Ok(_) => {
                        let current = Current {
                            image: slot.entry.image.clone(),
                            manifest_digest: m.digest.clone(),
                            sha256: sha.clone(),
                            size: m.module.len() as u64,
                            root_ids: m.root_ids.clone(),
                        };
                        slot.current = Some(current.clone());
                        self.state.images.insert(o.name.clone(), current);
                        let same = previous.as_ref().is_some_and(|p| p.sha256 == sha);
                        log(
                            "info",
                            if same { "confirmed" } else { "updated" },
                            &[
                                ("name", &o.name),
                                ("image", &slot.entry.image),
                                ("digest", &m.digest),
                                ("layout", &m.layout.to_string()),
                                ("sha256", &sha),
                                ("bytes", &m.module.len().to_string()),
                                (
                                    "previous_sha256",
                                    previous.as_ref().map_or("none", |p| p.sha256.as_str()),
                                ),
                                (
                                    "file",
                                    &self
                                        .dir_abs
                                        .join(format!("{}.wasm", o.name))
                                        .display()
                                        .to_string(),
                                ),
                            ],
                        );
                        self.save_state();
                        self.succeeded(&o.name);
                    }
                }
            }
            Err(e) => self.failed(&o.name, &e.to_string()),
        }
    }

    fn succeeded(&mut self, name: &str) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if slot.failures_in_row > 0 {
            log(
                "info",
                "recovered",
                &[
                    ("name", name),
                    ("image", &slot.entry.image),
                    ("after_failures", &slot.failures_in_row.to_string()),
                ],
            );
        }
        slot.failures_in_row = 0;
        slot.last_error = None;
        slot.counters.last_success = Some(unix_now());
        slot.next_due = Instant::now() + self.cfg.resync;
        // The same module may now be in place for another reference (a new tag, a pinned digest).
        if let Some(c) = slot.current.clone()
            && self.state.images.get(name) != Some(&c)
        {
            self.state.images.insert(name.to_string(), c);
            self.save_state();
        }
        // Last, so that a failure here is reported (and retried) rather than cleared.
        self.ensure_link(name);
        self.write_ecds(name);
    }

    fn failed(&mut self, name: &str, error: &str) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        slot.failures_in_row = slot.failures_in_row.saturating_add(1);
        slot.counters.failures += 1;
        let shift = (slot.failures_in_row - 1).min(20);
        let delay = self
            .cfg
            .backoff_initial
            .saturating_mul(1 << shift)
            .min(self.cfg.backoff_max);
        slot.next_due = Instant::now() + delay;
        slot.last_error = Some(error.to_string());
        let kept = slot
            .current
            .as_ref()
            .map_or("none (no module yet)".to_string(), |c| {
                format!("sha256 {} from {}", c.sha256, c.manifest_digest)
            });
        log(
            "error",
            "failed",
            &[
                ("name", name),
                ("image", &slot.entry.image),
                ("attempt", &slot.failures_in_row.to_string()),
                ("retry_in", &format!("{delay:?}")),
                ("kept", &kept),
                ("error", error),
            ],
        );
    }

    /// Repair `DIR/<name>.wasm` if it does not point at the module in place, and its manifest
    /// digest's link `DIR/manifest-sha256-<hex>.wasm` (what `render --no-resolve` of a pinned
    /// image names).
    fn ensure_link(&mut self, name: &str) {
        let Some(c) = self.slots.get(name).and_then(|s| s.current.clone()) else {
            return;
        };
        let by_digest = crate::render::digest_link(&c.manifest_digest);
        let linked = store::link(&self.dir_abs, name, &c.sha256).and_then(|_| match &by_digest {
            Some(link) => store::link(&self.dir_abs, link, &c.sha256),
            None => Ok(false),
        });
        if let Err(e) = linked {
            self.failed(name, &e.to_string());
        }
    }

    /// Write the entry's ECDS file if its content would change.
    fn write_ecds(&mut self, name: &str) {
        let Some(slot) = self.slots.get(name) else {
            return;
        };
        let (Some(ecds), Some(current)) = (&slot.entry.ecds, &slot.current) else {
            return;
        };
        let module = self.dir_abs.join(store::module_file(&current.sha256));
        let doc = store::ecds_document(ecds, name, &slot.entry.image, current, &module);
        match store::write_if_changed(&ecds.file, &doc) {
            Ok(false) => {}
            Ok(true) => log(
                "info",
                "ecds-written",
                &[
                    ("name", name),
                    ("file", &ecds.file.display().to_string()),
                    ("filter", ecds.filter_name(name)),
                    ("module", &module.display().to_string()),
                    ("digest", &current.manifest_digest),
                ],
            ),
            Err(e) => {
                let e = e.to_string();
                self.failed(name, &format!("ECDS file: {e}"));
            }
        }
    }

    fn collect_garbage(&mut self) {
        if !self.list_loaded {
            return;
        }
        let now = unix_now();
        let grace = self.cfg.grace.as_secs_f64();
        let mut dirty = false;
        // Removed entries: their link goes when the grace period is over.
        let expired: Vec<String> = self
            .state
            .removed
            .iter()
            .filter(|(_, since)| now - **since >= grace)
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            self.state.removed.remove(&name);
            let sha = self.state.images.remove(&name).map(|c| c.sha256);
            dirty = true;
            match store::unlink(&self.dir_abs, &name) {
                Ok(_) => log(
                    "info",
                    "deleted",
                    &[
                        ("name", &name),
                        ("file", &format!("{name}.wasm")),
                        ("sha256", sha.as_deref().unwrap_or("")),
                        ("reason", "no longer listed, grace period over"),
                    ],
                ),
                Err(e) => log(
                    "error",
                    "delete-failed",
                    &[("name", &name), ("error", &e.to_string())],
                ),
            }
            if let Some(sha) = sha {
                // It stopped being used when the entry left the list.
                self.state.unreferenced.entry(sha).or_insert(now - grace);
            }
        }
        // Module files: those no listed or still-in-grace entry uses go after the grace period.
        let mut used: BTreeSet<String> = self
            .slots
            .values()
            .filter_map(|s| s.current.as_ref().map(|c| c.sha256.clone()))
            .collect();
        used.extend(
            self.state
                .removed
                .keys()
                .filter_map(|n| self.state.images.get(n).map(|c| c.sha256.clone())),
        );
        // Digest links: each goes with the last entry (listed or in grace) whose module it names.
        let digests: BTreeSet<String> = self
            .slots
            .values()
            .filter_map(|s| s.current.as_ref())
            .chain(
                self.state
                    .removed
                    .keys()
                    .filter_map(|n| self.state.images.get(n)),
            )
            .filter_map(|c| crate::render::digest_link(&c.manifest_digest))
            .collect();
        for link in store::digest_links(&self.dir_abs) {
            if digests.contains(&link) {
                continue;
            }
            match store::unlink(&self.dir_abs, &link) {
                Ok(_) => log(
                    "info",
                    "deleted",
                    &[
                        ("file", &format!("{link}.wasm")),
                        (
                            "reason",
                            "no entry holds the module of this manifest digest",
                        ),
                    ],
                ),
                Err(e) => log(
                    "error",
                    "delete-failed",
                    &[("file", &format!("{link}.wasm")), ("error", &e.to_string())],
                ),
            }
        }
        let files = store::module_files(&self.dir_abs);
        for sha in &files {
            if used.contains(sha) {
                dirty |= self.state.unreferenced.remove(sha).is_some();
                continue;
            }
            let since = *self
                .state
                .unreferenced
                .entry(sha.clone())
                .or_insert_with(|| {
                    dirty = true;
                    now
                });
            if now - since >= grace {
                let path = self.dir_abs.join(store::module_file(sha));
                match std::fs::remove_file(&path) {
                    Ok(()) => log(
                        "info",
                        "deleted",
                        &[
                            ("file", &path.display().to_string()),
                            ("reason", "no entry uses this module, grace period over"),
                        ],
                    ),
                    Err(e) => log(
                        "error",
                        "delete-failed",
                        &[
                            ("file", &path.display().to_string()),
                            ("error", &e.to_string()),
                        ],
                    ),
                }
                self.state.unreferenced.remove(sha);
                dirty = true;
            }
        }
        let before = self.state.unreferenced.len();
        self.state.unreferenced.retain(|sha, _| files.contains(sha));
        dirty |= before != self.state.unreferenced.len();
        if dirty {
            self.save_state();
        }
    }

    fn save_state(&mut self) {
        if let Err(e) = self.state.save(&self.dir_abs) {
            log("error", "state-failed", &[("error", &e.to_string())]);
        }
    }

    fn readiness(&self) -> (bool, String) {
        if !self.list_loaded {
            return (
                false,
                self.list_error
                    .clone()
                    .unwrap_or_else(|| "the image list has not been read yet".to_string()),
            );
        }
        let missing: Vec<&str> = self
            .slots
            .values()
            .filter(|s| s.current.as_ref().is_none_or(|c| c.image != s.entry.image))
            .map(|s| s.entry.name.as_str())
            .collect();
        if missing.is_empty() {
            (true, String::new())
        } else {
            (false, format!("no module yet for {}", missing.join(", ")))
        }
    }

    fn publish(&mut self) {
        // What the node report may promise: modules of listed entries, in place. A module no
        // entry names (waiting out its grace period) is not promised: it may go.
        let held: std::collections::BTreeSet<String> = self
            .slots
            .values()
            .filter_map(|s| s.current.as_ref())
            .map(|c| c.sha256.clone())
            .filter(|sha| self.dir_abs.join(store::module_file(sha)).exists())
            .collect();
        if let Ok(mut h) = self.held.lock()
            && *h != held
        {
            *h = held;
        }
        let (ready, not_ready) = self.readiness();
        let images: Vec<_> = self
            .slots
            .values()
            .map(|s| {
                let c = s.current.as_ref();
                json!({
                    "name": s.entry.name,
                    "image": s.entry.image,
                    "state": if s.last_error.is_some() { "failing" }
                        else if c.is_some_and(|c| c.image == s.entry.image) { "ok" }
                        else { "pending" },
                    "file": self.dir_abs.join(format!("{}.wasm", s.entry.name)),
                    "manifestDigest": c.map(|c| c.manifest_digest.clone()),
                    "sha256": c.map(|c| c.sha256.clone()),
                    "size": c.map(|c| c.size),
                    "ecdsFile": s.entry.ecds.as_ref().map(|e| e.file.clone()),
                    "lastSuccess": s.counters.last_success.map(time::rfc3339),
                    "lastError": s.last_error,
                    "consecutiveFailures": s.failures_in_row,
                    "resolves": s.counters.resolves,
                    "pulls": s.counters.pulls,
                    "bytes": s.counters.bytes,
                    "failures": s.counters.failures,
                })
            })
            .collect();
        let status = json!({
            "ready": ready,
            "notReady": (!ready).then_some(not_ready.clone()),
            "listen": self.listen.map(|a| a.to_string()),
            "imagesFile": self.cfg.images,
            "dir": self.dir_abs,
            "listError": self.list_error,
            "images": images,
            "removed": self.state.removed.keys().collect::<Vec<_>>(),
        });
        let status = serde_json::to_string_pretty(&status).unwrap_or_default() + "\n";
        if status == self.last_status {
            return;
        }
        self.last_status = status.clone();
        if let Some(f) = &self.cfg.status_file
            && let Err(e) = crate::fsutil::write_atomic(f, status.as_bytes(), 0o644)
        {
            log("error", "status-file-failed", &[("error", &e.to_string())]);
        }
        let metrics = self.metrics(ready);
        if let Ok(mut p) = self.published.lock() {
            *p = Published {
                ready,
                not_ready,
                metrics,
                status,
            };
        }
    }

    fn metrics(&self, ready: bool) -> String {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;
        use std::sync::atomic::AtomicU64;
        type Labels = Vec<(String, String)>;
        let mut r = metrics::Registry::default();
        type Counted = (&'static str, &'static str, fn(&Slot) -> u64);
        let counters: [Counted; 4] = [
            (
                "wasm_agent_resolves",
                "Manifest requests (tag or digest resolutions)",
                |s| s.counters.resolves,
            ),
            (
                "wasm_agent_pulls",
                "Module downloads (the manifest digest was new)",
                |s| s.counters.pulls,
            ),
            ("wasm_agent_pull_bytes", "Blob bytes downloaded", |s| {
                s.counters.bytes
            }),
            (
                "wasm_agent_failures",
                "Failed resolves, pulls or writes",
                |s| s.counters.failures,
            ),
        ];
        let labels =
            |s: &Slot| metrics::labels(&[("name", &s.entry.name), ("image", &s.entry.image)]);
        for (name, help, get) in counters {
            let f = Family::<Labels, Counter>::default();
            for s in self.slots.values() {
                f.get_or_create(&labels(s)).inc_by(get(s));
            }
            r.register(name, help, f);
        }
        let last = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let module_ready = Family::<Labels, Gauge>::default();
        let in_row = Family::<Labels, Gauge>::default();
        for s in self.slots.values() {
            if let Some(t) = s.counters.last_success {
                last.get_or_create(&labels(s)).set(t);
            }
            let here = s.current.as_ref().is_some_and(|c| c.image == s.entry.image);
            module_ready.get_or_create(&labels(s)).set(i64::from(here));
            in_row
                .get_or_create(&labels(s))
                .set(i64::from(s.failures_in_row));
        }
        r.register(
            "wasm_agent_last_success_timestamp_seconds",
            "When the image was last resolved and in place (Unix time)",
            last,
        );
        r.register(
            "wasm_agent_module_ready",
            "1 when a module for the listed image is in place",
            module_ready,
        );
        r.register(
            "wasm_agent_consecutive_failures",
            "Failures since the last success",
            in_row,
        );
        let list_errors = Counter::<u64>::default();
        list_errors.inc_by(self.list_errors);
        r.register(
            "wasm_agent_list_errors",
            "Image list reads or parses that failed",
            list_errors,
        );
        let all_ready = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        all_ready.set(i64::from(ready));
        r.register(
            "wasm_agent_ready",
            "1 when every listed image has a module in place",
            all_ready,
        );
        metrics::encode(&r)
    }
}

/// The shared [`crate::pipeline`] for one image list entry: resolve, verify (with
/// `verify_key`: exactly the digest that verified is fetched), fetch unless `known` is still
/// what the image names, and check that a new module is a proxy-wasm module (Envoy would refuse
/// anything else).
async fn fetch_checked(
    image: &str,
    opts: &Options,
    known: Option<&str>,
    runtime_config: bool,
    verify_key: Option<&Path>,
) -> Result<Fetched> {
    let key = match verify_key {
        Some(path) => Some(crate::oci::sign::load_public_key(path)?),
        None => None,
    };
    let p = crate::pipeline::prepare(&crate::pipeline::Request {
        image,
        opts,
        key: key.as_ref(),
        fetch: Some(crate::pipeline::Fetch {
            known,
            runtime_config,
            save: None,
        }),
        parameters: &[],
        module: None,
        checked_before: &crate::pipeline::never,
    })
    .await?;
    Ok(match p.module {
        Some(m) => Fetched::Module(m),
        None => Fetched::Unchanged { digest: p.digest },
    })
}
