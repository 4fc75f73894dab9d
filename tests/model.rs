//! The model runtime against references: batched == unbatched, left == right padding, our
//! decoder == candle-transformers' qwen2 and llama on the same weights, sharded == single file,
//! prefix reuse and the KV cache change nothing, and malformed checkpoints fail clearly.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use common::{cosine, notes, tiny_model};
use notellm_model::config::Family;
use notellm_model::{CheckpointFiles, Decoder, KvCache, NoteLlm, PaddedBatch, Padding};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, SeedableRng};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn batched_equals_unbatched_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let model = NoteLlm::load(&tiny_model(dir.path(), "m", Family::Llama, 1), &Device::Cpu).unwrap();
    let notes: Vec<_> = notes(48, 99).into_iter().map(|(_, n)| n).collect();
    let single: Vec<Vec<f32>> =
        notes.iter().map(|n| model.embed(std::slice::from_ref(n)).unwrap()[0].as_slice().to_vec()).collect();
    let mut order: Vec<usize> = (0..notes.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(3));
    for batch in [8, 32] {
        for chunk in order.chunks(batch) {
            let sub: Vec<_> = chunk.iter().map(|&i| notes[i].clone()).collect();
            let lens: Vec<usize> = sub.iter().map(|n| model.embedding_ids(n).unwrap().len()).collect();
            assert!(lens.iter().min() != lens.iter().max(), "batch should mix lengths: {lens:?}");
            for (e, &i) in model.embed(&sub).unwrap().iter().zip(chunk) {
                let c = cosine(e.as_slice(), &single[i]);
                assert!(c >= 0.99999, "note {i} batch {batch}: cosine {c}");
            }
        }
    }
}

#[test]
fn left_and_right_padding_match_unpadded() {
    let dir = tempfile::tempdir().unwrap();
    let model = NoteLlm::load(&tiny_model(dir.path(), "m", Family::Qwen2, 1), &Device::Cpu).unwrap();
    let seqs: Vec<Vec<u32>> = notes(6, 5).iter().map(|(_, n)| model.embedding_ids(n).unwrap()).collect();
    let dec = model.decoder();
    for padding in [Padding::Left, Padding::Right] {
        let batch = PaddedBatch::new(&seqs, padding, 2, &Device::Cpu).unwrap();
        let hidden = dec.forward(&batch, &mut KvCache::new()).unwrap();
        assert!(hidden.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite()));
        for (b, s) in seqs.iter().enumerate() {
            let alone = dec.hidden_unbatched(s).unwrap();
            let pad = batch.seq_len() - s.len();
            let start = if padding == Padding::Left { pad } else { 0 };
            let got = hidden.i((b, start..start + s.len())).unwrap();
            let d = max_abs_diff(&got, &alone);
            assert!(d < 1e-4, "{padding:?} seq {b}: max diff {d}");
        }
    }
}

fn ids_for(model: &NoteLlm) -> Vec<u32> {
    let (_, n) = &notes(3, 11)[2];
    model.embedding_ids(n).unwrap()
}

#[test]
fn matches_candle_transformers_qwen2() {
    use candle_transformers::models::qwen2;
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path(), "q", Family::Qwen2, 1);
    let model = NoteLlm::load(&path, &Device::Cpu).unwrap();
    let files = CheckpointFiles::open(&path).unwrap();
    let c = &files.decoder;
    assert!(c.qkv_bias, "the qwen2 checkpoint must exercise q/k/v biases");
    let cfg = c.to_candle_qwen2();
    let vb = files.var_builder(DType::F32, &Device::Cpu).unwrap();
    let mut reference = qwen2::Model::new(&cfg, vb).unwrap();
    let ids = ids_for(&model);
    let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let want = reference.forward(&input, 0, None).unwrap().i(0).unwrap();
    let got = model.decoder().hidden_unbatched(&ids).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-4, "qwen2: max diff {d} over {} positions", ids.len());
}

