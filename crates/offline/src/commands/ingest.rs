//! `notellm ingest notes.jsonl`: bulk load through the service's own pipeline (micro-batcher,
//! store transaction per chunk, index), then a snapshot, so the next `serve` starts warm.

use std::io::BufRead;

use crate::jsonl::{LineError, NoteReader, OnError};
use notellm_service::{App, AppError, WriteStatus};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Line(#[from] LineError),
    #[error("{0}")]
    App(#[from] AppError),
    #[error("note {id}: {source}")]
    Note { id: String, source: AppError },
    #[error("--chunk must be at least 1")]
    Chunk,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestReport {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub skipped_lines: usize,
}

/// Reads notes from `input` and writes them in chunks of `chunk`. The index must be restored.
pub async fn run<R: BufRead>(
    app: &App,
    input: R,
    chunk: usize,
    policy: OnError,
    progress: &indicatif::ProgressBar,
) -> Result<IngestReport, IngestError> {
    if chunk == 0 {
        return Err(IngestError::Chunk);
    }
    // The notes of `PUT /notes`' limits, no others.
    let mut reader = NoteReader::new(input, policy, app.limits.note);
    let mut report = IngestReport::default();
    let mut report_skip = |e: &LineError| progress.suspend(|| tracing::warn!("skipped {e}"));
    loop {
        let items: Vec<_> =
            reader.next_chunk(chunk, &mut report_skip)?.into_iter().map(|n| (n.note_id, n.note)).collect();
        if items.is_empty() {
            break;
        }
        let ids: Vec<String> = items.iter().map(|(id, _)| id.to_string()).collect();
        for (id, r) in ids.into_iter().zip(app.put_notes(items).await?) {
            match r {
                Ok(o) => match o.status {
                    WriteStatus::Created => report.created += 1,
                    WriteStatus::Updated => report.updated += 1,
                    WriteStatus::Unchanged => report.unchanged += 1,
                },
                Err(source) => return Err(IngestError::Note { id, source }),
            }
            progress.inc(1);
        }
    }
    report.skipped_lines = reader.skipped;
    app.snapshot().await?;
    Ok(report)
}
