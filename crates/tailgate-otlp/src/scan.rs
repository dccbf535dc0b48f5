//! Scanning an encoded `ExportTraceServiceRequest` into [`EncodedSpan`]s without decoding it.

use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use crate::span::{
    EncodedSpan, RawMeta, ResourceScope, SpanId, SpanLayout, SpanMeta, StatusCode, TraceId,
    read_meta,
};
use crate::wire::{FieldReader, WireError};

const REQUEST_RESOURCE_SPANS: u32 = 1;
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
const RESOURCE_SPANS_SCHEMA_URL: u32 = 3;
const SCOPE_SPANS_SCOPE: u32 = 1;
const SCOPE_SPANS_SPANS: u32 = 2;
const SCOPE_SPANS_SCHEMA_URL: u32 = 3;

/// How many rejection reasons one response spells out; the rest are only counted.
const REJECTION_REASONS_MAX: usize = 3;

/// Encoded bytes of a typical span (SDK spans run 200–1,000 bytes with their attributes),
/// to size the scan's output once per request: a vector grown span by span moves every span
/// scanned so far at each doubling. Smaller spans only grow it.
const SPAN_BYTES_TYPICAL: usize = 384;

/// The request is not a well-formed OTLP trace export; nothing in it was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("malformed ExportTraceServiceRequest at {path}: {source}")]
pub struct ScanError {
    /// Where in the request the error sits, e.g. `resource_spans[0].scope_spans[2].spans[5]`.
    pub path: String,
    pub source: WireError,
}

/// The valid spans of a request and an account of the ones rejected for bad IDs.
#[derive(Debug, Default)]
pub struct ScannedRequest {
    pub spans: Vec<EncodedSpan>,
    /// Spans refused for a missing, wrongly sized or all-zero trace or span ID.
    pub rejected_spans: u64,
    /// Human-readable reasons for the first rejections, for OTLP partial success.
    pub rejection_message: Option<String>,
}

/// Splits `body` into spans. Span bytes are zero-copy slices of `body`.
///
/// A malformed request is an error as a whole (the sender has a bug); a span with bad IDs is
/// rejected alone and the rest of the request goes on, as OTLP partial success prescribes.
pub fn scan_export_request(body: &Bytes) -> Result<ScannedRequest, ScanError> {
    let mut out = ScannedRequest {
        spans: Vec::with_capacity(body.len() / SPAN_BYTES_TYPICAL),
        ..ScannedRequest::default()
    };
    let mut reasons: Vec<String> = Vec::new();

    for (ri, field) in FieldReader::new(body)
        .filter(is_field(REQUEST_RESOURCE_SPANS))
        .enumerate()
    {
        let rs_path = || format!("resource_spans[{ri}]");
        let (num, value) = field.map_err(at(&rs_path))?;
        let rs = value.as_len(num).map_err(at(&rs_path))?;
        let mut resource: &[u8] = &[];
        let mut resource_schema_url: &[u8] = &[];
        for f in FieldReader::new(rs) {
            let (num, value) = f.map_err(at(&rs_path))?;
            match num {
                RESOURCE_SPANS_RESOURCE => resource = value.as_len(num).map_err(at(&rs_path))?,
                RESOURCE_SPANS_SCHEMA_URL => {
                    resource_schema_url = value.as_len(num).map_err(at(&rs_path))?;
                }
                _ => {}
            }
        }
        // Resource and scope are copied (once per ScopeSpans, small) so that a span buffered
        // for a long time pins only its own bytes, never the whole request buffer.
        let resource = Bytes::copy_from_slice(resource);
        let resource_schema_url = Bytes::copy_from_slice(resource_schema_url);

        for (si, f) in FieldReader::new(rs)
            .filter(is_field(RESOURCE_SPANS_SCOPE_SPANS))
            .enumerate()
        {
            let ss_path = || format!("resource_spans[{ri}].scope_spans[{si}]");
            let (num, value) = f.map_err(at(&ss_path))?;
            let ss = value.as_len(num).map_err(at(&ss_path))?;
            let resource = (&resource, &resource_schema_url);
            scan_scope_spans(body, ss, (ri, si), resource, &mut out, &mut reasons)?;
        }
    }
    if out.rejected_spans > 0 {
        let mut msg = format!(
            "{} span(s) rejected: {}",
            out.rejected_spans,
            reasons.join("; ")
        );
        if out.rejected_spans as usize > reasons.len() {
            msg.push_str("; ...");
        }
        out.rejection_message = Some(msg);
    }
    Ok(out)
}

