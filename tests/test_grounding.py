"""Grounding parts on tiny inputs: the phrase-region objective, heatmaps to points and boxes, metrics, tuning,
the catalog's phrase rows and regions, overlays."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import warehouse
from grounding import GroundingConfig, ScoredBox, metrics, tune
from grounding.evaluate import SplitMaps, _box_hits, _inside, _near, merged_box
from grounding.ground import Grounding
from grounding.heatmap import boxes_from_map, center_prior, iou, points, score_maps
from grounding.overlay import render_overlay
from indexer.models import TrackedPatchDropout
from indexer.phrase_region_loss import RegionTable, patch_coverage, region_losses
from tests.helpers import write_entities_root
from warehouse import Catalog, GroundingRow, IngestConfig, Workdir

FULL = torch.tensor([[0.0, 0.0, 1.0, 1.0]])


def row(phrase_id, image_id, entity_id, text, boxes, scene=False, types=("people",)):
    return GroundingRow(phrase_id, image_id, phrase_id, entity_id, list(types), text, scene, boxes)


# -- the training objective -------------------------------------------------------------------------


def test_coverage_of_a_box_follows_crops_and_flips():
    left_half = torch.tensor([[0.0, 0.0, 0.5, 1.0]])
    owner = torch.tensor([0])
    cover = patch_coverage(left_half, owner, 1, FULL, owner, (4, 4)).reshape(4, 4)
    assert torch.equal(cover, torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4))
    # cropping to the left half: the box fills the frame
    cropped = patch_coverage(left_half, owner, 1, torch.tensor([[0.0, 0.0, 0.5, 1.0]]), owner, (4, 4))
    assert torch.allclose(cropped, torch.ones(1, 16))
    # a flipped crop (x1 > x2) mirrors it
    flipped = patch_coverage(left_half, owner, 1, torch.tensor([[1.0, 0.0, 0.0, 1.0]]), owner, (4, 4)).reshape(4, 4)
    assert torch.equal(flipped, cover.flip(-1))
    # partial cells get fractions; two boxes of one region take the max per cell
    two = torch.tensor([[0.0, 0.0, 0.125, 0.25], [0.75, 0.75, 1.0, 1.0]])
    cover = patch_coverage(two, torch.tensor([0, 0]), 1, FULL, torch.tensor([0, 0]), (4, 4)).reshape(4, 4)
    assert cover[0, 0] == pytest.approx(0.5) and cover[3, 3] == 1 and cover.sum() == pytest.approx(1.5)


def test_region_table_skips_unlocalizable_phrases_and_frames_scenes():
    rows = [row(1, 10, 5, "A man", [(0.1, 0.1, 0.5, 0.9)]), row(2, 10, 5, "a man", [(0.1, 0.1, 0.5, 0.9)]),
            row(3, 10, 0, "one another", []),                      # notvisual
            row(4, 10, 6, "the street", [], scene=True),            # scene: whole frame
            row(5, 10, 7, "a thing", []),                           # nobndbox
            row(6, 11, 1, "a man", [(0.5, 0.5, 1.0, 1.0), (0.0, 0.0, 0.2, 0.2)])]
    table = RegionTable(rows, lambda texts: torch.zeros(len(texts), 4, dtype=torch.long))
    assert len(table) == 3 and table.texts == ["a man", "the street"]  # texts are normalized and shared
    batch = table.sample([10, 11, 99], per_image=4, rng=np.random.default_rng(0))
    assert batch.image_index.tolist() == [0, 0, 1]
    scene = batch.text_ids.tolist().index(1)
    assert batch.localize.tolist()[scene] is False and batch.localize.sum() == 2
    assert batch.boxes[batch.box_region == scene].tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert batch.box_region.tolist() == [0, 1, 2, 2]  # image 11's region has both of its boxes
    assert len(table.sample([10], per_image=1, rng=np.random.default_rng(0)).image_index) == 1


def test_region_losses_reward_patches_that_match_their_phrase():
    torch.manual_seed(0)
    texts = F.normalize(torch.randn(2, 16), dim=-1)
    coverage = torch.zeros(2, 4)
    coverage[0, 0], coverage[1, 3] = 1, 1  # phrase 0 lives in cell 0 of image 0, phrase 1 in cell 3 of image 1
    args = (coverage, torch.tensor([0, 1]), texts, torch.tensor([0, 1]), torch.tensor([True, True]), torch.tensor(10.0))
    noise = F.normalize(torch.randn(2, 4, 16), dim=-1)
    aligned = noise.clone()
    aligned[0, 0], aligned[1, 3] = texts[0], texts[1]
    nce_noise, loc_noise, n = region_losses(noise, None, *args)
    nce_aligned, loc_aligned, _ = region_losses(aligned, None, *args)
    assert n == 2 and nce_aligned < nce_noise and loc_aligned < loc_noise
    # kept patches: cell 0 of image 0 dropped -> that region has nothing left and is left out
    kept = torch.tensor([[1, 2], [3, 0]])
    _, _, used = region_losses(aligned[:, :2], kept, *args)
    assert used == 1
    # gradients reach the patches
    patches = noise.clone().requires_grad_(True)
    nce, loc, _ = region_losses(patches, None, *args)
    (nce + loc).backward()
    assert patches.grad.abs().sum() > 0


def test_phrase_maps_score_each_phrase_on_its_own_image_and_keep_the_training_mode():
    from indexer.data import PixelCache
    from indexer.models import create_model
    from indexer.phrase_region_loss import phrase_maps, pointing_for_eval
    from indexer.tokenizer import WordTokenizer

    model = create_model("tiny", tokenizer=WordTokenizer.build(["a red dog", "a blue car"], min_count=1),
                         device="cpu").train()
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8).numpy()
    cache = PixelCache(np.array([10, 20]), pixels)
    rows = [row(1, 20, 1, "a red dog", [(0, 0, 0.5, 0.5)]), row(2, 10, 2, "a blue car", [(0.5, 0.5, 1, 1)]),
            row(3, 20, 2, "a blue car", [(0, 0, 1, 1)])]
    maps = phrase_maps(model, cache, rows)
    assert maps.shape == (3, 8, 8) and model.training  # the caller's mode is back
    with torch.no_grad():
        model.eval()
        direct = model.encode_patches(torch.from_numpy(pixels[1:])) @ model.encode_text(["a red dog"])[0]
    assert np.allclose(maps[0].ravel(), direct[0].numpy(), atol=1e-5)
    assert pointing_for_eval(model, cache, rows[2:]) == 100.0  # a box over the whole image is always hit


def test_tracked_patch_dropout_reports_the_kept_cells():
    dropout = TrackedPatchDropout(0.5).train()
    x = torch.arange(17, dtype=torch.float)[None, :, None].repeat(3, 1, 2)  # token value = position (0 is CLS)
    out = dropout(x)
    assert out.shape == (3, 9, 2) and dropout.kept.shape == (3, 8)
    assert torch.equal(out[:, 1:, 0], dropout.kept.float() + 1) and torch.all(out[:, 0] == 0)
    assert torch.equal(dropout.eval()(x), x) and dropout.kept is None


# -- heatmaps, points, boxes ----------------------------------------------------------------------


def blob_map(centres, size=8, width=0.6):
    y, x = np.mgrid[0:size, 0:size] + 0.5
    out = np.zeros((size, size), dtype=np.float32)
    for cx, cy, height in centres:
        out += height * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width ** 2))
    return out


def test_point_and_boxes_find_the_blobs_best_first():
    config = GroundingConfig(upsample=4, threshold=0.5, max_boxes=3, min_box_area=0.0)
    heat = blob_map([(2, 2, 1.0), (6, 6, 0.7)])  # strong blob top-left, weaker bottom-right
    raw, scored = score_maps(heat[None], config)
    (px, py), = points(scored)
    assert px == pytest.approx(2 / 8, abs=0.05) and py == pytest.approx(2 / 8, abs=0.05)
    boxes = boxes_from_map(raw[0], scored[0], config)
    assert len(boxes) == 2
    first, second = boxes
    assert first.x1 < 0.25 < first.x2 and first.y1 < 0.25 < first.y2 and first.x2 < 0.5
    assert second.x1 > 0.5 and first.score > second.score == pytest.approx(raw[0][scored[0] >= 0.5].max(), abs=0.4)
    flat = np.zeros((8, 8), dtype=np.float32)
    raw, scored = score_maps(flat[None], config)
    assert [(b.x1, b.y1, b.x2, b.y2) for b in boxes_from_map(raw[0], scored[0], config)] == [(0, 0, 1, 1)]


def test_center_prior_moves_the_point_towards_the_middle():
    heat = blob_map([(1, 1, 1.0), (4, 4, 0.9)])
    _, plain = score_maps(heat[None], GroundingConfig(center_prior=0.0))
    _, prior = score_maps(heat[None], GroundingConfig(center_prior=1.0, prior_sigma=0.2))
    assert points(plain)[0][0] < 0.25 and points(prior)[0][0] == pytest.approx(0.5, abs=0.07)
    bump = center_prior((8, 8), 0.3)
    assert bump.max() == bump[3:5, 3:5].max() and bump[0, 0] < 0.3


def test_iou():
    boxes = np.array([[0, 0, 1, 1], [0.5, 0, 1, 1], [2, 2, 3, 3]])
    assert np.allclose(iou((0, 0, 1, 1), boxes), [1, 0.5, 0])


def test_config_round_trips_and_validates(tmp_path):
    config = GroundingConfig(center_prior=0.5, threshold=0.3, tuned_on="val")
    config.save(tmp_path / "g.json")
    assert GroundingConfig.load(tmp_path / "g.json") == config
    with pytest.raises(ValueError, match="threshold"):
        GroundingConfig(threshold=2)
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rank_global must be a finite number >= 0"):
            GroundingConfig(rank_global=bad)
    (tmp_path / "old.json").write_text('{"threshold": 0.4}')  # written before rank_global existed: the default
    assert GroundingConfig.load(tmp_path / "old.json").rank_global == GroundingConfig().rank_global
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        GroundingConfig.load(tmp_path / "bad.json")


# -- metrics and tuning ---------------------------------------------------------------------------


def test_metrics_count_hits_by_type_with_baselines():
    rows = [row(1, 1, 1, "a dog", [(0.0, 0.0, 0.45, 0.45)], types=("animals",)),  # blob inside: hit
            row(2, 1, 2, "a man", [(0.6, 0.6, 1.0, 1.0)]),                        # blob elsewhere: miss
            row(3, 2, 1, "a crowd", [(0.0, 0.0, 1.0, 1.0)])]                      # whole image: hits everything
    maps = np.stack([blob_map([(1, 1, 1.0)])] * 3)
    result = metrics(SplitMaps(rows, maps), GroundingConfig(threshold=0.5))
    assert result["phrases"] == 3 and result["images"] == 2
    assert result["pointing_game"] == pytest.approx(200 / 3, abs=0.01)
    third = pytest.approx(100 / 3, abs=0.01)
    assert result["baselines"] == {"center": {"pointing_game": third},  # no sizes given: no 15 px figure
                                   "whole_image": {"box_acc@0.5": third, "box_acc@0.5_merged": third}}
    assert result["by_type"]["animals"]["pointing_game"] == 100 and result["by_type"]["people"]["phrases"] == 2
    assert result["by_type"]["animals"]["box_acc@0.5"] == 0  # the blob's box is much smaller than the dog's


def test_any_box_and_merged_box_protocols_and_the_pointing_tolerance_on_hand_made_cases():
    """Two people side by side (one phrase, two boxes): a box on one of them is a hit for any-box and a miss for
    merged-box, a box around both the reverse. A point 10 px left of a box is a hit with Zhang et al.'s 15 px
    tolerance only."""
    two = [(0.0, 0.2, 0.4, 1.0), (0.6, 0.2, 1.0, 1.0)]
    assert merged_box(two) == (0.0, 0.2, 1.0, 1.0)
    rows = [row(1, 1, 1, "two men", two), row(2, 1, 1, "two men", two), row(3, 2, 1, "a dog", [(0.5, 0.5, 1.0, 1.0)])]
    any_box, merged = _box_hits([(0.0, 0.2, 0.4, 1.0), (0.0, 0.2, 1.0, 1.0), (0.5, 0.5, 1.0, 1.0)], rows)
    assert any_box.tolist() == [True, False, True] and merged.tolist() == [False, True, True]
    size = np.array([200.0, 100.0])  # 10 px left of the dog's box at x = 100: 0.45 of 200 px
    assert not _inside(np.array([0.45, 0.75]), rows[2].boxes)
    assert _near(np.array([0.45, 0.75]), rows[2].boxes, size) and not _near(np.array([0.40, 0.75]), rows[2].boxes,
                                                                            size)  # 20 px away
    # through `metrics`: a map high on the left man only, so its box is his alone
    maps = np.zeros((2, 8, 8), dtype=np.float32)
    maps[:, 2:8, 0:3] = 1.0
    result = metrics(SplitMaps(rows[:2], maps, sizes=np.array([size, size])), GroundingConfig(threshold=0.5))
    assert result["phrases_with_several_boxes"] == 2
    assert result["box_acc@0.5"] > result["box_acc@0.5_merged"]
    assert result["pointing_game_15px"] >= result["pointing_game"]


def test_with_a_box_head_both_paths_are_reported_and_tuning_keeps_the_better():
    """Each phrase's map peaks on a cell inside its box; the heatmap's box (the hot cells) is a sliver of the
    true box, while the head's box for that cell is the true box (a good head) or a cell-sized one (a bad head)."""
    rows = [row(i, i, 1, "a dog", [(0.0, 0.0, 0.5, 0.5)]) for i in range(6)]
    maps = np.zeros((6, 4, 4), dtype=np.float32)
    maps[:, 0, 0] = 1.0
    good = np.tile(np.array([0.0, 0.0, 0.5, 0.5], dtype=np.float32), (6, 16, 1))
    bad = np.tile(np.array([0.0, 0.0, 0.1, 0.1], dtype=np.float32), (6, 16, 1))
    base = GroundingConfig(upsample=1, threshold=0.9)
    with_good = metrics(SplitMaps(rows, maps, head_scores=maps, cell_boxes=good), base)
    assert with_good["boxes_from"] == "box head" and with_good["box_acc@0.5"] == 100
    assert with_good["heatmap_path"]["box_acc@0.5"] == 0  # one cell of four: IoU 0.25
    config, trials = tune(SplitMaps(rows, maps, head_scores=maps, cell_boxes=good), base)
    assert config.boxes == "head" and trials["boxes"] == {"box head": 100.0, "heatmap": 0.0, "box head merged": 100.0,
                                                          "heatmap merged": 0.0}
    wide = maps.copy()
    wide[:, 0:2, 0:2] = np.array([[1.0, 0.95], [0.95, 0.95]])  # now the heatmap's hot cells are the whole box
    config, _ = tune(SplitMaps(rows, wide, head_scores=wide, cell_boxes=bad), base)
    assert config.boxes == "heatmap"
    chosen = metrics(SplitMaps(rows, wide, head_scores=wide, cell_boxes=bad), config)
    assert chosen["boxes_from"] == "heatmap" and chosen["box_head_path"]["box_acc@0.5"] == 0


