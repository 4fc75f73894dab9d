//! Store tests against a real Postgres: `TEST_DATABASE_URL`, else a postgres `DATABASE_URL`,
//! else `postgres://postgres@127.0.0.1:5432/test`. Each test works in its own schema
//! (`nl_test_<random>`, dropped at the end, even when the test fails), so tests run in parallel.
//! Without a reachable database the tests skip with a message, except under `CI`, where they fail.

mod store_common;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notellm_store as store;
use notellm_store::{Store, StoreError, StoreOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use store_common::{emb, id, note, put};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// One test's database: the server URL and a private schema.
struct Fixture {
    url: String,
    schema: String,
    admin: PgPool,
}

impl Fixture {
    fn opts(&self) -> StoreOptions {
        StoreOptions { schema: Some(self.schema.clone()), max_connections: 12, ..Default::default() }
    }

    async fn store(&self) -> Store {
        let store = Store::connect_with(Some(&self.url), Path::new("unused"), &self.opts()).await.unwrap();
        assert_eq!(store.backend(), "postgres");
        store
    }

    /// A raw pool inside the test schema, for writing rows the store would refuse.
    async fn raw(&self) -> PgPool {
        let opts: PgConnectOptions = self.url.parse().unwrap();
        let opts = opts.options([("search_path", &self.schema)]);
        PgPoolOptions::new().max_connections(1).connect_with(opts).await.unwrap()
    }
}

fn database_url() -> String {
    let pg = |v: String| v.starts_with("postgres://") || v.starts_with("postgresql://");
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| std::env::var("DATABASE_URL").ok().filter(|v| pg(v.clone())))
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

/// Runs `body` against a fresh schema, then drops the schema, then re-raises any panic.
async fn with_pg<F, Fut>(body: F)
where
    F: FnOnce(Arc<Fixture>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let url = database_url();
    let admin =
        match PgPoolOptions::new().max_connections(2).acquire_timeout(Duration::from_secs(5)).connect(&url).await {
            Ok(pool) => pool,
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("CI is set but Postgres is unreachable (set TEST_DATABASE_URL): {e}")
            }
            Err(e) => {
                eprintln!("skipping Postgres store test: database unreachable ({e}); set TEST_DATABASE_URL");
                return;
            }
        };
    let schema = format!("nl_test_{:016x}", rand::random::<u64>());
    let fx = Arc::new(Fixture { url, schema: schema.clone(), admin: admin.clone() });
    let outcome = tokio::spawn(body(fx)).await;
    let dropped = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&admin).await;
    admin.close().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
    dropped.unwrap();
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            with_pg(|fx| async move {
                let store = fx.store().await;
                store_common::$name(&store).await;
                store.close().await;
            })
            .await;
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

/// Two handles (two replicas) share the schema and write concurrently (8 tasks x 25 writes over
/// 12 + 12 connections) while the first also follows the change log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_follower() {
    with_pg(|fx| async move {
        let stores = vec![fx.store().await, fx.store().await];
        store_common::concurrent_writers_and_follower(&stores).await;
        for s in stores {
            s.close().await;
        }
    })
    .await;
}

#[tokio::test]
async fn stored_blob_is_little_endian_f32() {
    with_pg(|fx| async move {
        let store = fx.store().await;
        let e = emb(9, 64);
        put(&store, &id("a"), &note(1), &e).await;
        let (blob, dim): (Vec<u8>, i32) = sqlx::query_as("SELECT embedding, dim FROM notes WHERE note_id = 'a'")
            .fetch_one(&fx.raw().await)
            .await
            .unwrap();
        let expected: Vec<u8> = e.as_slice().iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(blob, expected);
        assert_eq!(dim, 64);
        store.close().await;
    })
    .await;
}

/// Rows the store could not have written come back as typed `Corrupt` errors, never panics.
#[tokio::test]
async fn corrupt_rows_are_typed_errors() {
    with_pg(|fx| async move {
        let store = fx.store().await;
        for i in 0..3 {
            put(&store, &id(&format!("n{i}")), &note(i), &emb(i, 8)).await;
        }
        let raw = fx.raw().await;
        // The schema's CHECK refuses a wrong length; drop it to simulate a foreign writer.
        let refused = sqlx::query("UPDATE notes SET embedding = '\\x0102' WHERE note_id = 'n0'").execute(&raw).await;
        assert!(refused.is_err(), "CHECK constraint should refuse a short blob");
        sqlx::query("ALTER TABLE notes DROP CONSTRAINT notes_embedding_len").execute(&raw).await.unwrap();
        sqlx::query("UPDATE notes SET embedding = '\\x0102' WHERE note_id = 'n0'").execute(&raw).await.unwrap();
        let expect_corrupt = |r: Result<(), StoreError>, what: &str| match r {
            Err(e @ StoreError::Corrupt { .. }) => assert!(e.to_string().contains("n0"), "{e}"),
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        };
        expect_corrupt(store.get_embedding(&id("n0")).await.map(|_| ()), "get_embedding");
        expect_corrupt(store.get_note(&id("n0")).await.map(|_| ()), "get_note");
        expect_corrupt(store.scan_embeddings(None, 10).await.map(|_| ()), "scan");
        expect_corrupt(store.changes_since(0, 10).await.map(|_| ()), "changes_since");

        sqlx::query("UPDATE notes SET hashtags = 'nope' WHERE note_id = 'n1'").execute(&raw).await.unwrap();
        assert!(matches!(store.get_note(&id("n1")).await, Err(StoreError::Corrupt { .. })));
        assert!(store.get_embedding(&id("n1")).await.unwrap().is_some());
        assert!(store.get_note(&id("n2")).await.unwrap().is_some());
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn migrate_is_idempotent() {
    with_pg(|fx| async move {
        let dir = Path::new("unused");
        let first = store::migrate(Some(&fx.url), dir, &fx.opts()).await.unwrap();
        assert_eq!((first.backend, first.applied_now.clone(), first.latest), ("postgres", vec![1, 2, 3], 3));
        let again = store::migrate(Some(&fx.url), dir, &fx.opts()).await.unwrap();
        assert!(again.applied_now.is_empty());
        // The tables live in the test schema, not in public.
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = $1 AND table_name IN ('notes', 'note_tombstones', 'notellm_seq')",
        )
        .bind(&fx.schema)
        .fetch_one(&fx.admin)
        .await
        .unwrap();
        assert_eq!(n, 3);
    })
    .await;
}

/// Replicas starting together on a fresh schema apply the migration exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_connects_migrate_once() {
    with_pg(|fx| async move {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let fx = fx.clone();
                tokio::spawn(async move { store::migrate(Some(&fx.url), Path::new("x"), &fx.opts()).await })
            })
            .collect();
        let mut applied = 0;
        for t in tasks {
            applied += t.await.unwrap().unwrap().applied_now.len();
        }
        assert_eq!(applied, 3, "each of the three migrations applied once");
    })
    .await;
}

