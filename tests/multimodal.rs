//! NoteLLM-2's model on a tiny text checkpoint and a tiny random image encoder: the mICL
//! prompt's positions (a masking test: the image embedding sees only the image, the note
//! embedding both), batched == one by one for image notes, the checkpoint layout that
//! `notellm model init-multimodal` writes, and gradients reaching the connector through the LLM.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use notellm_artifacts::multimodal::{init_multimodal, MultimodalInit};
use notellm_model::config::Family;
use notellm_model::decoder::Decoder;
use notellm_model::multimodal::{micl_forward, Connector, MiclPrompt, MultimodalNoteLlm, QFormerConfig};
use notellm_model::vision::VisionConfig;
use notellm_model::{CheckpointFiles, NoteLlm};
use notellm_note::Note;

fn qformer() -> QFormerConfig {
    QFormerConfig { hidden: 16, layers: 2, heads: 2, ffn: 32, queries: 4, cross_every: 2, layer_norm_eps: 1e-12 }
}

/// A multimodal checkpoint in `dir/mm` (text: the tiny Llama; encoder: random).
fn checkpoint(dir: &Path, late_fusion: bool) -> PathBuf {
    let text = common::tiny_model(dir, "text", Family::Llama, 1);
    let vision = dir.join("vision");
    notellm_artifacts::vision::random_encoder(&vision, &common::tiny_vision(), 3).unwrap();
    let out = dir.join("mm");
    let opts = MultimodalInit { qformer: Some(qformer()), late_fusion, model_version: None };
    init_multimodal(&text, &vision, &out, &opts).unwrap();
    out
}

fn note(title: &str, content: &str) -> Note {
    Note {
        title: title.into(),
        content: content.into(),
        hashtags: vec!["travel".into()],
        category: Some("travel".into()),
    }
}

/// Random image features `[b, tokens, width]` as the encoder would store them.
fn features(b: usize, seed: f32) -> Tensor {
    let cfg = common::tiny_vision();
    let n = b * cfg.tokens() * cfg.width;
    let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + seed).sin() * 1.7).collect();
    Tensor::from_vec(v, (b, cfg.tokens(), cfg.width), &Device::Cpu).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn the_image_embedding_sees_only_the_image_and_the_note_embedding_sees_both() {
    let dir = tempfile::tempdir().unwrap();
    let model = MultimodalNoteLlm::load(&checkpoint(dir.path(), true), &Device::Cpu).unwrap();
    let a = note("Weekend in Kyoto temples", "We walked from Gion to Kiyomizu at dawn.");
    let b = note("Sourdough at home", "Flour, water, salt and three days of patience.");
    let img1 = features(1, 0.0);
    let img2 = features(1, 1.3);
    let a1 = &model.embed(std::slice::from_ref(&a), &img1).unwrap()[0];
    let b1 = &model.embed(std::slice::from_ref(&b), &img1).unwrap()[0];
    let a2 = &model.embed(std::slice::from_ref(&a), &img2).unwrap()[0];
    // Same image, other text: the image embedding is unchanged (causal: it comes first).
    assert!(max_diff(a1.image.as_slice(), b1.image.as_slice()) < 1e-5);
    // ... and the note embedding moves with the text.
    assert!(max_diff(a1.note.as_slice(), b1.note.as_slice()) > 1e-3);
    // Same text, other image: both move.
    assert!(max_diff(a1.image.as_slice(), a2.image.as_slice()) > 1e-3);
    assert!(max_diff(a1.note.as_slice(), a2.note.as_slice()) > 1e-3);
    // The layout: `<IMG>` became the queries, so everything after it shifted by queries - 1
    // against a one-token placeholder.
    let layout = model.layout(&a).unwrap();
    assert_eq!(layout.visual, 4);
    assert_eq!(layout.image_position() + 1, layout.img_emb_position());
    assert_eq!(layout.note_position(), layout.img_emb_position() + layout.note);
}

