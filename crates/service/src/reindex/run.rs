//! The re-index job's steps (see the module doc of `reindex`): load, embed, catch up, switch.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;

use super::embedder::{Embedder, ToEmbed};
use super::job::{Job, ReindexState};
use super::ReindexError;
use crate::App;
use notellm_index::NoteIndex;
use notellm_model::features::from_f16_bytes;
use notellm_model::ServedModel;
use notellm_note::{Embedding, ModelVersion, NoteId};
use notellm_store::{Change, ReindexNote, StagedVector, StoreError, Switch};

/// Changes read per `changes_since` call while catching up.
const CHANGES_PAGE: usize = 1_000;
/// Catch-up passes before the switch holds writes anyway (when writes arrive as fast as the
/// re-index embeds them, the last pass under the held gate absorbs the rest).
const MAX_PASSES: usize = 20;
/// Tries of the switch's last catch-up and store switch. On SQLite nothing holds another
/// process's writes (`notellm ingest` beside `serve`), so one can commit between the two; the
/// store then refuses the switch, changing nothing.
const SWITCH_TRIES: usize = 5;

/// What the steps share.
struct Ctx {
    app: Arc<App>,
    job: Arc<Job>,
    version: ModelVersion,
    index: Arc<NoteIndex>,
    embedder: Embedder,
    /// The new model (which features an image note needs).
    model: Arc<ServedModel>,
    batch_notes: usize,
}

/// Runs the job to its end and records how it ended; the old model serves unless it succeeded.
pub(super) async fn run(app: Arc<App>, job: Arc<Job>, model_dir: PathBuf, version: ModelVersion, batch_notes: usize) {
    let result = steps(&app, &job, &model_dir, version, batch_notes).await;
    job.finish(result.as_ref().err());
    let status = job.status();
    match result {
        Ok(()) => tracing::info!(
            notes = status.notes_done,
            reused = status.notes_reused,
            changes = status.changes_applied,
            write_hold_secs = status.write_hold_secs,
            secs = status.elapsed_secs,
            "re-index done; the new model serves"
        ),
        Err(ReindexError::Cancelled) => {
            tracing::warn!(done = status.notes_done, "re-index cancelled; the old model serves")
        }
        Err(e) => tracing::error!(error = %e, "re-index failed; the old model serves"),
    }
}

async fn steps(
    app: &Arc<App>,
    job: &Arc<Job>,
    model_dir: &std::path::Path,
    version: ModelVersion,
    batch_notes: usize,
) -> Result<(), ReindexError> {
    let device = app.template().device.clone();
    let dir = model_dir.to_owned();
    let model = tokio::task::spawn_blocking(move || ServedModel::load(&dir, &device))
        .await
        .map_err(|e| ReindexError::Internal(format!("model load task: {e}")))??;
    if *model.version() != version {
        return Err(ReindexError::BadModel {
            path: model_dir.display().to_string(),
            reason: format!("notellm.json changed while loading: now model {}", model.version()),
        });
    }
    let model = Arc::new(model);
    let index: Arc<NoteIndex> = Arc::new(app.template().index_for(&model)?);
    let foreground = app.serving().batcher.foreground();
    let embedder = Embedder::spawn(model.clone(), index.clone(), foreground, app.metrics.clone())?;
    let ctx = Ctx { app: app.clone(), job: job.clone(), version, index, embedder, model: model.clone(), batch_notes };

    job.check_cancel()?;
    let start = app.store.max_seq().await?;
    let total = app.store.count().await?;
    job.update(|s| s.notes_total = total);
    job.set_state(ReindexState::Embedding);
    embed_all(&ctx, start).await?;

    job.set_state(ReindexState::CatchingUp);
    let mut pos = start;
    for pass in 1..=MAX_PASSES {
        let applied = catch_up(&ctx, &mut pos, true).await?;
        tracing::info!(pass, applied, seq = pos, "re-index caught up");
        if applied <= batch_notes as u64 {
            break;
        }
    }
    switch(&ctx, model, model_dir, pos).await
}

