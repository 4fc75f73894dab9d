-- notellm store of record (SQLite dialect). Applied by `notellm migrate` and at start-up.
-- Same logical schema as migrations/postgres; timestamps are INTEGER microseconds since the
-- Unix epoch (written by the service), tables are STRICT so a wrong type is refused on write.

-- One row per live note: metadata, embedding and the change sequence of its latest write.
CREATE TABLE notes (
    note_id       TEXT PRIMARY KEY NOT NULL,  -- BINARY collation: same order as Rust's Ord
    title         TEXT NOT NULL,
    content       TEXT NOT NULL,
    hashtags      TEXT NOT NULL,              -- JSON array of strings
    category      TEXT,
    content_hash  TEXT NOT NULL,              -- store::content_hash(&Note)
    embedding     BLOB NOT NULL,              -- dim x f32, little-endian
    dim           INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    seq           INTEGER NOT NULL,           -- change sequence of the latest write
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    CONSTRAINT notes_dim_positive CHECK (dim > 0),
    CONSTRAINT notes_embedding_len CHECK (length(embedding) = dim * 4)
) STRICT;

CREATE UNIQUE INDEX notes_seq_idx ON notes (seq);

-- Tombstones of deleted notes, replayed by changes_since(); removed by a re-PUT or a purge.
CREATE TABLE note_tombstones (
    note_id    TEXT PRIMARY KEY NOT NULL,
    seq        INTEGER NOT NULL,
    deleted_at INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX note_tombstones_seq_idx ON note_tombstones (seq);

-- The change-sequence counter (one row). SQLite serialises writers (BEGIN IMMEDIATE), so
-- incrementing it inside the write transaction makes seq order equal commit order.
CREATE TABLE notellm_seq (
    id             INTEGER PRIMARY KEY,
    seq            INTEGER NOT NULL,
    purged_through INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT notellm_seq_one_row CHECK (id = 1)
) STRICT;

INSERT INTO notellm_seq (id, seq, purged_through) VALUES (1, 0, 0);
