//! Building an encoded `ExportTraceServiceRequest` from [`EncodedSpan`]s by writing their
//! bytes back, regrouped under their resource and scope.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::span::{EncodedSpan, ResourceScope};
use crate::wire::{WIRE_LEN, len_field_size, put_key, put_len_field, put_varint};

struct ScopeGroup<'a> {
    context: &'a ResourceScope,
    spans: Vec<&'a [u8]>,
}

struct ResourceGroup<'a> {
    resource: &'a [u8],
    schema_url: &'a [u8],
    scopes: Vec<ScopeGroup<'a>>,
}

/// Spans regrouped under their resources and scopes, in order of first appearance.
fn group<'a>(spans: impl IntoIterator<Item = &'a EncodedSpan>) -> Vec<ResourceGroup<'a>> {
    let mut groups: Vec<ResourceGroup<'a>> = Vec::new();
    let mut by_context: HashMap<*const ResourceScope, (usize, usize)> = HashMap::new();
    let mut by_resource: HashMap<(&'a [u8], &'a [u8]), usize> = HashMap::new();

    for span in spans {
        let ptr = Arc::as_ptr(&span.context);
        let (ri, si) = match by_context.get(&ptr) {
            Some(&pos) => pos,
            None => {
                let ctx: &'a ResourceScope = &span.context;
                let key = (&ctx.resource[..], &ctx.resource_schema_url[..]);
                let ri = *by_resource.entry(key).or_insert_with(|| {
                    groups.push(ResourceGroup {
                        resource: key.0,
                        schema_url: key.1,
                        scopes: Vec::new(),
                    });
                    groups.len() - 1
                });
                // Two Arcs can carry equal contexts (separate requests); merge those too.
                let scopes = &mut groups[ri].scopes;
                let si = match scopes.iter().position(|s| {
                    s.context.scope == ctx.scope
                        && s.context.scope_schema_url == ctx.scope_schema_url
                }) {
                    Some(si) => si,
                    None => {
                        scopes.push(ScopeGroup {
                            context: ctx,
                            spans: Vec::new(),
                        });
                        scopes.len() - 1
                    }
                };
                by_context.insert(ptr, (ri, si));
                (ri, si)
            }
        };
        groups[ri].scopes[si].spans.push(span.bytes());
    }
    groups
}

fn scope_len(s: &ScopeGroup<'_>) -> usize {
    let mut n = 0;
    if !s.context.scope.is_empty() {
        n += len_field_size(1, s.context.scope.len());
    }
    n += s
        .spans
        .iter()
        .map(|b| len_field_size(2, b.len()))
        .sum::<usize>();
    if !s.context.scope_schema_url.is_empty() {
        n += len_field_size(3, s.context.scope_schema_url.len());
    }
    n
}

fn resource_len(g: &ResourceGroup<'_>) -> usize {
    let mut n = 0;
    if !g.resource.is_empty() {
        n += len_field_size(1, g.resource.len());
    }
    n += g
        .scopes
        .iter()
        .map(|s| len_field_size(2, scope_len(s)))
        .sum::<usize>();
    if !g.schema_url.is_empty() {
        n += len_field_size(3, g.schema_url.len());
    }
    n
}

fn request_len(groups: &[ResourceGroup<'_>]) -> usize {
    groups
        .iter()
        .map(|g| len_field_size(1, resource_len(g)))
        .sum()
}

/// The size of the request [`encode_export_request`] would build, without building it: what
/// the collector's `bytes_limiting` charges for a trace (the protobuf size of its data).
pub fn export_request_len<'a>(spans: impl IntoIterator<Item = &'a EncodedSpan>) -> usize {
    request_len(&group(spans))
}

/// Encodes `spans` as one request. Spans keep their relative order within each scope; groups
/// appear in order of first appearance, so the output is deterministic.
pub fn encode_export_request<'a>(spans: impl IntoIterator<Item = &'a EncodedSpan>) -> Bytes {
    let groups = group(spans);
    let total = request_len(&groups);
    let mut out = Vec::with_capacity(total);
    for g in &groups {
        put_key(&mut out, 1, WIRE_LEN);
        put_varint(&mut out, resource_len(g) as u64);
        if !g.resource.is_empty() {
            put_len_field(&mut out, 1, g.resource);
        }
        for s in &g.scopes {
            put_key(&mut out, 2, WIRE_LEN);
            put_varint(&mut out, scope_len(s) as u64);
            if !s.context.scope.is_empty() {
                put_len_field(&mut out, 1, &s.context.scope);
            }
            for span in &s.spans {
                put_len_field(&mut out, 2, span);
            }
            if !s.context.scope_schema_url.is_empty() {
                put_len_field(&mut out, 3, &s.context.scope_schema_url);
            }
        }
        if !g.schema_url.is_empty() {
            put_len_field(&mut out, 3, g.schema_url);
        }
    }
    debug_assert_eq!(out.len(), total, "size pass and write pass disagree");
    Bytes::from(out)
}