/// Scans one `ScopeSpans` (`ss`, at `(ri, si)` in the request) into `out`.
///
/// One pass over the scope's fields: a pass for the scope and schema URL first touched every
/// span's first byte, a cache miss each, before the spans' own pass. The context is made at
/// the first span from what came before it (the scope leads as encoders write it); a scope
/// or schema URL after the spans (valid, if unusual) is patched in at the end, so every span
/// gets the context a two-pass read would have given it.
fn scan_scope_spans(
    body: &Bytes,
    ss: &[u8],
    (ri, si): (usize, usize),
    (resource, resource_schema_url): (&Bytes, &Bytes),
    out: &mut ScannedRequest,
    reasons: &mut Vec<String>,
) -> Result<(), ScanError> {
    let ss_path = || format!("resource_spans[{ri}].scope_spans[{si}]");
    let first_span = out.spans.len();
    let mut scope: &[u8] = &[];
    let mut scope_schema_url: &[u8] = &[];
    let mut context: Option<Arc<ResourceScope>> = None;
    let mut pi = 0;
    for f in FieldReader::new(ss) {
        let (num, value) = f.map_err(at(&ss_path))?;
        match num {
            SCOPE_SPANS_SCOPE => scope = value.as_len(num).map_err(at(&ss_path))?,
            SCOPE_SPANS_SCHEMA_URL => {
                scope_schema_url = value.as_len(num).map_err(at(&ss_path))?;
            }
            SCOPE_SPANS_SPANS => {
                let span_path = || format!("resource_spans[{ri}].scope_spans[{si}].spans[{pi}]");
                let span = value.as_len(num).map_err(at(&span_path))?;
                let raw = read_meta(span).map_err(at(&span_path))?;
                match span_meta(&raw) {
                    Ok(meta) => {
                        let context = context.get_or_insert_with(|| {
                            resource_scope(resource, resource_schema_url, scope, scope_schema_url)
                        });
                        out.spans.push(EncodedSpan::scanned(
                            Arc::clone(context),
                            body.slice_ref(span),
                            meta,
                            SpanLayout::of(span, raw.name, raw.trace_state),
                        ));
                    }
                    Err(reason) => {
                        out.rejected_spans += 1;
                        if reasons.len() < REJECTION_REASONS_MAX {
                            reasons.push(format!("{}: {reason}", span_path()));
                        }
                    }
                }
                pi += 1;
            }
            _ => {}
        }
    }
    if let Some(made) = &context
        && (*made.scope != *scope || *made.scope_schema_url != *scope_schema_url)
    {
        let context = resource_scope(resource, resource_schema_url, scope, scope_schema_url);
        for s in &mut out.spans[first_span..] {
            s.context = Arc::clone(&context);
        }
    }
    Ok(())
}

/// A scope's context: the resource (shared by the resource's scopes) and the scope, copied
/// out of the request.
fn resource_scope(
    resource: &Bytes,
    resource_schema_url: &Bytes,
    scope: &[u8],
    scope_schema_url: &[u8],
) -> Arc<ResourceScope> {
    Arc::new(ResourceScope {
        resource: resource.clone(),
        resource_schema_url: resource_schema_url.clone(),
        scope: Bytes::copy_from_slice(scope),
        scope_schema_url: Bytes::copy_from_slice(scope_schema_url),
    })
}

/// The span's indexed fields, or why its IDs make it unusable.
fn span_meta(raw: &RawMeta<'_>) -> Result<SpanMeta, String> {
    let (trace_id, span_id) = validate_ids(raw.trace_id, raw.span_id)?;
    let parent_span_id = raw
        .parent_span_id
        .and_then(|p| <[u8; 8]>::try_from(p).ok())
        .filter(|p| p != &[0u8; 8])
        .map(SpanId);
    Ok(SpanMeta {
        trace_id,
        span_id,
        parent_span_id,
        start_time_unix_nano: raw.start,
        end_time_unix_nano: raw.end,
        status_code: StatusCode(raw.status),
        kind: raw.kind,
        flags: raw.flags,
    })
}

/// Builds the error's path only when an error happens: formatting a path per span would
/// cost more than scanning the span.
fn at<P: Fn() -> String>(path: P) -> impl FnOnce(WireError) -> ScanError {
    move |source| ScanError {
        path: path(),
        source,
    }
}

fn is_field(
    wanted: u32,
) -> impl FnMut(&Result<(u32, crate::wire::FieldValue<'_>), WireError>) -> bool {
    move |f| match f {
        Ok((num, _)) => *num == wanted,
        Err(_) => true,
    }
}

fn validate_ids(
    trace_id: Option<&[u8]>,
    span_id: Option<&[u8]>,
) -> Result<(TraceId, SpanId), String> {
    let trace_id = match trace_id {
        None | Some([]) => return Err("trace_id is missing".into()),
        Some(b) => <[u8; 16]>::try_from(b)
            .map_err(|_| format!("trace_id has {} bytes, expected 16", b.len()))?,
    };
    if trace_id == [0; 16] {
        return Err("trace_id is all zeros".into());
    }
    let span_id = match span_id {
        None | Some([]) => return Err("span_id is missing".into()),
        Some(b) => <[u8; 8]>::try_from(b)
            .map_err(|_| format!("span_id has {} bytes, expected 8", b.len()))?,
    };
    if span_id == [0; 8] {
        return Err("span_id is all zeros".into());
    }
    Ok((TraceId(trace_id), SpanId(span_id)))
}
