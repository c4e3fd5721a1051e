//! A small bounded load: several keep-alive connections in threads, each sending `GET` requests
//! until a total count, a deadline or a stop flag is reached, classifying every response.

use crate::http1::{Client, Message};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the load saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Requests answered (any status).
    pub responses: u64,
    /// Transport errors (connection refused or reset, timeouts, malformed answers).
    pub errors: Vec<String>,
    /// Responses by class (as the classifier named them), e.g. `old`, `new`, `status 503`.
    pub classes: BTreeMap<String, u64>,
    /// The order in which classes first appeared.
    pub first_seen: Vec<String>,
}

impl Report {
    /// Fail the test unless every request was answered and the classes first appeared in
    /// `order` (e.g. `["old", "new"]` across an update).
    pub fn assert_clean(&self, order: &[&str]) {
        assert!(self.errors.is_empty(), "failed requests: {:?}", self.errors);
        assert_eq!(self.first_seen, order, "{:?}", self.classes);
    }
}

/// A running load; [`Load::finish`] stops it and returns the report.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    report: Arc<Mutex<Report>>,
    count: Arc<AtomicU64>,
}

impl Load {
    /// Start `connections` threads, each with its own keep-alive connection to `addr`, sending
    /// `GET path` until `max_total` requests were sent in all, `deadline` passed or
    /// [`Load::finish`] was called. `classify` names each response's class.
    pub fn start(
        addr: SocketAddr,
        path: &str,
        connections: usize,
        max_total: u64,
        deadline: Duration,
        classify: fn(&Message) -> String,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(Report::default()));
        let count = Arc::new(AtomicU64::new(0));
        let end = Instant::now() + deadline;
        let threads = (0..connections)
            .map(|_| {
                let (stop, report, count) = (stop.clone(), report.clone(), count.clone());
                let path = path.to_string();
                std::thread::spawn(move || {
                    let mut client = None;
                    while !stop.load(Ordering::SeqCst)
                        && Instant::now() < end
                        && count.fetch_add(1, Ordering::SeqCst) < max_total
                    {
                        if client.is_none() {
                            match Client::connect(addr) {
                                Ok(c) => client = Some(c),
                                Err(e) => {
                                    report.lock().unwrap().errors.push(format!("connect: {e}"));
                                    continue;
                                }
                            }
                        }
                        let Some(c) = client.as_mut() else { continue };
                        match c.get(&path, &[]) {
                            Ok(m) => {
                                let class = classify(&m);
                                let mut r = report.lock().unwrap();
                                r.responses += 1;
                                if !r.classes.contains_key(&class) {
                                    r.first_seen.push(class.clone());
                                }
                                *r.classes.entry(class).or_default() += 1;
                                if m.header("connection") == Some("close") {
                                    client = None;
                                }
                            }
                            Err(e) => {
                                report.lock().unwrap().errors.push(format!("request: {e}"));
                                client = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            report,
            count,
        }
    }

    /// How many responses of `class` were seen so far.
    pub fn seen(&self, class: &str) -> u64 {
        self.report
            .lock()
            .unwrap()
            .classes
            .get(class)
            .copied()
            .unwrap_or(0)
    }

    /// Requests started so far.
    pub fn sent(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Stop every thread and return what they saw.
    pub fn finish(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        self.report.lock().unwrap().clone()
    }
}
