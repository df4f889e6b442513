"""The grounding head (indexer/box_head.py, indexer/box_fit.py): its parametrization, its training targets, fitting
it to frozen embeddings, storage beside a checkpoint, and the boxes grounding draws from it (several instances,
non-maximum suppression)."""

import numpy as np
import pytest
import torch

from grounding import GroundingConfig
from grounding.heatmap import boxes_from_head, cell_of
from indexer.box_fit import BoxFitConfig, fit_box_head
from indexer.box_head import BoxHead, box_targets, cell_centres, generalized_iou, head_losses, load_box_head
from indexer.phrase_region_loss import boxes_in_crop
from warehouse import GroundingRow, InputError


def unit(*shape):
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


def test_an_untrained_head_points_like_the_heatmap_draws_each_cell_and_round_trips_through_its_file(tmp_path):
    torch.manual_seed(0)
    head = BoxHead(dim=16, grid=(4, 4), hidden=8, phrase_hidden=8)
    patches, phrases = unit(2, 16, 16), unit(2, 16)
    scores, boxes = head.predict(patches, phrases)  # (2, 16), (2, 16, 4)
    cosine = torch.einsum("npd,nd->np", patches, phrases)
    assert torch.allclose(scores, 10 * cosine, atol=1e-5)  # the heatmap, scaled
    centres = cell_centres((4, 4))
    expected = torch.cat([centres - 0.125, centres + 0.125], dim=1)
    assert torch.allclose(boxes[0], expected, atol=1e-5) and torch.allclose(boxes[1], expected, atol=1e-5)
    torch.nn.init.normal_(head.out.weight)
    head.save(tmp_path)
    loaded = load_box_head(tmp_path)
    assert loaded.grid == (4, 4) and loaded.sizes == head.sizes
    for a, b in zip(loaded.predict(patches, phrases), head.predict(patches, phrases), strict=True):
        assert torch.allclose(a, b)
    written = (tmp_path / "box_head.safetensors").read_bytes()
    for _ in range(5):  # the file is part of the model's hash: the same head is always the same bytes
        head.save(tmp_path)
        assert (tmp_path / "box_head.safetensors").read_bytes() == written
    from safetensors import safe_open  # ... in any process: one metadata key, whose order cannot change

    with safe_open(str(tmp_path / "box_head.safetensors"), framework="pt") as f:
        assert list(f.metadata()) == ["groundex_box_head"]
    from safetensors.torch import save_file  # a file of this format written with a key per field still loads

    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp_path / "box_head.safetensors"),
              metadata={"format": "2", "grid": "4x4", **{k: str(v) for k, v in head.sizes.items()}})
    for a, b in zip(load_box_head(tmp_path).predict(patches, phrases), head.predict(patches, phrases), strict=True):
        assert torch.allclose(a, b)
    assert load_box_head(tmp_path / "elsewhere") is None  # a model without a head: grounding uses the heatmap
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "box_head.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="box_head.safetensors"):
        load_box_head(tmp_path / "broken")


def test_a_head_file_from_an_earlier_format_is_ignored_with_a_warning(tmp_path, caplog):
    """The model stays usable (its hash, and so `groundex verify`, unchanged): it grounds with the heatmap."""
    from safetensors.torch import save_file

    save_file({"mlp.0.weight": torch.zeros(4, 4)}, str(tmp_path / "box_head.safetensors"),
              metadata={"grid": "8x8", "radius": "3"})
    with caplog.at_level("WARNING"):
        assert load_box_head(tmp_path) is None
    assert "earlier groundex" in caplog.text and "Train the model again" in caplog.text


def test_phrases_of_one_image_share_its_features():
    """Several phrases of one image (`image_of`) give what one image per phrase gives."""
    torch.manual_seed(0)
    head = BoxHead(dim=8, grid=(4, 4), hidden=8, phrase_hidden=8)
    torch.nn.init.normal_(head.out.weight)
    patches, phrases = unit(2, 16, 8), unit(3, 8)
    image_of = torch.tensor([0, 1, 0])
    shared = head(patches, phrases, image_of)
    separate = head(patches[image_of], phrases)
    for a, b in zip(shared, separate, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_generalized_iou():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0]])
    assert torch.allclose(generalized_iou(a, b), torch.tensor([1.0, 0.5, -0.5]))


def test_boxes_follow_the_crop_and_a_flip():
    boxes = torch.tensor([[0.2, 0.2, 0.4, 0.6]])
    crops = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 0.0, 1.0]])  # the left half; the same, flipped
    assert torch.allclose(boxes_in_crop(boxes, crops, torch.tensor([0])), torch.tensor([[0.4, 0.2, 0.8, 0.6]]))
    assert torch.allclose(boxes_in_crop(boxes, crops, torch.tensor([1])), torch.tensor([[0.2, 0.2, 0.6, 0.6]]))


