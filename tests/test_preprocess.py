"""Preprocessing faithful to the model's authors: groundex's embeddings of an open_clip architecture with local
weights equal open_clip's own (its preprocess and tokenizer); the `resize` setting ("squash" | "center-crop")
is recorded with the model, honoured by every decoder and cache, and grounding maps a center-crop model's
patch grid onto the crop window of the image; no false "initialized randomly" warning for loaded weights.

The open_clip architecture is a micro ViT registered from a JSON config in a temp dir (random weights, 14 MB),
so the tests stay fast; `ViT-S-32` itself (63M parameters) gives the same figures (see docs/indexer.md).
"""

import json
import logging
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from grounding import GroundingConfig, ScoredBox, metrics
from grounding.evaluate import SplitMaps
from grounding.ground import Grounder, Grounding
from grounding.heatmap import in_window
from grounding.overlay import render_overlay
from indexer.data import crop_window, decode_square, pixel_cache, square_pixels
from indexer.distributed import _decode
from indexer.embed import _decoded_batches
from indexer.model_spec import load_spec
from indexer.models import create_model, load_checkpoint, save_checkpoint
from tests.helpers import MICRO_VIT, micro_vit_weights
from warehouse import GroundingRow

MICRO = MICRO_VIT
TEXTS = ["a dog runs on the beach", "the man in the red jacket", "x"]
RANDOM_INIT = "No pretrained weights loaded for model"


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The micro architecture registered with open_clip, and random weights for it in a .safetensors file."""
    return micro_vit_weights(tmp_path_factory.mktemp("open_clip"))


@pytest.fixture(scope="module")
def reference(weights):
    """open_clip's own model, preprocess and tokenizer for those weights."""
    model, _, preprocess = open_clip.create_model_and_transforms(MICRO, pretrained=str(weights))
    return model.eval(), preprocess, open_clip.get_tokenizer(MICRO)


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Structure at every scale (gradients, blocks, noise), so resizing choices show in the pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([255 * x / width, 255 * y / height, 128 + 127 * np.sin(x / 7.0) * np.cos(y / 5.0)], axis=-1)
    image[(x // 16 + y // 16) % 3 == 0] *= 0.4
    image += rng.normal(0, 12, size=image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    sizes = {"square": (150, 150), "wide": (300, 180), "tall": (170, 260)}
    out = {}
    for seed, (name, (w, h)) in enumerate(sizes.items()):
        out[name] = root / f"{name}.png"
        picture(w, h, seed).save(out[name])
    return out


# -- parity with open_clip ------------------------------------------------------------------------


@pytest.mark.parametrize(("resize", "kind"), [("squash", "square"), ("center-crop", "square"),
                                              ("center-crop", "wide"), ("center-crop", "tall")])
def test_image_embeddings_equal_open_clips_own(weights, reference, images, resize, kind):
    model = create_model(MICRO, pretrained=str(weights), device="cpu", resize=resize)
    oc_model, preprocess, _ = reference
    path = images[kind]
    expected_pixels = preprocess(Image.open(path))[None]  # (1, 3, S, S) normalized
    pixels = torch.from_numpy(decode_square(str(path), model.image_size, model.resize))[None]
    assert torch.allclose(model.normalize(pixels), expected_pixels, atol=1e-5)  # the same pixels exactly
    assert torch.equal(model.pixels_from_images([Image.open(path)]), pixels)
    assert np.array_equal(next(_decoded_batches([str(path)], model.image_size, 4, None, model.resize)), pixels.numpy())
    ray_batch = _decode({"id": np.array([7]), "path": np.array([str(path)])}, model.image_size, model.resize)
    assert np.array_equal(ray_batch["pixels"], pixels.numpy())
    with torch.no_grad():
        expected = oc_model.encode_image(expected_pixels)
        assert cosines(model.encode_image(pixels), expected).item() >= 0.9999
        assert cosines(model.encode_image_and_patches(pixels)[0], expected).item() >= 0.9999


def test_text_embeddings_equal_open_clips_own(weights, reference):
    model = create_model(MICRO, pretrained=str(weights), device="cpu")
    oc_model, _, tokenizer = reference
    assert torch.equal(model.tokenize(TEXTS), tokenizer(TEXTS))
    with torch.no_grad():
        assert cosines(model.encode_text(TEXTS), oc_model.encode_text(tokenizer(TEXTS))).min().item() >= 0.9999


def test_squash_and_center_crop_differ_on_a_non_square_image(weights, reference, images):
    squash = create_model(MICRO, pretrained=str(weights), device="cpu")
    crop = create_model(MICRO, pretrained=str(weights), device="cpu", resize="center-crop")
    assert squash.resize == "squash" and crop.resize == "center-crop"
    image = Image.open(images["wide"])
    squashed, cropped = squash.pixels_from_images([image]), crop.pixels_from_images([image])
    assert squashed.shape == cropped.shape == (1, 3, 64, 64)
    assert (squashed.float() - cropped.float()).abs().mean() > 10  # grey levels: a different picture
    oc_model, preprocess, _ = reference
    with torch.no_grad():
        expected = oc_model.encode_image(preprocess(image)[None])
        assert cosines(squash.encode_image(squashed), expected).item() < cosines(crop.encode_image(cropped),
                                                                                expected).item()


def test_square_pixels_checks_the_mode():
    with pytest.raises(ValueError, match="resize must be one of squash, center-crop"):
        square_pixels(picture(20, 10), 8, "letterbox")
    with pytest.raises(ValueError, match="resize must be one of"):
        create_model("tiny", resize="crop")


# -- the setting is recorded ----------------------------------------------------------------------


def test_resize_round_trips_through_checkpoints_and_old_configs_load_as_squash(tmp_path, weights, images):
    model = create_model(MICRO, pretrained=str(weights), device="cpu", resize="center-crop")
    digest, folder = save_checkpoint(model, tmp_path / "models")
    assert json.loads((folder / "config.json").read_text())["resize"] == "center-crop"
    loaded = load_checkpoint(folder, "cpu")
    assert loaded.resize == "center-crop" and load_spec(folder).resize == "center-crop"
    pixels = loaded.pixels_from_images([Image.open(images["wide"])])
    assert torch.allclose(loaded.encode_image(pixels), model.encode_image(pixels), atol=1e-6)
    assert create_model(str(folder), device="cpu").resize == "center-crop"  # a checkpoint keeps its own
    assert create_model(str(folder), device="cpu", resize="squash").resize == "squash"

    config = json.loads((folder / "config.json").read_text())
    del config["resize"]  # a checkpoint from before the setting
    (folder / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(folder, "cpu").resize == "squash"
    config["resize"] = "letterbox"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unreadable checkpoint config.*letterbox"):
        load_checkpoint(folder, "cpu")


def test_open_clip_names_and_presets_default_to_squash(weights):
    from indexer.tokenizer import WordTokenizer

    assert create_model(MICRO, pretrained=str(weights), device="cpu").resize == "squash"
    tokenizer = WordTokenizer.build(["a red dog", "a dog"], min_count=1)
    assert create_model("tiny", tokenizer=tokenizer, device="cpu").resize == "squash"
    assert create_model("tiny", tokenizer=tokenizer, device="cpu", resize="center-crop").resize == "center-crop"


def test_pixel_caches_never_mix_modes(tmp_path, images):
    items = [(1, str(images["wide"])), (2, str(images["tall"])), (3, str(images["square"]))]
    squash = pixel_cache(tmp_path, items, 32, workers=1, progress=False)
    crop = pixel_cache(tmp_path, items, 32, workers=1, progress=False, resize="center-crop")
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == [
        "pixels-32px-center-crop.ids.npy", "pixels-32px-center-crop.npy", "pixels-32px.ids.npy", "pixels-32px.npy"]
    for image_id, path in items[:2]:
        assert np.array_equal(squash.get([image_id])[0], decode_square(path, 32, "squash"))
        assert np.array_equal(crop.get([image_id])[0], decode_square(path, 32, "center-crop"))
        assert not np.array_equal(squash.get([image_id])[0], crop.get([image_id])[0])
    assert np.array_equal(squash.get([3]), crop.get([3]))  # a square image is the same either way
    again = pixel_cache(tmp_path, items, 32, workers=1, progress=False)  # read back from disk
    assert np.array_equal(again.pixels, squash.pixels)


# -- grounding a center-crop model ----------------------------------------------------------------


def test_crop_window_is_the_central_square_in_fractions():
    assert crop_window(200, 100, "center-crop") == (0.25, 0.0, 0.75, 1.0)
    assert crop_window(100, 400, "center-crop") == (0.0, 0.375, 1.0, 0.625)
    assert crop_window(64, 64, "center-crop") == (0.0, 0.0, 1.0, 1.0)
    assert crop_window(200, 100, "squash") == (0.0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="resize must be one of"):
        crop_window(200, 100, "pad")


def test_points_and_boxes_map_into_the_window():
    window = (0.25, 0.0, 0.75, 1.0)
    assert np.allclose(in_window(np.array([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]), window),
                       [[0.25, 0.0], [0.5, 0.5], [0.75, 1.0]])
    per_point = np.array([window, (0.0, 0.0, 1.0, 1.0)])
    assert np.allclose(in_window(np.array([[1.0, 0.5], [1.0, 0.5]]), per_point), [[0.75, 0.5], [1.0, 0.5]])
    box = ScoredBox(0.0, 0.5, 0.5, 1.0, 0.7).in_window(window)
    assert (box.x1, box.y1, box.x2, box.y2, box.score) == (0.25, 0.5, 0.5, 1.0, 0.7)


def grounder_of(resize: str) -> Grounder:
    """A Grounder around a stand-in model spec (patch grid and resize are all `_grounding` asks of the model)."""
    grounder = Grounder.__new__(Grounder)
    grounder.grid, grounder.spec = (4, 4), SimpleNamespace(resize=resize)
    grounder._box_head = None  # a model without a box head: boxes from the heatmap
    grounder.config = GroundingConfig(upsample=1, threshold=0.9)
    return grounder


@pytest.mark.parametrize("resize", ["squash", "center-crop"])
def test_grounding_places_the_patch_grid_on_the_part_of_the_image_the_model_saw(resize):
    patches = np.zeros((16, 2), dtype=np.float32)
    patches[:, 1] = 1.0
    patches[3] = (1.0, 0.0)  # the top-right cell matches the phrase
    g = grounder_of(resize)._grounding("a dog", np.array([1.0, 0.0], dtype=np.float32), patches, None,
                                       {"width": 400, "height": 200})
    box = g.boxes[0]
    if resize == "squash":  # the cell is the top-right quarter-width column of the whole frame
        assert g.point == (350.0, 25.0) and (box.x1, box.y1, box.x2, box.y2) == (300.0, 0.0, 400.0, 50.0)
        assert g.window is None and g.heatmap_window == (0.0, 0.0, 400.0, 200.0)
    else:  # the model saw the central 200 x 200: the cell is its top-right corner
        assert g.point == (275.0, 25.0) and (box.x1, box.y1, box.x2, box.y2) == (250.0, 0.0, 300.0, 50.0)
        assert g.window == (100.0, 0.0, 300.0, 200.0) and g.as_dict()["window"] == [100.0, 0.0, 300.0, 200.0]


def test_overlay_draws_the_heatmap_in_the_window_only():
    heat = np.arange(16, dtype=np.float32).reshape(4, 4)
    g = Grounding("x", None, 400, 200, 0.5, (275.0, 25.0), [], heat, window=(100.0, 0.0, 300.0, 200.0))
    out = np.asarray(render_overlay(Image.new("RGB", (400, 200), (0, 0, 0)), g, max_side=None)).astype(int)
    assert out[:, :95].max() == 0 and out[:, 305:].max() == 0  # outside the crop window: the image as it was
    assert out[:, 105:295].max() > 0


def test_evaluation_maps_points_and_boxes_into_the_window():
    # the map's peak is the right-most column of the model's input; the phrase's box is at 0.6..0.8 of the
    # image, which is that column for a center-crop model (window 0.25..0.75) and not for the whole frame
    maps = np.zeros((1, 4, 4), dtype=np.float32)
    maps[0, :, 3] = 1.0
    rows = [GroundingRow(1, 1, 1, 1, ["people"], "a man", False, [(0.6, 0.0, 0.8, 1.0)])]
    config = GroundingConfig(upsample=1, threshold=0.9)
    assert metrics(SplitMaps(rows, maps), config)["pointing_game"] == 0
    windowed = metrics(SplitMaps(rows, maps, np.array([(0.25, 0.0, 0.75, 1.0)])), config)
    assert windowed["pointing_game"] == 100 and windowed["box_acc@0.5"] == 100


# -- no false word about the weights --------------------------------------------------------------


def test_loaded_weights_bring_no_random_init_warning_and_failures_raise(tmp_path, weights, caplog):
    caplog.set_level(logging.INFO)
    create_model(MICRO, pretrained=str(weights), device="cpu")
    assert not [r for r in caplog.records if RANDOM_INIT in r.getMessage()]
    assert any(str(weights) in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    caplog.clear()
    create_model(MICRO, device="cpu")  # no weights: open_clip's warning is true, and still shown
    assert [r for r in caplog.records if RANDOM_INIT in r.getMessage()]

    with pytest.raises(FileNotFoundError, match="no such weights file"):
        create_model(MICRO, pretrained=str(tmp_path / "missing.safetensors"), device="cpu")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="broken.safetensors: not a readable safetensors file"):
        create_model(MICRO, pretrained=str(broken), device="cpu")
    other = tmp_path / "other.safetensors"
    save_file({"ln_final.weight": torch.ones(384), "ln_final.bias": torch.zeros(384)}, str(other))  # a wider model's
    with pytest.raises(ValueError, match="other.safetensors: weights do not fit the model"):
        create_model(MICRO, pretrained=str(other), device="cpu")
