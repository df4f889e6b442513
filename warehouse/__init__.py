"""warehouse: every byte groundex keeps on disk, and the ways data gets in.

    Workdir   paths of a workdir and its manifest
    Catalog   the DuckDB catalog (versioned schema, parameterized queries)
    ArtefactStore  models, captioners and fitted taggers: content-addressed folders recorded in the catalog
    ingest_*  one entry point per source format; all share the pipeline in `ingest.py`
"""

from ._catalog_heads import GeneratedPhrase
from ._catalog_reports import SqlResult
from .artefacts import KINDS as ARTEFACT_KINDS
from .artefacts import (
    Artefact,
    ArtefactStore,
    RunState,
    content_hash,
    hashed_files,
    missing_files,
    place,
    same_settings,
)
from .catalog import Catalog, Condition, GroundingRow, ImageInfo, PreparedSample, recorded_run
from .entities import ENTITY_TYPES, FormatError, parse_annotation, parse_caption, parse_sentences
from .errors import ArtefactError, CatalogError, InputError
from .export import IMAGE_MODES, ExportReport, export_entities
from .images import DEFAULT_MAX_PIXELS, ImageError, inspect_image, load_image, load_image_bytes
from .ingest import IngestConfig, IngestReport, ingest
from .ingest_sources import (
    ingest_flickr30k,
    ingest_folder,
    ingest_hf,
    ingest_karpathy,
    ingest_results_csv,
    ingest_synthetic,
)
from .records import Box, Caption, Entity, Phrase, Reject, Sample
from .shared_reader import SharedReader
from .sources.flickr30k import SPLIT_NAMES
from .synthetic import SyntheticConfig, generate_dataset, generate_scene
from .workdir import (
    DEFAULT_WORKDIR,
    EMBEDDING_KINDS,
    Workdir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npy,
    utc_now,
)

__all__ = [
    "Artefact", "ARTEFACT_KINDS", "ArtefactError", "ArtefactStore", "atomic_write_bytes", "atomic_write_json",
    "atomic_write_npy", "Box", "Caption", "Catalog", "CatalogError", "Condition", "content_hash",
    "DEFAULT_MAX_PIXELS", "DEFAULT_WORKDIR", "EMBEDDING_KINDS", "Entity", "ENTITY_TYPES", "ExportReport",
    "export_entities", "FormatError", "generate_dataset", "IMAGE_MODES", "SPLIT_NAMES",
    "generate_scene", "GeneratedPhrase", "hashed_files",
    "GroundingRow", "ImageError", "ImageInfo", "ingest", "ingest_flickr30k", "ingest_folder", "ingest_hf",
    "ingest_karpathy", "ingest_results_csv", "ingest_synthetic", "IngestConfig", "IngestReport", "InputError",
    "inspect_image", "load_image", "load_image_bytes", "missing_files", "parse_annotation", "parse_caption",
    "parse_sentences", "Phrase", "place", "PreparedSample", "recorded_run", "Reject", "RunState", "same_settings",
    "Sample", "SharedReader", "SqlResult", "SyntheticConfig", "utc_now", "Workdir",
]
