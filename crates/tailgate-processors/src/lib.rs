//! Span processors as pure transforms over [`EncodedSpan`] batches.
//!
//! | processor | module | what it does |
//! |---|---|---|
//! | `attributes` | [`attributes`] | insert / update / upsert / delete / hash / extract span attributes |
//! | `resource` | [`resource`] | the same actions on resource attributes, once per distinct resource |
//! | `filter` | [`filter`] | drops spans / span events matching OTTL conditions |
//! | `batch` | [`batch`] | decides batch cuts (the pipeline owns the timer) |
//! | `memory_limiter` | [`memory`] | turns limits and a measurement into accept / refuse |
//!
//! **Invariant:** no I/O, no clock, no randomness: the same input gives the same output, so
//! the simulator and unit tests drive these directly. Spans are never decoded: actions edit
//! the wire format, and a span nothing applies to keeps its original bytes.

pub mod actions;
pub mod attributes;
pub mod batch;
pub mod filter;
pub mod memory;
pub mod resource;

use tailgate_otlp::EncodedSpan;

/// What a processor removed, for drop accounting (intentional drops, reason: filtered).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Processed {
    pub spans_dropped: usize,
    pub events_dropped: usize,
}

/// A synchronous span transform in a pipeline.
pub trait SpanProcessor: Send + Sync + std::fmt::Debug {
    /// Transforms `spans` in place; removed spans are reported in [`Processed`].
    fn process(&self, spans: &mut Vec<EncodedSpan>) -> Processed;
}

#[cfg(test)]
mod tests;
