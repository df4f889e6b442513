import numpy as np
import pytest
import torch
import torch.nn.functional as F

from indexer.config import TrainConfig
from indexer.evaluate import recall_at_k
from indexer.schedule import lr_factor
from indexer.train import CaptionTable, augment, clip_loss, param_groups


def test_clip_loss_prefers_aligned_pairs():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(20.0)
    aligned = clip_loss(images, images, scale)
    shuffled = clip_loss(images, images[torch.randperm(8)], scale)
    assert aligned < shuffled and aligned < 0.1
    # several captions per image: text j belongs to image j // 2
    texts = images.repeat_interleave(2, dim=0)
    assert clip_loss(images, texts, scale, per_image=2) < clip_loss(images, texts.flip(0), scale, per_image=2)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    values = [lr_factor(p / 100, 0.1, 0.05) for p in range(101)]
    assert values[0] <= 0.01 and abs(values[10] - 1) < 1e-9
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
    assert abs(values[-1] - 0.05) < 1e-9


def test_progress_bar_shows_the_time_budget_rather_than_the_epoch_bound():
    from indexer.train import _epoch_label

    assert _epoch_label(TrainConfig(epochs=10_000, minutes=15), 2, 192.0) == "epoch 2 (3.2 of 15 min)"
    assert _epoch_label(TrainConfig(epochs=20), 2) == "epoch 2/20"


def test_augment_keeps_shape_and_range_and_is_seeded():
    pixels = torch.randint(0, 256, (4, 3, 80, 80), dtype=torch.uint8)
    a, crops_a = augment(pixels, 64, 0.6, 0.2, True, torch.Generator().manual_seed(1))
    b, crops_b = augment(pixels, 64, 0.6, 0.2, True, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, 64, 64) and a.min() >= 0 and a.max() <= 1 and torch.equal(a, b)
    assert torch.equal(crops_a, crops_b) and crops_a.shape == (4, 4) and crops_a.min() >= 0 and crops_a.max() <= 1
    plain, crops = augment(pixels, 64, 1.0, 0.0, False, torch.Generator())
    assert torch.equal(crops, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 4))
    assert torch.allclose(plain, F.interpolate(pixels.float() / 255, size=64, mode="bilinear", antialias=True))


def test_no_weight_decay_on_biases_norms_embeddings_and_temperature():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, plain = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [(4, 4)] and len(plain["params"]) == 3
    assert plain["weight_decay"] == 0


def test_caption_table_samples_only_the_image_own_captions():
    rows = [(10, 1, "a"), (11, 1, "b"), (12, 2, "c"), (13, 1, "d")]
    table = CaptionTable(rows, lambda texts: torch.zeros(len(texts), 3, dtype=torch.long))
    picked = table.sample(np.array([2, 1, 1]), 2, np.random.default_rng(0))
    owners = table.image_ids[picked].tolist()
    assert owners == [2, 2, 1, 1, 1, 1]
    assert len(set(picked[2:4].tolist())) == 2  # without replacement when the image has enough


def test_config_is_validated():
    with pytest.raises(ValueError, match="mode must be one of"):
        TrainConfig(mode="half")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="grounding_weight must be >= 0"):
        TrainConfig(grounding_weight=-1)
    with pytest.raises(ValueError, match="unmasked_fraction"):
        TrainConfig(unmasked_fraction=1.5)


def test_recall_at_k_on_known_rankings():
    images = np.eye(4, dtype=np.float32)
    # captions 0-3 point exactly at images 0-3; caption 4 (of image 0) points at image 1
    texts = np.vstack([np.eye(4), [[0.1, 0.9, 0, 0]]]).astype(np.float32)
    metrics = recall_at_k(images, [10, 11, 12, 13], texts, [10, 11, 12, 13, 10], ks=(1, 2))
    assert metrics["text_to_image"] == {"R@1": 80.0, "R@2": 100.0}
    assert metrics["image_to_text"]["R@1"] == 100.0
    with pytest.raises(ValueError, match="not in the gallery"):
        recall_at_k(images, [10, 11, 12, 13], texts, [10, 11, 12, 13, 99])
