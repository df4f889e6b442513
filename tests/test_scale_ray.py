"""`groundex index --engine ray`: the image embedding pipeline as a Ray Data job on a local Ray, checked
against the local pipeline on the same model and images (same vectors up to float16 rounding, same
search results), its Parquet shards readable by DuckDB, and a second run embedding nothing new."""

import json
import shutil

import duckdb
import numpy as np
import pytest

from indexer.pipeline import index_workdir
from indexer.search import Searcher
from indexer.shards import load_embeddings
from tests.helpers import built_workdir
from ui.cli import main
from warehouse import Catalog, Workdir

pytest.importorskip("ray", reason="the [scale] extra (Ray) is not installed")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Two copies of one trained workdir before indexing: one indexed locally, one with Ray."""
    root = tmp_path_factory.mktemp("ray")
    local = built_workdir(root / "local", n=120, epochs=1, index=False)
    shutil.copytree(local.root, root / "ray")
    return local, Workdir(root / "ray")


def test_ray_embeddings_match_the_local_pipeline(twins, capsys):
    local, distributed = twins
    index_workdir(local)
    assert main(["index", "--workdir", str(distributed.root), "--engine", "ray", "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["embedded_images"] == 120 and set(result["indexes"]) == {"image", "caption", "patch"}
    with Catalog.open(local, read_only=True) as catalog:
        model_id = catalog.model().id
        ids = [i for i, _ in catalog.image_rows()]
    for kind in ("image", "patch"):
        _, a = load_embeddings(local, model_id, kind, ids)
        _, b = load_embeddings(distributed, model_id, kind, ids)
        assert a.shape == b.shape and np.abs(a - b).max() <= 2e-3, kind  # float16 rounding at most
    for query in ("a red circle", "two dogs on the grass"):
        assert [h.id for h in Searcher(local).text_to_image(query, k=10)] == \
            [h.id for h in Searcher(distributed).text_to_image(query, k=10)]
    # the Parquet shards, read directly by DuckDB and joined with the catalog's images
    shards = list((distributed.embeddings_dir / model_id / "ray").glob("*/*.parquet"))
    assert shards
    pattern = str(shards[0].parent / "*.parquet")
    with duckdb.connect(str(distributed.catalog_path), read_only=True) as con:
        by_split = dict(con.execute(f"SELECT i.split, count(*) FROM read_parquet('{pattern}') p "
                                    "JOIN images i ON i.id = p.id GROUP BY 1").fetchall())
        expected = dict(con.execute("SELECT split, count(*) FROM images GROUP BY 1").fetchall())
    assert by_split == expected
    # a second run finds everything embedded
    assert main(["index", "--workdir", str(distributed.root), "--engine", "ray", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["embedded_images"] == 0


def test_engine_options_are_checked(twins, capsys):
    _, distributed = twins
    assert main(["index", "--workdir", str(distributed.root), "--address", "auto"]) == 2
    assert "--address is for --engine ray" in capsys.readouterr().err
    assert main(["index", "--workdir", str(distributed.root), "--engine", "ray", "--actors", "0"]) == 2
    assert "actors must be >= 1, got 0" in capsys.readouterr().err
