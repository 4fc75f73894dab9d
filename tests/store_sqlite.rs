//! Store tests against a real SQLite file in a temporary directory: the shared conformance
//! suite, plus file layout, WAL, durability (drop without close; a writer process that aborts),
//! two handles writing one file, corrupt rows and migration bookkeeping.

mod store_common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use notellm_store as store;
use notellm_store::{content_hash, Change, Store, StoreError, StoreOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use store_common::{emb, id, mv, note, put};

async fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(None, dir.path()).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    (dir, store)
}

/// A raw connection to the store's file that can write rows the store would refuse.
async fn raw(dir: &Path) -> SqlitePool {
    let opts = SqliteConnectOptions::new()
        .filename(dir.join(store::SQLITE_FILE_NAME))
        .pragma("ignore_check_constraints", "ON");
    SqlitePoolOptions::new().max_connections(1).connect_with(opts).await.unwrap()
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (_dir, store) = fresh().await;
            store_common::$name(&store).await;
            store.close().await;
        }
    )*};
}

conformance!(
    round_trip,
    content_hash_and_replace,
    delete_and_changes,
    batch_put,
    scan_pagination,
    purge_tombstones,
    staging_and_promote,
    images,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_follower() {
    let (_dir, store) = fresh().await;
    store_common::concurrent_writers_and_follower(std::slice::from_ref(&store)).await;
}

/// Two handles on one file behave like two processes (`serve` + `ingest`): BEGIN IMMEDIATE and
/// the busy timeout serialise them without SQLITE_BUSY errors, and seqs stay gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handles_on_one_file() {
    let (dir, a) = fresh().await;
    let b = Store::connect(None, dir.path()).await.unwrap();
    store_common::concurrent_writers_and_follower(&[a, b]).await;
}

#[tokio::test]
async fn creates_data_dir_and_wal_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("nested/data");
    let store = Store::connect(Some(""), &data).await.unwrap();
    put(&store, &id("a"), &note(1), &emb(1, 8)).await;
    assert!(data.join("notellm.sqlite").is_file());
    assert!(data.join("notellm.sqlite-wal").is_file(), "WAL mode");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&raw(&data).await).await.unwrap();
    assert_eq!(mode, "wal");
    store.close().await;
}

#[tokio::test]
async fn stored_blob_is_little_endian_f32() {
    let (dir, store) = fresh().await;
    let e = emb(9, 64);
    put(&store, &id("a"), &note(1), &e).await;
    let (blob, dim): (Vec<u8>, i64) = sqlx::query_as("SELECT embedding, dim FROM notes WHERE note_id = 'a'")
        .fetch_one(&raw(dir.path()).await)
        .await
        .unwrap();
    let expected: Vec<u8> = e.as_slice().iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(blob, expected);
    assert_eq!(dim, 64);
}

/// Dropping the store without `close()` loses nothing that was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_drop_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let (seqs, before) = {
        let store = Store::connect(None, dir.path()).await.unwrap();
        let mut seqs = Vec::new();
        for i in 0..20 {
            seqs.push(put(&store, &id(&format!("n{i}")), &note(i), &emb(i, 24)).await);
        }
        seqs.push(store.delete_note(&id("n3")).await.unwrap().unwrap());
        let before = store.changes_since(0, 100).await.unwrap();
        drop(store);
        (seqs, before)
    };
    let store = Store::connect(None, dir.path()).await.unwrap();
    assert_eq!(store.max_seq().await.unwrap(), *seqs.last().unwrap());
    assert_eq!(store.count().await.unwrap(), 19);
    assert_eq!(store.changes_since(0, 100).await.unwrap(), before);
    let n5 = store.get_note(&id("n5")).await.unwrap().unwrap();
    assert_eq!(n5.note, note(5));
    assert_eq!(n5.content_hash, content_hash(&note(5)));
}

const CRASH_CHILD_ENV: &str = "NOTELLM_STORE_CRASH_CHILD_DIR";

