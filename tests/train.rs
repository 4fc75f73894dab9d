//! The trainer on a tiny checkpoint and a synthetic dataset: gradients, learning, resume,
//! and that its checkpoints load in the service's model unchanged.

mod common;

use candle_core::{DType, Device};
use notellm::data::{Dataset, Part};
use notellm::model::config::Family;
use notellm::model::NoteLlm;
use notellm::train::examples;
use notellm::train::loss;
use notellm::train::model::{ModelOptions, TrainableModel};
use notellm::train::trainer::{TrainOptions, Trainer};

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
    let limits = notellm::prompt::Limits::default();
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
    let overlay = notellm::model::overlay::Overlay::open(&out).unwrap();
    let assembled = dir.path().join("assembled");
    notellm::model::overlay::assemble(&base, &overlay, &assembled).unwrap();
    let weights = assembled.join("model.safetensors");
    let written = std::fs::metadata(&weights).unwrap().modified().unwrap();
    notellm::model::overlay::assemble(&base, &overlay, &assembled).unwrap();
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