/// Every note stored by `start`, in id order: reused when a current vector is staged, else
/// embedded. Notes written since are the catch-up's.
async fn embed_all(ctx: &Ctx, start: i64) -> Result<(), ReindexError> {
    let store = &ctx.app.store;
    let mut after: Option<NoteId> = None;
    let started = Instant::now();
    loop {
        ctx.job.check_cancel()?;
        let page = store.reindex_scan(after.as_ref(), start, ctx.batch_notes, &ctx.version).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        let n = page.len() as u64;
        let reused = embed_chunk(ctx, page, true).await?;
        ctx.job.update(|s| {
            s.notes_done += n;
            s.notes_reused += reused;
        });
        let s = ctx.job.status();
        tracing::debug!(
            done = s.notes_done,
            total = s.notes_total,
            rate = s.notes_done as f64 / started.elapsed().as_secs_f64().max(1e-9),
            "re-embedding"
        );
    }
    Ok(())
}

/// Brings the new index and the staged vectors up to every change after `pos`, advancing it;
/// returns how many changes were applied. `background` is false once writes are held: then
/// neither a cancel nor live traffic holds it up.
async fn catch_up(ctx: &Ctx, pos: &mut i64, background: bool) -> Result<u64, ReindexError> {
    let store = &ctx.app.store;
    let mut applied = 0u64;
    loop {
        if background {
            ctx.job.check_cancel()?;
        }
        let changes = store.changes_since(*pos, CHANGES_PAGE).await?;
        let Some(last) = changes.last().map(Change::seq) else { break };
        for chunk in changes.chunks(ctx.batch_notes) {
            let mut notes = Vec::with_capacity(chunk.len());
            for c in chunk {
                match c {
                    Change::Delete { id, .. } => {
                        ctx.index.remove(id);
                        store.unstage(id).await?;
                    }
                    // The note as it is now (it may have been written again since this change:
                    // then that later change re-reads it, and finds it current).
                    Change::Upsert { id, .. } => match store.reindex_note(id, &ctx.version).await? {
                        Some(n) => notes.push(n),
                        // Deleted since; its tombstone comes in a later page.
                        None => {
                            ctx.index.remove(id);
                        }
                    },
                }
            }
            embed_chunk(ctx, notes, background).await?;
            applied += chunk.len() as u64;
            ctx.job.update(|s| s.changes_applied += chunk.len() as u64);
        }
        *pos = last;
    }
    Ok(applied)
}

/// Indexes a chunk of notes with the new model, staging what it embedded; returns how many
/// staged vectors were reused. `background`: yield to live batches.
async fn embed_chunk(ctx: &Ctx, notes: Vec<ReindexNote>, background: bool) -> Result<u64, ReindexError> {
    let mut ready: Vec<(NoteId, Embedding)> = Vec::new();
    let mut todo: Vec<ToEmbed> = Vec::new();
    let mut seqs: Vec<i64> = Vec::new();
    let fingerprint = ctx.model.encoder_fingerprint();
    for n in notes {
        match n.staged {
            Some(e) => ready.push((n.id, e)),
            None => {
                // A text-only checkpoint embeds an image note by its text.
                let features = match (fingerprint, &n.image_hash) {
                    (Some(fp), Some(_)) => stored_features(ctx, &n.id, fp).await?,
                    _ => None,
                };
                seqs.push(n.seq);
                todo.push((n.id, n.note, features));
            }
        }
    }
    let reused = ready.len() as u64;
    if todo.is_empty() && ready.is_empty() {
        return Ok(0);
    }
    let embedded = ctx.embedder.run(todo, ready, background).await?;
    let staged: Vec<StagedVector<'_>> = embedded
        .iter()
        .zip(&seqs)
        .map(|((id, e), &source_seq)| StagedVector { id, embedding: e, source_seq })
        .collect();
    ctx.app.store.stage_vectors(&ctx.version, &staged).await?;
    Ok(reused)
}