#[test]
fn without_late_fusion_the_image_embedding_still_ignores_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let model = MultimodalNoteLlm::load(&checkpoint(dir.path(), false), &Device::Cpu).unwrap();
    let img = features(1, 0.5);
    let a = &model.embed(&[note("A", "first text here")], &img).unwrap()[0];
    let b = &model.embed(&[note("B", "a different second text")], &img).unwrap()[0];
    assert!(max_diff(a.image.as_slice(), b.image.as_slice()) < 1e-5);
    assert!(max_diff(a.note.as_slice(), b.note.as_slice()) > 1e-3);
}

#[test]
fn a_batch_of_image_notes_embeds_as_each_note_alone() {
    let dir = tempfile::tempdir().unwrap();
    let model = MultimodalNoteLlm::load(&checkpoint(dir.path(), true), &Device::Cpu).unwrap();
    let notes = vec![
        note("Short", "x"),
        note("A much longer title about a trip", "with a content that runs on for a while, past the others"),
        note("Middle one", "some words in between"),
    ];
    let images = features(3, 0.7);
    let together = model.embed(&notes, &images).unwrap();
    for (i, n) in notes.iter().enumerate() {
        let alone = &model.embed(std::slice::from_ref(n), &images.narrow(0, i, 1).unwrap()).unwrap()[0];
        assert!(max_diff(alone.note.as_slice(), together[i].note.as_slice()) < 1e-5, "note {i}");
        assert!(max_diff(alone.image.as_slice(), together[i].image.as_slice()) < 1e-5, "image {i}");
    }
    assert_eq!(together[0].note.as_slice().len(), model.text().embedding_dim());
}

#[test]
fn the_checkpoint_says_it_is_multimodal_and_still_serves_text_notes() {
    let dir = tempfile::tempdir().unwrap();
    let mm = checkpoint(dir.path(), true);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mm.join("notellm.json")).unwrap()).unwrap();
    assert_eq!(json["multimodal"]["micl_prompt_version"], "notellm2-micl-v1");
    assert_eq!(json["multimodal"]["vision"], "vision");
    assert!(json["model_version"].as_str().unwrap().ends_with("+micl"));
    assert!(mm.join("vision/vision.json").is_file() && mm.join("multimodal.safetensors").is_file());
    // The text path loads it as any checkpoint and embeds text-only notes as the text model did.
    let text = NoteLlm::load(&dir.path().join("text"), &Device::Cpu).unwrap();
    let as_text = NoteLlm::load(&mm, &Device::Cpu).unwrap();
    let n = note("Only words", "no picture in this one");
    let (x, y) = (&text.embed(std::slice::from_ref(&n)).unwrap()[0], &as_text.embed(&[n]).unwrap()[0]);
    assert_eq!(x.as_slice(), y.as_slice());
    // A text checkpoint is not multimodal; an existing directory is not overwritten.
    let err = MultimodalNoteLlm::load(&dir.path().join("text"), &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("text-only checkpoint"), "{err}");
    let opts = MultimodalInit { qformer: Some(qformer()), late_fusion: true, model_version: None };
    let err = init_multimodal(&dir.path().join("text"), &dir.path().join("vision"), &mm, &opts).unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");
    let err = init_multimodal(&mm, &dir.path().join("vision"), &dir.path().join("again"), &opts).unwrap_err();
    assert!(err.to_string().contains("already a multimodal"), "{err}");
}

#[test]
fn images_from_files_go_through_the_encoder_and_differ() {
    let dir = tempfile::tempdir().unwrap();
    let model = MultimodalNoteLlm::load(&checkpoint(dir.path(), true), &Device::Cpu).unwrap();
    let red = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(40, 30, image::Rgb([200, 20, 20])));
    let mut grad = image::RgbImage::new(28, 28);
    for (x, y, p) in grad.enumerate_pixels_mut() {
        *p = image::Rgb([(x * 9) as u8, (y * 9) as u8, 128]);
    }
    let feats = model.image_features(&[red, image::DynamicImage::ImageRgb8(grad)]).unwrap();
    assert_eq!(feats.dims(), [2, 5, 16]);
    let out = model.embed(&[note("Red", "a red square"), note("Red", "a red square")], &feats).unwrap();
    assert!(max_diff(out[0].note.as_slice(), out[1].note.as_slice()) > 1e-4, "two images, one embedding");
}

