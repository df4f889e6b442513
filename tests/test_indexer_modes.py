"""Fine-tuning modes from a base checkpoint: what trains, and what the saved checkpoint holds."""

import pytest
import torch

import warehouse
from indexer.config import TrainConfig
from indexer.models import load_checkpoint
from indexer.train import train
from warehouse import Catalog, IngestConfig, SyntheticConfig, Workdir


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    workdir = Workdir(tmp_path_factory.mktemp("modes") / "work")
    warehouse.ingest_synthetic(workdir, SyntheticConfig(n=80), config=IngestConfig(progress=False))
    result = train(workdir, TrainConfig(epochs=1, batch_size=16, progress=False))
    return workdir, result


def _fine_tune(workdir, base_result, mode):
    return train(workdir, TrainConfig(base=base_result.model_path, mode=mode, epochs=1, batch_size=16,
                                      progress=False))


def test_locked_image_trains_only_the_text_side(base):
    workdir, base_result = base
    result = _fine_tune(workdir, base_result, "locked-image")
    before, after = load_checkpoint(base_result.model_path, "cpu"), load_checkpoint(result.model_path, "cpu")
    for (name, p0), (_, p1) in zip(before.clip.visual.state_dict().items(), after.clip.visual.state_dict().items(),
                                   strict=True):
        assert torch.equal(p0, p1), name
    assert not torch.equal(before.clip.token_embedding.weight, after.clip.token_embedding.weight)
    assert result.trainable_params < result.total_params
    with Catalog.open(workdir, read_only=True) as catalog:
        recorded = catalog.model(result.model_id)
    assert recorded.parent_id == base_result.model_id and recorded.info["mode"] == "locked-image"


def test_lora_trains_adapters_and_saves_a_merged_plain_checkpoint(base):
    workdir, base_result = base
    result = _fine_tune(workdir, base_result, "lora")
    assert result.trainable_params < 0.2 * result.total_params
    merged = load_checkpoint(result.model_path, "cpu")
    plain = load_checkpoint(base_result.model_path, "cpu")
    assert merged.clip.state_dict().keys() == plain.clip.state_dict().keys()  # no adapter keys left
    changed = [k for k, v in merged.clip.state_dict().items() if not torch.equal(v, plain.clip.state_dict()[k])]
    assert changed and all(any(t in k for t in ("c_fc", "c_proj", "out_proj", "logit_scale")) for k in changed)


def test_full_fine_tune_keeps_the_base_vocabulary(base):
    workdir, base_result = base
    result = _fine_tune(workdir, base_result, "full")
    assert load_checkpoint(result.model_path, "cpu").tokenizer.vocab == \
        load_checkpoint(base_result.model_path, "cpu").tokenizer.vocab
    assert result.trainable_params == result.total_params
