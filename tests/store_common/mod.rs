//! The store conformance suite, shared by `store_sqlite.rs` and `store_postgres.rs`: every
//! function takes a freshly migrated, empty [`Store`] and checks one behaviour of the contract.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use notellm_note::{Embedding, ModelVersion, Note, NoteId};
use notellm_store::{content_hash, content_hash_with_image, Change, NoteWrite, Store, StoreError, StoredImage};

pub fn id(s: &str) -> NoteId {
    NoteId::parse(s).unwrap()
}

pub fn mv() -> ModelVersion {
    ModelVersion("test-model-v1".into())
}

pub fn note(i: u64) -> Note {
    Note {
        title: format!("title {i}"),
        content: format!("content of note {i}, with ünïcödé and 'quotes'"),
        hashtags: vec![format!("tag{i}"), "common".into()],
        category: (i % 2 == 0).then(|| format!("cat{}", i % 5)),
    }
}

/// A deterministic pseudo-random unit vector (xorshift).
pub fn emb(seed: u64, dim: usize) -> Embedding {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Embedding::normalised(v).unwrap()
}

pub fn assert_close(a: &Embedding, b: &Embedding) {
    assert_eq!(a.dim(), b.dim());
    for (x, y) in a.as_slice().iter().zip(b.as_slice()) {
        assert!((x - y).abs() <= 1e-6, "{x} vs {y}");
    }
}

pub async fn put(store: &Store, i: &NoteId, n: &Note, e: &Embedding) -> i64 {
    store.put_note(i, n, &content_hash(n), e, &mv()).await.unwrap()
}

/// put/get round trip, the hot-path lookup, counters and unknown ids.
pub async fn round_trip(store: &Store) {
    assert_eq!(store.max_seq().await.unwrap(), 0);
    assert_eq!(store.count().await.unwrap(), 0);
    let a = id("note:a-1.x");
    let n = note(7);
    // Exactly representable unit vector: renormalising on read cannot move a bit.
    let e = Embedding::normalised(vec![0.5, -0.5, 0.5, -0.5]).unwrap();
    let seq = put(store, &a, &n, &e).await;
    assert_eq!(seq, 1);

    let got = store.get_note(&a).await.unwrap().expect("stored note");
    assert_eq!(got.id, a);
    assert_eq!(got.note, n);
    assert_eq!(got.content_hash, content_hash(&n));
    assert_eq!(got.model_version, mv());
    assert_eq!(got.seq, 1);
    assert_eq!(got.created_at, got.updated_at);
    let bits = |e: &Embedding| e.as_slice().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got.embedding), bits(&e));

    let (e2, v2) = store.get_embedding(&a).await.unwrap().expect("embedding");
    assert_eq!(bits(&e2), bits(&e));
    assert_eq!(v2, mv());

    // A generic vector survives within float tolerance (the store renormalises on read).
    let b = id("b");
    let eb = emb(3, 384);
    put(store, &b, &note(3), &eb).await;
    assert_close(&store.get_embedding(&b).await.unwrap().unwrap().0, &eb);

    assert_eq!(store.count().await.unwrap(), 2);
    assert_eq!(store.max_seq().await.unwrap(), 2);
    store.ping().await.unwrap();

    let unknown = id("nope");
    assert!(store.get_note(&unknown).await.unwrap().is_none());
    assert!(store.get_embedding(&unknown).await.unwrap().is_none());
    assert!(store.content_hash(&unknown).await.unwrap().is_none());
    assert_eq!(store.delete_note(&unknown).await.unwrap(), None);
    assert_eq!(store.max_seq().await.unwrap(), 2, "a no-op delete takes no seq");
}

