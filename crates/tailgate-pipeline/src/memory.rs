//! What the process holds, and the `memory_limiter` stage that refuses data when it is too much.
//!
//! Three numbers, side by side (all exported as metrics, `docs/metrics.md`):
//!
//! - **live bytes** — what the allocator has handed out and not yet been given back
//!   ([`MemoryReading::live_bytes`]). The limiter's soft limit compares this number, as the
//!   collector's compares its Go runtime's live heap. It falls the moment buffers are freed.
//! - **RSS** — what the operating system charges the process (and what the OOM killer reads).
//!   An allocator keeps freed pages for reuse, so RSS lags live bytes after a burst; the
//!   limiter gives them back ([`MemorySource::release_free_memory`]) whenever it keeps more
//!   than [`RETAINED_FREE_BYTES_MAX`] of free pages, and compares RSS with the *hard*
//!   limit as a last resort (a leak or fragmentation the allocator cannot undo).
//! - **accounted bytes** — what Tailgate's own structures hold, counted exactly where they
//!   hold it: request bodies being ingested ([`InFlightBytes`],
//!   `tailgate_receiver_inflight_bytes`), the sampling buffer
//!   (`tailgate_sampling_buffered_bytes`) and encoded batches in exporter queues or in flight
//!   (`tailgate_exporter_queue_bytes`). Live bytes minus accounted bytes is the overhead of
//!   everything else (indexes, connections, the runtime).
//!
//! Why not RSS alone: after a burst RSS stayed above the soft limit with nothing buffered,
//! and a limiter reading it refused every span until the process restarted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{counter, gauge};
use tailgate_otlp::EncodedSpan;
use tailgate_processors::memory::{MemoryLimits, Refusal};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::consumer::{BoxFuture, Client, ConsumeError, Consumer, RefuseReason};
use crate::telemetry::*;

/// Free memory the allocator may keep for reuse before the limiter's tick gives it back to
/// the operating system. Large enough that steady traffic does not trim on every tick (each
/// trim costs page faults when the memory is needed again), small enough that RSS follows
/// live bytes closely after a burst.
pub const RETAINED_FREE_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// How often the service measures memory (gauges, release) when no `memory_limiter` does it
/// more often.
pub const MEMORY_MONITOR_INTERVAL: Duration = Duration::from_secs(1);

/// One measurement of the process's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReading {
    /// Bytes allocated and not freed, by the allocator's own count (= RSS where the allocator
    /// keeps no count).
    pub live_bytes: u64,
    /// Bytes the allocator holds in resident pages, live or free (= RSS where it cannot say).
    pub allocator_resident_bytes: u64,
    /// Resident set size of the whole process.
    pub rss_bytes: u64,
}

/// Where memory readings come from: the binary plugs in its global allocator's statistics;
/// the simulator and tests substitute their own.
pub trait MemorySource: Send + Sync {
    /// Which allocator answers (`jemalloc`, `glibc`, `rss`), for logs.
    fn allocator(&self) -> &'static str;

    /// A fresh reading. Called once per limiter or monitor tick: may take a lock or walk the
    /// allocator's arenas, never anything per allocation.
    fn read(&self) -> MemoryReading;

    /// Returns free pages the allocator keeps to the operating system. Called only when its
    /// resident bytes exceed live bytes by more than [`RETAINED_FREE_BYTES_MAX`].
    fn release_free_memory(&self) {}
}

/// Resident set size only, for an allocator that keeps no count: every number is RSS, and
/// nothing can be released.
pub struct ProcessRss;

impl MemorySource for ProcessRss {
    fn allocator(&self) -> &'static str {
        "rss"
    }

    fn read(&self) -> MemoryReading {
        let rss = process_rss_bytes();
        MemoryReading {
            live_bytes: rss,
            allocator_resident_bytes: rss,
            rss_bytes: rss,
        }
    }
}

