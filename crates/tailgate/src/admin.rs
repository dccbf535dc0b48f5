//! `tailgate status` and `tailgate sampling set|clear`: operator commands against any
//! gateway's cluster address (`--admin`); the gateway passes writes to the Raft leader.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tailgate_cluster::proto::cluster_client::ClusterClient;
use tailgate_cluster::proto::{
    ClearSamplingRequest, SetSamplingRequest, StatusReply, StatusRequest,
};
use tailgate_config::tls::ClusterTlsConfig;
use tailgate_pipeline::tls::{TlsNetwork, cluster_tls};
use tonic::transport::{Channel, Endpoint};

#[derive(Args)]
pub struct AdminArgs {
    /// Cluster address of any gateway (`--cluster-listen` / `--advertise`).
    #[arg(long, default_value = "127.0.0.1:4320")]
    pub admin: String,
    /// With `cluster.tls`: a certificate of the cluster's CA to present (PEM).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<String>,
    /// The key of `--tls-cert` (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<String>,
    /// The cluster's CA certificate (PEM): the gateway's certificate must chain to it.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<String>,
}

impl AdminArgs {
    /// The cluster TLS settings the flags give, if any.
    fn tls(&self) -> Option<ClusterTlsConfig> {
        Some(ClusterTlsConfig {
            cert_file: self.tls_cert.clone()?,
            key_file: self.tls_key.clone()?,
            ca_file: self.tls_ca.clone()?,
            ..Default::default()
        })
    }
}

#[derive(Subcommand)]
pub enum SamplingCommand {
    /// Keep this percentage of the traces the policies would not keep, on every gateway,
    /// until the override expires or is cleared.
    Set {
        /// Percentage of otherwise unsampled traces to keep (0-100).
        #[arg(long)]
        probabilistic: f64,
        /// How long the override lasts.
        #[arg(long = "for", value_parser = crate::cli::parse_duration)]
        duration: Duration,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove the override now.
    Clear {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

async fn client(args: &AdminArgs) -> anyhow::Result<ClusterClient<Channel>> {
    let addr = &args.admin;
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri)
        .with_context(|| format!("invalid --admin address {addr:?}"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10));
    let channel = match args.tls() {
        None => endpoint.connect().await,
        Some(tls) => {
            let tls = cluster_tls(&tls).context("--tls-cert/--tls-key/--tls-ca")?;
            TlsNetwork::new(tls).connect(endpoint).await
        }
    };
    let channel = channel.map_err(|e| {
        // The transport error's own text is "transport error"; its cause says what failed
        // (refused, TLS handshake).
        let cause = std::error::Error::source(&e).map_or(e.to_string(), ToString::to_string);
        anyhow::anyhow!("cannot reach the gateway at {addr}: {cause}")
    })?;
    Ok(ClusterClient::new(channel))
}

pub async fn sampling(cmd: SamplingCommand) -> anyhow::Result<()> {
    let (reply, what) = match cmd {
        SamplingCommand::Set {
            probabilistic,
            duration,
            admin,
        } => {
            let mut c = client(&admin).await?;
            let r = c
                .set_sampling(SetSamplingRequest {
                    probabilistic_percent: probabilistic,
                    duration_ms: duration.as_millis() as u64,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            (
                r.into_inner(),
                format!(
                    "sampling override set: keep {probabilistic}% of otherwise unsampled traces for {duration:?}"
                ),
            )
        }
        SamplingCommand::Clear { admin } => {
            let mut c = client(&admin).await?;
            let r = c
                .clear_sampling(ClearSamplingRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            (r.into_inner(), "sampling override cleared".to_string())
        }
    };
    if !reply.ok {
        anyhow::bail!("the cluster refused: {}", reply.message);
    }
    println!("{what} (epoch {})", reply.epoch);
    Ok(())
}

pub async fn status(args: AdminArgs) -> anyhow::Result<()> {
    let mut c = client(&args).await?;
    let s = c
        .status(StatusRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    print!("{}", render_status(&s));
    Ok(())
}

fn render_status(s: &StatusReply) -> String {
    let mut out = format!(
        "epoch {}  leader {}\n",
        s.epoch,
        if s.leader.is_empty() {
            "(none)"
        } else {
            &s.leader
        }
    );
    if s.sampling_active {
        out += &format!(
            "sampling override: {}% for {}s more\n",
            s.sampling_percent,
            s.sampling_expires_in_ms / 1000
        );
    } else {
        out += "sampling override: none\n";
    }
    out += &format!(
        "{:<24} {:<9} {:<22} {:<22} {:>7} {:>10} {:>12}\n",
        "MEMBER", "STATE", "CLUSTER", "OTLP", "EPOCH", "TRACES", "BYTES"
    );
    for m in &s.members {
        let (epoch, traces, bytes) = match &m.node {
            Some(n) => (
                n.epoch.to_string(),
                n.buffered_traces.to_string(),
                n.buffered_bytes.to_string(),
            ),
            None => ("?".into(), "unreachable".into(), "?".into()),
        };
        out += &format!(
            "{:<24} {:<9} {:<22} {:<22} {:>7} {:>10} {:>12}\n",
            m.name, m.state, m.cluster_addr, m.otlp_addr, epoch, traces, bytes
        );
    }
    out
}
