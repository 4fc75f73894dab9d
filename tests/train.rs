//! The trainer on a tiny checkpoint and a synthetic dataset: gradients, learning, resume,
//! and that its checkpoints load in the service's model unchanged; the same for the causal-LM
//! objective, whose checkpoint then feeds a NoteLLM run.

mod common;

use candle_core::{DType, Device};
use notellm_model::config::Family;
use notellm_model::NoteLlm;
use notellm_offline::data::{Dataset, Part};
use notellm_offline::train::examples;
use notellm_offline::train::loss;
use notellm_offline::train::model::{ModelOptions, TrainableModel};
use notellm_offline::train::trainer::{Objective, TrainOptions, Trainer};
use notellm_offline::train::{lm, model::TAU};

fn options() -> TrainOptions {
    TrainOptions {
        train_layers: 1,
        embedding_dim: 32,
        pairs_per_step: 8,
        epochs: 3.0,
        lr: 3e-3,
        warmup_share: 0.1,
        val_pairs: 60,
        val_pool: 120,
        recall_k: vec![1, 10],
        save_every: 0,
        model_version: "tiny-trained".into(),
        ..TrainOptions::default()
    }
}

#[test]
fn gradients_reach_every_trainable_variable_and_frozen_layers_stay_put() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model(dir.path(), "tiny", Family::Llama, 1);
    let data = Dataset::load(&common::synthetic_dataset(&dir.path().join("data"), 40)).unwrap();
    let opts = ModelOptions { train_layers: 1, embedding_dim: 16, tau_init: 3.0, seed: 1, cache_frozen: true };
    let mut model = TrainableModel::load(&base, &Device::Cpu, &opts).unwrap();
    assert_eq!(model.first_trained_layer(), 1);
    let limits = notellm_model::prompt::Limits::default();
    let exs: Vec<_> = data
        .pairs(Part::Train)
        .iter()
        .take(4)
        .flat_map(|p| [data.note(&p.a).unwrap().clone(), data.note(&p.b).unwrap().clone()])
        .map(|n| {
            let (v, out) = examples::choose_variant(&n, &n.title, 0.4, 1);
            examples::build(model.tokenizer(), limits, &n, v, out.as_deref()).unwrap()
        })
        .collect();
    assert!(exs.iter().all(|e| e.label_count() > 0), "every synthetic note has a category or hashtags");
    let refs: Vec<_> = exs.iter().collect();
    let f = model.forward(&refs, true).unwrap();
    let cl = loss::contrastive(&f.embeddings, model.tau_tensor()).unwrap();
    let (logits, targets) = f.generation.as_ref().unwrap();
    let gen = loss::generation(logits, targets).unwrap();
    let total = loss::total(&cl, Some(&gen), 0.01).unwrap();
    let grads = total.backward().unwrap();
    let names: Vec<&str> = model.vars().iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(names.iter().any(|n| n.starts_with("model.layers.1.")));
    assert!(!names.iter().any(|n| n.starts_with("model.layers.0.") || n.starts_with("model.embed_tokens")));
    for (name, var, _) in model.vars() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm}");
    }

    // Full fine-tuning trains the token embeddings and every layer.
    let full = ModelOptions { train_layers: 99, ..opts };
    let model = TrainableModel::load(&base, &Device::Cpu, &full).unwrap();
    assert_eq!(model.first_trained_layer(), 0);
    let names: Vec<&str> = model.vars().iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(names.contains(&"model.embed_tokens.weight") && names.iter().any(|n| n.starts_with("model.layers.0.")));
}

