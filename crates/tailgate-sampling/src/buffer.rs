//! A buffered trace's spans, copied out of their request buffers into compact storage.
//!
//! Span bytes are copied once per ingest into one allocation per trace and batch (a "chunk"),
//! so a buffered trace never pins the request it arrived in, and memory per span stays close
//! to its encoded size (target P2: ≤ 1.3×). Each span costs its bytes plus a fixed
//! [`BufferedSpan`] record.

use std::sync::Arc;

use bytes::Bytes;
use tailgate_otlp::{EncodedSpan, ResourceScope, SpanId, SpanMeta, StatusCode, TraceId};

use crate::IdSet;
use crate::policy::KeyFilter;

/// Above this many spans a trace keeps a hash set of its span IDs for de-duplication; below
/// it a linear scan is cheaper.
const LINEAR_DEDUPE_SPANS_MAX: usize = 32;

/// One span's record: where its bytes are, and its metadata without the trace ID (every span
/// of a buffer shares it). Kept small: it is most of the per-span overhead (target P2).
#[derive(Debug, Clone)]
struct BufferedSpan {
    chunk: u32,
    offset: u32,
    len: u32,
    context: u32,
    span_id: SpanId,
    parent_span_id: Option<SpanId>,
    start_time_unix_nano: u64,
    end_time_unix_nano: u64,
    status_code: i32,
    kind: i32,
    flags: u32,
}

impl BufferedSpan {
    fn meta(&self, trace_id: TraceId) -> SpanMeta {
        SpanMeta {
            trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id,
            start_time_unix_nano: self.start_time_unix_nano,
            end_time_unix_nano: self.end_time_unix_nano,
            status_code: StatusCode(self.status_code),
            kind: self.kind,
            flags: self.flags,
        }
    }
}

/// The spans of one trace. Merging is idempotent by span ID: the same span twice (a retried
/// forward, a resent handoff) is stored once.
#[derive(Debug, Clone, Default)]
pub struct TraceBuffer {
    trace_id: Option<TraceId>,
    chunks: Vec<Bytes>,
    contexts: Vec<Arc<ResourceScope>>,
    spans: Vec<BufferedSpan>,
    ids: Option<IdSet<SpanId>>,
    encoded_bytes: u64,
    /// The filter's keys found in the chunks, as bits ([`KeyFilter::keys_in`]).
    keys_seen: u64,
}

/// What [`TraceBuffer::append`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub spans: usize,
    pub bytes: u64,
    pub duplicate_spans: usize,
    pub duplicate_bytes: u64,
    pub root_seen: bool,
}

impl TraceBuffer {
    pub fn span_count(&self) -> usize {
        self.spans.len()
    }

    /// Encoded bytes of the buffered spans (what the byte budget counts).
    pub fn encoded_bytes(&self) -> u64 {
        self.encoded_bytes
    }

    fn contains(&self, id: &SpanId) -> bool {
        match &self.ids {
            Some(set) => set.contains(id),
            None => self.spans.iter().any(|s| &s.span_id == id),
        }
    }

    /// Copies `spans` (all of this trace) in, skipping span IDs already present, and runs
    /// `keys` over the copied bytes while they are in the cache.
    pub fn append(&mut self, spans: &[EncodedSpan], keys: &KeyFilter) -> Appended {
        let mut out = Appended::default();
        let fresh = self.fresh_spans(spans);
        let is_fresh = |i: usize| fresh.as_ref().is_none_or(|f| f[i]);
        let total: usize = (0..spans.len())
            .filter(|&i| is_fresh(i))
            .map(|i| spans[i].bytes().len())
            .sum();
        let count = fresh
            .as_ref()
            .map_or(spans.len(), |f| f.iter().filter(|&&x| x).count());
        out.duplicate_spans = spans.len() - count;
        out.duplicate_bytes =
            spans.iter().map(|s| s.bytes().len() as u64).sum::<u64>() - total as u64;
        if count == 0 {
            return out;
        }
        // Exact sizes: growth slack would be most of the per-span overhead.
        self.spans.reserve_exact(count);
        self.chunks.reserve_exact(1);
        let trace_id = *self.trace_id.get_or_insert(spans[0].meta.trace_id);
        let mut chunk = Vec::with_capacity(total);
        let chunk_index = u32::try_from(self.chunks.len()).expect("chunks per trace fit u32");
        for (i, s) in spans.iter().enumerate() {
            if !is_fresh(i) {
                continue;
            }
            debug_assert_eq!(s.meta.trace_id, trace_id, "one trace per buffer");
            let context = match self
                .contexts
                .iter()
                .position(|c| Arc::ptr_eq(c, &s.context) || **c == *s.context)
            {
                Some(i) => i,
                None => {
                    self.contexts.push(Arc::clone(&s.context));
                    self.contexts.len() - 1
                }
            };
            let offset = chunk.len();
            chunk.extend_from_slice(s.bytes());
            self.spans.push(BufferedSpan {
                chunk: chunk_index,
                offset: offset as u32,
                len: s.bytes().len() as u32,
                context: context as u32,
                span_id: s.meta.span_id,
                parent_span_id: s.meta.parent_span_id,
                start_time_unix_nano: s.meta.start_time_unix_nano,
                end_time_unix_nano: s.meta.end_time_unix_nano,
                status_code: s.meta.status_code.0,
                kind: s.meta.kind,
                flags: s.meta.flags,
            });
            if let Some(ids) = &mut self.ids {
                ids.insert(s.meta.span_id);
            }
            out.spans += 1;
            out.bytes += s.bytes().len() as u64;
            out.root_seen |= s.meta.is_root();
        }
        if self.ids.is_none() && self.spans.len() > LINEAR_DEDUPE_SPANS_MAX {
            self.ids = Some(self.spans.iter().map(|s| s.span_id).collect());
        }
        self.keys_seen |= keys.keys_in(&chunk);
        self.chunks.push(Bytes::from(chunk));
        self.encoded_bytes += out.bytes;
        out
    }

