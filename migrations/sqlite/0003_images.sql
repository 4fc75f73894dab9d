-- Notes with an image (NoteLLM-2), SQLite dialect; see migrations/postgres.

-- A note's image: the SHA-256 of its bytes and the frozen image encoder's features of it, so
-- that a re-index or a restart never needs the image again while the encoder stays the same.
-- Written and removed in the note's own write transaction; a note without an image has no row.
CREATE TABLE note_images (
    note_id    TEXT PRIMARY KEY NOT NULL,   -- BINARY collation, as notes.note_id
    image_hash TEXT NOT NULL,               -- SHA-256 of the image bytes, lower-case hex
    encoder    TEXT NOT NULL,               -- the encoder's fingerprint (vision.json + weights)
    tokens     INTEGER NOT NULL,
    width      INTEGER NOT NULL,
    features   BLOB NOT NULL,               -- tokens x width f16, little-endian
    CONSTRAINT note_images_shape_positive CHECK (tokens > 0 AND width > 0),
    CONSTRAINT note_images_features_len CHECK (length(features) = tokens * width * 2)
) STRICT;

-- A note whose image another note already has reuses its features (no second encoding).
CREATE INDEX note_images_hash_idx ON note_images (encoder, image_hash);
