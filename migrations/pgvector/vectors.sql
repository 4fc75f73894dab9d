-- The pgvector index backend (`--index pgvector`), applied at start-up only when it is selected.
-- Idempotent, and kept outside the numbered migrations so that a store used with it once can be
-- served again with the in-process index (and back) without a migration history that disagrees.
-- Needs the extension's files on the server (scripts/install_pgvector.sh) and a role that may
-- create it (or an administrator who ran CREATE EXTENSION vector once).
CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public;

-- The note's embedding as a vector, written in the same transaction as `embedding` by every
-- writer once this column exists (whatever index backend serves). No dimension on the column:
-- a re-index changes it; each dimension gets its own partial HNSW index (created at start-up,
-- `notes_vec_hnsw_<dim>`), over `vec::vector(<dim>)` for the rows of that dimension.
ALTER TABLE notes ADD COLUMN IF NOT EXISTS vec vector;
ALTER TABLE note_vectors ADD COLUMN IF NOT EXISTS vec vector;
