//! What every subcommand shares: where its config comes from, how durations are written, and
//! where logs go.

use std::time::Duration;

/// Where a command's config comes from: the file, `--set` overrides and `--feature-gates`,
/// the collector's three flags with the collector's meanings.
#[derive(clap::Args, Clone)]
pub struct ConfigSource {
    /// Collector-style YAML config.
    #[arg(long)]
    pub config: String,
    /// Override one setting of the config, as the collector's `--set` does: keys joined by
    /// `::`, the value read as YAML; repeatable, wins over the file. Example:
    /// `--set receivers::otlp::protocols::grpc::endpoint=127.0.0.1:14317`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The collector's feature gates Tailgate implements, comma-separated; `-name` turns one
    /// off. Known: `processor.tailsamplingprocessor.recordpolicy`.
    #[arg(long = "feature-gates", value_name = "GATES")]
    pub feature_gates: Vec<String>,
}

impl ConfigSource {
    /// Loads and validates the config with the overrides and gates applied; every problem
    /// is in the error.
    pub fn load(&self) -> Result<tailgate_config::Config, tailgate_config::ConfigErrors> {
        let gates = tailgate_config::FeatureGates::parse(&self.feature_gates);
        let cfg = tailgate_config::load_file_with_overrides(&self.config, &self.set);
        match (gates, cfg) {
            (Ok(gates), Ok(mut cfg)) => {
                gates.apply(&mut cfg);
                Ok(cfg)
            }
            (Err(mut a), Err(b)) => {
                a.0.extend(b.0);
                Err(a)
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }
}

/// Parses durations the way configs write them (`30s`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    tailgate_config::parse_go_duration(s)
}

/// Logs go to stderr; `RUST_LOG` overrides the level; `json` for log shippers. Colour only
/// on a terminal (a file or a pipe gets plain text), and never with `NO_COLOR` set.
pub fn init_logging(default_level: &str, json: bool) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_env_filter(filter)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