/// A child process writes, prints each acknowledgement, then aborts (no close, no destructors).
/// Everything it acknowledged must be in the file when it is reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_process_abort() {
    if let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) {
        crash_child(Path::new(&dir)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = tokio::process::Command::new(exe)
        .args(["--exact", "acknowledged_writes_survive_process_abort", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CRASH_CHILD_ENV, dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "child should have aborted");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let acks: Vec<(&str, &str, i64)> = stdout
        .lines()
        // libtest's "test name ... " may precede the first ACK on its line.
        .filter_map(|l| l.find("ACK ").map(|i| &l[i + 4..]))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0], f[1], f[2].parse().unwrap())
        })
        .collect();
    assert!(
        acks.len() == 51,
        "child acknowledged {} writes, expected 51:\n{stdout}\n{}",
        acks.len(),
        String::from_utf8_lossy(&out.stderr)
    );

    let store = Store::connect(None, dir.path()).await.unwrap();
    let last = acks.iter().map(|a| a.2).max().unwrap();
    assert_eq!(store.max_seq().await.unwrap(), last);
    for (op, nid, seq) in &acks {
        let got = store.get_note(&id(nid)).await.unwrap();
        match *op {
            "put" if *nid != "n0" => assert_eq!(got.unwrap().seq, *seq),
            "put" => {}
            "del" => assert!(got.is_none(), "{nid} was deleted"),
            other => panic!("unknown ack {other}"),
        }
    }
    assert!(store.changes_since(0, 1000).await.unwrap().contains(&Change::Delete { id: id("n0"), seq: last }));
}

async fn crash_child(dir: &Path) -> ! {
    let ack = |op: &str, nid: &str, seq: i64| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ACK {op} {nid} {seq}");
        let _ = out.flush();
    };
    let store = Store::connect(None, dir).await.unwrap();
    for i in 0..40 {
        let nid = format!("n{i}");
        ack("put", &nid, put(&store, &id(&nid), &note(i), &emb(i, 32)).await);
    }
    let ids: Vec<_> = (40..50).map(|i| id(&format!("n{i}"))).collect();
    let notes: Vec<_> = (40..50).map(note).collect();
    let hashes: Vec<_> = notes.iter().map(content_hash).collect();
    let embs: Vec<_> = (40..50).map(|i| emb(i, 32)).collect();
    let version = mv();
    let batch: Vec<_> = (0..10)
        .map(|k| store::NoteWrite {
            id: &ids[k],
            note: &notes[k],
            content_hash: &hashes[k],
            embedding: &embs[k],
            model_version: &version,
            image: None,
        })
        .collect();
    for (k, seq) in store.put_notes(&batch).await.unwrap().into_iter().enumerate() {
        ack("put", ids[k].as_str(), seq);
    }
    ack("del", "n0", store.delete_note(&id("n0")).await.unwrap().unwrap());
    std::process::abort();
}

/// Rows the store could not have written come back as typed `Corrupt` errors, never panics.
#[tokio::test]
async fn corrupt_rows_are_typed_errors() {
    let (dir, store) = fresh().await;
    for i in 0..4 {
        put(&store, &id(&format!("n{i}")), &note(i), &emb(i, 8)).await;
    }
    let raw = raw(dir.path()).await;
    let corrupt = |r: Result<_, StoreError>, what: &str| match r {
        Err(e @ StoreError::Corrupt { .. }) => {
            assert_eq!(e.kind(), "corrupt");
            e.to_string()
        }
        Err(e) => panic!("{what}: expected Corrupt, got {e}"),
        Ok(_) => panic!("{what}: expected Corrupt, got Ok"),
    };

    // Wrong blob length for the stored dim.
    sqlx::query("UPDATE notes SET embedding = x'0102' WHERE note_id = 'n0'").execute(&raw).await.unwrap();
    let msg = corrupt(store.get_embedding(&id("n0")).await.map(|_| ()), "get_embedding");
    assert!(msg.contains("n0") && msg.contains("2 bytes"), "{msg}");
    corrupt(store.get_note(&id("n0")).await.map(|_| ()), "get_note");
    corrupt(store.scan_embeddings(None, 10).await.map(|_| ()), "scan");
    corrupt(store.changes_since(0, 10).await.map(|_| ()), "changes_since");

    // Non-finite values.
    sqlx::query("UPDATE notes SET embedding = $1, dim = 1 WHERE note_id = 'n0'")
        .bind(f32::NAN.to_le_bytes().to_vec())
        .execute(&raw)
        .await
        .unwrap();
    corrupt(store.get_embedding(&id("n0")).await.map(|_| ()), "NaN embedding");

    // Hashtags that are not a JSON array: the full note fails, the hot path does not care.
    sqlx::query("UPDATE notes SET hashtags = '{oops' WHERE note_id = 'n1'").execute(&raw).await.unwrap();
    corrupt(store.get_note(&id("n1")).await.map(|_| ()), "hashtags");
    assert!(store.get_embedding(&id("n1")).await.unwrap().is_some());

    // An id the API would never accept.
    sqlx::query("UPDATE notes SET note_id = 'bad id' WHERE note_id = 'n2'").execute(&raw).await.unwrap();
    let msg = corrupt(store.scan_embeddings(Some(&id("a")), 10).await.map(|_| ()), "bad id");
    assert!(msg.contains("bad id"), "{msg}");

    // The healthy note is still served.
    assert!(store.get_note(&id("n3")).await.unwrap().is_some());
}