#[test]
fn training_lowers_the_loss_raises_recall_and_the_checkpoint_serves() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model(dir.path(), "tiny", Family::Llama, 1);
    let data = common::synthetic_dataset(&dir.path().join("data"), 120);
    let out = dir.path().join("out");
    let mut t = Trainer::new(&data, &base, &out, &Device::Cpu, options()).unwrap();
    let before = t.validate().unwrap().unwrap();
    let summary = t.run(None).unwrap();
    let after = summary.history.last().unwrap();
    let first: f64 = summary.losses.iter().take(3).map(|l| l.1).sum::<f64>() / 3.0;
    let last: f64 = summary.losses.iter().rev().take(3).map(|l| l.1).sum::<f64>() / 3.0;
    eprintln!("loss {first:.4} -> {last:.4}; recall {:?} -> {:?}", before.recall, after.recall);
    assert!(last < first * 0.9, "loss did not fall: {first} -> {last}");
    assert!(after.recall[1].1 > before.recall[1].1, "R@10 did not rise: {:?} -> {:?}", before.recall, after.recall);

    // The checkpoint loads in the service's model and embeds exactly as the trainer did.
    let served = NoteLlm::load(&out, &Device::Cpu).unwrap();
    assert_eq!(served.version().0, "tiny-trained");
    assert_eq!(served.embedding_dim(), 32);
    let ds = Dataset::load(&data).unwrap();
    let notes: Vec<_> = ds.notes.iter().take(10).map(|l| l.note.clone()).collect();
    let ours = served.embed(&notes).unwrap();
    let limits = served.limits();
    let exs: Vec<_> = notes.iter().map(|n| examples::for_embedding(t.model.tokenizer(), limits, n).unwrap()).collect();
    let theirs = t.model.embed(&exs, 4).unwrap();
    for (a, b) in ours.iter().zip(&theirs) {
        assert!(a.cosine(b) > 0.99999, "served embedding differs from the trainer's: {}", a.cosine(b));
    }
    // trained.safetensors holds only the trained tensors.
    let trained = candle_core::safetensors::load(out.join("trained.safetensors"), &Device::Cpu).unwrap();
    assert!(trained.keys().all(|k| !k.starts_with("model.layers.0.")));
    assert!(trained.values().all(|t| t.dtype() == DType::F16));

    // The output directory is also an overlay: base + trained.safetensors assemble into a
    // checkpoint that embeds like the full one (up to f16 rounding of the trained tensors), and
    // a second assembly of the same overlay does nothing.
    let overlay = notellm_artifacts::overlay::Overlay::open(&out).unwrap();
    let assembled = dir.path().join("assembled");
    notellm_artifacts::overlay::assemble(&base, &overlay, &assembled).unwrap();
    let weights = assembled.join("model.safetensors");
    let written = std::fs::metadata(&weights).unwrap().modified().unwrap();
    notellm_artifacts::overlay::assemble(&base, &overlay, &assembled).unwrap();
    assert_eq!(std::fs::metadata(&weights).unwrap().modified().unwrap(), written, "re-assembled");
    let from_overlay = NoteLlm::load(&assembled, &Device::Cpu).unwrap().embed(&notes).unwrap();
    for (a, b) in ours.iter().zip(&from_overlay) {
        assert!(a.cosine(b) > 0.999, "overlay embedding differs: {}", a.cosine(b));
    }
}

#[test]
fn a_resumed_run_continues_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model(dir.path(), "tiny", Family::Llama, 1);
    let data = common::synthetic_dataset(&dir.path().join("data"), 80);
    let opts = TrainOptions { epochs: 1.0, accumulation: 2, pairs_per_step: 4, val_pairs: 0, ..options() };

    let straight = dir.path().join("straight");
    let mut a = Trainer::new(&data, &base, &straight, &Device::Cpu, opts.clone()).unwrap();
    let total = a.total_steps();
    assert!(total >= 4, "{total} steps");
    let sa = a.run(None).unwrap();

    let split = dir.path().join("split");
    let mut b = Trainer::new(&data, &base, &split, &Device::Cpu, opts.clone()).unwrap();
    b.run(Some(total / 2)).unwrap();
    drop(b);
    let mut c = Trainer::new(&data, &base, &split, &Device::Cpu, opts.clone()).unwrap();
    assert!(c.resume().unwrap());
    assert_eq!(c.step(), total / 2);
    let sc = c.run(None).unwrap();
    assert_eq!(sa.losses, sc.losses, "loss history differs after resume");
    let va = a.model.var_state().unwrap();
    let vc = c.model.var_state().unwrap();
    for (name, ta) in &va {
        let x = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = vc[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs after resume");
    }

    // Other options refuse to resume that state.
    let other = TrainOptions { lr: 1e-4, ..opts };
    let mut d = Trainer::new(&data, &base, &split, &Device::Cpu, other).unwrap();
    assert!(d.resume().is_err());
}

