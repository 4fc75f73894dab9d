-- notellm store of record (Postgres dialect). Applied by `notellm migrate` and at start-up.
-- Layout follows sqlx-cli conventions (<version>_<description>.sql), so `sqlx migrate run
-- --source migrations/postgres` applies the same files with the same checksums.

-- One row per live note: metadata, embedding and the change sequence of its latest write.
CREATE TABLE notes (
    -- "C" collation: byte order, the same order as Rust's `Ord` on NoteId and SQLite's BINARY,
    -- so keyset pagination (scan_embeddings) walks ids identically on both backends.
    note_id       TEXT COLLATE "C" PRIMARY KEY,
    title         TEXT NOT NULL,
    content       TEXT NOT NULL,
    hashtags      TEXT NOT NULL,          -- JSON array of strings
    category      TEXT,
    content_hash  TEXT NOT NULL,          -- store::content_hash(&Note): unchanged re-PUT detection
    embedding     BYTEA NOT NULL,         -- dim x f32, little-endian
    dim           INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    seq           BIGINT NOT NULL,        -- change sequence of the latest write
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT notes_dim_positive CHECK (dim > 0),
    CONSTRAINT notes_embedding_len CHECK (octet_length(embedding) = dim * 4)
);

-- changes_since(seq) reads notes in seq order.
CREATE UNIQUE INDEX notes_seq_idx ON notes (seq);

-- A deleted note leaves a tombstone so that followers (index replicas, a restored snapshot)
-- replay the delete. A re-PUT removes it; purge_tombstones() drops old ones.
CREATE TABLE note_tombstones (
    note_id    TEXT COLLATE "C" PRIMARY KEY,
    seq        BIGINT NOT NULL,
    deleted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX note_tombstones_seq_idx ON note_tombstones (seq);

-- The change-sequence counter: one row. Every write transaction increments it first, and the
-- row lock it takes is held until commit, so seq order equals commit order (see src/store/mod.rs).
-- purged_through: highest seq of a purged tombstone; changes_since() below it is refused.
CREATE TABLE notellm_seq (
    id             SMALLINT PRIMARY KEY,
    seq            BIGINT NOT NULL,
    purged_through BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT notellm_seq_one_row CHECK (id = 1)
);

INSERT INTO notellm_seq (id, seq, purged_through) VALUES (1, 0, 0);
