//! Tailgate's configuration, in the OpenTelemetry Collector's YAML shape.
//!
//! `receivers` / `processors` / `exporters` / `extensions` / `service` with `type/name`
//! component IDs, `${env:NAME}` substitution, every component's settings typed with the
//! collector's names and defaults ([`components`]), and validation that reports every problem
//! with the file, the YAML path and what is allowed ([`ConfigError`]).
//!
//! **Boundary:** this crate decides what a valid config is; runtime crates receive only a
//! validated [`Config`] and never re-check it. **Invariant:** no I/O but reading the file.

pub mod agent;
pub mod cluster;
pub mod components;
pub mod connectors;
mod env;
pub mod feature_gates;
mod field_errors;
mod load;
mod locate;
mod model;
mod overrides;
mod reader;
mod receivers;
pub mod sampling;
mod service_section;
pub mod tls;
mod types;
mod validate;

pub use feature_gates::FeatureGates;
pub use load::{load_file, load_file_with_overrides, load_str};
pub use model::{
    ComponentId, Config, ConfigError, ConfigErrors, ExporterConfig, ExtensionConfig,
    PipelineConfig, ProcessorConfig, ReceiverConfig, ServiceConfig, Signal,
};
pub use types::{
    AttributeValue, ConfigRegex, GoDuration, SpanCondition, SpanEventCondition, parse_go_duration,
};

#[cfg(test)]
mod tests;
