//! The trainer's frozen-layer pass (`notellm_offline::train::frozen` and `TrainableModel::precompute`):
//! batched with a shared prefix it gives what the model computes unbatched (within the f16
//! rounding of the cache); it does not depend on the order it is asked in; the disk cache gives
//! back exactly what was computed and is never used for another base, another depth or another
//! prompt.

mod common;

use std::path::Path;

use candle_core::Device;
use notellm_model::config::Family;
use notellm_model::prompt::Limits;
use notellm_offline::data::Dataset;
use notellm_offline::train::examples::{self, Example};
use notellm_offline::train::model::{ModelOptions, TrainableModel};

fn options(train_layers: usize) -> ModelOptions {
    ModelOptions { train_layers, embedding_dim: 32, tau_init: 3.0, seed: 1, cache_frozen: true }
}

/// The embedding examples (category prompt up to the token before `[EMB]`) of the dataset's
/// notes, under `limits`.
fn embedding_examples(model: &TrainableModel, data: &Path, limits: Limits) -> Vec<Example> {
    let data = Dataset::load(data).unwrap();
    data.notes.iter().map(|l| examples::for_embedding(model.tokenizer(), limits, &l.note).unwrap()).collect()
}

fn rows(model: &mut TrainableModel, exs: &[Example]) -> Vec<Vec<f32>> {
    model.embed(exs, 16).unwrap().into_iter().map(|e| e.into_vec()).collect()
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter().map(|r| r.iter().map(|x| x.to_bits()).collect()).collect()
}

#[test]
fn the_batched_prefix_sharing_pass_matches_the_unbatched_model() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model(dir.path(), "tiny", Family::Llama, 1);
    let data = common::synthetic_dataset(&dir.path().join("data"), 40);
    let mut cached = TrainableModel::load(&base, &Device::Cpu, &options(1)).unwrap();
    let exs = embedding_examples(&cached, &data, Limits::default());
    assert!(exs.len() >= 40);
    // Every prompt starts with the instruction: a batch shares a long prefix.
    let shared =
        notellm_offline::train::frozen::common_prefix(&exs.iter().map(|e| e.ids.as_slice()).collect::<Vec<_>>());
    assert!(shared >= 8, "shared prefix of {shared} tokens");
    let got = rows(&mut cached, &exs);
    assert_eq!(cached.frozen_stats().computed, exs.len());
    // Full fine-tuning has no frozen layers: every layer runs over each (padded) sequence.
    let mut full = TrainableModel::load(&base, &Device::Cpu, &options(99)).unwrap();
    assert_eq!(full.first_trained_layer(), 0);
    let want = rows(&mut full, &exs);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let c = common::cosine(g, w);
        assert!(c > 0.9999, "note {i}: cosine {c}");
    }
}

#[test]
fn the_pass_does_not_depend_on_the_order_it_is_asked_in() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model(dir.path(), "tiny", Family::Llama, 1);
    let data = common::synthetic_dataset(&dir.path().join("data"), 40);
    let mut a = TrainableModel::load(&base, &Device::Cpu, &options(1)).unwrap();
    let exs = embedding_examples(&a, &data, Limits::default());
    let seqs: Vec<Vec<u32>> = exs.iter().map(|e| e.ids.clone()).collect();
    a.precompute(&seqs).unwrap();
    let mut b = TrainableModel::load(&base, &Device::Cpu, &options(1)).unwrap();
    let mut reversed = seqs.clone();
    reversed.reverse();
    reversed.extend(seqs.iter().take(5).cloned()); // duplicates are computed once
    b.precompute(&reversed).unwrap();
    assert_eq!(b.frozen_stats().computed, exs.len());
    assert_eq!(bits(&rows(&mut a, &exs)), bits(&rows(&mut b, &exs)));
}

#[test]
fn the_disk_cache_gives_back_what_was_computed() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_model(dir.path(), "tiny", Family::Llama, 1);
    let data = common::synthetic_dataset(&dir.path().join("data"), 40);
    let root = dir.path().join("frozen");

    let mut memory_only = TrainableModel::load(&base, &Device::Cpu, &options(1)).unwrap();
    let exs = embedding_examples(&memory_only, &data, Limits::default());
    let want = rows(&mut memory_only, &exs);

    let mut first = TrainableModel::load(&base, &Device::Cpu, &options(1)).unwrap();
    let d1 = first.set_disk_cache(&root).unwrap().unwrap();
    assert_eq!(bits(&rows(&mut first, &exs)), bits(&want), "writing the cache changed nothing");
    assert_eq!((first.frozen_stats().computed, first.frozen_stats().from_disk), (exs.len(), 0));

    let mut second = TrainableModel::load(&base, &Device::Cpu, &options(1)).unwrap();
    assert_eq!(second.set_disk_cache(&root).unwrap().unwrap(), d1);
    assert_eq!(bits(&rows(&mut second, &exs)), bits(&want), "states read back differ");
    assert_eq!((second.frozen_stats().computed, second.frozen_stats().from_disk), (0, exs.len()));

    // Another prompt (here: other field budgets, so other token ids) is computed afresh.
    let mut third = TrainableModel::load(&base, &Device::Cpu, &options(1)).unwrap();
    third.set_disk_cache(&root).unwrap();
    let short = Limits { title: 2, content: 3, topic: 1 };
    let other = embedding_examples(&third, &data, short);
    let changed = other.iter().zip(&exs).filter(|(a, b)| a.ids != b.ids).count();
    assert!(changed > 0);
    rows(&mut third, &other);
    assert_eq!(third.frozen_stats().computed, changed);

    // Another depth or another base gets another directory.
    let mut deeper = TrainableModel::load(&base, &Device::Cpu, &options(0)).unwrap();
    assert_ne!(deeper.set_disk_cache(&root).unwrap().unwrap(), d1);
    let other_base = common::tiny_model_seeded(dir.path(), "other", Family::Llama, 1, 8, 32);
    let mut other = TrainableModel::load(&other_base, &Device::Cpu, &options(1)).unwrap();
    assert_ne!(other.set_disk_cache(&root).unwrap().unwrap(), d1);
    // Without frozen layers there is nothing to cache.
    let mut full = TrainableModel::load(&base, &Device::Cpu, &options(99)).unwrap();
    assert!(full.set_disk_cache(&root).unwrap().is_none());
}
