//! Which exemplar candidates' traces were kept: the span-metrics connectors watch the trace
//! IDs of their candidates, the sampling stages report what they kept, and at each flush a
//! connector asks what became of each candidate.
//!
//! Only watched IDs are remembered, so the board is bounded by the candidates the connectors
//! hold (series × `max_per_data_point` × `CANDIDATES_PER_EXEMPLAR`), not by the traffic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tailgate_metrics::spanmetrics::Fate;
use tailgate_otlp::TraceId;

use crate::sampling::KeptTraces;

#[derive(Debug, Default, Clone, Copy)]
struct Watch {
    /// Candidates naming this trace.
    watchers: u32,
    kept: bool,
}

/// Shared by every connector and sampling stage of a service.
pub struct ExemplarBoard {
    watched: Mutex<HashMap<TraceId, Watch, foldhash::fast::RandomState>>,
    /// How long a candidate's trace may stay undecided: past it, the trace was decided
    /// elsewhere (another gateway owns it) or dropped, and the candidate is given up.
    wait_max: Duration,
}

impl ExemplarBoard {
    pub fn new(wait_max: Duration) -> ExemplarBoard {
        ExemplarBoard {
            watched: Mutex::default(),
            wait_max,
        }
    }

    pub fn watch(&self, ids: &[TraceId]) {
        let mut w = self.watched.lock().expect("board lock");
        for id in ids {
            w.entry(*id).or_default().watchers += 1;
        }
    }

    pub fn forget(&self, ids: &[TraceId]) {
        let mut w = self.watched.lock().expect("board lock");
        for id in ids {
            if let Some(entry) = w.get_mut(id) {
                entry.watchers -= 1;
                if entry.watchers == 0 {
                    w.remove(id);
                }
            }
        }
    }

    /// What became of a candidate's trace, `age` after the candidate was taken.
    pub fn fate(&self, id: &TraceId, age: Duration) -> Fate {
        let kept = self
            .watched
            .lock()
            .expect("board lock")
            .get(id)
            .is_some_and(|w| w.kept);
        if kept {
            Fate::Kept
        } else if age < self.wait_max {
            Fate::Undecided
        } else {
            Fate::Gone
        }
    }

    /// Traces watched now (for tests and the gauge).
    pub fn len(&self) -> usize {
        self.watched.lock().expect("board lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KeptTraces for ExemplarBoard {
    fn kept(&self, ids: &mut dyn Iterator<Item = TraceId>) {
        let mut w = self.watched.lock().expect("board lock");
        if w.is_empty() {
            return;
        }
        for id in ids {
            if let Some(entry) = w.get_mut(&id) {
                entry.kept = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_watched_traces_are_remembered_and_kept_ones_say_so() {
        let board = ExemplarBoard::new(Duration::from_secs(30));
        let (a, b, c) = (TraceId([1; 16]), TraceId([2; 16]), TraceId([3; 16]));
        board.watch(&[a, b, a]);
        board.kept(&mut [a, c].into_iter());
        assert_eq!(board.fate(&a, Duration::ZERO), Fate::Kept);
        assert_eq!(board.fate(&b, Duration::from_secs(29)), Fate::Undecided);
        assert_eq!(board.fate(&b, Duration::from_secs(30)), Fate::Gone);
        assert_eq!(
            board.fate(&c, Duration::ZERO),
            Fate::Undecided,
            "not watched"
        );
        assert_eq!(board.len(), 2);
        board.forget(&[a, b]);
        assert_eq!(board.len(), 1, "a is watched twice");
        board.forget(&[a]);
        assert!(board.is_empty());
    }
}
