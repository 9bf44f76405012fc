-- Run once, when the db container initialises an empty data directory, by PostgreSQL in
-- single-user mode: a statement ends with a semicolon followed by a blank line.
-- The server applies the same schema idempotently at start-up (for EMBEDDING_DIM), so this file
-- only has to be right for the default dimension.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS memories (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    text text NOT NULL,
    embedding vector(384) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS memories_embedding_idx
    ON memories USING hnsw (embedding vector_cosine_ops);