/// The stored features of note `id`'s image, which must be of encoder `fingerprint`.
async fn stored_features(ctx: &Ctx, id: &NoteId, fingerprint: &str) -> Result<Option<Tensor>, ReindexError> {
    let Some(image) = ctx.app.store.image(id).await? else { return Ok(None) };
    if image.encoder != fingerprint {
        return Err(ReindexError::Embed {
            id: id.to_string(),
            reason: "its image's stored features are of another image encoder than the new checkpoint's \
                     (it was written during the re-index); PUT it with its image again"
                .into(),
        });
    }
    let features = from_f16_bytes(&image.features, image.tokens as usize, image.width as usize)
        .map_err(|e| ReindexError::Embed { id: id.to_string(), reason: format!("stored image features: {e}") })?;
    Ok(Some(features))
}

/// Holds writes (this process's, and on Postgres every other's too), applies the last changes,
/// switches the store and swaps the serving model.
async fn switch(
    ctx: &Ctx,
    model: Arc<ServedModel>,
    model_dir: &std::path::Path,
    mut pos: i64,
) -> Result<(), ReindexError> {
    let (app, job) = (&ctx.app, &ctx.job);
    job.set_state(ReindexState::Switching);
    if app.template().backend == crate::IndexBackend::Pgvector {
        // The new dimension's pgvector index exists before any row of it is switched in (built
        // over no rows: the switch's copy fills it). Writes are not held for this.
        let cfg = &app.template().index;
        app.store.ensure_vector_index(model.embedding_dim(), cfg.m, cfg.ef_construction).await?;
    }
    // The new model's threads start before writes are held.
    let serving = app
        .template()
        .serve(model.clone(), app.template().vectors_with(&model, ctx.index.clone()), &app.metrics)
        .map_err(|e| ReindexError::Internal(format!("cannot start the new model's batcher: {e}")))?;
    let old = app.serving();
    let gate = app.hold_writes().await;
    let held = Instant::now();
    let model_dir = model_dir.display().to_string();
    let token = job.id();
    let record = Switch {
        model_version: &ctx.version,
        model_dir: &model_dir,
        previous_version: &old.version,
        switch_token: &token,
    };
    let mut applied = 0;
    let mut tries = 0;
    let (notes, promoted_seq) = loop {
        tries += 1;
        // The gate holds this process's writes; this, every other process's (on Postgres), so
        // that none lands between the last catch-up and the switch.
        let store_held = app.store.hold_for_switch().await?;
        applied += catch_up(ctx, &mut pos, false).await?;
        match app.store.promote_held(store_held, &record).await {
            Ok(p) => break (p.notes.to_string(), Some(p.max_seq)),
            // Another process's write landed between the last catch-up and the switch (SQLite,
            // where nothing holds it): catch up with it and try again.
            Err(StoreError::Incomplete { missing, .. }) if tries < SWITCH_TRIES => {
                tracing::info!(missing, tries, "writes landed after the last catch-up; catching up again");
            }
            // A commit whose answer was lost (the connection dropped after COMMIT): the record
            // says whether this switch happened.
            Err(e) => match app.store.active_model().await {
                Ok(Some(a)) if a.switch_token == token => {
                    tracing::warn!(error = %e, "the switch's answer was lost but its record is committed");
                    break ("?".to_owned(), None);
                }
                _ => return Err(e.into()),
            },
        }
    };
    app.swap_serving(serving, &gate);
    app.followed_own_switch(&token, promoted_seq);
    // The new index is on no disk yet: the snapshot below writes it.
    gate.changed();
    drop(gate);
    let hold = held.elapsed().as_secs_f64();
    job.update(|s| s.write_hold_secs = Some(hold));
    app.metrics.reindex_write_hold.observe(hold);
    app.relabel_build_info(&old.version, &ctx.version);
    app.update_index_gauges();
    tracing::info!(
        from = %old.version,
        to = %ctx.version,
        notes,
        last_changes = applied,
        write_hold_secs = hold,
        "switched: the new model serves"
    );
    drop(old);
    // A snapshot now, so that a restart loads the new index instead of rebuilding it.
    if let Err(e) = app.snapshot().await {
        tracing::warn!(error = %e, "snapshot after the switch failed; the next start rebuilds from the store");
    }
    Ok(())
}