/// Needs no server: a refused connection is a `Db` error, a bad schema name a `Config` error.
#[tokio::test]
async fn connect_failures_are_typed() {
    let opts = StoreOptions { acquire_timeout: Duration::from_secs(2), ..Default::default() };
    let err =
        Store::connect_with(Some("postgres://postgres:pw@127.0.0.1:1/none"), Path::new("x"), &opts).await.unwrap_err();
    assert_eq!(err.kind(), "db", "{err}");
    assert!(!err.to_string().contains("pw@"));
    let bad = StoreOptions { schema: Some("x; DROP SCHEMA public".into()), ..Default::default() };
    let err = Store::connect_with(Some(DEFAULT_URL), Path::new("x"), &bad).await.unwrap_err();
    assert_eq!(err.kind(), "config");
}

/// The commit-order guarantee, made deterministic: a transaction that has taken seq N but not
/// committed (a slow writer) holds back every later write, so no reader can see N+1 before N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_writer_waits_for_earlier_seq() {
    with_pg(|fx| async move {
        let store = fx.store().await;
        put(&store, &id("a"), &note(1), &emb(1, 4)).await;
        let raw = fx.raw().await;
        let mut slow = raw.begin().await.unwrap();
        let held: i64 = sqlx::query_scalar("UPDATE notellm_seq SET seq = seq + 1 WHERE id = 1 RETURNING seq")
            .fetch_one(&mut *slow)
            .await
            .unwrap();
        assert_eq!(held, 2);
        let fast = {
            let store = store.clone();
            tokio::spawn(async move { put(&store, &id("b"), &note(2), &emb(2, 4)).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!fast.is_finished(), "a later writer committed while seq 2 was in flight");
        assert_eq!(store.max_seq().await.unwrap(), 1);
        assert_eq!(store.changes_since(1, 10).await.unwrap(), vec![]);
        // The slow writer aborts: its number is reused, so the log stays gap-free.
        slow.rollback().await.unwrap();
        assert_eq!(fast.await.unwrap(), 2);
        let seqs: Vec<i64> = store.changes_since(0, 10).await.unwrap().iter().map(|c| c.seq()).collect();
        assert_eq!(seqs, vec![1, 2]);
        store.close().await;
    })
    .await;
}

async fn next(l: &mut sqlx::postgres::PgListener) -> (String, String) {
    let n = tokio::time::timeout(Duration::from_secs(5), l.recv()).await.expect("no notification").unwrap();
    (n.channel().to_owned(), n.payload().to_owned())
}

/// Every committed write announces its last seq on the store's channel, in commit order; a
/// write that rolls back (a delete of an unknown note) announces nothing; another schema's
/// writes go to another channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_writes_notify_their_seq() {
    with_pg(|fx| async move {
        let store = fx.store().await;
        let mut listener = sqlx::postgres::PgListener::connect(&fx.url).await.unwrap();
        let channel = store::changes_channel(Some(&fx.schema));
        assert_eq!(channel, format!("notellm_changes.{}", fx.schema));
        listener.listen(&channel).await.unwrap();
        listener.listen(&store::changes_channel(None)).await.unwrap();
        assert_eq!(put(&store, &id("a"), &note(1), &emb(1, 4)).await, 1);
        assert_eq!(next(&mut listener).await, (channel.clone(), "1".to_owned()));
        assert_eq!(put(&store, &id("b"), &note(2), &emb(2, 4)).await, 2);
        assert_eq!(next(&mut listener).await, (channel.clone(), "2".to_owned()));
        assert_eq!(store.delete_note(&id("nope")).await.unwrap(), None);
        assert_eq!(store.delete_note(&id("a")).await.unwrap(), Some(3));
        // The unknown note's rolled-back delete said nothing: the next one heard is seq 3.
        assert_eq!(next(&mut listener).await, (channel.clone(), "3".to_owned()));
        let quiet = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
        assert!(quiet.is_err(), "an extra notification: {quiet:?}");
        store.close().await;
    })
    .await;
}