def test_targets_are_the_cells_inside_a_box_each_with_the_smallest_box_holding_it():
    grid = (4, 4)
    two_people = [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]
    nested = [(0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.5, 0.5)]
    small = [(0.66, 0.66, 0.8, 0.8)]  # holds no cell centre
    inside, targets = box_targets([two_people, nested, small], grid)
    left, right = cell_of(np.array([0.1, 0.5]), grid), cell_of(np.array([0.9, 0.5]), grid)
    assert inside[0].all() and targets[0, left].tolist() == [0.0, 0.0, 0.5, 1.0]
    assert targets[0, right].tolist() == [0.5, 0.0, 1.0, 1.0]
    inner, outer = cell_of(np.array([0.1, 0.1]), grid), cell_of(np.array([0.9, 0.9]), grid)
    assert targets[1, inner].tolist() == [0.0, 0.0, 0.5, 0.5] and targets[1, outer].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert not inside[2].any()
    flipped_inside, flipped = box_targets([[(0.0, 0.0, 0.25, 0.5)]], grid, flip=True)  # mirrored: the right edge
    assert flipped_inside[0].sum() == 2 and flipped[0, cell_of(np.array([0.9, 0.1]), grid)].tolist() == [
        0.75, 0.0, 1.0, 0.5]
    # the losses: uniform scores put 4/16 of the mass on a quarter's cells; a perfect head has a zero box loss;
    # nothing to point at is no loss
    quarter_inside, quarter = box_targets([[(0.0, 0.0, 0.5, 0.5)]], grid)
    pointing, box = head_losses(torch.zeros(1, 16), quarter.clone(), quarter_inside, quarter)
    assert pointing.item() == pytest.approx(-np.log(4 / 16), abs=1e-6) and box.item() == pytest.approx(0.0, abs=1e-6)
    wrong = quarter.clone()
    wrong[..., 2:] += 0.25
    assert head_losses(torch.zeros(1, 16), wrong, quarter_inside, quarter)[1].item() > 0.5
    pointing, box = head_losses(torch.zeros(1, 16), targets[2:].clone(), inside[2:], targets[2:])
    assert pointing.item() == 0.0 and box.item() == 0.0


class FakeModel(torch.nn.Module):
    """Patch embeddings that say what each cell shows (a colour's direction where an object of that colour is),
    phrase embeddings that name the colour: a model whose heatmap is right, whose boxes a head must learn."""

    def __init__(self, dim=8, grid=(4, 4)):
        super().__init__()
        self.embed_dim, self.patch_grid = dim, grid
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.directions = torch.nn.functional.normalize(torch.randn(4, dim, generator=torch.Generator().manual_seed(1)),
                                                        dim=-1)

    def encode_patches(self, pixels):  # pixels (N, 1, gh, gw): the colour index of each cell (3: background)
        labels = pixels[:, 0].reshape(len(pixels), -1).long()
        return self.directions[labels]

    def encode_text(self, texts):
        return self.directions[[int(t.split()[-1]) for t in texts]]


class FakeCache:
    def __init__(self, pixels):
        self.pixels = pixels

    def get(self, ids):
        return self.pixels[list(ids)]


def scene(rng, grid=(4, 4)):
    """One object per colour 0..2, each a random rectangle of cells; its box is the rectangle."""
    gh, gw = grid
    cells = np.full((1, gh, gw), 3, dtype=np.uint8)
    boxes = {}
    for colour in rng.permutation(3)[:2]:
        x1, y1 = rng.integers(0, gw - 1), rng.integers(0, gh - 1)
        x2, y2 = rng.integers(x1 + 1, gw + 1), rng.integers(y1 + 1, gh + 1)
        cells[0, y1:y2, x1:x2] = colour
        boxes[int(colour)] = (x1 / gw, y1 / gh, x2 / gw, y2 / gh)
    return cells, {c: b for c, b in boxes.items() if (cells[0] == c).any()}


