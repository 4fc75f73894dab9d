//! The store of record: notes, embeddings and a change sequence (sqlx; Postgres or SQLite).
