"""Source readers: each parses one on-disk format and yields `Sample`s and `Reject`s; nothing more."""

from .flickr30k import count_flickr30k_entities, read_flickr30k_entities
from .folder import list_image_files, read_folder
from .hf import count_rows, load_local_dataset, read_hf_dataset
from .karpathy import read_karpathy
from .results_csv import read_results_csv

__all__ = [
    "count_flickr30k_entities",
    "count_rows",
    "list_image_files",
    "load_local_dataset",
    "read_flickr30k_entities",
    "read_folder",
    "read_hf_dataset",
    "read_karpathy",
    "read_results_csv",
]
