//! Idle-connection load: open many authenticated connections, hold them,
//! and measure what they cost the gateway.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::connect::{connect_from, token};

/// Handshakes under way at once.
const CONCURRENCY: usize = 256;

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The gateway's WebSocket URL (on loopback).
    pub gateway: String,
    /// Connections to open.
    pub count: usize,
    /// Connections opened per second at most.
    pub ramp: f64,
    /// Source addresses 127.0.0.1 … 127.0.0.N, each with its own ephemeral ports.
    pub sources: u8,
    /// How long to hold the connections open.
    pub hold: Duration,
    /// The gateway's process id, to read its memory from /proc.
    pub gateway_pid: Option<u32>,
}

/// What happened.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// Connections opened and authenticated.
    pub opened: u64,
    /// Connections that failed, by error.
    pub failed: BTreeMap<String, u64>,
    /// Seconds the ramp took.
    pub ramp_seconds: f64,
    /// Connections opened per second.
    pub ramp_rate: f64,
    /// Gateway resident memory before, KiB.
    pub rss_before_kib: Option<u64>,
    /// Gateway resident memory with every connection open, KiB.
    pub rss_held_kib: Option<u64>,
    /// (held − before) / opened, bytes.
    pub rss_per_connection_bytes: Option<u64>,
}

/// The report as text, for people.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "opened {} in {:.1}s ({:.0}/s), failed {:?}",
            self.opened, self.ramp_seconds, self.ramp_rate, self.failed
        )?;
        write!(
            f,
            "gateway RSS before {:?} KiB, held {:?} KiB, per connection {:?} bytes",
            self.rss_before_kib, self.rss_held_kib, self.rss_per_connection_bytes
        )
    }
}

/// Live totals for the progress line.
#[derive(Default)]
pub struct Progress {
    /// Opened so far.
    pub opened: AtomicU64,
    /// Failed so far.
    pub failed: AtomicU64,
}

/// Opens the connections, holds them, reports, then closes them.
pub async fn run(plan: &Plan, secret: &[u8], progress: Arc<Progress>) -> Report {
    let rss_before = plan.gateway_pid.and_then(rss_kib);
    let held = Arc::new(Mutex::new(Vec::with_capacity(plan.count)));
    let failed = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / plan.ramp.max(1.0));
    let mut tasks = JoinSet::new();
    for n in 0..plan.count {
        tokio::time::sleep_until(start + interval.mul_f64(n as f64)).await;
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (n % plan.sources.max(1) as usize) as u8,
        ));
        // A user per connection, as real clients are: one user may hold
        // only a few connections on a gateway.
        let (url, token, held, failed, progress) = (
            plan.gateway.clone(),
            token(secret, &format!("idle-{n}")),
            held.clone(),
            failed.clone(),
            progress.clone(),
        );
        tasks.spawn(async move {
            match connect_from(&url, &token, Some(source)).await {
                Ok((client, _)) => {
                    held.lock().await.push(client);
                    progress.opened.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    *failed
                        .lock()
                        .expect("not poisoned")
                        .entry(err.to_string())
                        .or_default() += 1;
                    progress.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let ramp_seconds = start.elapsed().as_secs_f64();
    tokio::time::sleep(plan.hold).await;
    let rss_held = plan.gateway_pid.and_then(rss_kib);
    let opened = progress.opened.load(Ordering::Relaxed);
    for mut client in held.lock().await.drain(..) {
        client.close().await;
    }
    let failed = std::mem::take(&mut *failed.lock().expect("not poisoned"));
    Report {
        opened,
        failed,
        ramp_seconds,
        ramp_rate: opened as f64 / ramp_seconds.max(f64::EPSILON),
        rss_before_kib: rss_before,
        rss_held_kib: rss_held,
        rss_per_connection_bytes: rss_before
            .zip(rss_held)
            .filter(|_| opened > 0)
            .map(|(before, held)| held.saturating_sub(before) * 1024 / opened),
    }
}

/// A process's resident memory, from /proc/<pid>/status.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
