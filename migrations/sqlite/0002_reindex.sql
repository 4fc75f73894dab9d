-- Re-indexing with a new checkpoint (`notellm reindex`), SQLite dialect; see migrations/postgres.

-- Vectors of a model version that is not (yet) the serving one, keyed by (note, version): a
-- re-index writes each note's new vector here while the old model keeps serving from `notes`.
-- source_seq is the `notes.seq` of the content that was embedded, so a vector whose note was
-- written again since is recognised as stale (and a resumed re-index reuses the current ones).
-- The switch copies one version's vectors into `notes` in one transaction and empties this table.
CREATE TABLE note_vectors (
    note_id       TEXT NOT NULL,              -- BINARY collation, as notes.note_id
    model_version TEXT NOT NULL,
    embedding     BLOB NOT NULL,              -- dim x f32, little-endian
    dim           INTEGER NOT NULL,
    source_seq    INTEGER NOT NULL,
    PRIMARY KEY (note_id, model_version),
    CONSTRAINT note_vectors_dim_positive CHECK (dim > 0),
    CONSTRAINT note_vectors_embedding_len CHECK (length(embedding) = dim * 4)
) STRICT;

-- The model version the stored vectors belong to since the last re-index switch (one row; none
-- before the first switch): its checkpoint directory, the version it replaced, and a token of
-- the switch. A start whose --model is that replaced version loads this checkpoint instead.
CREATE TABLE notellm_active_model (
    id               INTEGER PRIMARY KEY,
    model_version    TEXT NOT NULL,
    model_dir        TEXT NOT NULL,
    previous_version TEXT NOT NULL,
    switch_token     TEXT NOT NULL,
    switched_at      INTEGER NOT NULL,        -- microseconds since the Unix epoch
    CONSTRAINT notellm_active_model_one_row CHECK (id = 1)
) STRICT;
