"""indexer.text_tower computes a checkpoint's text tower without open_clip, and must give the same vectors as the
model open_clip builds (GroundexModel.encode_text); for towers it does not know it declines (None)."""

import copy
import json
import subprocess
import sys

import pytest
import torch

from indexer.model_spec import ModelSpec
from indexer.models import GroundexModel, _build_clip, create_model, load_checkpoint, save_checkpoint
from indexer.text_tower import load_text_tower
from indexer.tokenizer import WordTokenizer

TEXTS = ["a red dog", "two men in blue shirts play football on the grass", "", "dog dog dog", "a zebra-like unknown"]


def _tokenizer() -> WordTokenizer:
    return WordTokenizer.build(["a red dog runs", "two men in blue shirts play football on the grass"],
                               min_count=1, context_length=16)


def _checkpoint(tmp_path, **changes) -> tuple:
    """A tiny-preset checkpoint with random weights everywhere (biases and norms too); `changes` edit its
    open_clip config: text_cfg keys, or top-level ones."""
    model = create_model("tiny", tokenizer=_tokenizer(), device="cpu")
    config = copy.deepcopy(model.spec.config)
    for key, value in changes.items():
        if key in ("quick_gelu",):
            config[key] = value
        else:
            config["text_cfg"][key] = value
    spec = ModelSpec(name=model.spec.name, config=config)
    torch.manual_seed(0)
    clip = _build_clip(config)
    with torch.no_grad():
        for p in clip.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    _, folder = save_checkpoint(GroundexModel(clip, model.tokenizer, spec), tmp_path / "models")
    return folder, load_checkpoint(folder, "cpu")


@pytest.mark.parametrize("changes", [
    {},                                           # the tiny preset: eos pooling, GELU
    {"pool_type": "argmax"},
    {"pool_type": "first"},
    {"pool_type": "last"},                        # reads the padding: nothing may be cut off
    {"ls_init_value": 0.5},                       # LayerScale
    {"quick_gelu": True},
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "tiny")
def test_the_text_tower_gives_the_models_vectors(tmp_path, changes):
    folder, model = _checkpoint(tmp_path, **changes)
    tower = load_text_tower(folder, "cpu")
    assert tower is not None
    expected = model.encode_text(TEXTS)
    got = tower.encode_text(TEXTS)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    # one text at a time (a query) gives the same as in a batch (padding never leaks in)
    assert torch.allclose(tower.encode_text([TEXTS[1]])[0], expected[1], atol=1e-5)


@pytest.mark.parametrize("changes", [{"no_causal_mask": True}, {"embed_cls": True}, {"proj_bias": True}],
                         ids=lambda c: next(iter(c)))
def test_towers_it_does_not_know_are_declined(tmp_path, changes):
    folder, _ = _checkpoint(tmp_path, **changes)
    assert load_text_tower(folder, "cpu") is None


def test_a_config_key_it_does_not_know_is_declined(tmp_path):
    """An open_clip option added after this module was written may change the function: not guessed at."""
    folder, _ = _checkpoint(tmp_path)
    spec = json.loads((folder / "config.json").read_text())
    spec["config"]["text_cfg"]["rotary_positions"] = True
    (folder / "config.json").write_text(json.dumps(spec))
    assert load_text_tower(folder, "cpu") is None


def test_an_open_clip_tokenizer_is_declined(tmp_path):
    from tests.helpers import MICRO_VIT, micro_vit_weights

    weights = micro_vit_weights(tmp_path)
    _, folder = save_checkpoint(create_model(MICRO_VIT, pretrained=str(weights), device="cpu"), tmp_path / "models")
    assert load_text_tower(folder, "cpu") is None


@pytest.mark.slow
def test_a_text_search_never_imports_open_clip(tmp_path):
    """The point of the module: `groundex search "text"` runs without open_clip, torchvision or transformers,
    with the hits the whole model gives."""
    from indexer.search import Searcher
    from tests.helpers import built_workdir

    workdir = built_workdir(tmp_path / "w", n=120, epochs=1)
    whole = Searcher(workdir)
    whole.model  # noqa: B018  (loaded first, so queries run through open_clip's model: the answer to match)
    expected = [h.id for h in whole.text_to_image("a red circle", k=5)]
    code = ("import sys, json; from indexer.search import Searcher; from warehouse import Workdir; "
            f"hits = Searcher(Workdir({str(workdir.root)!r})).text_to_image('a red circle', k=5); "
            "print(json.dumps([[h.id for h in hits], sorted(m for m in ('open_clip', 'torchvision', 'transformers') "
            "if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ids, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == [] and ids == expected


def test_files_that_are_off_are_left_to_the_whole_model_to_report(tmp_path):
    """A truncated weights file, or weights that disagree with the config, get None here: `load_checkpoint`
    (open_clip's strict loading) then reports them as the user's broken checkpoint, not as a bug."""
    from warehouse import InputError

    folder, _ = _checkpoint(tmp_path)
    spec = json.loads((folder / "config.json").read_text())
    spec["config"]["text_cfg"]["layers"] = 3  # the weights have 4 blocks
    (folder / "config.json").write_text(json.dumps(spec))
    assert load_text_tower(folder, "cpu") is None

    folder, _ = _checkpoint(tmp_path / "b")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert load_text_tower(folder, "cpu") is None
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_checkpoint(folder, "cpu")