def test_a_fitted_head_draws_the_objects_boxes_where_the_heatmap_cannot():
    """Objects are rectangles of cells. The heatmap's cell box is one cell; the head, fitted on frozen embeddings for
    a few epochs, draws the whole rectangle (IoU >= 0.5) for most phrases of unseen scenes."""
    rng = np.random.default_rng(0)
    images, rows = [], []
    for i in range(300):
        cells, boxes = scene(rng)
        images.append(cells)
        for colour, box in boxes.items():
            rows.append(GroundingRow(len(rows), i, i, colour + 1, ["other"], f"colour {colour}", False, [box]))
    model, cache = FakeModel(), FakeCache(np.stack(images))
    train, test = [r for r in rows if r.image_id < 250], [r for r in rows if r.image_id >= 250]
    head, stats = fit_box_head(model, cache, train, BoxFitConfig(epochs=30, batch_images=32, progress=False))
    assert stats["epochs"] == 30 and stats["images"] == 250 and stats["phrases"] == len(train)
    patches = model.encode_patches(torch.from_numpy(cache.get([r.image_id for r in test])))
    scores, boxes = head.predict(patches, model.encode_text([r.text for r in test]))
    top = scores.argmax(dim=1)
    drawn = boxes[torch.arange(len(test)), top]
    truth = torch.tensor([r.boxes[0] for r in test])
    hits = (generalized_iou(drawn, truth) >= 0.5).float().mean().item()  # GIoU <= IoU: a hit here is a hit
    one_cell = torch.cat([cell_centres((4, 4))[top] - 0.125, cell_centres((4, 4))[top] + 0.125], dim=1)
    cell_hits = (generalized_iou(one_cell, truth) >= 0.5).float().mean().item()
    assert hits >= 0.8 and hits > cell_hits + 0.4, (hits, cell_hits)


def test_grounding_draws_a_box_per_instance_and_suppresses_duplicates():
    grid = (4, 4)
    left, right = (0.0, 0.2, 0.45, 1.0), (0.55, 0.2, 1.0, 1.0)
    cells = np.array([left if x < 2 else right for _ in range(4) for x in range(4)], dtype=np.float32)
    heat = np.zeros(grid, dtype=np.float32)
    heat[2, 0], heat[2, 1], heat[2, 3] = 1.0, 0.95, 0.9  # two cells on the left man, one on the right
    cosine = heat / 2
    config = GroundingConfig(head_threshold=0.8, nms_iou=0.5)
    boxes = boxes_from_head(cells, heat, cosine, cell_of(np.array([0.1, 0.6]), grid), config)
    assert [v for b in boxes for v in (b.x1, b.x2)] == pytest.approx([0.0, 0.45, 0.55, 1.0])  # a duplicate dropped
    assert boxes[0].score == 0.5 and boxes[1].score == np.float32(0.45)  # each box's score: its cell's cosine
    high = GroundingConfig(head_threshold=0.99)
    assert len(boxes_from_head(cells, heat, cosine, cell_of(np.array([0.1, 0.6]), grid), high)) == 1  # one only


def test_a_head_is_one_of_the_model_s_files_hashed_exported_and_loaded(tmp_path):
    from indexer.models import create_model, load_checkpoint, write_checkpoint
    from indexer.tokenizer import WordTokenizer
    from warehouse import content_hash, hashed_files

    model = create_model("tiny", tokenizer=WordTokenizer.build(["a red dog"], min_count=1), device="cpu")
    (tmp_path / "plain").mkdir()
    write_checkpoint(model, tmp_path / "plain")
    assert load_checkpoint(tmp_path / "plain", "cpu").box_head is None
    model.box_head = BoxHead(model.embed_dim, model.patch_grid)
    (tmp_path / "head").mkdir()
    write_checkpoint(model, tmp_path / "head")
    assert "box_head.safetensors" in hashed_files("model", tmp_path / "head")
    assert content_hash("model", tmp_path / "head") != content_hash("model", tmp_path / "plain")
    loaded = load_checkpoint(tmp_path / "head", "cpu")
    assert loaded.box_head is not None and loaded.box_head.grid == model.patch_grid


def test_a_time_budget_fits_until_it_is_spent_and_too_short_a_budget_fits_no_head(caplog):
    rng = np.random.default_rng(1)
    images, rows = [], []
    for i in range(40):
        cells, boxes = scene(rng)
        images.append(cells)
        rows += [GroundingRow(len(rows), i, i, c + 1, ["other"], f"colour {c}", False, [b]) for c, b in boxes.items()]
    model, cache = FakeModel(), FakeCache(np.stack(images))
    head, stats = fit_box_head(model, cache, rows, BoxFitConfig(seconds=1.0, batch_images=8, progress=False))
    assert head is not None and stats["steps"] >= 10 and stats["epochs"] >= 1  # at least one epoch, by time
    with caplog.at_level("WARNING"):
        head, stats = fit_box_head(model, cache, rows, BoxFitConfig(seconds=1e-6, progress=False))
    assert head is None and stats["steps"] == 0 and "no box head" in caplog.text


def test_fit_settings_are_checked_and_sided_phrases_are_recognised():
    from indexer.box_fit import SIDED

    for bad in ({"epochs": 0}, {"seconds": 0}, {"per_image": 0}, {"lr": 0}):
        with pytest.raises(InputError, match="box head"):
            BoxFitConfig(**bad)
    assert SIDED.search("his left hand") and SIDED.search("the man on the Right")
    assert not SIDED.search("leftover pizza") and not SIDED.search("a bright light")
