//! A documented subset of the OpenTelemetry Transformation Language (OTTL): boolean conditions
//! over a span or a span event, as the collector's `filter` processor and the `ottl_condition`
//! sampling policy use them.
//!
//! Supported (see `docs/configuration.md`, "OTTL subset"):
//!
//! - comparisons `==  !=  <  >  <=  >=` between paths, literals and `+ -` arithmetic;
//! - `and`, `or`, `not`, parentheses, `true`, `false`;
//! - the converter `IsMatch(value, "regex")`;
//! - paths in the **span** context: `name`, `kind`, `status.code`, `trace_state`,
//!   `start_time_unix_nano`, `end_time_unix_nano`, `attributes["k"]`, `resource.attributes["k"]`;
//! - paths in the **spanevent** context: `name`, `time_unix_nano`, `attributes["k"]`,
//!   `span.name`, `span.kind`, `span.status.code`, `span.attributes["k"]`, `resource.attributes["k"]`;
//! - literals: strings, integers, floats, `nil`, and the enums `SPAN_KIND_*`, `STATUS_CODE_*`.
//!
//! Anything else is a parse error naming what is allowed, never a condition that is silently
//! false. **Invariant:** evaluation is pure; data comes in through [`Context`].

mod eval;
mod lex;
mod parse;

pub use eval::{Context, Value};
pub use lex::ParseError;
pub use parse::{Condition, Path, Scope};

#[cfg(test)]
mod tests;