/// Reads `source`, gives retained free memory back when the allocator holds more than
/// [`RETAINED_FREE_BYTES_MAX`] beyond live bytes, and publishes the numbers as gauges. The
/// one way every tick measures memory.
pub fn measure(source: &dyn MemorySource) -> MemoryReading {
    let mut reading = source.read();
    // The allocator's own resident bytes, not RSS: RSS also holds the binary's code, thread
    // stacks and other mappings no trim can give back.
    if reading.allocator_resident_bytes > reading.live_bytes + RETAINED_FREE_BYTES_MAX {
        source.release_free_memory();
        let after = source.read();
        counter!(MEMORY_RELEASES).increment(1);
        counter!(MEMORY_RELEASED_BYTES).increment(
            reading
                .allocator_resident_bytes
                .saturating_sub(after.allocator_resident_bytes),
        );
        reading = after;
    }
    gauge!(PROCESS_MEMORY_RSS).set(reading.rss_bytes as f64);
    gauge!(PROCESS_HEAP_ALLOC_BYTES).set(reading.live_bytes as f64);
    gauge!(PROCESS_ALLOCATOR_RESIDENT_BYTES).set(reading.allocator_resident_bytes as f64);
    reading
}

/// Measures every [`MEMORY_MONITOR_INTERVAL`] for as long as the task lives, so gauges stay
/// fresh and memory goes back after a burst in processes without a `memory_limiter`.
pub fn spawn_monitor(source: Arc<dyn MemorySource>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MEMORY_MONITOR_INTERVAL);
        loop {
            tick.tick().await;
            measure(source.as_ref());
        }
    })
}

pub fn process_rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Total memory for `limit_percentage`: the cgroup v2 limit if set, else physical memory.
pub fn total_memory_bytes() -> u64 {
    if let Ok(max) = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        && let Ok(v) = max.trim().parse::<u64>()
    {
        return v;
    }
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Counts a request body in `tailgate_receiver_inflight_bytes` for as long as it lives:
/// from the receiver's first look until the pipeline has taken (copied or refused) it.
pub struct InFlightBytes(u64);

impl InFlightBytes {
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes as u64;
        gauge!(RECEIVER_INFLIGHT_BYTES).increment(bytes as f64);
        InFlightBytes(bytes)
    }
}

impl Drop for InFlightBytes {
    fn drop(&mut self) {
        gauge!(RECEIVER_INFLIGHT_BYTES).decrement(self.0 as f64);
    }
}

/// `memory_limiter`: a task measures every `check_interval`; consume refuses while live
/// bytes are over the soft limit or RSS is over the hard limit.
pub struct MemoryStage {
    name: String,
    refusing: Arc<AtomicBool>,
    retry_after: Duration,
    next: Arc<dyn Consumer>,
    task: JoinHandle<()>,
}

impl MemoryStage {
    pub fn start(
        name: String,
        limits: MemoryLimits,
        check_interval: Duration,
        source: Arc<dyn MemorySource>,
        next: Arc<dyn Consumer>,
    ) -> Self {
        let first = limits.refusal(&measure(source.as_ref()).into());
        let refusing = Arc::new(AtomicBool::new(first.is_some()));
        let flag = Arc::clone(&refusing);
        let task_name = name.clone();
        let task =
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(check_interval);
                loop {
                    tick.tick().await;
                    let reading = measure(source.as_ref());
                    let refusal = limits.refusal(&reading.into());
                    let refuse = refusal.is_some();
                    if refuse != flag.swap(refuse, Ordering::AcqRel) {
                        log_transition(&task_name, &limits, &reading, refusal);
                    }
                    gauge!(MEMORY_LIMITER_REFUSING, "processor" => task_name.clone())
                        .set(if refuse { 1.0 } else { 0.0 });
                }
            });
        MemoryStage {
            name,
            refusing,
            retry_after: check_interval.max(Duration::from_secs(1)),
            next,
            task,
        }
    }
}

