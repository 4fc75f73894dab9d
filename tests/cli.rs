//! The `notellm` binary end to end: `model init`, `embed` and `ingest` (including malformed input
//! under both `--on-error` policies), `suggest`, and flags given as NOTELLM_* environment variables.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn notellm(args: &[&str], stdin: &str, envs: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_notellm"))
        .args(args)
        .envs(envs.iter().copied())
        .env("NOTELLM_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn init(dir: &Path) -> String {
    let corpus = dir.join("corpus.jsonl");
    common::write_corpus(&corpus, &common::notes(300, 1));
    let out = dir.join("tiny");
    let o = notellm(
        &[
            "model",
            "init",
            "--preset",
            "tiny",
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--vocab-size",
            "800",
            "--embedding-dim",
            "24",
        ],
        "",
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["config.json", "tokenizer.json", "model.safetensors", "notellm.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    out.to_str().unwrap().to_owned()
}

#[test]
fn init_embed_suggest() {
    let dir = tempfile::tempdir().unwrap();
    let model = init(dir.path());
    let good: Vec<String> = common::notes(20, 3)
        .iter()
        .map(|(id, n)| {
            let mut v = serde_json::to_value(n).unwrap();
            v["note_id"] = id.clone().into();
            v.to_string()
        })
        .collect();
    let mut input = good[..10].join("\n");
    input.push_str("\n{\"note_id\": \"broken\"\n\n{\"note_id\":\"bad id!\",\"title\":\"x\"}\n");
    input.push_str(&good[10..].join("\n"));

    // skip: every good note comes out, in input order, and each bad line is reported by number
    let o = notellm(&["embed", "--model", &model, "--batch-size", "4", "--on-error", "skip"], &input, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let out: Vec<serde_json::Value> =
        String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(out.len(), 20);
    let ids: Vec<&str> = out.iter().map(|v| v["note_id"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    assert_eq!(ids, want);
    for v in &out {
        let e: Vec<f32> = serde_json::from_value(v["embedding"].clone()).unwrap();
        assert_eq!(e.len(), 24);
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    assert!(err.contains("line 11") && err.contains("line 13"), "{err}");
    assert!(err.contains("skipped 2 malformed lines"), "{err}");

    // reject (the default): stops at the first bad line, naming it, exit status 1
    let o = notellm(&["embed", "--model", &model], &input, &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 11"), "{err}");

    // the same flags from the environment
    let o = notellm(&["embed"], &good.join("\n"), &[("NOTELLM_MODEL", &model), ("NOTELLM_BATCH_SIZE", "7")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap().lines().count(), 20);

    // suggest prints hashtags and a category from the corpus's category list
    let o = notellm(
        &["suggest", "--model", &model, "--title", "beach sunset", "--content", "hotel by the island"],
        "",
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(s["hashtags"].is_array());
    let cat = s["category"].as_str().unwrap();
    assert!(["travel", "food", "tech", "fashion", "fitness", "home"].contains(&cat), "{cat}");
}

#[test]
fn clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let o = notellm(&["embed", "--model", dir.path().join("missing").to_str().unwrap()], "", &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    let o = notellm(&["embed", "--model", "x", "--device", "tpu"], "", &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a device"));
    let model = init(dir.path());
    let o = notellm(&["suggest", "--model", &model, "--title", " "], "", &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("neither a title nor content"));
    let o = notellm(&["embed", "--model", &model, "--batch-size", "0"], "", &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("batch-size"));
}

/// `notellm ingest` holds every line to what `PUT /notes` accepts: a 20 MiB title, 500,000
/// hashtags, an unknown field, a line that is not UTF-8 and an over-long title are each reported
/// and skipped (`--on-error skip`) or stop the run naming the line (`reject`); nothing else is
/// written.
#[test]
fn ingest_applies_the_limits_of_put_notes() {
    let dir = tempfile::tempdir().unwrap();
    let model = init(dir.path());
    let file = dir.path().join("notes.jsonl");
    // Lines 2 and 3 are longer than any note within the limits can be: refused unparsed.
    let mut lines: Vec<Vec<u8>> = vec![
        br#"{"note_id":"ok-1","title":"a good note","content":"with text"}"#.to_vec(),
        format!(r#"{{"note_id":"huge","title":"{}"}}"#, "x".repeat(20 << 20)).into_bytes(),
        format!(r#"{{"note_id":"tags","title":"t","hashtags":[{}]}}"#, vec![r#""h""#; 500_000].join(",")).into_bytes(),
        br#"{"note_id":"typo","title":"t","catgory":"travel"}"#.to_vec(),
        b"{\"note_id\":\"latin1\",\"title\":\"caf\xe9\"}".to_vec(),
        format!(r#"{{"note_id":"long","title":"{}"}}"#, "y".repeat(1_001)).into_bytes(),
        br#"{"note_id":"ok-2","title":"another good note"}"#.to_vec(),
    ];
    lines.push(Vec::new());
    std::fs::write(&file, lines.join(&b'\n')).unwrap();
    let run = |policy: &str| {
        let data = tempfile::tempdir_in(dir.path()).unwrap();
        let args = ["ingest", file.to_str().unwrap(), "--model", &model, "--on-error", policy];
        let o = notellm(&args, "", &[("NOTELLM_DATA_DIR", data.path().to_str().unwrap())]);
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (ok, err) = run("skip");
    assert!(ok, "{err}");
    assert!(err.contains("2 created, 0 updated, 0 unchanged, 5 malformed lines skipped"), "{err}");
    for (line, why) in [
        (2, "longer than"),
        (3, "longer than"),
        (4, "unknown field `catgory`"),
        (5, "not UTF-8"),
        (6, "title is over 1000 characters"),
    ] {
        assert!(err.contains(&format!("line {line}: ")) && err.contains(why), "line {line} ({why}): {err}");
    }
    let (ok, err) = run("reject");
    assert!(!ok);
    assert!(err.contains("line 2: longer than"), "{err}");
}