fn lm_options() -> TrainOptions {
    TrainOptions {
        objective: Objective::Lm,
        train_layers: 99,
        pairs_per_step: 4,
        epochs: 1.0,
        lr: 1e-2,
        val_every: 5,
        val_pairs: 20,
        model_version: "tiny-lm".into(),
        ..options()
    }
}

/// Replaces the synthetic dataset's split (every note in every part) by a disjoint one, by note
/// index: 7 in 10 train, 2 val, 1 test; each part keeps the pairs inside it.
fn disjoint_split(dir: &std::path::Path) -> std::path::PathBuf {
    use notellm_offline::data::dataset::{read_jsonl, write_jsonl, write_lines};
    use notellm_offline::data::Pair;
    let ds = Dataset::load(dir).unwrap();
    let part_of = |i: usize| match i % 10 {
        0..=6 => Part::Train,
        7 | 8 => Part::Val,
        _ => Part::Test,
    };
    let all: Vec<Pair> = read_jsonl(&Part::Train.pairs_path(dir)).unwrap();
    for part in Part::ALL {
        let ids: Vec<_> =
            ds.notes.iter().enumerate().filter(|(i, _)| part_of(*i) == part).map(|(_, l)| l.note_id.clone()).collect();
        write_lines(&part.ids_path(dir), ids.iter().map(|id| id.as_str())).unwrap();
        let inside = |p: &&Pair| ids.contains(&p.a) && ids.contains(&p.b);
        write_jsonl(&part.pairs_path(dir), all.iter().filter(inside)).unwrap();
    }
    dir.to_owned()
}

#[test]
fn lm_gradients_reach_every_decoder_variable_and_not_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model(dir.path(), "tiny", Family::Llama, 1);
    let data = Dataset::load(&common::synthetic_dataset(&dir.path().join("data"), 12)).unwrap();
    let opts = ModelOptions { train_layers: 99, embedding_dim: 32, tau_init: 3.0, seed: 1, cache_frozen: true };
    let mut model = TrainableModel::load(&base, &Device::Cpu, &opts).unwrap();
    let limits = notellm_model::prompt::Limits::default();
    let seqs: Vec<Vec<u32>> =
        data.notes.iter().take(6).map(|l| lm::sequence(model.tokenizer(), limits, &l.note).unwrap()).collect();
    let (logits, targets) = model.lm_forward(&seqs).unwrap().unwrap();
    // Every position after the first of every sequence is predicted, padding never.
    assert_eq!(targets.dim(0).unwrap(), seqs.iter().map(|s| s.len() - 1).sum::<usize>());
    let grads = loss::generation(&logits, &targets).unwrap().backward().unwrap();
    let names: Vec<&str> = model.vars().iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(names.contains(&"model.embed_tokens.weight") && names.iter().any(|n| n.starts_with("model.layers.0.")));
    for (name, var, _) in model.vars() {
        let g = grads.get(var.as_tensor());
        if name == TAU || name == notellm_model::config::EMB_HEAD_TENSOR {
            assert!(g.is_none(), "{name} got a gradient from the LM loss");
            continue;
        }
        let g = g.unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm}");
    }
}

