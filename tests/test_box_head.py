"""The box head (indexer/box_head.py): its parametrization, its training targets, storage beside a checkpoint, and
the boxes grounding draws from it (several instances, non-maximum suppression)."""

import numpy as np
import pytest
import torch

from grounding import GroundingConfig
from grounding.heatmap import boxes_from_head, cell_of
from indexer.box_head import BoxHead, box_losses, cell_centres, generalized_iou, load_box_head
from indexer.phrase_region_loss import boxes_in_crop
from warehouse import InputError


def test_an_untrained_head_draws_each_cell_and_round_trips_through_its_file(tmp_path):
    head = BoxHead(dim=16, grid=(4, 4), hidden=8)
    patches, phrases = torch.randn(2, 16, 16), torch.randn(2, 16)
    boxes = head.cell_boxes(patches, phrases)  # (2, 16, 4)
    centres = cell_centres((4, 4))
    expected = torch.cat([centres - 0.125, centres + 0.125], dim=1)
    assert torch.allclose(boxes[0], expected, atol=1e-5) and torch.allclose(boxes[1], expected, atol=1e-5)
    torch.nn.init.normal_(head.mlp[-1].weight)
    head.save(tmp_path)
    loaded = load_box_head(tmp_path)
    assert loaded.grid == (4, 4)
    assert torch.allclose(loaded.cell_boxes(patches, phrases), head.cell_boxes(patches, phrases))
    assert load_box_head(tmp_path / "elsewhere") is None  # a model without a head: grounding uses the heatmap
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "box_head.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="box_head.safetensors"):
        load_box_head(tmp_path / "broken")


def test_generalized_iou():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0]])
    assert torch.allclose(generalized_iou(a, b), torch.tensor([1.0, 0.5, -0.5]))


def test_boxes_follow_the_crop_and_a_flip():
    boxes = torch.tensor([[0.2, 0.2, 0.4, 0.6]])
    crops = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 0.0, 1.0]])  # the left half; the same, flipped
    assert torch.allclose(boxes_in_crop(boxes, crops, torch.tensor([0])), torch.tensor([[0.4, 0.2, 0.8, 0.6]]))
    assert torch.allclose(boxes_in_crop(boxes, crops, torch.tensor([1])), torch.tensor([[0.2, 0.2, 0.6, 0.6]]))


def test_training_targets_are_the_smallest_box_holding_the_patch_and_a_head_learns_them():
    """Image 0 has a region with two boxes (two people) and one whose box sits inside another's; image 1 a scene
    region (no box term). Trained on these targets alone, a head draws them."""
    torch.manual_seed(0)
    grid, dim = (4, 4), 8
    patches = torch.nn.functional.normalize(torch.randn(2, 16, dim), dim=-1)
    phrases = torch.nn.functional.normalize(torch.randn(3, dim), dim=-1)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0],   # region 0: two boxes side by side
                          [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5],   # region 1: a box and one inside it
                          [0.0, 0.0, 1.0, 1.0]])                         # region 2: the scene
    box_region = torch.tensor([0, 0, 1, 1, 2])
    image_index = torch.tensor([0, 0, 1])
    localize = torch.tensor([True, True, False])
    head = BoxHead(dim, grid, hidden=32)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(300):
        loss, pairs = box_losses(head, patches, None, boxes, box_region, image_index, phrases, localize, per_region=16)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert pairs == 32  # 16 cells of region 0, 16 of region 1, none of the scene
    with torch.no_grad():
        drawn = head.cell_boxes(patches[image_index], phrases)  # (3, 16, 4)
    left, right = cell_of(np.array([0.1, 0.5]), grid), cell_of(np.array([0.9, 0.5]), grid)
    assert torch.allclose(drawn[0, left], boxes[0], atol=0.05) and torch.allclose(drawn[0, right], boxes[1], atol=0.05)
    inner, outer = cell_of(np.array([0.1, 0.1]), grid), cell_of(np.array([0.9, 0.9]), grid)
    assert torch.allclose(drawn[1, inner], boxes[3], atol=0.05)  # the smallest box holding the cell
    assert torch.allclose(drawn[1, outer], boxes[2], atol=0.05)
    # at most `per_region` pairs a region
    assert box_losses(head, patches, None, boxes, box_region, image_index, phrases, localize, per_region=3)[1] == 6


def test_grounding_draws_a_box_per_instance_and_suppresses_duplicates():
    grid = (4, 4)
    left, right = (0.0, 0.2, 0.45, 1.0), (0.55, 0.2, 1.0, 1.0)
    cells = np.array([left if x < 2 else right for _ in range(4) for x in range(4)], dtype=np.float32)
    heat = np.zeros(grid, dtype=np.float32)
    heat[2, 0], heat[2, 1], heat[2, 3] = 1.0, 0.95, 0.9  # two cells on the left man, one on the right
    config = GroundingConfig(head_threshold=0.8, nms_iou=0.5)
    boxes = boxes_from_head(cells, heat, cell_of(np.array([0.1, 0.6]), grid), config)
    assert [v for b in boxes for v in (b.x1, b.x2)] == pytest.approx([0.0, 0.45, 0.55, 1.0])  # a duplicate dropped
    assert boxes[0].score == 1.0 and boxes[1].score == np.float32(0.9)
    high = GroundingConfig(head_threshold=0.99)
    assert len(boxes_from_head(cells, heat, cell_of(np.array([0.1, 0.6]), grid), high)) == 1  # one instance only


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
