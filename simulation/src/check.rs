//! The invariants, checked after every run from what the driver sent, what the sink
//! received and the gateways' state.
//!
//! - **I1** graceful events only — and any single crash with `replication_factor: 2`: every
//!   accepted span of every kept trace is exported. With replication a loss is attributable
//!   only to a double crash (the trace's owner and its replica) or a partition window.
//! - **I2** no span is exported twice (unless the driver resent it after an ambiguous
//!   failure, or — with replication — a crashed owner exported it before its decision
//!   reached the replica, which then decided again: counted and logged), and no trace is exported in pieces by two owners of the same epoch: two
//!   gateways export parts of one trace only if the ring changed between its first span and
//!   its last export (then each owned it at a different epoch).
//! - **I3** every ERROR trace whose spans were all accepted is kept (exported whole).
//! - **I4** no span of a trace the policies drop is exported.
//! - **I5** with crashes and partitions, accounting closes: every accepted span of a kept
//!   trace is exported, or its loss is attributed — to a crashed gateway that owned the
//!   trace, or to a partition window during which it was sent.
//! - **I6** after the faults stop, every gateway routes by one epoch, agrees on one leader,
//!   and the ring's owners are the running gateways.
//! - **I7** no panic (the run itself fails otherwise) and every sampling buffer under budget.
//!
//! Which traces are kept is a pure function of the root span (sent first): ERROR status or
//! `sim.keep=yes`. So the checker knows each trace's fate without asking the system.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tailgate_otlp::TraceId;

use crate::scenario::Scenario;
use crate::world::{BUFFER_LIMIT_MIB, Exported, SentSpan, Shared, TraceKind};
use crate::{CrashRecord, Outcome};

/// Spans sent this close to a partition window may be decided on partial data.
const WINDOW_MARGIN: Duration = Duration::from_secs(6);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

type Trace = [u8; 16];
type SpanKey = (Trace, [u8; 8]);

/// What the run produced, read once from the shared state.
struct Run<'a> {
    sent: Vec<SentSpan>,
    kinds: BTreeMap<Trace, TraceKind>,
    exported: Vec<Exported>,
    /// Times each span was exported.
    copies: BTreeMap<SpanKey, usize>,
    /// Spans the driver resent after an ambiguous failure (a second copy is expected).
    ambiguous: BTreeSet<SpanKey>,
    faulty: bool,
    /// `replication_factor: 2`: a single crash must lose nothing.
    replicated: bool,
    crashes: &'a [CrashRecord],
    windows: &'a [(Duration, Duration)],
}

impl Run<'_> {
    /// A loss the faults explain: a crashed gateway owned the trace, or it was sent near a
    /// partition window.
    fn attributable(&self, trace: &Trace, at: Duration) -> bool {
        self.faulty
            && ((if self.replicated {
                self.owner_and_replica_crashed(trace)
            } else {
                self.owner_crashed(trace)
            }) || self
                .windows
                .iter()
                .any(|(from, to)| at + WINDOW_MARGIN >= *from && at <= *to + WINDOW_MARGIN))
    }

    /// A crashed gateway owned the trace (by a ring of the moment it crashed).
    fn owner_crashed(&self, trace: &Trace) -> bool {
        let id = TraceId(*trace);
        self.crashes.iter().any(|c| {
            c.rings
                .iter()
                .any(|r| r.owner(&id) == Some(c.name.as_str()))
        })
    }

    /// A double failure: a crashed gateway owned the trace and another crash took its
    /// replica (by the same ring).
    fn owner_and_replica_crashed(&self, trace: &Trace) -> bool {
        let id = TraceId(*trace);
        self.crashes.iter().enumerate().any(|(i, c)| {
            c.rings.iter().any(|r| {
                r.owner(&id) == Some(c.name.as_str())
                    && self
                        .crashes
                        .iter()
                        .enumerate()
                        .any(|(j, other)| j != i && r.replica(&id) == Some(other.name.as_str()))
            })
        })
    }

    /// The trace's owner and replica by every ring a crash recorded, for diagnoses.
    fn placements(&self, trace: &Trace) -> String {
        let id = TraceId(*trace);
        let mut seen = BTreeSet::new();
        for c in self.crashes {
            for r in &c.rings {
                seen.insert(format!(
                    "e{} {}→{}",
                    r.epoch(),
                    r.owner(&id).unwrap_or("-"),
                    r.replica(&id).unwrap_or("-")
                ));
            }
        }
        if seen.is_empty() {
            "no crash".to_string()
        } else {
            seen.into_iter().collect::<Vec<_>>().join(", ")
        }
    }

    /// A gateway exported this span and crashed afterwards: its kept decision may not have
    /// reached the trace's replica, which then decided again (replication's one duplicate).
    fn exporter_crashed_after_export(&self, trace: &Trace, span: &[u8; 8]) -> bool {
        self.exported
            .iter()
            .filter(|e| e.trace == *trace && e.span == *span)
            .any(|e| self.crashes.iter().any(|c| c.name == e.by && c.at >= e.at))
    }

    /// Where the driver's copies of a span were accepted, for diagnoses.
    fn sends_of(&self, trace: &Trace, span: &[u8; 8]) -> Vec<String> {
        self.sent
            .iter()
            .filter(|s| s.trace == *trace && s.span == *span && s.accepted)
            .map(|s| format!("{}@{:.3}s", s.to, s.at.as_secs_f64()))
            .collect()
    }

    /// Where a trace's spans were exported, for diagnoses.
    fn exports_of(&self, trace: &Trace, span: Option<&[u8; 8]>) -> Vec<String> {
        self.exported
            .iter()
            .filter(|e| e.trace == *trace && span.is_none_or(|s| e.span == *s))
            .map(|e| format!("{}@{:.3}s", e.by, e.at.as_secs_f64()))
            .collect()
    }
}

