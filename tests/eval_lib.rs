//! The evaluation library end to end, as `notellm eval` drives it, on the synthetic dataset and
//! a tiny checkpoint (nothing downloaded): the test pool, NoteLLM embeddings in length-sorted
//! batches equal to one-by-one embeddings, Recall@k of NoteLLM and TF-IDF through the same code,
//! generation metrics, and the results table.

mod common;

use candle_core::Device;
use common::{synthetic_dataset, tiny_model};
use notellm_model::config::Family;
use notellm_model::{GenerateOptions, NoteLlm};
use notellm_offline::data::{Dataset, Part};
use notellm_offline::eval::generation::{suggest_all, HashtagBudget};
use notellm_offline::eval::recall::evaluate;
use notellm_offline::eval::tfidf::TfIdf;
use notellm_offline::eval::{
    self, evaluate_dense, evaluate_generation, HashtagVocab, RecallOptions, ResultsTable, Timing,
};

#[test]
fn eval_pipeline_on_synthetic_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_dataset(&dir.path().join("data"), 120);
    let ds = Dataset::load(&data).unwrap();
    let (ids, notes) = eval::pool(&ds, Part::Test).unwrap();
    assert_eq!(ids.len(), 120);
    assert_eq!(&notes[7], ds.note(&ids[7]).unwrap());
    let pairs = ds.pairs(Part::Test);

    let model = NoteLlm::load(&tiny_model(dir.path(), "m", Family::Llama, 1), &Device::Cpu).unwrap();
    let t = std::time::Instant::now();
    let emb = eval::embed_notellm(&model, &notes, 16).unwrap();
    let encode = t.elapsed().as_secs_f64();
    for i in [0, 33, 119] {
        let alone = model.embed(std::slice::from_ref(&notes[i])).unwrap().remove(0);
        assert!(alone.cosine(&emb[i]) > 0.9999, "note {i}: batched {} alone", alone.cosine(&emb[i]));
    }

    let opts = RecallOptions { ks: vec![1, 10, 100], progress: false, ..RecallOptions::default() };
    let notellm = evaluate_dense(&ids, &emb, pairs, &opts).unwrap();
    let t = std::time::Instant::now();
    let tfidf_model = TfIdf::fit(&notes);
    let fit = t.elapsed().as_secs_f64();
    let tfidf = evaluate(&ids, &tfidf_model, pairs, &opts).unwrap();
    assert_eq!(notellm.pairs, pairs.len());
    // Pairs join notes of one topic, whose words come from one list: TF-IDF is far above chance
    // (R@10 of a random ranking is 10 / 119).
    assert!(tfidf.recall[1] > 0.3, "TF-IDF R@10 {:?}", tfidf.recall);
    assert!(notellm.recall.iter().chain(&tfidf.recall).all(|r| (0.0..=1.0).contains(r)));
    assert_eq!(notellm.buckets.iter().map(|b| b.pairs).sum::<usize>(), pairs.len());

    let sample = &notes[..6];
    let t = std::time::Instant::now();
    let gen_opts = GenerateOptions { max_new_tokens: Some(8), ..GenerateOptions::default() };
    let suggestions = suggest_all(&model, sample, HashtagBudget::default(), &gen_opts).unwrap();
    let gen_secs = t.elapsed().as_secs_f64();
    let vocab = HashtagVocab::from_notes(ds.ids(Part::Train).iter().filter_map(|id| ds.note(id)));
    let gen = evaluate_generation(sample.iter().zip(&suggestions), &ds.categories, &vocab);
    assert_eq!(gen.notes, 6);
    assert_eq!(gen.category.notes, 6);
    for x in
        [gen.category.accuracy, gen.category.illusion, gen.hashtags.f1, gen.hashtags.rouge_l, gen.hashtags.invented]
    {
        assert!((0.0..=1.0).contains(&x));
    }

    let mut table = ResultsTable::new(&opts.ks, 10).unwrap();
    let n = notes.len();
    table
        .push("NoteLLM tiny", &notellm, Timing { notes: n, encode_seconds: encode, search_seconds: notellm.seconds })
        .unwrap();
    table.push("TF-IDF", &tfidf, Timing { notes: n, encode_seconds: fit, search_seconds: tfidf.seconds }).unwrap();
    table.push_generation("NoteLLM tiny", gen, gen_secs);
    let md = table.to_markdown();
    assert!(md.contains("| NoteLLM tiny |") && md.contains("| TF-IDF |") && md.contains("R@10 low"), "{md}");
    let json = table.to_json();
    assert_eq!(json["rows"].as_array().unwrap().len(), 2);
    assert_eq!(json["pool"], 120);
    eprintln!("{md}");
}

/// The image-only systems on a dataset whose images follow the notes' categories (one colour
/// per category, with per-note noise): both are far above chance, through the command's own
/// `run`; a pool note without an image is named.
#[test]
fn image_only_systems_rank_by_the_notes_images() {
    use notellm_offline::commands::eval::{run, System};
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_dataset(&dir.path().join("data"), 120);
    let images = common::category_images(&data);
    let encoder = dir.path().join("encoder");
    let cfg = common::tiny_vision();
    notellm_artifacts::vision::random_encoder(&encoder, &cfg, 1).unwrap();
    let opts = common::quick_eval_options();
    let systems = vec![System::Pixels, System::ImageEncoder { dir: encoder.clone() }];
    let table = run(&data, &systems, &Device::Cpu, &opts).unwrap();
    let json = table.to_json();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{json}");
    // Chance R@10 over 119 candidates is 8%; the images tell a note's category (one colour and
    // shape per category) and little more. Everything is seeded.
    let pixels = rows[0]["recall"][0].as_f64().unwrap();
    let encoder = rows[1]["recall"][0].as_f64().unwrap();
    assert!(pixels > 0.25, "pixels R@10 {pixels}: {json}");
    assert!(encoder > 0.15, "encoder R@10 {encoder}: {json}");
    // Without an image, a note cannot be ranked by one.
    std::fs::remove_file(images.join("n7.png")).unwrap();
    let err = run(&data, &systems[..1], &Device::Cpu, &opts).unwrap_err().to_string();
    assert!(err.contains("note n7 has no image"), "{err}");
}
