"""`groundex index`: embed the catalog with a model and build its FAISS indexes."""

from __future__ import annotations

import argparse

from ._common import UserError, add_workdir, print_json, workdir_of
from ._options import add_device, add_json, add_model, add_no_progress, add_precision


def add_parser(sub: argparse._SubParsersAction) -> None:
    from indexer.config import EMBED_BATCH, EmbedConfig, RayEmbedConfig

    embed = EmbedConfig()
    p = sub.add_parser(
        "index", help="embed images, patches and captions, and build FAISS indexes",
        description="Embeds what the model has not embedded yet (float16 shards under embeddings/), then adds "
                    "new vectors to the FAISS indexes and removes those of deleted images. Safe to interrupt and "
                    "run again. The index type follows the collection's size (exact below 50,000 vectors, "
                    "HNSW32 up to 2M, IVF-PQ above) unless --factory names one.")
    add_workdir(p)
    add_model(p)
    p.add_argument("--split", default=None, help="only this split (default: every image)")
    p.add_argument("--factory", default=None, help="faiss.index_factory string, e.g. Flat, HNSW32, IVF1024,PQ32")
    p.add_argument("--rebuild", action="store_true", help="build the indexes from scratch")
    p.add_argument("--batch-size", type=int, default=embed.batch_size,
                   help="images or captions per forward pass (default: " + ", ".join(
                       f"{n} on {'a GPU' if d == 'cuda' else 'the CPU'}" for d, n in EMBED_BATCH.items()) + ")")
    p.add_argument("--shard-size", type=int, default=embed.shard_size,
                   help="items per embedding shard file: the most an interrupted run loses (default: %(default)s)")
    add_device(p)
    add_precision(p, embed.precision)
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="embed images in this process (local) or as a Ray Data job (ray: needs the [scale] extra; "
                        "Parquet shards under embeddings/<model>/ray/, then imported)")
    p.add_argument("--address", default=None,
                   help="with --engine ray: a Ray cluster's address ('auto', 'ray://HOST:10001'); default: a local "
                        "Ray on this machine's cores")
    p.add_argument("--actors", type=int, default=RayEmbedConfig.actors,
                   help="with --engine ray: encoder actors (default: %(default)s)")
    add_json(p)
    add_no_progress(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from indexer.config import EmbedConfig
    from indexer.pipeline import index_workdir

    ray_config = None
    if args.engine == "ray":
        try:
            import ray  # noqa: F401

            from indexer.config import RayEmbedConfig
        except ImportError:
            raise UserError("--engine ray needs Ray: pip install -e '.[scale]'") from None
        ray_config = RayEmbedConfig(address=args.address, actors=args.actors, batch_size=args.batch_size,
                                    precision=args.precision, progress=not args.no_progress)
    elif args.address is not None:
        raise UserError("--address is for --engine ray")
    embed_config = EmbedConfig(batch_size=args.batch_size, shard_size=args.shard_size, precision=args.precision,
                               progress=not args.no_progress)
    result = index_workdir(workdir_of(args), args.model, args.split, args.factory, args.rebuild, embed_config,
                           args.device, args.engine, ray_config)
    if args.json:
        print_json(result)
        return 0
    print(f"model {result['model_id']}: embedded {result['embedded_images']:,} images and "
          f"{result['embedded_captions']:,} captions in {result['seconds']:.1f} s ({result['precision']})")
    for kind, r in result["indexes"].items():
        print(f"  {kind} index v{r['version']} ({r['factory']}): {r['n']:,} vectors, +{r['added']:,} "
              f"-{r['removed']:,}{' (rebuilt)' if r['rebuilt'] else ''}")
    return 0