pub fn check(
    now: Duration,
    shared: &Shared,
    scenario: Scenario,
    crashes: &[CrashRecord],
    windows: &[(Duration, Duration)],
    epoch_changes: &[Duration],
) -> Outcome {
    let sent = shared.sent.lock().unwrap().clone();
    let exported = shared.exported.lock().unwrap().clone();
    let mut copies: BTreeMap<SpanKey, usize> = BTreeMap::new();
    for e in &exported {
        *copies.entry((e.trace, e.span)).or_default() += 1;
    }
    let run = Run {
        ambiguous: sent
            .iter()
            .filter(|s| s.ambiguous)
            .map(|s| (s.trace, s.span))
            .collect(),
        kinds: shared.kinds.lock().unwrap().clone(),
        copies,
        sent,
        exported,
        faulty: !scenario.graceful(),
        replicated: scenario.replication_factor() >= 2,
        crashes,
        windows,
    };
    let mut v = Vec::new();
    let takeover_duplicates = no_span_twice(&run, &mut v);
    no_trace_in_pieces_within_an_epoch(&run, epoch_changes, &mut v);
    nothing_of_a_dropped_trace(&run, &mut v);
    every_kept_span_exported_or_attributed(&run, &mut v);
    converged(shared, &mut v);
    if scenario.via_agents() {
        enriched_by_the_agents(&run, &mut v);
    }
    buffers_under_budget(shared, &mut v);
    shared.log_at(
        now,
        format!(
            "checked: {} spans sent ({} accepted), {} exported, {} violations",
            run.sent.len(),
            run.sent.iter().filter(|s| s.accepted).count(),
            run.exported.len(),
            v.len()
        ),
    );
    if run.replicated {
        shared.log_at(
            now,
            format!("duplicates after a takeover: {takeover_duplicates} spans"),
        );
    }
    // The event log records what the sink received, in order (part of the replay check).
    shared.log_at(
        now,
        format!("sink digest {:016x}", sink_digest(&run.exported)),
    );
    Outcome {
        events: Vec::new(),
        violations: v,
        spans_sent: run.sent.len(),
        spans_exported: run.exported.len(),
    }
}

/// I2: no span twice. Returns the second copies a takeover explains (replication: a gateway
/// exported the span and crashed before its kept decision reached the replica).
fn no_span_twice(run: &Run<'_>, v: &mut Vec<String>) -> usize {
    let mut takeover = 0;
    for ((t, s), n) in &run.copies {
        if *n > 1 && run.replicated && run.exporter_crashed_after_export(t, s) {
            takeover += n - 1;
            continue;
        }
        if *n > 1 && !run.ambiguous.contains(&(*t, *s)) {
            v.push(format!(
                "I2: span {}/{} exported {n} times ({}; accepted by {})",
                hex(t),
                hex(s),
                run.exports_of(t, Some(s)).join(", "),
                run.sends_of(t, s).join(", ")
            ));
        }
    }
    takeover
}

/// I2: no trace in pieces by two owners of one epoch.
fn no_trace_in_pieces_within_an_epoch(
    run: &Run<'_>,
    epoch_changes: &[Duration],
    v: &mut Vec<String>,
) {
    let mut by: BTreeMap<Trace, BTreeSet<String>> = BTreeMap::new();
    let mut last_export: BTreeMap<Trace, Duration> = BTreeMap::new();
    for e in &run.exported {
        by.entry(e.trace).or_default().insert(e.by.clone());
        let t = last_export.entry(e.trace).or_insert(e.at);
        *t = (*t).max(e.at);
    }
    let mut first_sent: BTreeMap<Trace, Duration> = BTreeMap::new();
    for s in &run.sent {
        first_sent.entry(s.trace).or_insert(s.at);
    }
    for (t, gateways) in &by {
        if gateways.len() < 2 {
            continue;
        }
        let from = first_sent.get(t).copied().unwrap_or_default();
        let to = last_export.get(t).copied().unwrap_or_default();
        // Skip the epoch changes of the first second (the cluster forming).
        let changed = epoch_changes
            .iter()
            .any(|c| *c >= from && *c <= to && *c > Duration::from_secs(1));
        if !changed {
            v.push(format!(
                "I2: trace {} exported by {gateways:?} within one epoch",
                hex(t)
            ));
        }
    }
}

