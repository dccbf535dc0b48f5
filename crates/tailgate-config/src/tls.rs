//! `tls` of a receiver's server (`receivers.otlp.protocols.{grpc,http}.tls`), with the
//! collector's keys (`configtls.ServerConfig`), and `cluster.tls`, mutual TLS between
//! gateways. Absent, the listener speaks plaintext.

use serde::Deserialize;

use crate::types::GoDuration;

/// A TLS protocol version, written as the collector writes it (`"1.2"`, `"1.3"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TryFrom<String> for TlsVersion {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "1.2" => Ok(TlsVersion::Tls12),
            "1.3" => Ok(TlsVersion::Tls13),
            "1.0" | "1.1" => Err(format!(
                "TLS {s} is not supported (deprecated by RFC 8996); use \"1.2\" or \"1.3\""
            )),
            other => Err(format!(
                "unknown TLS version `{other}`; use \"1.2\" or \"1.3\""
            )),
        }
    }
}

/// Server-side TLS. `cert_file` and `key_file` are required; `client_ca_file` turns on mTLS
/// (clients must present a certificate that CA signed). The files are re-read when they
/// change and every `reload_interval`, without a restart (cert-manager rotates them in
/// place); a new certificate applies to new connections.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain the server presents, leaf first.
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<String>,
    /// PEM CA certificates; set, every client must present a certificate one of them signed.
    #[serde(default)]
    pub client_ca_file: Option<String>,
    /// Oldest protocol version accepted. Default `"1.2"`.
    #[serde(default)]
    pub min_version: Option<TlsVersion>,
    /// Newest protocol version accepted. Default `"1.3"`.
    #[serde(default)]
    pub max_version: Option<TlsVersion>,
    /// Re-read the files this often even if they look unchanged. Default: only on change.
    #[serde(default)]
    pub reload_interval: Option<GoDuration>,
}

impl ServerTlsConfig {
    pub fn min_version(&self) -> TlsVersion {
        self.min_version.unwrap_or(TlsVersion::Tls12)
    }

    pub fn max_version(&self) -> TlsVersion {
        self.max_version.unwrap_or(TlsVersion::Tls13)
    }

    /// What is wrong with these settings, as `(field, message)` below `tls`.
    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, file) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if file.as_deref().is_none_or(|f| f.trim().is_empty()) {
                out.push((
                    format!("tls.{name}"),
                    "required: a server presents a certificate and holds its key".into(),
                ));
            }
        }
        if self.min_version() > self.max_version() {
            out.push(("tls.min_version".into(), "is newer than max_version".into()));
        }
        if self.reload_interval.is_some_and(|d| d.is_zero()) {
            out.push((
                "tls.reload_interval".into(),
                "must be greater than 0 (leave it out to reload only on change)".into(),
            ));
        }
        out
    }
}

/// `cluster.tls`: mutual TLS on the cluster plane (Raft, join, forward, handoff,
/// replication, admin). Every gateway presents `cert_file` to its peers, as server and as
/// client, and accepts only peers whose certificate `ca_file` signed (and, with
/// `allowed_peer_names`, that name one of them in a SAN). Re-read like a receiver's files.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// PEM certificate chain this gateway presents, leaf first.
    #[serde(default)]
    pub cert_file: String,
    /// PEM private key of the leaf certificate.
    #[serde(default)]
    pub key_file: String,
    /// PEM CA certificates of the cluster: a peer's certificate must chain to one of them.
    #[serde(default)]
    pub ca_file: String,
    /// Names a peer's certificate must be valid for (at least one), checked against its
    /// DNS and IP SANs as an HTTPS client checks a server's (a SAN `*.x` covers `a.x`).
    /// Use it when the CA also signs certificates of other services. Empty: any
    /// certificate of the CA.
    #[serde(default)]
    pub allowed_peer_names: Vec<String>,
    /// Re-read the files this often even if they look unchanged. Default: only on change.
    #[serde(default)]
    pub reload_interval: Option<GoDuration>,
}

impl ClusterTlsConfig {
    /// What is wrong with these settings, as `(field, message)` below `cluster`.
    pub(crate) fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, file, why) in [
            (
                "cert_file",
                &self.cert_file,
                "the certificate this gateway presents",
            ),
            ("key_file", &self.key_file, "the key of cert_file"),
            (
                "ca_file",
                &self.ca_file,
                "the CA that signed every member's certificate",
            ),
        ] {
            if file.trim().is_empty() {
                out.push((format!("tls.{name}"), format!("required: {why}")));
            }
        }
        if let Some(bad) = self.allowed_peer_names.iter().find(|n| n.trim().is_empty()) {
            out.push((
                "tls.allowed_peer_names".into(),
                format!("names must not be empty (got {bad:?})"),
            ));
        }
        if self.reload_interval.is_some_and(|d| d.is_zero()) {
            out.push((
                "tls.reload_interval".into(),
                "must be greater than 0 (leave it out to reload only on change)".into(),
            ));
        }
        out
    }
}
