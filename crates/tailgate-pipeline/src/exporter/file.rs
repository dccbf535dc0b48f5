//! `file` exporter: appends one OTLP/JSON request per line, for local use and `tailgate dev`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tailgate_config::components::FileExporterConfig;

use super::{ExportBatch, ExportError, ExportOutcome, Exporter};
use crate::consumer::BoxFuture;

pub struct FileExporter {
    file: Arc<Mutex<std::fs::File>>,
    path: PathBuf,
}

impl FileExporter {
    pub fn new(cfg: &FileExporterConfig) -> anyhow::Result<Self> {
        let path = PathBuf::from(&cfg.path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        Ok(FileExporter {
            file: Arc::new(Mutex::new(file)),
            path,
        })
    }
}

impl Exporter for FileExporter {
    fn export<'a>(
        &'a self,
        batch: &'a ExportBatch,
    ) -> BoxFuture<'a, Result<ExportOutcome, ExportError>> {
        Box::pin(async move {
            let mut line = tailgate_otlp::json::request_to_json(&batch.request).map_err(|e| {
                ExportError::Permanent {
                    message: e.to_string(),
                }
            })?;
            line.push('\n');
            let file = Arc::clone(&self.file);
            let path = self.path.clone();
            tokio::task::spawn_blocking(move || {
                let mut f = file.lock().expect("file lock");
                f.write_all(line.as_bytes()).and_then(|()| f.flush())
            })
            .await
            .map_err(|e| ExportError::Permanent {
                message: format!("writer task: {e}"),
            })?
            .map_err(|e| ExportError::Permanent {
                message: format!("write {}: {e}", path.display()),
            })?;
            Ok(ExportOutcome::default())
        })
    }
}
