//! The collector's `--feature-gates` flag, for the gates Tailgate implements.
//!
//! The flag takes a comma-separated list; a name turns its gate on, `+name` too, `-name`
//! turns it off. A gate Tailgate does not know is an error, as it is in the collector: a
//! flag that silently does nothing would hide that a behaviour the user asked for is absent.

use crate::model::{Config, ConfigError, ConfigErrors, ProcessorConfig};

/// `tail_sampling` records the deciding policy on kept spans' scopes (`tailsampling.policy`,
/// `tailsampling.composite_policy`, `tailsampling.cached_decision`), as `record_policy: true`.
pub const RECORD_POLICY: &str = "processor.tailsamplingprocessor.recordpolicy";

/// `tail_sampling` follows OpenTelemetry probability sampling in W3C `tracestate` (OTEP 235):
/// `probabilistic` uses the trace's randomness, rate and bytes limits record the threshold
/// they implied, and kept spans carry the effective `ot=th`.
pub const USE_TRACESTATE: &str = "processor.tailsamplingprocessor.usetracestate";

/// Every gate Tailgate implements.
pub const KNOWN: &[&str] = &[RECORD_POLICY, USE_TRACESTATE];

/// The gates the command line turned on or off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeatureGates {
    pub record_policy: bool,
    pub use_tracestate: bool,
}

impl FeatureGates {
    /// Parses every `--feature-gates` value (each a comma-separated list); later entries win.
    pub fn parse(flags: &[String]) -> Result<FeatureGates, ConfigErrors> {
        let mut gates = FeatureGates::default();
        let mut errors = Vec::new();
        for entry in flags.iter().flat_map(|f| f.split(',')).map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            let (name, on) = match entry.as_bytes()[0] {
                b'-' => (&entry[1..], false),
                b'+' => (&entry[1..], true),
                _ => (entry, true),
            };
            match name {
                RECORD_POLICY => gates.record_policy = on,
                USE_TRACESTATE => gates.use_tracestate = on,
                other => errors.push(ConfigError {
                    file: "(command line)".into(),
                    path: "--feature-gates".into(),
                    location: None,
                    message: format!(
                        "no such feature gate `{other}`; Tailgate implements: {}",
                        KNOWN.join(", ")
                    ),
                }),
            }
        }
        if errors.is_empty() {
            Ok(gates)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Applies the gates to a loaded config. A gate that is on overrides the config; one that
    /// is off leaves the config's own setting alone.
    pub fn apply(&self, cfg: &mut Config) {
        for p in cfg.processors.values_mut() {
            if let ProcessorConfig::TailSampling(ts) = p {
                ts.record_policy |= self.record_policy;
                ts.use_tracestate |= self.use_tracestate;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_parse_like_the_collectors_flag() {
        let on = FeatureGates::parse(&[format!("+{RECORD_POLICY}")]).unwrap();
        assert!(on.record_policy);
        let off = FeatureGates::parse(&[format!("{RECORD_POLICY},-{RECORD_POLICY}")]).unwrap();
        assert!(!off.record_policy);
        assert_eq!(FeatureGates::parse(&[]).unwrap(), FeatureGates::default());
        let both = FeatureGates::parse(&[format!("{RECORD_POLICY},{USE_TRACESTATE}")]).unwrap();
        assert!(both.record_policy && both.use_tracestate);
    }

    #[test]
    fn an_unknown_gate_is_an_error_that_lists_the_known_ones() {
        let err = FeatureGates::parse(&["processor.nosuch".into()]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("no such feature gate `processor.nosuch`"),
            "{text}"
        );
        assert!(text.contains(RECORD_POLICY), "{text}");
    }
}
