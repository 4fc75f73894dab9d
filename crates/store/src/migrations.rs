//! Schema migrations, embedded in the binary.
//!
//! The SQL lives in `migrations/postgres/` and `migrations/sqlite/` (the dialects differ) and is
//! compiled in with `include_str!`, because a deployed binary has no source tree and the
//! `sqlx::migrate!` macro needs sqlx's `macros` feature. The files are applied through sqlx's
//! own bookkeeping (the [`Migrate`] trait on a connection): the `_sqlx_migrations` table, SHA-384
//! checksums that refuse an edited migration, a refusal to run against a database migrated by a
//! newer binary, and (on Postgres) an advisory lock so that replicas starting together apply each
//! migration once. File names follow sqlx-cli (`<version>_<description>.sql`), so
//! `sqlx migrate run --source migrations/postgres` agrees with us.
//!
//! The short loop below replaces `Migrator::run`, whose future is not `Send` for every borrow
//! (its `Acquire<'a>` bound trips rustc's higher-ranked `Send` check), which would make
//! `Store::connect` unusable inside `tokio::spawn`.
//!
//! To add a migration: add the file to both directories and a line to both lists below; the unit
//! test checks that the lists and the directories match.

use std::borrow::Cow;

use serde::Serialize;
use sqlx::migrate::{Migrate, MigrateError, Migration, MigrationType};
use sqlx::pool::PoolConnection;
use sqlx::{Postgres, Sqlite};

use super::StoreError;

/// One embedded migration: version, description, SQL.
type Embedded = (i64, &'static str, &'static str);

pub(crate) const POSTGRES: &[Embedded] = &[
    (1, "init", include_str!("../../../migrations/postgres/0001_init.sql")),
    (2, "reindex", include_str!("../../../migrations/postgres/0002_reindex.sql")),
    (3, "images", include_str!("../../../migrations/postgres/0003_images.sql")),
];

pub(crate) const SQLITE: &[Embedded] = &[
    (1, "init", include_str!("../../../migrations/sqlite/0001_init.sql")),
    (2, "reindex", include_str!("../../../migrations/sqlite/0002_reindex.sql")),
    (3, "images", include_str!("../../../migrations/sqlite/0003_images.sql")),
];

/// What `notellm migrate` (or a connect) did to the schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// `"postgres"` or `"sqlite"`.
    pub backend: &'static str,
    /// Versions applied by this run (empty when the schema was already current).
    pub applied_now: Vec<i64>,
    /// The newest version this binary knows, which the schema is now at.
    pub latest: i64,
}

/// Applies the pending Postgres migrations over one dedicated connection.
pub(crate) async fn run_postgres(mut conn: PoolConnection<Postgres>) -> Result<MigrationReport, StoreError> {
    let result = apply_pending(&mut *conn, "postgres", POSTGRES).await;
    // The advisory lock is session-level and only released on success: never hand a failed
    // connection back to the pool.
    if result.is_err() {
        conn.close_on_drop();
    }
    result
}

/// Applies the pgvector backend's idempotent migration (`migrations/pgvector/vectors.sql`),
/// under the same advisory lock as the numbered ones, so that replicas starting together do not
/// race on `CREATE EXTENSION`.
pub(crate) async fn run_pgvector(mut conn: PoolConnection<Postgres>) -> Result<(), StoreError> {
    conn.lock().await?;
    let mut applied = Ok(());
    for statement in statements(super::pgvector::MIGRATION) {
        if let Err(e) = sqlx::query(&statement).execute(&mut *conn).await {
            applied = Err(e);
            break;
        }
    }
    match applied {
        Ok(_) => {
            conn.unlock().await?;
            Ok(())
        }
        Err(e) => {
            conn.close_on_drop();
            Err(StoreError::Config(format!(
                "the pgvector backend's migration failed ({e}); is the extension installed on the server \
                 (scripts/install_pgvector.sh) and may this role create it?"
            )))
        }
    }
}

/// The statements of a migration file: `;`-terminated, `--` comment lines dropped (the
/// pgvector file has no `;` inside a statement).
fn statements(sql: &str) -> Vec<String> {
    let code: String = sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    code.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Applies the pending SQLite migrations (each in its own transaction) over one connection.
pub(crate) async fn run_sqlite(mut conn: PoolConnection<Sqlite>) -> Result<MigrationReport, StoreError> {
    apply_pending(&mut *conn, "sqlite", SQLITE).await
}

/// sqlx's migrator loop: lock, check what is applied against what we carry, apply the rest.
async fn apply_pending<C: Migrate + Send>(
    conn: &mut C,
    backend: &'static str,
    set: &'static [Embedded],
) -> Result<MigrationReport, StoreError> {
    let known: Vec<Migration> = set
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(*version, Cow::Borrowed(*description), MigrationType::Simple, Cow::Borrowed(*sql), false)
        })
        .collect();
    // Postgres: pg_advisory_lock, taken before creating the bookkeeping table so that replicas
    // starting together on a fresh database do not race. SQLite: a no-op (writers serialise).
    conn.lock().await?;
    conn.ensure_migrations_table().await?;
    if let Some(version) = conn.dirty_version().await? {
        return Err(MigrateError::Dirty(version).into());
    }
    let applied = conn.list_applied_migrations().await?;
    for done in &applied {
        match known.iter().find(|m| m.version == done.version) {
            None => return Err(MigrateError::VersionMissing(done.version).into()),
            Some(m) if m.checksum != done.checksum => return Err(MigrateError::VersionMismatch(m.version).into()),
            Some(_) => {}
        }
    }
    let mut applied_now = Vec::new();
    for m in &known {
        if !applied.iter().any(|done| done.version == m.version) {
            conn.apply(m).await?;
            applied_now.push(m.version);
        }
    }
    conn.unlock().await?;
    let latest = known.iter().map(|m| m.version).max().unwrap_or(0);
    if !applied_now.is_empty() {
        tracing::info!(backend, ?applied_now, latest, "applied store migrations");
    }
    Ok(MigrationReport { backend, applied_now, latest })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded lists must name exactly the files on disk, in order, with their contents.
    #[test]
    fn embedded_lists_match_directories() {
        for (dir, set) in [("postgres", POSTGRES), ("sqlite", SQLITE)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations").join(dir);
            let mut files: Vec<_> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".sql"))
                .collect();
            files.sort();
            assert_eq!(files.len(), set.len(), "{dir}: {files:?}");
            for (file, (version, description, sql)) in files.iter().zip(set) {
                assert_eq!(file, &format!("{version:04}_{description}.sql"));
                assert_eq!(&std::fs::read_to_string(path.join(file)).unwrap(), sql);
            }
        }
        let vector = statements(crate::pgvector::MIGRATION);
        assert_eq!(vector.len(), 3, "{vector:?}");
        assert!(vector.iter().all(|s| s.contains("IF NOT EXISTS")), "idempotent: {vector:?}");
        let pg: Vec<_> = POSTGRES.iter().map(|m| (m.0, m.1)).collect();
        let lite: Vec<_> = SQLITE.iter().map(|m| (m.0, m.1)).collect();
        assert_eq!(pg, lite, "both dialects must carry the same versions");
    }
}
