//! `batch` processor logic: when to cut a batch. The pipeline owns the timer; this decides
//! sizes, so the rule is unit-testable without a clock.

use tailgate_config::components::BatchConfig;
use tailgate_otlp::EncodedSpan;

/// Accumulates spans and cuts batches of `send_batch_size`, never above `send_batch_max_size`.
#[derive(Debug)]
pub struct Batcher {
    send_batch_size: usize,
    send_batch_max_size: usize,
    pending: Vec<EncodedSpan>,
}

impl Batcher {
    pub fn new(cfg: &BatchConfig) -> Self {
        assert!(
            cfg.send_batch_size > 0,
            "validated config has send_batch_size > 0"
        );
        Batcher {
            send_batch_size: cfg.send_batch_size,
            send_batch_max_size: cfg.send_batch_max_size,
            pending: Vec::new(),
        }
    }

    pub fn pending_spans(&self) -> usize {
        self.pending.len()
    }

    /// Adds spans; returns the batches now full enough to send.
    pub fn push(&mut self, spans: Vec<EncodedSpan>) -> Vec<Vec<EncodedSpan>> {
        if self.pending.is_empty() {
            self.pending = spans;
        } else {
            self.pending.extend(spans);
        }
        self.cut_while(self.send_batch_size)
    }

    /// Everything pending (the timeout fired, or shutdown), split at the max size.
    pub fn flush(&mut self) -> Vec<Vec<EncodedSpan>> {
        self.cut_while(1)
    }

    /// Cuts batches (each at most `send_batch_max_size`) while at least `pending_min` spans wait.
    fn cut_while(&mut self, pending_min: usize) -> Vec<Vec<EncodedSpan>> {
        let mut out = Vec::new();
        while !self.pending.is_empty() && self.pending.len() >= pending_min {
            let cut = if self.send_batch_max_size > 0 {
                self.pending.len().min(self.send_batch_max_size)
            } else {
                self.pending.len()
            };
            let rest = self.pending.split_off(cut);
            out.push(std::mem::replace(&mut self.pending, rest));
        }
        out
    }
}