#[test]
fn matches_candle_transformers_llama_with_llama3_rope() {
    use candle_transformers::models::llama;
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path(), "l", Family::Llama, 1);
    // Exercise Llama 3 RoPE scaling on both sides.
    let cfg_path = path.join("config.json");
    let mut raw: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    raw["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    std::fs::write(&cfg_path, raw.to_string()).unwrap();
    let model = NoteLlm::load(&path, &Device::Cpu).unwrap();
    let lcfg: llama::LlamaConfig = serde_json::from_value(raw).unwrap();
    let cfg = lcfg.into_config(false);
    let files = CheckpointFiles::open(&path).unwrap();
    let reference = llama::Llama::load(files.var_builder(DType::F32, &Device::Cpu).unwrap(), &cfg).unwrap();
    let ids = ids_for(&model);
    // candle's llama exposes only the last position's logits: compare them for every prefix.
    for len in (1..=ids.len()).step_by(7).chain([ids.len()]) {
        let mut cache = llama::Cache::new(false, DType::F32, &cfg, &Device::Cpu).unwrap();
        let input = Tensor::new(&ids[..len], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let want = reference.forward(&input, 0, &mut cache).unwrap().i(0).unwrap();
        let hidden = model.decoder().hidden_unbatched(&ids[..len]).unwrap();
        let got = model.decoder().logits(&hidden.i(len - 1).unwrap()).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "llama prefix {len}: max logit diff {d}");
    }
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let one = NoteLlm::load(&tiny_model(dir.path(), "one", Family::Llama, 1), &Device::Cpu).unwrap();
    let sharded_dir = tiny_model(dir.path(), "three", Family::Llama, 3);
    assert!(sharded_dir.join("model.safetensors.index.json").is_file());
    assert!(sharded_dir.join("model-00003-of-00003.safetensors").is_file());
    let three = NoteLlm::load(&sharded_dir, &Device::Cpu).unwrap();
    let ns: Vec<_> = notes(5, 2).into_iter().map(|(_, n)| n).collect();
    for (a, b) in one.embed(&ns).unwrap().iter().zip(three.embed(&ns).unwrap()) {
        assert_eq!(a.as_slice(), b.as_slice());
    }
}

#[test]
fn prefix_reuse_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = NoteLlm::load(&tiny_model(dir.path(), "m", Family::Llama, 1), &Device::Cpu).unwrap();
    assert!(model.prefix_len() > 10, "the instruction prefix should be reused, got {}", model.prefix_len());
    let ns: Vec<_> = notes(12, 4).into_iter().map(|(_, n)| n).collect();
    let with = model.embed(&ns).unwrap();
    model.set_prefix_reuse(false).unwrap();
    assert_eq!(model.prefix_len(), 0);
    let without = model.embed(&ns).unwrap();
    for (a, b) in with.iter().zip(&without) {
        let c = cosine(a.as_slice(), b.as_slice());
        assert!(c >= 0.99999, "cosine {c}");
    }
}

#[test]
fn kv_cache_decoding_equals_full_recompute() {
    let dir = tempfile::tempdir().unwrap();
    let model = NoteLlm::load(&tiny_model(dir.path(), "m", Family::Llama, 1), &Device::Cpu).unwrap();
    let dec: &Decoder = model.decoder();
    let mut ids = ids_for(&model);
    let mut cache = KvCache::new();
    let first = PaddedBatch::new(std::slice::from_ref(&ids), Padding::Right, 2, &Device::Cpu).unwrap();
    let mut hidden = dec.forward(&first, &mut cache).unwrap();
    for step in 0..6 {
        let last = hidden.dim(1).unwrap() - 1;
        let cached = dec.logits(&hidden.i((0, last)).unwrap()).unwrap();
        let full = dec.hidden_unbatched(&ids).unwrap();
        let want = dec.logits(&full.i(ids.len() - 1).unwrap()).unwrap();
        let d = max_abs_diff(&cached, &want);
        assert!(d < 1e-4, "step {step}: {d}");
        let next = cached.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        ids.push(next);
        let b = PaddedBatch::new(&[vec![next]], Padding::Right, 2, &Device::Cpu).unwrap();
        hidden = dec.forward(&b, &mut cache).unwrap();
    }
}

#[test]
fn suggest_returns_a_listed_category() {
    let dir = tempfile::tempdir().unwrap();
    let model = NoteLlm::load(&tiny_model(dir.path(), "m", Family::Llama, 1), &Device::Cpu).unwrap();
    let cats = model.config().categories.clone();
    assert_eq!(cats.len(), 6);
    for (_, n) in notes(4, 8) {
        let s = model.suggest(&n, 3, &Default::default()).unwrap();
        assert!(s.hashtags.len() <= 3);
        let c = s.category.expect("constrained decoding always ends in a category");
        assert!(cats.contains(&c), "{c:?} not in {cats:?}");
    }
}

