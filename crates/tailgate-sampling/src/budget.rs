//! The byte budget shared by all shards of one tail-sampling processor.
//!
//! Ingest reserves the encoded bytes of a request before any shard sees it; a failed
//! reservation is a retryable refusal to the sender. Shards release bytes when traces are
//! decided or handed off. Atomics only: no lock on the hot path.

use std::sync::atomic::{AtomicU64, Ordering};

/// Above this share of the limit, shards decide their oldest traces early.
pub const EARLY_DECISION_HIGH_PERCENT: u64 = 90;
/// Early decisions continue until usage is back under this share.
pub const EARLY_DECISION_LOW_PERCENT: u64 = 80;
const _: () = assert!(
    EARLY_DECISION_LOW_PERCENT < EARLY_DECISION_HIGH_PERCENT && EARLY_DECISION_HIGH_PERCENT < 100
);

#[derive(Debug)]
pub struct BufferBudget {
    bytes_limit: u64,
    bytes_used: AtomicU64,
    traces_live: AtomicU64,
}

impl BufferBudget {
    pub fn new(bytes_limit: u64) -> Self {
        assert!(bytes_limit > 0, "validated budget is positive");
        BufferBudget {
            bytes_limit,
            bytes_used: AtomicU64::new(0),
            traces_live: AtomicU64::new(0),
        }
    }

    pub fn bytes_limit(&self) -> u64 {
        self.bytes_limit
    }

    pub fn bytes_used(&self) -> u64 {
        self.bytes_used.load(Ordering::Acquire)
    }

    pub fn traces_live(&self) -> u64 {
        self.traces_live.load(Ordering::Acquire)
    }

    /// Reserves `n` bytes if they fit under the limit.
    pub fn try_reserve(&self, n: u64) -> bool {
        self.bytes_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let next = used.checked_add(n)?;
                (next <= self.bytes_limit).then_some(next)
            })
            .is_ok()
    }

    /// Reserves regardless of the limit: for data that must not be refused (a handoff from a
    /// leaving node). Early decisions bring usage back down.
    pub fn force_reserve(&self, n: u64) {
        self.bytes_used.fetch_add(n, Ordering::AcqRel);
    }

    pub fn release(&self, n: u64) {
        let prev = self.bytes_used.fetch_sub(n, Ordering::AcqRel);
        assert!(prev >= n, "released {n} bytes with only {prev} reserved");
    }

    pub fn trace_added(&self) {
        self.traces_live.fetch_add(1, Ordering::AcqRel);
    }

    pub fn trace_removed(&self) {
        let prev = self.traces_live.fetch_sub(1, Ordering::AcqRel);
        assert!(prev > 0, "trace count underflow");
    }

    /// Bytes above the low watermark when usage is over the high watermark, else 0.
    pub fn excess_bytes(&self) -> u64 {
        let used = self.bytes_used();
        if used * 100 > self.bytes_limit * EARLY_DECISION_HIGH_PERCENT {
            used - self.bytes_limit * EARLY_DECISION_LOW_PERCENT / 100
        } else {
            0
        }
    }
}
