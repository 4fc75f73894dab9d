//! In-process HNSW index over note embeddings (hnsw_rs).
