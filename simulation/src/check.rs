//! The invariants, checked after every run from what the driver sent, what the sink
//! received and the gateways' state.
//!
//! - **I1** graceful events only: every accepted span of every kept trace is exported.
//! - **I2** no span is exported twice (unless the driver resent it after an ambiguous
//!   failure), and no trace is exported in pieces by two owners of the same epoch: two
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
use crate::world::{BUFFER_LIMIT_MIB, Shared};
use crate::{CrashRecord, Outcome};

/// Spans sent this close to a partition window may be decided on partial data.
const WINDOW_MARGIN: Duration = Duration::from_secs(6);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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
    let kinds = shared.kinds.lock().unwrap().clone();
    let exported = shared.exported.lock().unwrap().clone();
    let mut v = Vec::new();

    let mut copies: BTreeMap<([u8; 16], [u8; 8]), usize> = BTreeMap::new();
    let mut by: BTreeMap<[u8; 16], BTreeSet<String>> = BTreeMap::new();
    for e in &exported {
        *copies.entry((e.trace, e.span)).or_default() += 1;
        by.entry(e.trace).or_default().insert(e.by.clone());
    }
    let ambiguous: BTreeSet<([u8; 16], [u8; 8])> = sent
        .iter()
        .filter(|s| s.ambiguous)
        .map(|s| (s.trace, s.span))
        .collect();
    let attributable = |trace: &[u8; 16], at: Duration| {
        let id = TraceId(*trace);
        crashes.iter().any(|c| {
            c.rings
                .iter()
                .any(|r| r.owner(&id) == Some(c.name.as_str()))
        }) || windows
            .iter()
            .any(|(from, to)| at + WINDOW_MARGIN >= *from && at <= *to + WINDOW_MARGIN)
    };
    let faulty = !scenario.graceful();

    // I2: no span twice.
    for ((t, s), n) in &copies {
        if *n > 1 && !ambiguous.contains(&(*t, *s)) {
            let how: Vec<String> = exported
                .iter()
                .filter(|e| e.trace == *t && e.span == *s)
                .map(|e| format!("{}@{:.3}s", e.by, e.at.as_secs_f64()))
                .collect();
            v.push(format!(
                "I2: span {}/{} exported {n} times ({})",
                hex(t),
                hex(s),
                how.join(", ")
            ));
        }
    }
    // I2: no trace in pieces by two owners of one epoch.
    let mut first_sent: BTreeMap<[u8; 16], Duration> = BTreeMap::new();
    for s in &sent {
        first_sent.entry(s.trace).or_insert(s.at);
    }
    let mut last_export: BTreeMap<[u8; 16], Duration> = BTreeMap::new();
    for e in &exported {
        let t = last_export.entry(e.trace).or_insert(e.at);
        *t = (*t).max(e.at);
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
    // I4: nothing of a dropped trace.
    for e in &exported {
        match kinds.get(&e.trace) {
            Some(k) if k.keep() => {}
            Some(_) => v.push(format!(
                "I4: span {} of dropped trace {} exported",
                hex(&e.span),
                hex(&e.trace)
            )),
            None => v.push(format!("I4: unknown trace {} exported", hex(&e.trace))),
        }
    }
    // I1 / I3 / I5: every accepted span of a kept trace exported, or its loss attributed.
    let mut traces: BTreeMap<[u8; 16], (usize, usize)> = BTreeMap::new();
    for s in sent.iter().filter(|s| s.accepted) {
        let Some(kind) = kinds.get(&s.trace) else {
            continue;
        };
        if !kind.keep() {
            continue;
        }
        let t = traces.entry(s.trace).or_default();
        t.0 += 1;
        if copies.contains_key(&(s.trace, s.span)) {
            t.1 += 1;
        } else if !(faulty && attributable(&s.trace, s.at)) {
            let rule = if faulty { "I5" } else { "I1" };
            // Where the rest of the trace went, to start the diagnosis from.
            let rest: Vec<String> = exported
                .iter()
                .filter(|e| e.trace == s.trace)
                .map(|e| format!("{}@{:.3}s", e.by, e.at.as_secs_f64()))
                .collect();
            v.push(format!(
                "{rule}: span {}/{} of kept trace accepted at {:.3}s never exported (the trace's other exports: {})",
                hex(&s.trace),
                hex(&s.span),
                s.at.as_secs_f64(),
                if rest.is_empty() { "none".to_string() } else { rest.join(", ") }
            ));
        }
    }
    for (t, (accepted, got)) in &traces {
        let kind = kinds[t];
        if kind.error && *accepted == 4 && *got == 0 && !(faulty && attributable(t, Duration::ZERO))
        {
            v.push(format!(
                "I3: ERROR trace {} fully accepted but not kept",
                hex(t)
            ));
        }
    }
    // I6: converged.
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
    // I6 for agents: each routes by the gateways' final ring.
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
    // Enrichment through agents: every exported span carries the driver's pod.
    if scenario.via_agents() {
        let bare = shared
            .exported
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.pod.as_deref() != Some(crate::world::DRIVER_POD))
            .count();
        if bare > 0 {
            v.push(format!(
                "agents: {bare} exported spans lack the driver's pod metadata"
            ));
        }
    }
    // I7: memory under budget (what the engine accounts, which P2 ties to real memory).
    for (name, h) in nodes.iter() {
        let budget = h.stage.budget_bytes();
        if budget.0 > budget.1 || budget.1 > BUFFER_LIMIT_MIB << 20 {
            v.push(format!(
                "I7: {name} buffers {} bytes over its budget {}",
                budget.0, budget.1
            ));
        }
    }
    drop(nodes);
    shared.log_at(
        now,
        format!(
            "checked: {} spans sent ({} accepted), {} exported, {} violations",
            sent.len(),
            sent.iter().filter(|s| s.accepted).count(),
            exported.len(),
            v.len()
        ),
    );
    // The event log records what the sink received, in order (part of the replay check).
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    for e in &exported {
        for b in e.trace.iter().chain(e.span.iter()).chain(e.by.as_bytes()) {
            digest = (digest ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        digest ^= e.at.as_micros() as u64;
    }
    shared.log_at(now, format!("sink digest {digest:016x}"));
    Outcome {
        events: Vec::new(),
        violations: v,
        spans_sent: sent.len(),
        spans_exported: exported.len(),
    }
}