#[tokio::test]
async fn migrate_is_idempotent_and_guards_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions::default();
    let first = store::migrate(None, dir.path(), &opts).await.unwrap();
    assert_eq!((first.backend, first.applied_now.clone(), first.latest), ("sqlite", vec![1, 2, 3], 3));
    let again = store::migrate(None, dir.path(), &opts).await.unwrap();
    assert!(again.applied_now.is_empty());

    // A database migrated by a newer binary is refused rather than misused.
    let pool = raw(dir.path()).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (999, 'from the future', 1, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let err = Store::connect(None, dir.path()).await.unwrap_err();
    assert!(matches!(err, StoreError::Migrate(_)), "{err}");
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 999").execute(&pool).await.unwrap();

    // An edited migration is refused too (checksum mismatch).
    sqlx::query("UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 1").execute(&pool).await.unwrap();
    let err = Store::connect(None, dir.path()).await.unwrap_err();
    assert!(matches!(err, StoreError::Migrate(_)), "{err}");
}

#[tokio::test]
async fn rejects_unusable_urls_and_options() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["mysql://root:secret@localhost/db", "sqlite::memory:"] {
        let err = Store::connect(Some(url), dir.path()).await.unwrap_err();
        assert!(matches!(err, StoreError::Config(_)), "{url}: {err}");
        assert!(!err.to_string().contains("secret"));
    }
    let opts = StoreOptions { min_connections: 5, max_connections: 2, ..Default::default() };
    let err = Store::connect_with(None, dir.path(), &opts).await.unwrap_err();
    assert_eq!(err.kind(), "config");

    // An explicit sqlite: URL works like the default file.
    let file = dir.path().join("explicit.db");
    let url = format!("sqlite://{}?mode=rwc", file.display());
    let store = Store::connect(Some(&url), dir.path()).await.unwrap();
    put(&store, &id("a"), &note(1), &emb(1, 4)).await;
    assert!(file.is_file());
    store.close().await;
}

#[tokio::test]
async fn busy_file_times_out_as_db_error() {
    let (dir, store) = fresh().await;
    // Another process holds the write lock: a write waits busy_timeout, then fails cleanly.
    let other = raw(dir.path()).await;
    let mut conn = other.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.unwrap();
    let opts = StoreOptions { busy_timeout: Duration::from_millis(200), ..Default::default() };
    let impatient = Store::connect_with(None, dir.path(), &opts).await;
    // Connecting may itself wait on the lock (migration bookkeeping); either way no panic.
    if let Ok(impatient) = impatient {
        let err = impatient.put_note(&id("a"), &note(1), &content_hash(&note(1)), &emb(1, 4), &mv()).await.unwrap_err();
        assert_eq!(err.kind(), "db", "{err}");
    }
    sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
    drop(conn);
    // Reads were never blocked, and the original store writes again once the lock is gone.
    assert_eq!(store.count().await.unwrap(), 0);
    put(&store, &id("b"), &note(2), &emb(2, 4)).await;
}