#[test]
fn a_hashtag_vocabulary_closes_hashtag_generation() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path(), "m", Family::Llama, 1);
    let vocab = ["travel", "food", "autumn", "city", "music"];
    let file = path.join("notellm.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    v["hashtags"] = serde_json::json!(vocab);
    std::fs::write(&file, v.to_string()).unwrap();
    let model = NoteLlm::load(&path, &Device::Cpu).unwrap();
    let dec = model.hashtag_decoder().expect("the vocabulary tokenises");
    assert_eq!(dec.len(), vocab.len());
    let mut any = 0;
    for (_, n) in notes(6, 9) {
        let s = model.suggest(&n, 3, &Default::default()).unwrap();
        assert!(s.hashtags.len() <= 3);
        any += s.hashtags.len();
        for t in &s.hashtags {
            assert!(vocab.contains(&t.as_str()), "{t:?} is outside the vocabulary");
        }
        let unique: std::collections::HashSet<&String> = s.hashtags.iter().collect();
        assert_eq!(unique.len(), s.hashtags.len());
    }
    assert!(any > 0, "closed decoding produced no hashtag at all");
    // A vocabulary entry holding the separator is refused at load.
    v["hashtags"] = serde_json::json!(["a, b"]);
    std::fs::write(&file, v.to_string()).unwrap();
    assert!(NoteLlm::load(&path, &Device::Cpu).unwrap_err().to_string().contains("hashtags"));
}

mod malformed {
    use super::*;
    use std::path::Path;

    fn fresh(dir: &Path) -> std::path::PathBuf {
        tiny_model(dir, "m", Family::Llama, 1)
    }

    fn err(path: &Path) -> String {
        NoteLlm::load(path, &Device::Cpu).unwrap_err().to_string()
    }

    fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(path, v.to_string()).unwrap();
    }

    #[test]
    fn missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let m = fresh(dir.path());
        for f in ["tokenizer.json", "notellm.json", "config.json"] {
            let tmp = m.join(format!("{f}.bak"));
            std::fs::rename(m.join(f), &tmp).unwrap();
            let e = err(&m);
            assert!(e.contains(f) && e.contains("missing"), "{f}: {e}");
            std::fs::rename(&tmp, m.join(f)).unwrap();
        }
        std::fs::remove_file(m.join("model.safetensors")).unwrap();
        assert!(err(&m).contains("model.safetensors"), "{}", err(&m));
        assert!(err(&dir.path().join("nope")).contains("not found"));
    }

    #[test]
    fn bad_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let m = fresh(dir.path());
        std::fs::write(m.join("config.json"), "{ not json").unwrap();
        let e = err(&m);
        assert!(e.contains("config.json") && e.contains("invalid JSON"), "{e}");
    }

    #[test]
    fn missing_field_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let m = fresh(dir.path());
        edit_json(&m.join("config.json"), |v| {
            v.as_object_mut().unwrap().remove("num_hidden_layers");
        });
        let e = err(&m);
        assert!(e.contains("config.json") && e.contains("num_hidden_layers"), "{e}");
    }

    #[test]
    fn no_emb_token() {
        let dir = tempfile::tempdir().unwrap();
        let m = fresh(dir.path());
        edit_json(&m.join("notellm.json"), |v| v["emb_token"] = "[NOPE]".into());
        let e = err(&m);
        assert!(e.contains("tokenizer.json") && e.contains("[NOPE]"), "{e}");
    }

    #[test]
    fn inconsistent_embedding_dim() {
        let dir = tempfile::tempdir().unwrap();
        let m = fresh(dir.path());
        edit_json(&m.join("notellm.json"), |v| v["embedding_dim"] = 16.into());
        let e = err(&m);
        assert!(e.contains("emb_head.weight") && e.contains("shape"), "{e}");
    }

    #[test]
    fn wrong_tensor_shape_names_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let m = fresh(dir.path());
        let file = m.join("model.safetensors");
        let mut t = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        let name = "model.layers.1.mlp.up_proj.weight";
        let w = t[name].t().unwrap().contiguous().unwrap();
        t.insert(name.to_owned(), w);
        candle_core::safetensors::save(&t, &file).unwrap();
        let e = err(&m);
        assert!(e.contains(name) && e.contains("shape"), "{e}");
    }

    #[test]
    fn missing_tensor_and_garbage_weights() {
        let dir = tempfile::tempdir().unwrap();
        let m = fresh(dir.path());
        let file = m.join("model.safetensors");
        let mut t = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
        t.remove("model.norm.weight");
        candle_core::safetensors::save(&t, &file).unwrap();
        let e = err(&m);
        assert!(e.contains("model.norm.weight"), "{e}");
        std::fs::write(&file, b"definitely not safetensors").unwrap();
        let e = err(&m);
        assert!(e.contains("model.safetensors"), "{e}");
    }

    #[test]
    fn unsupported_prompt_version() {
        let dir = tempfile::tempdir().unwrap();
        let m = fresh(dir.path());
        edit_json(&m.join("notellm.json"), |v| v["prompt_version"] = "v0".into());
        let e = err(&m);
        assert!(e.contains("notellm.json") && e.contains("prompt_version"), "{e}");
    }
}