/// The content hash detects an unchanged re-PUT; a changed one replaces the row.
pub async fn content_hash_and_replace(store: &Store) {
    let a = id("a");
    let n1 = note(1);
    let s1 = put(store, &a, &n1, &emb(1, 16)).await;
    assert_eq!(store.content_hash(&a).await.unwrap(), Some(content_hash(&n1)));
    assert_eq!(store.content_hash(&a).await.unwrap(), Some(content_hash(&n1.clone())));
    let first = store.get_note(&a).await.unwrap().unwrap();

    tokio::time::sleep(Duration::from_millis(5)).await;
    let n2 = Note { hashtags: vec!["other".into()], category: None, ..n1.clone() };
    assert_ne!(content_hash(&n1), content_hash(&n2));
    let e2 = emb(2, 16);
    let new_mv = ModelVersion("test-model-v2".into());
    let s2 = store.put_note(&a, &n2, &content_hash(&n2), &e2, &new_mv).await.unwrap();
    assert!(s2 > s1);

    let got = store.get_note(&a).await.unwrap().unwrap();
    assert_eq!(got.note, n2);
    assert_eq!(got.content_hash, content_hash(&n2));
    assert_eq!(got.model_version, new_mv);
    assert_eq!(got.seq, s2);
    assert_close(&got.embedding, &e2);
    assert_eq!(got.created_at, first.created_at, "created_at survives a replace");
    assert!(got.updated_at > first.updated_at);
    assert_eq!(store.count().await.unwrap(), 1);
    let changes = store.changes_since(0, 100).await.unwrap();
    assert_eq!(changes.len(), 1, "one entry per note: its latest state");
    assert!(matches!(&changes[0], Change::Upsert { seq, model_version, .. }
        if *seq == s2 && *model_version == new_mv));
}

/// Deletes leave tombstones that changes_since replays; a re-put clears them.
pub async fn delete_and_changes(store: &Store) {
    let (a, b, c) = (id("a"), id("b"), id("c"));
    let sa = put(store, &a, &note(1), &emb(1, 8)).await;
    let sb = put(store, &b, &note(2), &emb(2, 8)).await;
    let sc = put(store, &c, &note(3), &emb(3, 8)).await;
    assert_eq!((sa, sb, sc), (1, 2, 3));

    let sd = store.delete_note(&b).await.unwrap().expect("b existed");
    assert_eq!(sd, 4);
    assert_eq!(store.delete_note(&b).await.unwrap(), None, "second delete is a no-op");
    assert!(store.get_note(&b).await.unwrap().is_none());
    assert!(store.get_embedding(&b).await.unwrap().is_none());
    assert!(store.content_hash(&b).await.unwrap().is_none());
    assert_eq!(store.count().await.unwrap(), 2);
    assert_eq!(store.max_seq().await.unwrap(), 4);

    let all = store.changes_since(0, 100).await.unwrap();
    let seqs: Vec<i64> = all.iter().map(Change::seq).collect();
    assert_eq!(seqs, vec![1, 3, 4]);
    assert!(matches!(&all[2], Change::Delete { id, seq: 4 } if *id == b));
    assert!(matches!(&all[0], Change::Upsert { id, .. } if *id == a));

    // After a snapshot at seq 3 only the delete is new.
    let after = store.changes_since(3, 100).await.unwrap();
    assert_eq!(after, vec![Change::Delete { id: b.clone(), seq: 4 }]);
    assert!(store.changes_since(4, 100).await.unwrap().is_empty());
    // Pagination by limit.
    assert_eq!(store.changes_since(0, 2).await.unwrap().len(), 2);
    assert!(store.changes_since(0, 0).await.unwrap().is_empty());

    // Re-creating b replaces its tombstone.
    let sb2 = put(store, &b, &note(22), &emb(22, 8)).await;
    assert_eq!(sb2, 5);
    let all = store.changes_since(0, 100).await.unwrap();
    assert_eq!(all.iter().map(Change::seq).collect::<Vec<_>>(), vec![1, 3, 5]);
    assert!(matches!(&all[2], Change::Upsert { id, .. } if *id == b));
    assert_eq!(store.get_note(&b).await.unwrap().unwrap().note, note(22));
}

