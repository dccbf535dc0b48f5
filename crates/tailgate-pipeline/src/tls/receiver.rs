//! TLS on the receivers' listeners (`receivers.otlp.protocols.{grpc,http}.tls`).

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use tailgate_config::tls::ServerTlsConfig;

use super::files::{Build, Reloading, TlsError, TlsFile, certificates, roots, versions};

/// ALPN of an OTLP/gRPC listener.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of an OTLP/HTTP listener.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A receiver's server config, rebuilt as its files change.
pub type ServerTls = Reloading<ServerConfig>;

/// Loads a receiver's TLS files and starts watching them. `alpn`: the protocols offered;
/// `listener` names the listener in logs and metrics.
pub fn receiver_tls(
    settings: &ServerTlsConfig,
    alpn: &[&[u8]],
    listener: &str,
) -> Result<Arc<ServerTls>, TlsError> {
    let mut files = vec![
        TlsFile {
            what: "cert_file",
            path: settings.cert_file.clone().unwrap_or_default(),
        },
        TlsFile {
            what: "key_file",
            path: settings.key_file.clone().unwrap_or_default(),
        },
    ];
    if let Some(ca) = &settings.client_ca_file {
        files.push(TlsFile {
            what: "client_ca_file",
            path: ca.clone(),
        });
    }
    let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
    let build: Build<ServerConfig> = {
        let (settings, files) = (settings.clone(), files.clone());
        Box::new(move |contents| build(&settings, &alpn, &files, contents))
    };
    Reloading::start(
        files,
        settings.reload_interval.map(|d| d.0),
        build,
        listener,
    )
}

fn build(
    s: &ServerTlsConfig,
    alpn: &[Vec<u8>],
    files: &[TlsFile],
    contents: &[Vec<u8>],
) -> Result<ServerConfig, TlsError> {
    let (certs, key) = identity(&files[0], &contents[0], &files[1], &contents[1])?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions(s.min_version(), s.max_version()))
        .map_err(TlsError::Versions)?;
    let builder = match (files.get(2), contents.get(2)) {
        (Some(file), Some(pem)) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(pem, file)?), provider)
                    .build()
                    .map_err(|e| TlsError::Ca {
                        what: file.what,
                        path: file.path.clone(),
                        message: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Identity {
            cert: files[0].path.clone(),
            key: files[1].path.clone(),
            source,
        })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

/// A certificate chain and its key, parsed (not yet checked against each other).
pub(super) fn identity(
    cert_file: &TlsFile,
    cert: &[u8],
    key_file: &TlsFile,
    key: &[u8],
) -> Result<
    (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        PrivateKeyDer<'static>,
    ),
    TlsError,
> {
    let certs = certificates(cert).map_err(|message| TlsError::Pem {
        what: cert_file.what,
        path: cert_file.path.clone(),
        message,
    })?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
        what: key_file.what,
        path: key_file.path.clone(),
        message: format!("no usable PEM private key ({e})"),
    })?;
    Ok((certs, key))
}
