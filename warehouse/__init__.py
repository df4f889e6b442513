"""warehouse: every byte groundex keeps on disk, and the ways data gets in.

    Workdir   paths of a workdir and its manifest
    Catalog   the DuckDB catalog (versioned schema, parameterized queries)
    ingest_*  one entry point per source format; all share the pipeline in `ingest.py`
"""

from .catalog import Catalog, CatalogError, Condition, GroundingRow, ImageInfo, PreparedSample, recorded_run
from .entities import FormatError, parse_annotation, parse_caption, parse_sentences
from .images import DEFAULT_MAX_PIXELS, ImageError, inspect_image, load_image, load_image_bytes
from .ingest import IngestConfig, IngestReport, ingest
from .loaders import (
                      ingest_flickr30k,
                      ingest_folder,
                      ingest_hf,
                      ingest_karpathy,
                      ingest_results_csv,
                      ingest_synthetic,
)
from .records import Box, Caption, Entity, Phrase, Reject, Sample
from .synthetic import SyntheticConfig, generate_dataset, generate_scene
from .workdir import DEFAULT_WORKDIR, Workdir

__all__ = [
    "Box", "Caption", "Catalog", "CatalogError", "Condition", "DEFAULT_MAX_PIXELS", "DEFAULT_WORKDIR", "Entity",
    "FormatError",
    "generate_dataset", "generate_scene", "GroundingRow", "ImageError", "ImageInfo", "ingest", "ingest_flickr30k",
    "ingest_folder",
    "ingest_hf", "ingest_karpathy", "ingest_results_csv", "ingest_synthetic", "IngestConfig", "IngestReport",
    "inspect_image", "load_image", "load_image_bytes", "parse_annotation", "parse_caption", "parse_sentences",
    "Phrase", "PreparedSample", "recorded_run", "Reject", "Sample", "SyntheticConfig", "Workdir"
]