/// I4: nothing of a dropped trace.
fn nothing_of_a_dropped_trace(run: &Run<'_>, v: &mut Vec<String>) {
    for e in &run.exported {
        match run.kinds.get(&e.trace) {
            Some(k) if k.keep() => {}
            Some(_) => v.push(format!(
                "I4: span {} of dropped trace {} exported",
                hex(&e.span),
                hex(&e.trace)
            )),
            None => v.push(format!("I4: unknown trace {} exported", hex(&e.trace))),
        }
    }
}

/// I1 / I3 / I5: every accepted span of a kept trace exported, or its loss attributed.
fn every_kept_span_exported_or_attributed(run: &Run<'_>, v: &mut Vec<String>) {
    let mut traces: BTreeMap<Trace, (usize, usize)> = BTreeMap::new();
    for s in run.sent.iter().filter(|s| s.accepted) {
        if !run.kinds.get(&s.trace).is_some_and(|k| k.keep()) {
            continue;
        }
        let t = traces.entry(s.trace).or_default();
        t.0 += 1;
        if run.copies.contains_key(&(s.trace, s.span)) {
            t.1 += 1;
        } else if !run.attributable(&s.trace, s.at) {
            let rule = if run.faulty && !run.replicated {
                "I5"
            } else {
                "I1"
            };
            // Where the rest of the trace went, to start the diagnosis from.
            let rest = run.exports_of(&s.trace, None);
            v.push(format!(
                "{rule}: span {}/{} of kept trace accepted by {} at {:.3}s never exported (the trace's other exports: {}; owner→replica by the rings at each crash: {})",
                hex(&s.trace),
                hex(&s.span),
                s.to,
                s.at.as_secs_f64(),
                if rest.is_empty() { "none".to_string() } else { rest.join(", ") },
                run.placements(&s.trace)
            ));
        }
    }
    for (t, (accepted, got)) in &traces {
        let kind = run.kinds[t];
        if kind.error && *accepted == 4 && *got == 0 && !run.attributable(t, Duration::ZERO) {
            v.push(format!(
                "I3: ERROR trace {} fully accepted but not kept",
                hex(t)
            ));
        }
    }
}

/// I6: after the faults, one epoch, one leader, the running gateways own the ring, and every
/// agent routes by the gateways' final ring.
fn converged(shared: &Shared, v: &mut Vec<String>) {
    let nodes = shared.nodes.lock().unwrap();
    let epochs: BTreeSet<u64> = nodes.values().map(|h| h.node.ring_now().epoch()).collect();
    let leaders: BTreeSet<Option<u64>> = nodes.values().map(|h| h.node.leader_now()).collect();
    if epochs.len() > 1 {
        v.push(format!("I6: gateways route by different epochs {epochs:?}"));
    }
    if leaders.len() != 1 || leaders.contains(&None) {
        v.push(format!("I6: gateways disagree on the leader {leaders:?}"));
    }
    let running: BTreeSet<String> = nodes.keys().cloned().collect();
    if let Some(h) = nodes.values().next() {
        let owners: BTreeSet<String> = h.node.ring_now().owners().iter().cloned().collect();
        if owners != running {
            v.push(format!(
                "I6: ring owners {owners:?} are not the running gateways {running:?}"
            ));
        }
    }
    if let Some(&epoch) = epochs.iter().next() {
        for (agent, routes) in shared.agent_routes.lock().unwrap().iter() {
            let routes = routes.borrow();
            if routes.epoch() != epoch {
                v.push(format!(
                    "I6: agent {agent} routes by epoch {} ({}), the gateways by {epoch}",
                    routes.epoch(),
                    routes.mode()
                ));
            }
        }
    }
}

/// Enrichment through agents: every exported span carries the driver's pod.
fn enriched_by_the_agents(run: &Run<'_>, v: &mut Vec<String>) {
    let bare = run
        .exported
        .iter()
        .filter(|e| e.pod.as_deref() != Some(crate::world::DRIVER_POD))
        .count();
    if bare > 0 {
        v.push(format!(
            "agents: {bare} exported spans lack the driver's pod metadata"
        ));
    }
}

/// I7: memory under budget (what the engine accounts, which P2 ties to real memory).
fn buffers_under_budget(shared: &Shared, v: &mut Vec<String>) {
    for (name, h) in shared.nodes.lock().unwrap().iter() {
        let budget = h.stage.budget_bytes();
        if budget.0 > budget.1 || budget.1 > BUFFER_LIMIT_MIB << 20 {
            v.push(format!(
                "I7: {name} buffers {} bytes over its budget {}",
                budget.0, budget.1
            ));
        }
    }
}

/// FNV-1a over what the sink received, in order.
fn sink_digest(exported: &[Exported]) -> u64 {
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    for e in exported {
        for b in e.trace.iter().chain(e.span.iter()).chain(e.by.as_bytes()) {
            digest = (digest ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        digest ^= e.at.as_micros() as u64;
    }
    digest
}