/// A batch is one transaction with consecutive seqs; a repeated id keeps the later entry.
pub async fn batch_put(store: &Store) {
    assert!(store.put_notes(&[]).await.unwrap().is_empty());
    assert_eq!(store.max_seq().await.unwrap(), 0, "an empty batch takes no seq");
    let ids: Vec<NoteId> = ["x", "y", "z", "x"].into_iter().map(id).collect();
    let notes: Vec<Note> = (0..4).map(note).collect();
    let hashes: Vec<String> = notes.iter().map(content_hash).collect();
    let embs: Vec<Embedding> = (0..4).map(|i| emb(i, 32)).collect();
    let version = mv();
    let batch: Vec<NoteWrite<'_>> = (0..4)
        .map(|i| NoteWrite {
            id: &ids[i],
            note: &notes[i],
            content_hash: &hashes[i],
            embedding: &embs[i],
            model_version: &version,
            image: None,
        })
        .collect();
    let seqs = store.put_notes(&batch).await.unwrap();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(store.count().await.unwrap(), 3);
    let x = store.get_note(&ids[0]).await.unwrap().unwrap();
    assert_eq!((x.note, x.seq), (notes[3].clone(), 4));
    assert_close(&x.embedding, &embs[3]);
    let changes = store.changes_since(0, 10).await.unwrap();
    assert_eq!(changes.iter().map(Change::seq).collect::<Vec<_>>(), vec![2, 3, 4]);
}

/// Keyset pagination visits every note exactly once, in byte order of ids.
pub async fn scan_pagination(store: &Store) {
    let mut expected: Vec<NoteId> = (0..57u64).map(|i| id(&format!("n{:03}-{}", (i * 37) % 101, i))).collect();
    // Byte order, not a locale's: "A" < "_x" < "a-b" < "ab".
    expected.push(id("A"));
    expected.push(id("_x"));
    expected.push(id("a-b"));
    expected.push(id("ab"));
    for (k, n) in expected.iter().enumerate() {
        put(store, n, &note(k as u64), &emb(k as u64, 12)).await;
    }
    assert!(store.scan_embeddings(None, 0).await.unwrap().is_empty());
    let mut seen = Vec::new();
    let mut after: Option<NoteId> = None;
    loop {
        let page = store.scan_embeddings(after.as_ref(), 10).await.unwrap();
        assert!(page.len() <= 10);
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        for (n, e, v) in page {
            assert_eq!(v, mv());
            let k = expected.iter().position(|x| *x == n).unwrap();
            assert_close(&e, &emb(k as u64, 12));
            seen.push(n);
        }
    }
    let mut sorted = expected.clone();
    sorted.sort(); // Rust's Ord on NoteId is byte order
    assert_eq!(seen, sorted);
}