#[test]
fn lm_pretraining_learns_the_training_notes_and_feeds_the_notellm_stage() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model(dir.path(), "tiny", Family::Llama, 1);
    let data = disjoint_split(&common::synthetic_dataset(&dir.path().join("data"), 120));
    let ds = Dataset::load(&data).unwrap();
    let out = dir.path().join("lm");

    // lm trains every layer: fewer is refused with a message naming the flag.
    let partial = TrainOptions { train_layers: 1, ..lm_options() };
    let err = Trainer::new(&data, &base, &out, &Device::Cpu, partial).err().unwrap().to_string();
    assert!(err.contains("--train-layers 2"), "{err}");

    let mut t = Trainer::new(&data, &base, &out, &Device::Cpu, lm_options()).unwrap();
    // Batches hold 2B training-split notes, each once per epoch; never a val or test note.
    let train = ds.ids(Part::Train);
    for epoch in 0..3 {
        let batches = t.batch_notes(epoch);
        assert_eq!(batches.len(), train.len() / 8);
        let mut seen: Vec<_> = batches.concat();
        assert!(seen.iter().all(|id| train.contains(id)), "a batch holds a note outside the training split");
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), batches.len() * 8, "a note twice in one epoch");
    }
    let probe: Vec<_> = train.iter().take(16).cloned().collect();
    let before = t.lm_loss(&probe).unwrap();
    let first_val = t.validate().unwrap().unwrap().lm.unwrap();
    let summary = t.run(None).unwrap();
    let after = t.lm_loss(&probe).unwrap();
    let last_val = summary.history.last().unwrap().lm.clone().unwrap();
    eprintln!(
        "LM loss on training notes {before:.3} -> {after:.3}; validation {:.3} -> {:.3} (ppl {:.1})",
        first_val.loss, last_val.loss, last_val.perplexity
    );
    assert_eq!(summary.steps, 10);
    assert!(after < before - 1.0, "LM loss on training notes did not fall: {before} -> {after}");
    assert!(last_val.loss < first_val.loss, "validation LM loss did not fall: {first_val:?} -> {last_val:?}");
    assert_eq!(last_val.notes, 20);
    assert!((last_val.perplexity - last_val.loss.exp()).abs() < 1e-9);
    assert_eq!(summary.history.iter().map(|v| v.step).collect::<Vec<_>>(), vec![0, 5, 10]);

    // The output is a NoteLLM-run's: a full checkpoint, the overlay, the state and the log;
    // the head took no part and is the base's.
    let served = NoteLlm::load(&out, &Device::Cpu).unwrap();
    assert_eq!(served.version().0, "tiny-lm");
    for f in ["trained.safetensors", "train.json", "train-state/state.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let head = |dir: &std::path::Path| {
        let w = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        w[notellm_model::config::EMB_HEAD_TENSOR].flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(head(&out), head(&base));

    // The LM checkpoint is the base of the NoteLLM stage.
    let stage2 = dir.path().join("notellm");
    let opts = TrainOptions { train_layers: 99, pairs_per_step: 4, val_pairs: 0, ..options() };
    let mut n = Trainer::new(&data, &out, &stage2, &Device::Cpu, opts).unwrap();
    let s = n.run(Some(2)).unwrap();
    assert_eq!(s.steps, 2);
    assert!(s.final_loss.is_finite());
    assert_eq!(NoteLlm::load(&stage2, &Device::Cpu).unwrap().version().0, "tiny-trained");
}

#[test]
fn an_lm_run_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model(dir.path(), "tiny", Family::Llama, 1);
    let data = disjoint_split(&common::synthetic_dataset(&dir.path().join("data"), 60));
    // 16 of the training notes, 4 a micro-batch, 2 micro-batches a step: 4 steps over 2 epochs.
    let opts = TrainOptions {
        max_pairs: Some(16),
        epochs: 2.0,
        pairs_per_step: 2,
        accumulation: 2,
        val_pairs: 4,
        val_every: 0,
        ..lm_options()
    };

    let straight = dir.path().join("straight");
    let mut a = Trainer::new(&data, &base, &straight, &Device::Cpu, opts.clone()).unwrap();
    let total = a.total_steps();
    assert_eq!(total, 4);
    let sa = a.run(None).unwrap();

    let split = dir.path().join("split");
    Trainer::new(&data, &base, &split, &Device::Cpu, opts.clone()).unwrap().run(Some(total / 2)).unwrap();
    let mut c = Trainer::new(&data, &base, &split, &Device::Cpu, opts.clone()).unwrap();
    assert!(c.resume().unwrap());
    assert_eq!(c.step(), total / 2);
    let sc = c.run(None).unwrap();
    assert_eq!(sa.losses, sc.losses, "loss history differs after resume");
    let (va, vc) = (a.model.var_state().unwrap(), c.model.var_state().unwrap());
    for (name, ta) in &va {
        let x = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = vc[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs after resume");
    }
    // A NoteLLM run's options do not resume an lm state.
    let other = TrainOptions { objective: Objective::NoteLlm, train_layers: 99, ..opts };
    let mut d = Trainer::new(&data, &base, &split, &Device::Cpu, other).unwrap();
    assert!(d.resume().is_err());
}
