"""Embedding precision (`groundex index --precision`): which one runs, and that bf16 gives the float32 vectors to
within what a user could see (benchmarks/embed_precision.py measures recall and pointing game on the sample)."""

import numpy as np
import pytest
import torch

import warehouse
from indexer import devices
from indexer.config import EmbedConfig, RayEmbedConfig
from indexer.devices import precision_uses_bf16
from indexer.embed import embed_captions, embed_images
from indexer.models import create_model
from indexer.shards import load_embeddings
from indexer.tokenizer import WordTokenizer
from warehouse import Catalog, IngestConfig, InputError, SyntheticConfig, Workdir


@pytest.mark.parametrize("fast", [True, False])
def test_auto_means_bf16_only_where_the_device_runs_it_fast(monkeypatch, fast):
    monkeypatch.setattr(devices, "bf16_is_fast", lambda device: fast)
    cpu = torch.device("cpu")
    assert precision_uses_bf16("auto", cpu) is fast
    assert precision_uses_bf16("bf16", cpu) is True and precision_uses_bf16("fp32", cpu) is False


def test_the_batch_size_follows_the_device_unless_given():
    assert EmbedConfig().batch_for("cpu") < EmbedConfig().batch_for("cuda")  # CPUs run small batches faster
    assert EmbedConfig(batch_size=7).batch_for("cpu") == EmbedConfig(batch_size=7).batch_for("cuda") == 7
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        EmbedConfig(batch_size=0)


def test_a_precision_that_does_not_exist_is_refused():
    for config in (EmbedConfig, RayEmbedConfig):
        with pytest.raises(InputError, match="precision must be one of"):
            config(precision="fp16")
    assert EmbedConfig().precision == RayEmbedConfig().precision == "auto"


def test_bf16_embeddings_agree_with_float32(tmp_path):
    workdir = Workdir(tmp_path / "w")
    warehouse.ingest_synthetic(workdir, SyntheticConfig(n=48), config=IngestConfig(progress=False))
    with Catalog.open(workdir, read_only=True) as catalog:
        images, captions = catalog.image_rows(), catalog.caption_rows()
    torch.manual_seed(0)
    model = create_model("tiny", tokenizer=WordTokenizer.build([t for _, _, t in captions], min_count=1),
                         device="cpu")
    stored = {}
    for precision in ("fp32", "bf16"):
        config = EmbedConfig(precision=precision, batch_size=16, workers=1, progress=False)
        embed_images(workdir, model, f"m-{precision}", images, config)
        embed_captions(workdir, model, f"m-{precision}", captions, config)
        stored[precision] = {kind: load_embeddings(workdir, f"m-{precision}", kind)[1]
                             for kind in ("image", "patch", "caption")}
    for kind, least in (("image", 0.999), ("patch", 0.999), ("caption", 0.999)):
        a = stored["fp32"][kind].reshape(-1, model.embed_dim)
        b = stored["bf16"][kind].reshape(-1, model.embed_dim)
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosine.min() >= least, (kind, cosine.min())
        assert not np.array_equal(a, b), f"{kind}: bf16 changed nothing: was it used?"
