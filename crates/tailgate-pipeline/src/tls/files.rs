//! Certificate files that are re-read while the process runs, and what they build.

use std::io;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use metrics::counter;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{RootCertStore, SupportedProtocolVersion};
use tailgate_config::tls::TlsVersion;
use thiserror::Error;
use tokio::time::Instant;

use crate::telemetry::TLS_RELOADS;

/// How often the certificate files are checked for changes.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} `{path}`: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} `{path}`: {message}")]
    Pem {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("cert_file `{cert}` with key_file `{key}`: {source}")]
    Identity {
        cert: String,
        key: String,
        #[source]
        source: rustls::Error,
    },
    #[error("{what} `{path}`: {message}")]
    Ca {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("TLS versions: {0}")]
    Versions(#[source] rustls::Error),
    #[error("allowed_peer_names: `{name}` is not a DNS name or IP address")]
    PeerName { name: String },
}

/// One file a TLS setting names: what it is (the config key, for errors) and its path.
#[derive(Debug, Clone)]
pub struct TlsFile {
    pub what: &'static str,
    pub path: String,
}

/// Builds what the files' contents (in the order they were listed) make.
pub type Build<T> = Box<dyn Fn(&[Vec<u8>]) -> Result<T, TlsError> + Send + Sync>;

/// Something built from certificate files, rebuilt when they change (checked every
/// [`FILE_CHECK_INTERVAL`]) or when `reload_interval` passes: cert-manager rotates a
/// Secret's files in place, and each new connection takes what is current at its start, so
/// a rotated certificate applies without a restart while open connections keep theirs.
/// Files that fail to build leave the previous value in place (logged once per content,
/// counted in `tailgate_tls_reloads_total{result="failed"}`).
pub struct Reloading<T> {
    files: Vec<TlsFile>,
    reload_interval: Option<Duration>,
    build: Build<T>,
    current: RwLock<Arc<T>>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Reads and builds (an error names the file and what is wrong), then watches the files
    /// until the returned value is dropped. `name` names the user in logs and metrics.
    pub fn start(
        files: Vec<TlsFile>,
        reload_interval: Option<Duration>,
        build: Build<T>,
        name: &str,
    ) -> Result<Arc<Self>, TlsError> {
        let contents = read_files(&files)?;
        let built = build(&contents)?;
        let reloading = Arc::new(Reloading {
            files,
            reload_interval,
            build,
            current: RwLock::new(Arc::new(built)),
        });
        tokio::spawn(watch_files(
            Arc::downgrade(&reloading),
            contents,
            name.to_string(),
        ));
        Ok(reloading)
    }

    /// What the files built most recently.
    pub fn current(&self) -> Arc<T> {
        Arc::clone(&self.current.read().expect("TLS config lock poisoned"))
    }

    /// Builds from `contents` and makes it current.
    fn install(&self, contents: &[Vec<u8>]) -> Result<(), TlsError> {
        let built = (self.build)(contents)?;
        *self.current.write().expect("TLS config lock poisoned") = Arc::new(built);
        Ok(())
    }
}

/// Rebuilds `tls` when its files change or its `reload_interval` passes, until it is dropped.
async fn watch_files<T: Send + Sync + 'static>(
    tls: Weak<Reloading<T>>,
    mut loaded: Vec<Vec<u8>>,
    name: String,
) {
    let mut loaded_at = Instant::now();
    // Contents that failed to build: not retried (nor logged again) until they change.
    let mut failed: Option<Vec<Vec<u8>>> = None;
    loop {
        tokio::time::sleep(FILE_CHECK_INTERVAL).await;
        let Some(tls) = tls.upgrade() else { return };
        let due = tls
            .reload_interval
            .is_some_and(|every| loaded_at.elapsed() >= every);
        let outcome = read_files(&tls.files).and_then(|contents| {
            let changed = contents != loaded && failed.as_ref() != Some(&contents);
            if !(changed || due) {
                return Ok(None);
            }
            match tls.install(&contents) {
                Ok(()) => Ok(Some(contents)),
                Err(e) => {
                    failed = Some(contents);
                    Err(e)
                }
            }
        });
        match outcome {
            Ok(None) => {}
            Ok(Some(contents)) => {
                if contents != loaded {
                    tracing::info!(listener = %name, "TLS certificate files changed; new connections use them");
                }
                loaded = contents;
                loaded_at = Instant::now();
                failed = None;
                counter!(TLS_RELOADS, "listener" => name.clone(), "result" => "ok").increment(1);
            }
            Err(e) => {
                if due {
                    loaded_at = Instant::now();
                }
                tracing::error!(listener = %name, error = %e, "TLS certificate files could not be reloaded; serving the previous ones");
                counter!(TLS_RELOADS, "listener" => name.clone(), "result" => "failed")
                    .increment(1);
            }
        }
    }
}

fn read_files(files: &[TlsFile]) -> Result<Vec<Vec<u8>>, TlsError> {
    files
        .iter()
        .map(|f| {
            std::fs::read(&f.path).map_err(|source| TlsError::Read {
                what: f.what,
                path: f.path.clone(),
                source,
            })
        })
        .collect()
}

/// Every certificate of a PEM bundle; an error when there is none.
pub(super) fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// The CA certificates of a PEM bundle as trust anchors.
pub(super) fn roots(pem: &[u8], file: &TlsFile) -> Result<RootCertStore, TlsError> {
    let ca_error = |message: String| TlsError::Ca {
        what: file.what,
        path: file.path.clone(),
        message,
    };
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem).map_err(ca_error)? {
        roots
            .add(cert)
            .map_err(|e| ca_error(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

pub(super) fn versions(min: TlsVersion, max: TlsVersion) -> Vec<&'static SupportedProtocolVersion> {
    [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (min..=max).contains(v))
    .map(|(_, p)| p)
    .collect()
}