def test_the_head_s_scores_choose_the_point_and_its_box():
    """The heatmap peaks outside the box (a far corner); the head's scores peak inside it: with the head, the point
    and the box come from its scores, and the heatmap path is reported beside them."""
    rows = [row(i, i, 1, "a dog", [(0.0, 0.0, 0.5, 0.5)]) for i in range(4)]
    maps = np.zeros((4, 4, 4), dtype=np.float32)
    maps[:, 3, 3] = 1.0
    scores = np.zeros_like(maps)
    scores[:, 0, 0] = 5.0
    cells = np.tile(np.array([0.0, 0.0, 0.5, 0.5], dtype=np.float32), (4, 16, 1))
    cells[:, 15] = (0.75, 0.75, 1.0, 1.0)  # the corner cell draws its own box
    result = metrics(SplitMaps(rows, maps, head_scores=scores, cell_boxes=cells), GroundingConfig(upsample=1))
    assert result["pointing_game"] == 100 and result["box_acc@0.5"] == 100
    assert result["heatmap_path"]["pointing_game"] == 0 and result["heatmap_path"]["box_acc@0.5"] == 0
    assert result["by_type"]["people"]["heatmap_pointing_game"] == 0
    heatmap_only = metrics(SplitMaps(rows, maps, head_scores=scores, cell_boxes=cells),
                           GroundingConfig(upsample=1, boxes="heatmap"))
    assert heatmap_only["pointing_game"] == 0 and heatmap_only["box_head_path"]["pointing_game"] == 100