#[test]
fn the_micl_loss_reaches_the_connector_through_the_llm() {
    let dir = tempfile::tempdir().unwrap();
    let text_dir = common::tiny_model(dir.path(), "text", Family::Llama, 1);
    let text = NoteLlm::load(&text_dir, &Device::Cpu).unwrap();
    let files = CheckpointFiles::open(&text_dir).unwrap();
    let mut decoder = Decoder::load(&files.decoder, files.var_builder(DType::F32, &Device::Cpu).unwrap()).unwrap();
    decoder.set_trainable_from(0);
    let cfg = notellm_model::multimodal::MultimodalConfig {
        micl_prompt_version: notellm_model::multimodal::MICL_PROMPT_VERSION.into(),
        vision: "vision".into(),
        qformer: qformer(),
        late_fusion: true,
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let connector = Connector::new(&cfg, 16, files.decoder.hidden_size, vb).unwrap();
    let prompt = MiclPrompt::new(text.tokenizer(), text.config()).unwrap();
    let ids = vec![
        prompt.note_ids(text.tokenizer(), text.config(), &note("A", "one")).unwrap(),
        prompt.note_ids(text.tokenizer(), text.config(), &note("B", "two")).unwrap(),
    ];
    let states = micl_forward(&decoder, &prompt, &connector, &ids, &features(2, 0.1), text.tokenizer().pad_id).unwrap();
    let loss = (states.note.sqr().unwrap().sum_all().unwrap() + states.image.sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    for name in [
        "qformer.query_tokens",
        "qformer.layers.0.cross_attn.key.weight",
        "projection.fc1.weight",
        "img_emb_token",
        "fusion.w_g.weight",
    ] {
        let g = grads.get(data[name].as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}

#[test]
fn a_clip_tower_in_hugging_face_names_encodes_as_candles_clip_and_feeds_the_connector() {
    use candle_transformers::models::clip::text_model::Activation;
    use candle_transformers::models::clip::vision_model::{ClipVisionConfig, ClipVisionTransformer};
    use notellm_model::vision::{VisionEncoder, VISION_WEIGHTS_FILE};
    let dir = tempfile::tempdir().unwrap();
    // ViT-B/16's geometry (224 px, patch 16, width 768, 12 heads) with 2 of its 12 layers.
    let mut cfg = VisionConfig::clip_vit_b16("random (tests/multimodal.rs)");
    cfg.depth = 2;
    let random = dir.path().join("random");
    notellm_artifacts::vision::random_encoder(&random, &cfg, 5).unwrap();
    let names = candle_core::safetensors::load(random.join(VISION_WEIGHTS_FILE), &Device::Cpu).unwrap();
    for name in [
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.pre_layrnorm.weight",
        "vision_model.encoder.layers.1.mlp.fc2.weight",
        "vision_model.post_layernorm.bias",
    ] {
        assert!(names.contains_key(name), "{name} missing");
    }
    // A file brought by a user goes in through import_clip (which loads it once to check it):
    // here, with the depth the test wrote.
    let clip = dir.path().join("clip");
    let err = notellm_artifacts::vision::import_clip(&random.join(VISION_WEIGHTS_FILE), &clip).unwrap_err();
    assert!(err.to_string().contains("layers.2"), "{err}");
    assert!(!clip.exists(), "a refused import leaves nothing behind");
    std::fs::create_dir_all(&clip).unwrap();
    std::fs::copy(random.join(VISION_WEIGHTS_FILE), clip.join(VISION_WEIGHTS_FILE)).unwrap();
    std::fs::write(clip.join("vision.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let encoder = VisionEncoder::load(&clip, &Device::Cpu).unwrap();
    let red = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(300, 240, image::Rgb([200, 20, 20])));
    let mut grad = image::RgbImage::new(224, 224);
    for (x, y, p) in grad.enumerate_pixels_mut() {
        *p = image::Rgb([x as u8, y as u8, 90]);
    }
    let images = [red, image::DynamicImage::ImageRgb8(grad)];
    let feats = encoder.encode(&images).unwrap();
    assert_eq!(feats.hidden.dims(), [2, 197, 768]);
    // candle's own CLIP module gives the same pooled output (post_layernorm of the CLS state).
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[clip.join(VISION_WEIGHTS_FILE)], DType::F32, &Device::Cpu).unwrap()
    };
    let c = ClipVisionConfig {
        embed_dim: 768,
        activation: Activation::QuickGelu,
        intermediate_size: 3072,
        num_hidden_layers: 2,
        num_attention_heads: 12,
        projection_dim: 512,
        num_channels: 3,
        image_size: 224,
        patch_size: 16,
    };
    let tower = ClipVisionTransformer::new(vb.pp("vision_model"), &c).unwrap();
    let pixels: Vec<f32> = images.iter().flat_map(|i| cfg.pixels(i)).collect();
    let pixels = Tensor::from_vec(pixels, (2, 3, 224, 224), &Device::Cpu).unwrap();
    let pooled =
        candle_core::Module::forward(&tower, &pixels).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let ours = feats.normed.narrow(1, 0, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(max_diff(&pooled, &ours) < 1e-4, "{}", max_diff(&pooled, &ours));
    let cls = feats.hidden.narrow(1, 0, 1).unwrap();
    let (a, b) = (cls.get(0).unwrap().flatten_all().unwrap(), cls.get(1).unwrap().flatten_all().unwrap());
    assert!(max_diff(&a.to_vec1::<f32>().unwrap(), &b.to_vec1::<f32>().unwrap()) > 1e-3);
    // A multimodal checkpoint on it: 768-wide image tokens into the Q-Former.
    let text = common::tiny_model(dir.path(), "text", Family::Llama, 1);
    let opts = MultimodalInit { qformer: Some(qformer()), late_fusion: true, model_version: None };
    let mm = dir.path().join("mm");
    init_multimodal(&text, &clip, &mm, &opts).unwrap();
    let model = MultimodalNoteLlm::load(&mm, &Device::Cpu).unwrap();
    let out = model.embed(&[note("Red", "square"), note("Red", "square")], &feats.hidden).unwrap();
    assert!(max_diff(out[0].note.as_slice(), out[1].note.as_slice()) > 1e-4);
}

#[test]
fn encoder_features_are_cached_per_encoder_and_image() {
    use notellm_model::features::{features_of, FeatureCache};
    use notellm_model::image_input::ImageHash;
    use notellm_model::vision::VisionEncoder;
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    notellm_artifacts::vision::random_encoder(&a_dir, &common::tiny_vision(), 3).unwrap();
    notellm_artifacts::vision::random_encoder(&b_dir, &common::tiny_vision(), 4).unwrap();
    let a = VisionEncoder::load(&a_dir, &Device::Cpu).unwrap();
    let b = VisionEncoder::load(&b_dir, &Device::Cpu).unwrap();
    let root = dir.path().join("cache");
    let (ca, cb) = (FeatureCache::open(&root, &a).unwrap(), FeatureCache::open(&root, &b).unwrap());
    assert_ne!(ca.dir(), cb.dir(), "two encoders share a cache directory");
    let imgs: Vec<image::DynamicImage> = (0..3u8)
        .map(|i| {
            image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(30, 30, |x, y| {
                image::Rgb([x as u8 * i, y as u8, 40 * i])
            }))
        })
        .collect();
    let named: Vec<(ImageHash, &image::DynamicImage)> =
        imgs.iter().enumerate().map(|(i, im)| (ImageHash::of(&[i as u8]), im)).collect();
    let (first, encoded) = features_of(&a, Some(&ca), &named, 2).unwrap();
    assert_eq!((first.dims(), encoded), (&[3usize, 5, 16][..], 3));
    let (again, encoded) = features_of(&a, Some(&ca), &named, 2).unwrap();
    assert_eq!(encoded, 0, "a second pass encodes nothing");
    let (x, y) = (
        first.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        again.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    for (p, q) in x.iter().zip(&y) {
        assert!((p - q).abs() <= 1e-3 * p.abs().max(1.0), "{p} vs {q}: beyond f16 rounding");
    }
    // The other encoder has nothing cached; a damaged file is encoded again.
    assert_eq!(features_of(&b, Some(&cb), &named[..1], 2).unwrap().1, 1);
    let file = std::fs::read_dir(ca.dir()).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path();
    let victim = std::fs::read_dir(&file).unwrap().flatten().next().unwrap().path();
    std::fs::write(&victim, b"cut").unwrap();
    assert_eq!(features_of(&a, Some(&ca), &named, 2).unwrap().1, 1);
    // An encoder built in memory has no fingerprint to cache under.
    let vm = VarMap::new();
    let mem =
        VisionEncoder::new(common::tiny_vision(), VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    assert!(FeatureCache::open(&root, &mem).is_err());
}

#[test]
fn micl_training_lowers_its_loss_and_its_checkpoint_serves() {
    use notellm_offline::train::trainer::{Objective, TrainOptions, Trainer};
    let dir = tempfile::tempdir().unwrap();
    let data = common::synthetic_dataset(&dir.path().join("data"), 120);
    common::category_images(&data);
    let base = checkpoint(dir.path(), true);
    let opts = TrainOptions {
        objective: Objective::Micl,
        train_layers: 1,
        embedding_dim: 32,
        pairs_per_step: 8,
        epochs: 2.0,
        lr: 3e-3,
        warmup_share: 0.1,
        val_pairs: 40,
        val_pool: 120,
        recall_k: vec![1, 10],
        save_every: 0,
        model_version: "tiny-micl".into(),
        ..TrainOptions::default()
    };
    // A text base is refused for mICL, a multimodal one for the text objectives.
    let out = dir.path().join("out");
    let err = Trainer::new(&data, &dir.path().join("text"), &out, &Device::Cpu, opts.clone()).err().unwrap();
    assert!(err.to_string().contains("needs a multimodal base"), "{err}");
    let text_opts = TrainOptions { objective: Objective::NoteLlm, ..opts.clone() };
    let err = Trainer::new(&data, &base, &out, &Device::Cpu, text_opts).err().unwrap();
    assert!(err.to_string().contains("--objective micl"), "{err}");

    let mut t = Trainer::new(&data, &base, &out, &Device::Cpu, opts).unwrap();
    let summary = t.run(None).unwrap();
    let first: f64 = summary.losses.iter().take(3).map(|l| l.1).sum::<f64>() / 3.0;
    let last: f64 = summary.losses.iter().rev().take(3).map(|l| l.1).sum::<f64>() / 3.0;
    eprintln!("mICL loss {first:.4} -> {last:.4}; validation {:?}", summary.history.last().map(|v| &v.recall));
    assert!(last < first * 0.9, "loss did not fall: {first} -> {last}");
    assert!(!summary.history.is_empty(), "no validation ran");

    // The checkpoint is multimodal, loads as one and embeds; its connector moved.
    let served = MultimodalNoteLlm::load(&out, &Device::Cpu).unwrap();
    assert_eq!(served.text().version().0, "tiny-micl");
    let before = candle_core::safetensors::load(base.join("multimodal.safetensors"), &Device::Cpu).unwrap();
    let after = candle_core::safetensors::load(out.join("multimodal.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(before.len(), after.len());
    let moved = |name: &str| {
        let d = (&before[name] - &after[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        d > 0.0
    };
    assert!(moved("qformer.query_tokens") && moved("fusion.w_g.weight") && moved("img_emb_token"));
    let img = features(2, 0.3);
    let embedded = served.embed(&[note("A", "first"), note("B", "second")], &img).unwrap();
    assert!(embedded.iter().all(|e| e.note.as_slice().iter().all(|x| x.is_finite())));

    // `notellm eval` ranks with it (each pool note with its image).
    use notellm_offline::commands::eval::{run, System};
    let eval_opts = common::quick_eval_options();
    let system = System::NoteLlm { name: "NoteLLM-2 tiny".into(), dir: out.clone() };
    let table = run(&data, &[system], &Device::Cpu, &eval_opts).unwrap().to_json();
    // Two rows: what the image embedding alone ranks, then the note embedding.
    let names: Vec<&str> = table["rows"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["NoteLLM-2 tiny, its image embedding (image only)", "NoteLLM-2 tiny"], "{table}");
    for row in table["rows"].as_array().unwrap() {
        let r10 = row["recall"][0].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&r10), "{table}");
    }
}
