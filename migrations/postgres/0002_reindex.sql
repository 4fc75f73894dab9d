-- Re-indexing with a new checkpoint (`notellm reindex`), Postgres dialect.

-- Vectors of a model version that is not (yet) the serving one, keyed by (note, version): a
-- re-index writes each note's new vector here while the old model keeps serving from `notes`.
-- source_seq is the `notes.seq` of the content that was embedded, so a vector whose note was
-- written again since is recognised as stale (and a resumed re-index reuses the current ones).
-- The switch copies one version's vectors into `notes` in one transaction and empties this table.
CREATE TABLE note_vectors (
    note_id       TEXT COLLATE "C" NOT NULL,
    model_version TEXT NOT NULL,
    embedding     BYTEA NOT NULL,             -- dim x f32, little-endian
    dim           INTEGER NOT NULL,
    source_seq    BIGINT NOT NULL,
    PRIMARY KEY (note_id, model_version),
    CONSTRAINT note_vectors_dim_positive CHECK (dim > 0),
    CONSTRAINT note_vectors_embedding_len CHECK (octet_length(embedding) = dim * 4)
);

-- The model version the stored vectors belong to since the last re-index switch (one row; none
-- before the first switch): its checkpoint directory, the version it replaced, and a token of
-- the switch. A start whose --model is that replaced version loads this checkpoint instead.
CREATE TABLE notellm_active_model (
    id               SMALLINT PRIMARY KEY,
    model_version    TEXT NOT NULL,
    model_dir        TEXT NOT NULL,
    previous_version TEXT NOT NULL,
    switch_token     TEXT NOT NULL,
    switched_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT notellm_active_model_one_row CHECK (id = 1)
);