#[test]
fn decoder_trains_from_a_varmap() {
    // The same decoder code is built from a VarMap for training: the differentiable ops give the
    // fused ops' result, and gradients reach every variable.
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path(), "m", Family::Qwen2, 1);
    let files = CheckpointFiles::open(&path).unwrap();
    let mut varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let mut dec = Decoder::load(&files.decoder, vb).unwrap();
    varmap.load(&files.weights[0]).unwrap();
    let seqs = vec![vec![1u32, 5, 9, 14], vec![7, 3]];
    let batch = PaddedBatch::new(&seqs, Padding::Left, 2, &Device::Cpu).unwrap();
    let fused = dec.forward(&batch, &mut KvCache::new()).unwrap();
    dec.set_trainable_from(0);
    let diff = dec.forward(&batch, &mut KvCache::new()).unwrap();
    assert!(max_abs_diff(&fused, &diff) < 1e-5);
    let loss = diff.sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = varmap.all_vars();
    assert_eq!(vars.len(), files.decoder.num_layers * 12 + 2);
    for v in &vars {
        let g = grads.get(v).expect("every variable gets a gradient");
        let n = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(n > 0.0, "zero gradient for a {:?} variable", v.dims());
    }
}

#[test]
fn last_layer_at_selected_rows_equals_full_forward() {
    let dir = tempfile::tempdir().unwrap();
    let model = NoteLlm::load(&tiny_model(dir.path(), "m", Family::Qwen2, 1), &Device::Cpu).unwrap();
    let dec = model.decoder();
    let seqs: Vec<Vec<u32>> = notes(7, 13).iter().map(|(_, n)| model.embedding_ids(n).unwrap()).collect();
    for padding in [Padding::Left, Padding::Right] {
        let batch = PaddedBatch::new(&seqs, padding, 2, &Device::Cpu).unwrap();
        let last: Vec<usize> = batch.last.iter().map(|l| l.unwrap()).collect();
        let full = Decoder::gather(&dec.forward(&batch, &mut KvCache::new()).unwrap(), &last).unwrap();
        let at = dec.forward_at(&batch, &mut KvCache::new(), &last).unwrap();
        let d = max_abs_diff(&full, &at);
        assert!(d < 1e-5, "{padding:?}: {d}");
        // any position, not only the last one
        let mid: Vec<usize> = last.iter().map(|&l| l / 2).collect();
        let full_mid = Decoder::gather(&dec.forward(&batch, &mut KvCache::new()).unwrap(), &mid).unwrap();
        assert!(max_abs_diff(&full_mid, &dec.forward_at(&batch, &mut KvCache::new(), &mid).unwrap()) < 1e-5);
    }
    // after a cached prefix, as embedding with prefix reuse runs it
    let prefix = vec![seqs[0][..5].to_vec()];
    let mut cache = KvCache::new();
    dec.forward(&PaddedBatch::new(&prefix, Padding::Right, 2, &Device::Cpu).unwrap(), &mut cache).unwrap();
    let rest = PaddedBatch::new(&[seqs[0][5..].to_vec()], Padding::Right, 2, &Device::Cpu).unwrap();
    let at = dec.forward_at(&rest, &mut cache.clone(), &[seqs[0].len() - 6]).unwrap();
    let alone = dec.hidden_unbatched(&seqs[0]).unwrap().i(seqs[0].len() - 1).unwrap().unsqueeze(0).unwrap();
    assert!(max_abs_diff(&at, &alone) < 1e-5);
    assert!(dec.forward_at(&rest, &mut cache, &[999]).is_err());
}

#[test]
fn split_forward_equals_the_whole_forward() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny_model(dir.path(), "tiny", Family::Llama, 1);
    let model = NoteLlm::load(&ckpt, &Device::Cpu).unwrap();
    let seqs = vec![vec![5u32, 9, 13, 2, 7], vec![3u32, 4]];
    let dec = model.decoder();
    let batch = PaddedBatch::new(&seqs, Padding::Right, 0, &Device::Cpu).unwrap();
    let whole = dec.forward(&batch, &mut KvCache::new()).unwrap();
    for layer in 0..=dec.config().num_layers {
        let x = dec.hidden_before(&batch, layer).unwrap();
        let split = dec.forward_from(&x, &batch, layer).unwrap();
        let diff = (&whole - &split).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "layer {layer}: max diff {diff}");
    }
}
