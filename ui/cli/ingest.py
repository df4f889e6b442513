"""`groundex ingest SOURCE`: bring a collection into a workdir's catalog."""

from __future__ import annotations

import argparse
from pathlib import Path

import warehouse
from warehouse import IngestConfig, IngestReport, SyntheticConfig

from ._common import add_workdir, print_json, workdir_of
from ._options import add_json, add_no_progress

_FORMATS = """sources:
  flickr30k    official Flickr30k Entities layout: ROOT/images, ROOT/Sentences, ROOT/Annotations,
               optional ROOT/{train,val,test}.txt
  karpathy     Karpathy's dataset_flickr30k.json + a folder of images
  results-csv  Flickr30k results.csv ('image_name| comment_number| comment') + a folder of images
  hf           a Hugging Face `datasets` copy on local disk (nlphuji/flickr30k columns by default)
  folder       any folder of images, no captions (your own collection)
  synthetic    generate the embedded scenes dataset (Flickr30k Entities format) and ingest it

Ingest only adds: images already in the catalog are left as they are, so running the same ingest
twice adds nothing, and an interrupted ingest resumes when run again. Problems with single files or
rows are recorded as rejects (`groundex info --rejects 20`) and do not stop the ingest."""


def _common(p: argparse.ArgumentParser, dataset_default: str | None = "flickr30k") -> None:
    add_workdir(p)
    if dataset_default is not None:
        p.add_argument("--dataset", default=dataset_default,
                       help=f"dataset name stored with each image and used in its key (default: {dataset_default})")
    p.add_argument("--workers", type=int, default=IngestConfig.workers, help="threads opening images (default: cores)")
    p.add_argument("--chunk-size", type=int, default=IngestConfig.chunk_size,
                   help="samples written per transaction: the most a crash can lose (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=IngestConfig.max_pixels,
                   help="reject images with more pixels than this (default: %(default)s)")
    add_json(p, "the ingest report")
    add_no_progress(p)


def _split_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default=None, help="split to assign to every image (e.g. train); default: none")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="add a collection to a workdir", description=_FORMATS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sources = p.add_subparsers(dest="source", metavar="SOURCE", required=True)

    s = sources.add_parser("flickr30k", help="Flickr30k Entities layout")
    s.add_argument("--root", type=Path, required=True, help="folder with images/, Sentences/, Annotations/")
    _common(s)
    s.set_defaults(run=lambda a: _report(a, warehouse.ingest_flickr30k(workdir_of(a), a.root, a.dataset, _config(a))))

    s = sources.add_parser("karpathy", help="Karpathy dataset_flickr30k.json + image folder")
    s.add_argument("--json-file", type=Path, required=True, help="dataset_flickr30k.json")
    s.add_argument("--images", type=Path, required=True, help="folder holding the image files")
    _common(s)
    s.set_defaults(run=lambda a: _report(a, warehouse.ingest_karpathy(
        workdir_of(a), a.json_file, a.images, a.dataset, _config(a))))

    s = sources.add_parser("results-csv", help="Flickr30k results.csv + image folder")
    s.add_argument("--csv", type=Path, required=True, help="results.csv")
    s.add_argument("--images", type=Path, required=True, help="folder holding the image files")
    _split_option(s)
    _common(s)
    s.set_defaults(run=lambda a: _report(a, warehouse.ingest_results_csv(
        workdir_of(a), a.csv, a.images, a.dataset, a.split, _config(a))))

    s = sources.add_parser("hf", help="Hugging Face datasets copy on local disk")
    s.add_argument("--path", type=Path, required=True, help="dataset folder (parquet files or save_to_disk output)")
    s.add_argument("--image-column", default="image")
    s.add_argument("--caption-column", default="caption")
    s.add_argument("--split-column", default="split")
    _common(s)
    s.set_defaults(run=lambda a: _report(a, warehouse.ingest_hf(
        workdir_of(a), a.path, a.dataset, a.image_column, a.caption_column, a.split_column, _config(a))))

    s = sources.add_parser("folder", help="a folder of images without captions")
    s.add_argument("--root", type=Path, required=True, help="folder to scan (recursively) for images")
    _split_option(s)
    _common(s, dataset_default=None)
    s.add_argument("--dataset", default=None, help="dataset name (default: the folder's name)")
    s.set_defaults(run=lambda a: _report(a, warehouse.ingest_folder(
        workdir_of(a), a.root, a.dataset, a.split, _config(a))))

    s = sources.add_parser("synthetic", help="generate and ingest the embedded scenes dataset")
    add_synthetic_options(s)
    _common(s, dataset_default=None)
    s.set_defaults(run=lambda a: _report(a, warehouse.ingest_synthetic(
        workdir_of(a), synthetic_config(a), _config(a))))


def add_synthetic_options(p: argparse.ArgumentParser, seed_help: str = "generator seed") -> None:
    p.add_argument("--n", type=int, default=SyntheticConfig.n, help="number of images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SyntheticConfig.seed, help=f"{seed_help} (default: %(default)s)")
    p.add_argument("--size", type=int, default=SyntheticConfig.size, help="image side in pixels (default: %(default)s)")


def synthetic_config(args: argparse.Namespace) -> SyntheticConfig:
    return SyntheticConfig(n=args.n, seed=args.seed, size=args.size)


def _config(args: argparse.Namespace) -> IngestConfig:
    return IngestConfig(workers=args.workers, chunk_size=args.chunk_size, max_pixels=args.max_pixels,
                        progress=not args.no_progress)


def _report(args: argparse.Namespace, report: IngestReport) -> int:
    if args.json:
        print_json(report.as_dict())
        return 0
    print(f"ingest {args.source}: {report.added:,} images added, {report.already_present:,} already present, "
          f"{report.rejected:,} rejected ({report.seconds:.1f} s, run #{report.run_id})")
    for line in report.examples:
        print(f"  reject: {line}")
    if report.rejected > len(report.examples):
        print(f"  ... `groundex info --workdir {args.workdir} --rejects {report.rejected}` lists them all")
    return 0