fn log_transition(
    processor: &str,
    limits: &MemoryLimits,
    reading: &MemoryReading,
    refusal: Option<Refusal>,
) {
    match refusal {
        Some(Refusal::LiveOverSoftLimit) => tracing::warn!(
            processor,
            live_bytes = reading.live_bytes,
            soft_limit_bytes = limits.soft_limit_bytes,
            "live memory over the soft limit: refusing data"
        ),
        Some(Refusal::RssOverHardLimit) => tracing::warn!(
            processor,
            rss_bytes = reading.rss_bytes,
            live_bytes = reading.live_bytes,
            hard_limit_bytes = limits.hard_limit_bytes,
            "resident memory over the hard limit though live memory is not: refusing data"
        ),
        None => tracing::info!(
            processor,
            live_bytes = reading.live_bytes,
            rss_bytes = reading.rss_bytes,
            "memory back under the limits: accepting data"
        ),
    }
}

impl From<MemoryReading> for tailgate_processors::memory::MemoryUse {
    fn from(r: MemoryReading) -> Self {
        tailgate_processors::memory::MemoryUse {
            live_bytes: r.live_bytes,
            rss_bytes: r.rss_bytes,
        }
    }
}

impl Drop for MemoryStage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Consumer for MemoryStage {
    fn consume(&self, spans: Vec<EncodedSpan>) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.consume_from(spans, Client::default())
    }

    fn consume_from(
        &self,
        spans: Vec<EncodedSpan>,
        client: Client,
    ) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async move {
            let n = spans.len() as u64;
            counter!(PROCESSOR_INCOMING_ITEMS, "processor" => self.name.clone()).increment(n);
            if self.refusing.load(Ordering::Acquire) {
                counter!(PROCESSOR_REFUSED_SPANS, "processor" => self.name.clone()).increment(n);
                return Err(ConsumeError::Refused {
                    reason: RefuseReason::MemoryLimit,
                    retry_after: self.retry_after,
                });
            }
            counter!(PROCESSOR_OUTGOING_ITEMS, "processor" => self.name.clone()).increment(n);
            self.next.consume_from(spans, client).await
        })
    }

    fn shutdown(&self, deadline: Instant) -> BoxFuture<'_, ()> {
        self.task.abort();
        self.next.shutdown(deadline)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A source whose numbers the test sets, recording releases.
    struct Scripted {
        reading: Mutex<MemoryReading>,
        /// Resident bytes after a release.
        resident_after_release: u64,
        releases: Mutex<u32>,
    }

    impl MemorySource for Scripted {
        fn allocator(&self) -> &'static str {
            "scripted"
        }
        fn read(&self) -> MemoryReading {
            *self.reading.lock().unwrap()
        }
        fn release_free_memory(&self) {
            *self.releases.lock().unwrap() += 1;
            let mut r = self.reading.lock().unwrap();
            r.allocator_resident_bytes = self.resident_after_release;
            r.rss_bytes = self.resident_after_release;
        }
    }

    const MIB: u64 = 1024 * 1024;

    fn scripted(live: u64, resident: u64, resident_after_release: u64) -> Scripted {
        Scripted {
            reading: Mutex::new(MemoryReading {
                live_bytes: live,
                allocator_resident_bytes: resident,
                rss_bytes: resident + 20 * MIB,
            }),
            resident_after_release,
            releases: Mutex::new(0),
        }
    }

    #[test]
    fn free_pages_far_beyond_live_memory_are_released_and_reread() {
        let s = scripted(50 * MIB, 250 * MIB, 60 * MIB);
        let r = measure(&s);
        assert_eq!(*s.releases.lock().unwrap(), 1);
        assert_eq!(
            r.rss_bytes,
            60 * MIB,
            "the reading after the release counts"
        );
    }

    #[test]
    fn free_pages_within_the_retained_bound_are_left_alone() {
        let s = scripted(50 * MIB, 50 * MIB + RETAINED_FREE_BYTES_MAX, 0);
        measure(&s);
        assert_eq!(*s.releases.lock().unwrap(), 0);
    }
}