def test_tuning_finds_the_prior_when_the_maps_are_noise():
    rng = np.random.default_rng(0)
    rows = [row(i, i, 1, "x", [(0.3, 0.3, 0.7, 0.7)]) for i in range(60)]
    maps = rng.normal(size=(60, 8, 8)).astype(np.float32)
    config, trials = tune(SplitMaps(rows, maps))
    assert config.center_prior > 0 and config.tuned_on == "val"
    assert max(t["pointing_game"] for t in trials["pointing_game"]) == metrics(SplitMaps(rows, maps),
                                                                               config)["pointing_game"] == 100


# -- catalog --------------------------------------------------------------------------------------


def test_catalog_grounding_rows_and_regions(tmp_path):
    workdir = Workdir(tmp_path / "w")
    warehouse.ingest_flickr30k(workdir, write_entities_root(tmp_path / "f30k"), config=IngestConfig(progress=False))
    with Catalog.open(workdir) as catalog:
        rows = catalog.grounding_rows("val")
        image_id = rows[0].image_id
        by_text = {r.text: r for r in rows}
        cats, cats_again = [r for r in rows if r.text == "Two cats"]  # one occurrence per caption
        assert cats.types == ["people"] and cats_again.types == ["animals", "people"]
        assert len(cats.boxes) == 2 and cats.boxes == cats_again.boxes  # entity 2: its own box and the shared one
        # 1-based inclusive xmin..xmax pixels -> continuous edges, normalized by the annotated size
        assert np.allclose(cats.boxes[0], (11 / 500, 9 / 333, 100 / 500, 200 / 333), atol=1e-3)
        assert by_text["the porch"].scene and by_text["the porch"].boxes == []
        assert by_text["one another"].entity_id == 0 and by_text["one another"].boxes == []
        assert {r.image_id for r in catalog.grounding_rows(image_ids=[image_id])} == {image_id}
        catalog.add_regions("m1", "two cats", [(image_id, 1, 2, 30, 40, 0.5), (image_id, 5, 5, 9, 9, 0.4)])
        catalog.add_regions("m1", "two cats", [(image_id, 2, 3, 30, 40, 0.6)])  # replaces the first results
        stored = catalog.regions("two cats")
        assert [(r["rank"], r["x1"], r["score"]) for r in stored] == [(1, 2.0, pytest.approx(0.6))]
        catalog.remove_images([image_id])
        assert catalog.regions() == []


# -- overlay --------------------------------------------------------------------------------------


def test_overlay_has_the_image_size_and_checks_it():
    image = Image.new("RGB", (40, 30), (10, 10, 10))
    boxes = [ScoredBox(2, 2, 20, 15, 0.8), ScoredBox(25, 20, 38, 28, 0.4)]
    g = Grounding("a dog", None, 40, 30, 0.8, (10.0, 10.0), boxes,
                  blob_map([(1, 1, 1.0)], size=4))
    out = render_overlay(image, g)
    assert out.size == (40, 30) and np.asarray(out).std() > 0
    with pytest.raises(ValueError, match="40x30"):
        render_overlay(Image.new("RGB", (41, 30)), g)
    big = render_overlay(Image.new("RGB", (2000, 1500)), Grounding("x", None, 2000, 1500, 0.1, (5.0, 5.0),
                                                                   [ScoredBox(0, 0, 100, 100, 0.1)], np.zeros((4, 4))))
    assert big.size == (1024, 768)
