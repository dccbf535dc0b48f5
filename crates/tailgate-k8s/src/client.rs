//! `auth_type` → a `kube::Client`.

use tailgate_config::agent::K8sAuthType;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("cannot reach the Kubernetes API ({auth}): {message}")]
pub struct ClientError {
    auth: &'static str,
    message: String,
}

/// A client for `auth_type`: `serviceAccount` = the pod's token and CA (in-cluster; outside
/// a pod, the kubeconfig),
/// `kubeConfig` = `$KUBECONFIG` or `~/.kube/config` (optionally a named `context`),
/// `none` = the same discovery as kubeConfig/in-cluster, without credentials.
pub async fn client_for(
    auth: K8sAuthType,
    context: Option<&str>,
) -> Result<kube::Client, ClientError> {
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let (name, config) = match auth {
        K8sAuthType::ServiceAccount if !in_pod => {
            // Outside a pod there is no service account: use what kubectl would (a laptop,
            // a test API server), and say so.
            tracing::warn!(
                "auth_type serviceAccount outside a pod (KUBERNETES_SERVICE_HOST unset): using the kubeconfig"
            );
            (
                "serviceAccount (outside a pod: kubeconfig)",
                kube::Config::infer().await.map_err(|e| e.to_string()),
            )
        }
        K8sAuthType::ServiceAccount => (
            "serviceAccount",
            kube::Config::incluster().map_err(|e| e.to_string()),
        ),
        K8sAuthType::KubeConfig => (
            "kubeConfig",
            kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
                context: context.map(str::to_string),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string()),
        ),
        K8sAuthType::None => (
            "none",
            kube::Config::infer()
                .await
                .map(|mut c| {
                    c.auth_info = Default::default();
                    c
                })
                .map_err(|e| e.to_string()),
        ),
    };
    let config = config.map_err(|message| ClientError {
        auth: name,
        message,
    })?;
    kube::Client::try_from(config).map_err(|e| ClientError {
        auth: name,
        message: e.to_string(),
    })
}

/// In-cluster credentials when running in a pod, else the kubeconfig (what `kubectl` uses).
pub async fn inferred() -> Result<kube::Client, ClientError> {
    let config = kube::Config::infer().await.map_err(|e| ClientError {
        auth: "inferred",
        message: e.to_string(),
    })?;
    kube::Client::try_from(config).map_err(|e| ClientError {
        auth: "inferred",
        message: e.to_string(),
    })
}
