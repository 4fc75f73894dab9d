//! `notellm embed`: notes JSONL in, `{"note_id", "embedding"}` JSONL out, in input order.
//!
//! Notes are read in windows of several batches; inside a window they are sorted by token
//! length before batching, so each batch pads little, and written back in input order.

use std::io::{BufRead, Write};
use std::time::Instant;

use crate::jsonl::{LineError, NoteReader, OnError};
use notellm_model::{batching, ModelError, ServedModel};
use notellm_note::{NoteId, NoteLimits};

/// Batches per sorting window.
const WINDOW_BATCHES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Line(#[from] LineError),
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("--batch-size must be at least 1")]
    BatchSize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedReport {
    pub embedded: usize,
    pub skipped: usize,
}

#[derive(serde::Serialize)]
struct OutLine<'a> {
    note_id: &'a NoteId,
    embedding: &'a [f32],
}

/// Embeds every note of `input` and writes one line per note to `output`.
pub fn run<R: BufRead, W: Write>(
    model: &ServedModel,
    input: R,
    mut output: W,
    batch_size: usize,
    policy: OnError,
    progress: &indicatif::ProgressBar,
) -> Result<EmbedReport, EmbedError> {
    if batch_size == 0 {
        return Err(EmbedError::BatchSize);
    }
    // `notellm serve`'s default note limits: what the service would accept.
    let mut reader = NoteReader::new(input, policy, NoteLimits::default());
    let mut embedded = 0;
    let started = Instant::now();
    let mut report_skip = |e: &LineError| {
        progress.suspend(|| tracing::warn!("skipped {e}"));
    };
    loop {
        let (ids, seqs): (Vec<NoteId>, Vec<Vec<u32>>) = reader
            .next_chunk(batch_size * WINDOW_BATCHES, &mut report_skip)?
            .into_iter()
            .map(|n| Ok((n.note_id, model.embedding_ids(&n.note)?)))
            .collect::<Result<Vec<_>, ModelError>>()?
            .into_iter()
            .unzip();
        if ids.is_empty() {
            break;
        }
        let vectors =
            batching::embed_by_length(&seqs, batch_size, |batch| model.embed_ids(batch), |n| progress.inc(n as u64))?;
        for (id, v) in ids.iter().zip(&vectors) {
            serde_json::to_writer(&mut output, &OutLine { note_id: id, embedding: v.as_slice() })
                .map_err(std::io::Error::from)?;
            output.write_all(b"\n")?;
        }
        embedded += ids.len();
    }
    output.flush()?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        embedded,
        skipped = reader.skipped,
        secs,
        notes_per_s = embedded as f64 / secs.max(1e-9),
        "embed done"
    );
    Ok(EmbedReport { embedded, skipped: reader.skipped })
}