/// Concurrent writers: seqs are unique and gap-free, and a follower that only ever asks for
/// `changes_since(last seen seq)` while the writes are in flight ends with exactly the final
/// state, i.e. no change ever commits below a position a reader has already passed.
/// Writer `t` uses `stores[t % stores.len()]` (several handles = several replicas/processes
/// sharing one database); the follower uses `stores[0]`.
pub async fn concurrent_writers_and_follower(stores: &[Store]) {
    let store = &stores[0];
    const TASKS: u64 = 8;
    const WRITES: u64 = 25;
    const IDS: u64 = 30;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let follower = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut pos = 0i64;
            let mut state: BTreeMap<NoteId, (i64, Option<Embedding>)> = BTreeMap::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = store.changes_since(pos, 7).await.unwrap();
                for ch in &page {
                    assert!(ch.seq() > pos, "seq went backwards: {} after {pos}", ch.seq());
                    pos = ch.seq();
                    let value = match ch {
                        Change::Upsert { embedding, .. } => Some(embedding.clone()),
                        Change::Delete { .. } => None,
                    };
                    state.insert(ch.id().clone(), (ch.seq(), value));
                }
                if finished && page.is_empty() {
                    return state;
                }
                if page.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };

    let mut writers = Vec::new();
    for t in 0..TASKS {
        let store = stores[t as usize % stores.len()].clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new(); // (seq, id, Some(embedding seed) | None for delete)
            for w in 0..WRITES {
                let k = (t * 7 + w * 11) % IDS;
                let nid = id(&format!("c{k}"));
                if w % 4 == 3 {
                    if let Some(seq) = store.delete_note(&nid).await.unwrap() {
                        acked.push((seq, nid, None));
                    }
                } else {
                    let seed = t * 1000 + w;
                    let seq = put(&store, &nid, &note(seed), &emb(seed, 16)).await;
                    acked.push((seq, nid, Some(seed)));
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let followed = follower.await.unwrap();

    // Unique, gap-free seqs: 1..=max_seq, each acknowledged exactly once.
    acked.sort_by_key(|a| a.0);
    let max = store.max_seq().await.unwrap();
    assert_eq!(acked.iter().map(|a| a.0).collect::<Vec<_>>(), (1..=max).collect::<Vec<_>>());

    // The final state per id is its highest-seq acknowledged write.
    let mut truth: BTreeMap<NoteId, (i64, Option<u64>)> = BTreeMap::new();
    for (seq, nid, seed) in &acked {
        truth.insert(nid.clone(), (*seq, *seed));
    }
    let log = store.changes_since(0, 10_000).await.unwrap();
    let log_seqs: Vec<i64> = log.iter().map(Change::seq).collect();
    assert!(log_seqs.windows(2).all(|w| w[0] < w[1]), "log not in seq order");
    assert_eq!(log.len(), truth.len(), "one log entry per touched note");
    let ids: HashSet<&NoteId> = log.iter().map(Change::id).collect();
    assert_eq!(ids.len(), log.len());
    for ch in &log {
        let (seq, seed) = truth[ch.id()];
        assert_eq!(ch.seq(), seq, "{}", ch.id());
        match (ch, seed) {
            (Change::Upsert { embedding, .. }, Some(seed)) => assert_close(embedding, &emb(seed, 16)),
            (Change::Delete { .. }, None) => {}
            _ => panic!("wrong kind of change for {}", ch.id()),
        }
        let (fseq, fval) = &followed[ch.id()];
        assert_eq!(*fseq, seq, "follower missed a change of {}", ch.id());
        assert_eq!(fval.is_some(), seed.is_some());
    }
    assert_eq!(followed.len(), truth.len());
    let live = truth.values().filter(|(_, s)| s.is_some()).count() as u64;
    assert_eq!(store.count().await.unwrap(), live);
}

/// Purged tombstones make older positions unreplayable (a typed error), newer ones still work.
pub async fn purge_tombstones(store: &Store) {
    let (a, b) = (id("a"), id("b"));
    put(store, &a, &note(1), &emb(1, 4)).await;
    put(store, &b, &note(2), &emb(2, 4)).await;
    let del = store.delete_note(&a).await.unwrap().unwrap();
    assert_eq!(store.purge_tombstones(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(store.changes_since(0, 10).await.unwrap().len(), 2);

    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.purge_tombstones(Duration::ZERO).await.unwrap(), 1);
    match store.changes_since(0, 10).await {
        Err(e @ StoreError::ChangesPurged { since: 0, purged_through }) => {
            assert_eq!(purged_through, del);
            assert_eq!(e.kind(), "changes_purged");
        }
        other => panic!("expected ChangesPurged, got {other:?}"),
    }
    assert!(store.changes_since(del, 10).await.unwrap().is_empty());
    // The scan-then-follow protocol still works from the current position.
    let m = store.max_seq().await.unwrap();
    let s = put(store, &a, &note(3), &emb(3, 4)).await;
    assert_eq!(store.changes_since(m, 10).await.unwrap().iter().map(Change::seq).collect::<Vec<_>>(), vec![s]);
}

/// Re-index staging: vectors keyed by (note, version), current only for the seq they embedded;
/// the switch is all or nothing, renumbers the change sequence and records the new version,
/// after which only writes of that version are accepted.
pub async fn staging_and_promote(store: &Store) {
    use notellm_store::{StagedVector, Switch};
    let v2 = ModelVersion("test-model-v2".into());
    let ids: Vec<NoteId> = ["a", "b", "c"].into_iter().map(id).collect();
    let mut seqs = Vec::new();
    for (i, n) in ids.iter().enumerate() {
        seqs.push(put(store, n, &note(i as u64), &emb(i as u64, 8)).await);
    }
    let new: Vec<Embedding> = (0..3).map(|i| emb(100 + i, 6)).collect();
    let stage = |i: usize, seq: i64| StagedVector { id: &ids[i], embedding: &new[i], source_seq: seq };
    store.stage_vectors(&v2, &[stage(0, seqs[0]), stage(1, seqs[1])]).await.unwrap();
    let page = store.reindex_scan(None, i64::MAX, 10, &v2).await.unwrap();
    assert_eq!(page.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(page[1].note, note(1));
    assert_eq!(page[1].seq, seqs[1]);
    assert_close(page[0].staged.as_ref().unwrap(), &new[0]);
    assert!(page[2].staged.is_none());
    assert!(store.reindex_scan(None, i64::MAX, 10, &mv()).await.unwrap().iter().all(|n| n.staged.is_none()));
    assert_eq!(store.reindex_scan(Some(&ids[0]), i64::MAX, 1, &v2).await.unwrap()[0].id, ids[1]);
    // Bounded by seq: notes written after a scan began are left to the change log.
    let bounded = store.reindex_scan(None, seqs[1], 10, &v2).await.unwrap();
    assert_eq!(bounded.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);

    let switch = Switch { model_version: &v2, model_dir: "/models/v2", previous_version: &mv(), switch_token: "t1" };
    // One note without a vector of v2: nothing changes.
    let err = store.promote(&switch).await.unwrap_err();
    assert!(matches!(err, StoreError::Incomplete { missing: 1, .. }), "{err}");
    assert_eq!(store.get_note(&ids[0]).await.unwrap().unwrap().model_version, mv());
    assert!(store.active_model().await.unwrap().is_none());

    // A vector staged before its note was written again is stale.
    store.stage_vectors(&v2, &[stage(2, seqs[2])]).await.unwrap();
    let rewritten = put(store, &ids[0], &note(10), &emb(10, 8)).await;
    assert!(store.reindex_note(&ids[0], &v2).await.unwrap().unwrap().staged.is_none());
    assert!(matches!(store.promote(&switch).await, Err(StoreError::Incomplete { missing: 1, .. })));
    store.stage_vectors(&v2, &[stage(0, rewritten)]).await.unwrap();
    let a = store.reindex_note(&ids[0], &v2).await.unwrap().unwrap();
    assert_eq!((a.note, a.seq), (note(10), rewritten));
    assert!(store.reindex_note(&id("nope"), &v2).await.unwrap().is_none());

    // A note deleted after its vector was staged does not hold up the switch.
    let d = id("d");
    let sd = put(store, &d, &note(4), &emb(4, 8)).await;
    store.stage_vectors(&v2, &[StagedVector { id: &d, embedding: &new[1], source_seq: sd }]).await.unwrap();
    assert!(store.reindex_note(&d, &v2).await.unwrap().unwrap().staged.is_some());
    store.delete_note(&d).await.unwrap().unwrap();
    assert!(store.reindex_note(&d, &v2).await.unwrap().is_none());
    store.unstage(&d).await.unwrap();

    let before = store.max_seq().await.unwrap();
    let promoted = store.promote(&switch).await.unwrap();
    assert_eq!((promoted.notes, promoted.max_seq), (3, before + 3));
    assert_eq!(store.max_seq().await.unwrap(), before + 3);
    for (i, n) in ids.iter().enumerate() {
        let got = store.get_note(n).await.unwrap().unwrap();
        assert_eq!(got.model_version, v2);
        assert_close(&got.embedding, &new[i]);
        assert!(got.seq > before);
        let (e, v) = store.get_embedding(n).await.unwrap().unwrap();
        assert_eq!((e.dim(), v), (6, v2.clone()));
    }
    // Every row is a change after the old position, in the old order: a follower or a stale
    // snapshot of the old version replays them all.
    let changes = store.changes_since(before, 100).await.unwrap();
    assert_eq!(changes.iter().map(Change::seq).collect::<Vec<_>>(), ((before + 1)..=(before + 3)).collect::<Vec<_>>());
    assert_eq!(changes.iter().map(|c| c.id().as_str()).collect::<Vec<_>>(), ["b", "c", "a"]);
    assert!(changes.iter().all(|c| matches!(c, Change::Upsert { model_version, .. } if *model_version == v2)));
    assert!(
        store.reindex_scan(None, i64::MAX, 10, &v2).await.unwrap().iter().all(|n| n.staged.is_none()),
        "staging emptied"
    );
    let active = store.active_model().await.unwrap().unwrap();
    assert_eq!(active.model_version, v2);
    assert_eq!(active.previous_version, mv());
    assert_eq!(active.model_dir, std::path::PathBuf::from("/models/v2"));
    assert_eq!(active.switch_token, "t1");
    assert!(active.switched_at.elapsed().unwrap() < Duration::from_secs(600));

    // After the switch only vectors of the version it made active are written: a put embedded
    // by the replaced model (a process that has not followed the switch) is refused whole and
    // takes no seq, a new note or an update alike, and a batch with one such write is refused.
    let switched = store.max_seq().await.unwrap();
    let (v1, e_id, e_note) = (mv(), id("e"), note(5));
    let (e_hash, e6, stale_e) = (content_hash(&e_note), emb(5, 6), emb(5, 8));
    for target in [&e_id, &ids[1]] {
        match store.put_note(target, &e_note, &e_hash, &stale_e, &v1).await {
            Err(StoreError::StaleModelVersion { written, active }) => {
                assert_eq!((written, active), (v1.0.clone(), v2.0.clone()));
            }
            other => panic!("a put of the replaced version after the switch: {other:?}"),
        }
    }
    let stale = StoreError::StaleModelVersion { written: v1.0.clone(), active: v2.0.clone() };
    assert_eq!(stale.kind(), "stale_model_version");
    let write = |id, embedding, model_version| NoteWrite {
        id,
        note: &e_note,
        content_hash: &e_hash,
        embedding,
        model_version,
        image: None,
    };
    let mixed = [write(&e_id, &e6, &v2), write(&ids[2], &stale_e, &v1)];
    assert!(matches!(store.put_notes(&mixed).await, Err(StoreError::StaleModelVersion { .. })));
    assert_eq!(store.max_seq().await.unwrap(), switched, "a refused put takes no seq");
    assert!(store.get_note(&e_id).await.unwrap().is_none(), "nothing of a refused batch is written");
    assert_eq!(store.get_note(&ids[1]).await.unwrap().unwrap().model_version, v2);
    assert_eq!(store.get_note(&ids[2]).await.unwrap().unwrap().model_version, v2);
    // A put of the active version is written, with a seq above the switch's.
    let e_seq = store.put_note(&e_id, &e_note, &e_hash, &e6, &v2).await.unwrap();
    assert!(e_seq > before + 3);
    assert_eq!(store.get_note(&e_id).await.unwrap().unwrap().model_version, v2);
    // A switch of an empty staging back is refused; the record is replaced by the next switch.
    let back = Switch { model_version: &mv(), model_dir: "/models/v1", previous_version: &v2, switch_token: "t2" };
    assert!(matches!(store.promote(&back).await, Err(StoreError::Incomplete { missing: 4, .. })));
    assert_eq!(store.active_model().await.unwrap().unwrap().switch_token, "t1");

    // A switch under a hold (`hold_for_switch`, which a re-index takes before its last catch-up):
    // on Postgres a put from another connection waits for it, then is refused as of the version
    // it replaced; SQLite holds nothing, so the put commits first and the switch finds its note
    // without a staged vector, changing nothing.
    let v3 = ModelVersion("test-model-v3".into());
    let current = store.reindex_scan(None, i64::MAX, 10, &v3).await.unwrap();
    let v3_embs: Vec<Embedding> = (0..current.len() as u64).map(|i| emb(200 + i, 6)).collect();
    let staged: Vec<StagedVector<'_>> = current
        .iter()
        .zip(&v3_embs)
        .map(|(n, e)| StagedVector { id: &n.id, embedding: e, source_seq: n.seq })
        .collect();
    store.stage_vectors(&v3, &staged).await.unwrap();
    let third = Switch { model_version: &v3, model_dir: "/models/v3", previous_version: &v2, switch_token: "t3" };
    let hold = store.hold_for_switch().await.unwrap();
    let racer = {
        let (store, v2) = (store.clone(), v2.clone());
        tokio::spawn(async move {
            let n = note(6);
            store.put_note(&id("f"), &n, &content_hash(&n), &emb(6, 6), &v2).await
        })
    };
    if store.backend() == "postgres" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!racer.is_finished(), "a put waits for a held switch");
        let promoted = store.promote_held(hold, &third).await.unwrap();
        assert_eq!(promoted.notes, 4);
        match racer.await.unwrap() {
            Err(StoreError::StaleModelVersion { written, active }) => {
                assert_eq!((written, active), (v2.0.clone(), v3.0.clone()));
            }
            other => panic!("a put of the replaced version that waited for the switch: {other:?}"),
        }
        assert_eq!(store.max_seq().await.unwrap(), promoted.max_seq, "the refused put took no seq");
        assert!(store.get_note(&id("f")).await.unwrap().is_none());
    } else {
        racer.await.unwrap().unwrap();
        let err = store.promote_held(hold, &third).await.unwrap_err();
        assert!(matches!(err, StoreError::Incomplete { missing: 1, .. }), "{err}");
        assert_eq!(store.active_model().await.unwrap().unwrap().switch_token, "t1");
    }
}

/// A note's image: written with the note, read back whole, found by its hash for reuse,
/// replaced or removed by the next write of the note, removed by its delete; a re-index read
/// names it; the content hash of a note with an image is another than without.
pub async fn images(store: &Store) {
    let (a, b) = (id("img-a"), id("img-b"));
    let n = note(3);
    let image = |hash: &str, fill: u8| StoredImage {
        image_hash: hash.repeat(32),
        encoder: "encoder-fp-1".into(),
        tokens: 3,
        width: 4,
        features: (0..24).map(|i| fill.wrapping_add(i)).collect(),
    };
    let first = image("ab", 1);
    let plain = content_hash(&n);
    let with = content_hash_with_image(&n, Some(&first.image_hash));
    assert_ne!(plain, with);
    assert_eq!(plain, content_hash_with_image(&n, None));
    let e = emb(3, 32);
    let version = mv();
    let write =
        |id, image| NoteWrite { id, note: &n, content_hash: &with, embedding: &e, model_version: &version, image };
    store.put_notes(&[write(&a, Some(&first))]).await.unwrap();
    assert_eq!(store.image(&a).await.unwrap(), Some(first.clone()));
    let stored = store.get_note(&a).await.unwrap().unwrap();
    assert_eq!(stored.image_hash.as_deref(), Some(first.image_hash.as_str()));
    assert_eq!(stored.content_hash, with);
    assert_eq!(store.image_by_hash("encoder-fp-1", &first.image_hash).await.unwrap(), Some(first.clone()));
    assert_eq!(store.image_by_hash("another-encoder", &first.image_hash).await.unwrap(), None);
    assert_eq!(store.image_encoders().await.unwrap(), vec![("encoder-fp-1".to_owned(), 1)]);
    let scanned = store.reindex_note(&a, &ModelVersion("next".into())).await.unwrap().unwrap();
    assert_eq!(scanned.image_hash.as_deref(), Some(first.image_hash.as_str()));

    // A second note with its own image; then a's image is replaced, then removed.
    let second = image("cd", 9);
    store.put_notes(&[write(&b, Some(&second))]).await.unwrap();
    assert_eq!(store.image_encoders().await.unwrap(), vec![("encoder-fp-1".to_owned(), 2)]);
    store.put_notes(&[write(&a, Some(&second))]).await.unwrap();
    assert_eq!(store.image(&a).await.unwrap(), Some(second.clone()));
    assert_eq!(store.image_by_hash("encoder-fp-1", &first.image_hash).await.unwrap(), None);
    store.put_notes(&[write(&a, None)]).await.unwrap();
    assert_eq!(store.image(&a).await.unwrap(), None);
    assert_eq!(store.get_note(&a).await.unwrap().unwrap().image_hash, None);
    assert_eq!(store.reindex_note(&a, &version).await.unwrap().unwrap().image_hash, None);

    // Features that do not fill their shape are refused, and nothing of that write lands.
    let bad = StoredImage { features: vec![0; 23], ..image("ef", 0) };
    let before = store.max_seq().await.unwrap();
    assert!(store.put_notes(&[write(&a, Some(&bad))]).await.is_err());
    assert_eq!(store.max_seq().await.unwrap(), before);
    assert_eq!(store.image(&a).await.unwrap(), None);

    store.delete_note(&b).await.unwrap().unwrap();
    assert_eq!(store.image(&b).await.unwrap(), None);
    assert!(store.image_encoders().await.unwrap().is_empty());
}
