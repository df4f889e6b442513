"""The catalog schema as an ordered list of migrations.

The catalog records its version in `schema_version`; opening a catalog applies every migration
newer than that, each in its own transaction. Later components append migrations here (models,
embedding rows, tags, ...) and never edit a released one: a workdir built by an older groundex
upgrades in place, and one built by a newer groundex is refused rather than misread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb

from ._upgrade import adopt_captioners, adopt_taggers, move_training_state, record_patch_grids, relative_model_paths

# Each migration is a list of steps run in one transaction: SQL statements, or functions of (connection, workdir
# root) for what SQL cannot do (reading the workdir's folders). There are no FOREIGN KEY clauses:
# DuckDB's foreign keys block the deletes that removing an image needs; the writer keeps the
# references sound. Ids are assigned by the writer
# (max(id) + 1 under the single-writer rule), not by sequences, so that bulk inserts from Arrow
# batches stay one statement per table and FAISS ids can be the catalog's image ids.
MIGRATIONS: list[list[str | Callable[[duckdb.DuckDBPyConnection, Path], None]]] = [
    # 1: images, captions, phrases, boxes, entities, rejects, runs.
    [
        """
        CREATE TABLE images (
            id        BIGINT PRIMARY KEY,       -- catalog id; also the FAISS id of the image's vectors
            key       VARCHAR NOT NULL UNIQUE,  -- stable source key, e.g. 'flickr30k/2000000003'
            dataset   VARCHAR NOT NULL,         -- e.g. 'flickr30k', 'synthetic', 'folder'
            path      VARCHAR NOT NULL,         -- absolute path of the image file that was ingested
            width     INTEGER NOT NULL,         -- pixels, after EXIF orientation is applied
            height    INTEGER NOT NULL,
            split     VARCHAR,                  -- 'train' / 'val' / 'test' / NULL (unassigned)
            sha256    VARCHAR NOT NULL,         -- of the file's bytes
            format    VARCHAR,                  -- PIL format name, e.g. 'JPEG'
            mode      VARCHAR,                  -- PIL mode on disk, e.g. 'RGB', 'CMYK', 'L'
            added_at  TIMESTAMP NOT NULL
        )
        """,
        """
        CREATE TABLE captions (
            id        BIGINT PRIMARY KEY,
            image_id  BIGINT NOT NULL,
            ordinal   INTEGER NOT NULL,         -- position among the image's captions of this source
            text      VARCHAR NOT NULL,         -- plain text, phrase markup removed
            source    VARCHAR NOT NULL CHECK (source IN ('human', 'generated')),
            model_id  VARCHAR,                  -- content hash of the model that generated it (NULL for human)
            UNIQUE (image_id, source, ordinal, model_id)
        )
        """,
        """
        CREATE TABLE phrases (
            id                BIGINT PRIMARY KEY,
            caption_id        BIGINT NOT NULL,
            image_id          BIGINT NOT NULL,  -- denormalized for joins with boxes
            entity_id         BIGINT NOT NULL,    -- Flickr30k Entities id; 0 marks 'notvisual' phrases
            types             VARCHAR[] NOT NULL, -- e.g. ['people'] or ['animals', 'scene']
            text              VARCHAR NOT NULL,
            first_word_index  INTEGER NOT NULL    -- index of the phrase's first word in the caption's words
        )
        """,
        """
        CREATE TABLE boxes (
            id          BIGINT PRIMARY KEY,
            image_id    BIGINT NOT NULL,
            entity_ids  BIGINT[] NOT NULL,  -- one <object> may name several entities
            x1 REAL NOT NULL, y1 REAL NOT NULL,  -- continuous pixel edges in the stored image:
            x2 REAL NOT NULL, y2 REAL NOT NULL   -- 0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height
        )
        """,
        """
        CREATE TABLE entities (
            image_id   BIGINT NOT NULL,
            entity_id  BIGINT NOT NULL,
            n_boxes    INTEGER NOT NULL,  -- how many boxes name this entity (0: nobndbox or scene)
            scene      BOOLEAN NOT NULL,  -- annotated <scene>1</scene>: the entity is the whole scene
            nobndbox   BOOLEAN NOT NULL,  -- annotated <nobndbox>1</nobndbox>: not localizable
            PRIMARY KEY (image_id, entity_id)
        )
        """,
        """
        CREATE TABLE rejects (
            id        BIGINT PRIMARY KEY,
            run_id    BIGINT,            -- the ingest run that met the problem
            path      VARCHAR NOT NULL,  -- file the problem is in
            line      INTEGER,           -- 1-based line or row, when the problem is in one
            reason    VARCHAR NOT NULL,
            rejected_at  TIMESTAMP NOT NULL
        )
        """,
        """
        CREATE TABLE runs (
            id           BIGINT PRIMARY KEY,
            command      VARCHAR NOT NULL,  -- e.g. 'ingest flickr30k', 'train', 'eval grounding'
            started_at   TIMESTAMP NOT NULL,
            finished_at  TIMESTAMP,
            status       VARCHAR NOT NULL CHECK (status IN ('running', 'ok', 'failed')),
            config       JSON,              -- the command's config dataclass, as saved
            model_id     VARCHAR,           -- content hash of the model the run used, if any
            result       JSON               -- counts or metrics the run produced
        )
        """,
    ],
    # 2: models, embedding rows, index versions (the indexer's artefacts).
    [
        """
        CREATE TABLE models (
            id                VARCHAR PRIMARY KEY,  -- content hash of the checkpoint folder
            name              VARCHAR NOT NULL,     -- open_clip model name, e.g. 'groundex-tiny'
            path              VARCHAR NOT NULL,     -- checkpoint folder
            parent_id         VARCHAR,              -- model it was trained from (NULL: from scratch)
            run_id            BIGINT,               -- the training run that made it
            mode              VARCHAR,              -- 'full', 'locked-image', 'lora', or 'none' (untrained)
            trainable_params  BIGINT,
            total_params      BIGINT,
            metrics           JSON,                 -- validation figures at save time
            created_at        TIMESTAMP NOT NULL
        )
        """,
        """
        CREATE TABLE embeddings (
            model_id  VARCHAR NOT NULL,
            kind      VARCHAR NOT NULL CHECK (kind IN ('image', 'caption')),  -- patches share image shards
            item_id   BIGINT NOT NULL,   -- image id or caption id
            shard     VARCHAR NOT NULL,  -- file name under embeddings/<model_id>/<kind>/
            row       INTEGER NOT NULL,  -- row in that shard (and in the matching patch shard)
            PRIMARY KEY (model_id, kind, item_id)
        )
        """,
        """
        CREATE TABLE indexes (
            model_id  VARCHAR NOT NULL,
            kind      VARCHAR NOT NULL,
            version   INTEGER NOT NULL,
            path      VARCHAR NOT NULL,
            factory   VARCHAR NOT NULL,  -- faiss.index_factory string
            n         BIGINT NOT NULL,   -- vectors in the index
            built_at  TIMESTAMP NOT NULL,
            PRIMARY KEY (model_id, kind, version)
        )
        """,
    ],
    # 3: regions found by phrase -> region search, kept for the UI.
    [
        """
        CREATE TABLE regions (
            id         BIGINT PRIMARY KEY,
            model_id   VARCHAR NOT NULL,  -- content hash of the model that scored the region
            query      VARCHAR NOT NULL,  -- the phrase that was grounded
            image_id   BIGINT NOT NULL,
            rank       INTEGER NOT NULL,  -- 1-based rank of the region among the query's results
            x1 REAL NOT NULL, y1 REAL NOT NULL,  -- box in the stored image's pixels (as `boxes`)
            x2 REAL NOT NULL, y2 REAL NOT NULL,
            score      REAL NOT NULL,     -- cosine similarity of the phrase with the region's best patch
            run_id     BIGINT,            -- the run that stored it
            created_at TIMESTAMP NOT NULL
        )
        """,
    ],
    # 4: keyword tags predicted by the heads (generated captions go in `captions` with source 'generated').
    [
        """
        CREATE TABLE tags (
            image_id    BIGINT NOT NULL,
            keyword     VARCHAR NOT NULL,  -- a word of the keyword vocabulary mined from the training captions
            score       REAL NOT NULL,     -- the tagger's score in [0, 1]; stored only at or above its threshold
            method      VARCHAR NOT NULL,  -- 'probe', 'knn', 'zeroshot' or 'fusion'
            model_id    VARCHAR NOT NULL,  -- content hash of the embedding model the tagger reads
            run_id      BIGINT,            -- the `groundex tag` run that stored it
            created_at  TIMESTAMP NOT NULL,
            PRIMARY KEY (image_id, keyword, method, model_id)
        )
        """,
    ],
    # 5: one artefact store (models, captioners, fitted taggers) and the stored kinds of embeddings with their
    # shapes. `models` becomes a view of the model rows, so SQL written against it keeps working. Captioners and
    # taggers made before this version lived in folders only: the Python steps record them (warehouse/_upgrade.py).
    [
        """
        CREATE TABLE artefacts (
            kind        VARCHAR NOT NULL CHECK (kind IN ('model', 'captioner', 'tagger')),
            id          VARCHAR NOT NULL,  -- content hash of the folder's files (16 hex digits)
            label       VARCHAR,           -- a person's name for it (`--label`); unique within its kind
            path        VARCHAR NOT NULL,  -- its folder, relative to the workdir (absolute in rows older than v5)
            parent_id   VARCHAR,           -- model: the model it was fine-tuned from; captioner, tagger: the
                                           -- embedding model whose vectors it reads
            run_id      BIGINT,            -- the run that made it (NULL: recorded by `groundex model add`)
            source      VARCHAR NOT NULL,  -- where it came from: 'trained', 'open_clip:NAME[:TAG]',
                                           -- 'weights:FILE', 'import:FOLDER'
            info        JSON NOT NULL,     -- what its kind says of it: a model's architecture name, training mode,
                                           -- parameter counts, resize mode and patch grid; a tagger's method
            metrics     JSON,              -- validation figures when it was saved
            created_at  TIMESTAMP NOT NULL,
            PRIMARY KEY (kind, id)
        )
        """,
        """
        INSERT INTO artefacts
        SELECT 'model', id, NULL, path, parent_id, run_id, 'trained',
               json_object('name', name, 'mode', mode, 'trainable_params', trainable_params,
                           'total_params', total_params),
               metrics, created_at
        FROM models
        """,
        "DROP TABLE models",
        """
        CREATE VIEW models AS
        SELECT id, label, json_extract_string(info, '$.name') AS name, path, parent_id, run_id,
               json_extract_string(info, '$.mode') AS mode,
               CAST(json_extract(info, '$.trainable_params') AS BIGINT) AS trainable_params,
               CAST(json_extract(info, '$.total_params') AS BIGINT) AS total_params,
               source, metrics, created_at
        FROM artefacts WHERE kind = 'model'
        """,
        """
        CREATE TABLE embedding_sets (
            model_id   VARCHAR NOT NULL,
            kind       VARCHAR NOT NULL CHECK (kind IN ('image', 'patch', 'caption')),
            dim        INTEGER NOT NULL,  -- vector width
            grid_rows  INTEGER,           -- patch: the model's patch grid; a patch shard is (n, rows * cols, dim),
            grid_cols  INTEGER,           -- cells in row-major order; NULL for the other kinds
            PRIMARY KEY (model_id, kind)
        )
        """,
        relative_model_paths,
        adopt_captioners,
        adopt_taggers,
        move_training_state,
        record_patch_grids,
    ],
    # 6: phrase chunkers become an artefact kind, and the phrases of generated captions are stored grounded. The
    # kind list is a CHECK, which DuckDB cannot alter: the table is copied into one with the longer list.
    [
        """
        CREATE TABLE artefacts_v6 (
            kind        VARCHAR NOT NULL CHECK (kind IN ('model', 'captioner', 'tagger', 'chunker')),
            id          VARCHAR NOT NULL,
            label       VARCHAR,
            path        VARCHAR NOT NULL,
            parent_id   VARCHAR,           -- as in v5; a chunker has none (it reads words only)
            run_id      BIGINT,
            source      VARCHAR NOT NULL,
            info        JSON NOT NULL,
            metrics     JSON,
            created_at  TIMESTAMP NOT NULL,
            PRIMARY KEY (kind, id)
        )
        """,
        "INSERT INTO artefacts_v6 SELECT * FROM artefacts",
        "DROP TABLE artefacts",
        "ALTER TABLE artefacts_v6 RENAME TO artefacts",
        """
        CREATE TABLE generated_phrases (
            caption_id        BIGINT NOT NULL,     -- a generated caption (captions.source = 'generated')
            ordinal           INTEGER NOT NULL,    -- the phrase's position among the caption's phrases
            image_id          BIGINT NOT NULL,
            types             VARCHAR[] NOT NULL,  -- the chunker's type, e.g. ['people']
            text              VARCHAR NOT NULL,
            first_word_index  INTEGER NOT NULL,    -- index of its first word in the caption's words (as `phrases`)
            chunker_id        VARCHAR NOT NULL,    -- content hash of the chunker that found it
            model_id          VARCHAR,             -- the embedding model that grounded it; NULL: not grounded
            x1 REAL, y1 REAL, x2 REAL, y2 REAL,    -- its box in the stored image's pixels (as `boxes`), or NULL
            score             REAL,                -- the grounding head's score of the box
            PRIMARY KEY (caption_id, ordinal)
        )
        """,
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)
