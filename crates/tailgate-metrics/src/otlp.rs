//! A flush's metrics as an OTLP `ExportMetricsServiceRequest`, for a metrics pipeline's
//! `otlp` exporter.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1 as pb;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::model::*;

/// The encoded request.
pub fn encode(batch: &MetricsBatch) -> Bytes {
    Bytes::from(request(batch).encode_to_vec())
}

/// The request, as generated types.
pub fn request(batch: &MetricsBatch) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: batch
            .resources
            .iter()
            .map(|r| pb::ResourceMetrics {
                resource: Some(Resource {
                    attributes: key_values(&r.resource),
                    ..Default::default()
                }),
                scope_metrics: vec![pb::ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: r.scope_name.to_string(),
                        ..Default::default()
                    }),
                    metrics: r.metrics.iter().map(metric).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

fn metric(m: &Metric) -> pb::Metric {
    let temporality = match m.temporality {
        Temporality::Cumulative => pb::AggregationTemporality::Cumulative,
        Temporality::Delta => pb::AggregationTemporality::Delta,
    } as i32;
    let data = match &m.data {
        MetricData::Sum(points) => pb::metric::Data::Sum(pb::Sum {
            data_points: points
                .iter()
                .map(|p| pb::NumberDataPoint {
                    attributes: key_values(&p.attributes),
                    start_time_unix_nano: p.start_unix_nano,
                    time_unix_nano: p.time_unix_nano,
                    exemplars: p.exemplars.iter().map(exemplar).collect(),
                    value: Some(pb::number_data_point::Value::AsInt(p.value as i64)),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: temporality,
            is_monotonic: true,
        }),
        MetricData::Histogram { bounds, points } => pb::metric::Data::Histogram(pb::Histogram {
            data_points: points
                .iter()
                .map(|p| pb::HistogramDataPoint {
                    attributes: key_values(&p.attributes),
                    start_time_unix_nano: p.start_unix_nano,
                    time_unix_nano: p.time_unix_nano,
                    count: p.count,
                    sum: Some(p.sum),
                    bucket_counts: p.bucket_counts.clone(),
                    explicit_bounds: bounds.to_vec(),
                    exemplars: p.exemplars.iter().map(exemplar).collect(),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: temporality,
        }),
    };
    pb::Metric {
        name: m.name.clone(),
        unit: m.unit.to_string(),
        data: Some(data),
        ..Default::default()
    }
}

fn exemplar(e: &Exemplar) -> pb::Exemplar {
    pb::Exemplar {
        time_unix_nano: e.time_unix_nano,
        span_id: e.span_id.0.to_vec(),
        trace_id: e.trace_id.0.to_vec(),
        value: Some(pb::exemplar::Value::AsDouble(e.value)),
        ..Default::default()
    }
}

fn key_values(attrs: &[(String, AttrValue)]) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(AnyValue {
                value: Some(match v {
                    AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
                    AttrValue::Int(i) => any_value::Value::IntValue(*i),
                    AttrValue::Double(d) => any_value::Value::DoubleValue(*d),
                    AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
                }),
            }),
            ..Default::default()
        })
        .collect()
}
