import json

import numpy as np
import pytest
import torch

from indexer.models import checkpoint_hash, create_model, list_presets, load_checkpoint, save_checkpoint
from indexer.tokenizer import OpenClipTokenizer, WordTokenizer, tokenizer_from_json, words

CAPTIONS = ["A red circle on the left .", "Two dogs run on the grass .", "a red dog", "The man's red hat"]


def test_word_tokenizer_layout_unknowns_and_truncation():
    tok = WordTokenizer.build(CAPTIONS, min_count=2, context_length=6)
    assert tok.vocab[:4] == list(WordTokenizer.SPECIALS) and tok.vocab[4] == "red"  # most frequent first
    ids = tok(["red zebra", "a red red red red red red"])
    assert ids.shape == (2, 6)
    assert ids[0].tolist() == [tok.SOT, tok.index["red"], tok.UNK, tok.EOT, tok.PAD, tok.PAD]
    assert ids[1, -1].item() == tok.EOT  # truncated, still ends with EOT
    assert words("The man's HAT, 2 dogs.") == ["the", "man's", "hat", "2", "dogs"]
    again = tokenizer_from_json(json.loads(json.dumps(tok.to_json())))
    assert torch.equal(again(["red zebra"]), tok(["red zebra"]))


def test_open_clip_tokenizer_works_offline():
    tok = OpenClipTokenizer("ViT-B-32")
    assert tok(["a dog"]).shape == (1, 77)


@pytest.fixture(scope="module")
def tokenizer():
    return WordTokenizer.build(CAPTIONS, min_count=1)


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_encodes_normalized_images_patches_and_text(preset, tokenizer):
    model = create_model(preset, tokenizer=tokenizer, device="cpu")
    s = model.image_size
    pixels = torch.randint(0, 256, (3, 3, s, s), dtype=torch.uint8)
    image, patches = model.encode_image_and_patches(pixels)
    text = model.encode_text(["a red circle", "a dog"])
    gh, gw = model.patch_grid
    assert image.shape == (3, model.embed_dim) and text.shape == (2, model.embed_dim)
    assert patches.shape == (3, gh * gw, model.embed_dim)
    for t in (image, text, patches):
        assert torch.allclose(t.norm(dim=-1), torch.ones(t.shape[:-1]), atol=1e-5)
    assert torch.allclose(model.encode_patches(pixels), patches, atol=1e-6)
    # a differently sized input is resized to the model's size
    assert model.encode_image(torch.randint(0, 256, (1, 3, s + 17, s + 17), dtype=torch.uint8)).shape == (1, 256)


def test_text_tower_on_the_shortest_prefix_matches_the_full_context(tokenizer):
    model = create_model("tiny", tokenizer=tokenizer, device="cpu")
    tokens = tokenizer(["a red dog", "Two dogs run on the grass .", "red"])
    assert int((tokens != 0).sum(dim=1).max()) < tokens.shape[1]  # there is padding to leave out
    with torch.no_grad():
        trimmed = model.encode_text(tokens)
        full = torch.nn.functional.normalize(model.clip.encode_text(tokens), dim=-1)
    assert torch.allclose(trimmed, full, atol=1e-5)


def test_checkpoint_round_trip_and_content_hash(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = create_model("tiny", tokenizer=tokenizer, device="cpu")
    digest, folder = save_checkpoint(model, tmp_path)
    assert folder.name == digest == checkpoint_hash(folder)
    assert save_checkpoint(model, tmp_path)[0] == digest  # same weights, same hash
    assert sorted(p.name for p in tmp_path.iterdir()) == [digest]  # no temp folders left
    loaded = load_checkpoint(folder, "cpu")
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert torch.allclose(loaded.encode_image(pixels), model.encode_image(pixels), atol=1e-6)
    assert torch.allclose(loaded.encode_text(["a red dog"]), model.encode_text(["a red dog"]), atol=1e-6)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert save_checkpoint(model, tmp_path)[0] != digest


def test_checkpoint_errors_are_clear(tmp_path, tokenizer):
    with pytest.raises(FileNotFoundError, match="not a groundex checkpoint"):
        load_checkpoint(tmp_path)
    _, folder = save_checkpoint(create_model("tiny", tokenizer=tokenizer, device="cpu"), tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(folder)
    with pytest.raises(ValueError, match="pickle checkpoints are refused"):
        create_model("ViT-B-32", pretrained=str(tmp_path / "weights.pt"), device="cpu")
    with pytest.raises(ValueError, match="unknown model 'no-such-model'.*tiny"):
        create_model("no-such-model")
    with pytest.raises(ValueError, match="needs a word tokenizer"):
        create_model("tiny")


def test_weights_of_the_wrong_shape_are_refused(tmp_path, tokenizer):
    _, folder = save_checkpoint(create_model("tiny", tokenizer=tokenizer, device="cpu"), tmp_path)
    bigger = WordTokenizer(tokenizer.vocab + ["extra"], tokenizer.context_length)
    with pytest.raises(ValueError, match="weights do not fit the model"):
        create_model("tiny", pretrained=str(folder / "model.safetensors"), tokenizer=bigger, device="cpu")


def test_pixels_from_images_squash_resizes():
    from PIL import Image
    tok = WordTokenizer.build(CAPTIONS, min_count=1)
    model = create_model("tiny", tokenizer=tok, device="cpu")
    pixels = model.pixels_from_images([Image.new("RGB", (200, 50), (255, 0, 0)), Image.new("L", (10, 10), 3)])
    assert pixels.shape == (2, 3, 64, 64) and pixels.dtype == torch.uint8
    assert np.all(pixels[0, 0].numpy() == 255)