    /// Which of `spans` are new: `None` when all are (the usual case, found without
    /// allocating), else a flag per span — not buffered already and not an earlier span's
    /// repeat within the batch.
    fn fresh_spans(&self, spans: &[EncodedSpan]) -> Option<Vec<bool>> {
        let mut batch: Option<IdSet<SpanId>> = None;
        // Small batches: a 256-bit filter on each ID's last byte; only a hit walks back.
        let mut last_bytes_seen = [0u64; 4];
        let mut repeated_in_batch = |i: usize| {
            let id = spans[i].meta.span_id;
            if spans.len() <= LINEAR_DEDUPE_SPANS_MAX {
                let last = usize::from(id.0[7]);
                let (word, bit) = (last / 64, 1u64 << (last % 64));
                let maybe = last_bytes_seen[word] & bit != 0;
                last_bytes_seen[word] |= bit;
                return maybe && spans[..i].iter().any(|s| s.meta.span_id == id);
            }
            let set = batch.get_or_insert_with(|| {
                let mut set = IdSet::with_capacity_and_hasher(spans.len(), Default::default());
                set.extend(spans[..i].iter().map(|s| s.meta.span_id));
                set
            });
            !set.insert(id)
        };
        let first_duplicate = (0..spans.len())
            .find(|&i| self.contains(&spans[i].meta.span_id) || repeated_in_batch(i))?;
        let mut fresh = vec![true; spans.len()];
        fresh[first_duplicate] = false;
        for (i, flag) in fresh.iter_mut().enumerate().skip(first_duplicate + 1) {
            *flag = !(self.contains(&spans[i].meta.span_id) || repeated_in_batch(i));
        }
        Some(fresh)
    }

    /// The keys of the filter given to [`TraceBuffer::append`] found in the spans' bytes.
    pub fn keys_seen(&self) -> u64 {
        self.keys_seen
    }

    /// The spans as [`EncodedSpan`]s (zero-copy slices of the chunks), in arrival order.
    pub fn spans(&self) -> Vec<EncodedSpan> {
        let Some(trace_id) = self.trace_id else {
            return Vec::new();
        };
        self.spans
            .iter()
            .map(|s| {
                EncodedSpan::new(
                    Arc::clone(&self.contexts[s.context as usize]),
                    self.chunks[s.chunk as usize]
                        .slice(s.offset as usize..(s.offset + s.len) as usize),
                    s.meta(trace_id),
                )
            })
            .collect()
    }

    /// Spans whose parent is set but absent from the trace (broken propagation, or the
    /// parent is still in flight), with their service names.
    pub fn orphans(&self) -> Vec<Option<String>> {
        let has = |id: &SpanId| match &self.ids {
            Some(set) => set.contains(id),
            None => self.spans.iter().any(|s| &s.span_id == id),
        };
        self.spans
            .iter()
            .filter(|s| s.parent_span_id.is_some_and(|p| !has(&p)))
            .map(|s| {
                let ctx = &self.contexts[s.context as usize];
                match tailgate_otlp::find_attribute(
                    &ctx.resource,
                    tailgate_otlp::RESOURCE_ATTRIBUTES,
                    "service.name",
                ) {
                    Some(tailgate_otlp::AnyValueRef::String(name)) => Some(name.to_string()),
                    _ => None,
                }
            })
            .collect()
    }

    /// Bytes of memory this buffer holds, for the P2 benchmark: span bytes plus records.
    pub fn memory_bytes(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum::<usize>()
            + self.spans.capacity() * size_of::<BufferedSpan>()
            + self.chunks.capacity() * size_of::<Bytes>()
            + self.contexts.capacity() * size_of::<Arc<ResourceScope>>()
    }
}
