"""Caption metrics, the captioner's tokenizer, batches, decoding and files, on tiny invented data."""

import numpy as np
import pytest
import torch
from PIL import Image

from heads.caption_decoder import (
    PLACEHOLDERS,
    CaptionCollator,
    CaptionerConfig,
    NoRepeatInCaption,
    RACaptioner,
    encode_batch,
    function_token_ids,
    load_captioner,
    placeholder_ids,
    save_captioner,
    train_tokenizer,
)
from heads.caption_metrics import bleu, caption_metrics, cider_d, rouge_l, words

REFERENCES = [["a black dog runs on the grass", "a dog runs across a green lawn"],
              ["two men ride bikes down a street", "two cyclists on a city street"],
              ["a child in a red shirt plays in the sand", "a little girl plays on the beach"]]
TEXTS = [t for refs in REFERENCES for t in refs] * 5


def test_metrics_on_known_cases():
    exact = [refs[0] for refs in REFERENCES]
    scores = caption_metrics(exact, REFERENCES)
    assert scores["BLEU-1"] == pytest.approx(100) and scores["BLEU-4"] == pytest.approx(100, abs=0.01)
    assert scores["ROUGE-L"] == pytest.approx(100)
    wrong = ["an airplane over the ocean"] * 3
    bad = caption_metrics(wrong, REFERENCES)
    assert bad["BLEU-1"] < 10 and bad["CIDEr"] < scores["CIDEr"] / 10 and bad["ROUGE-L"] < 15
    # a partly right caption sits in between on every metric
    partial = caption_metrics(["a dog runs on the grass", "two men on a street", "a child plays"], REFERENCES)
    assert all(bad[k] < partial[k] < scores[k] for k in scores)
    assert words("A Dog's toy, OK?") == ["a", "dog's", "toy", "ok"]
    # brevity penalty: a one-word candidate has perfect unigram precision but is penalized
    assert bleu(["dog"], [["a black dog runs"]])[0] < 40
    assert rouge_l(["dog runs"], [["a dog runs"]]) > rouge_l(["dog"], [["a dog runs"]])
    # CIDEr weighs n-grams by rarity across the evaluated images: with one image every weight is 0
    assert cider_d(["a black dog"], [["a black dog"]]) == 0
    assert cider_d(["a black dog", "a cat"], [["a black dog"], ["a cat"]]) > cider_d(["a cat", "a black dog"],
                                                                                    [["a black dog"], ["a cat"]])
    with pytest.raises(ValueError, match="candidates"):
        caption_metrics(["x"], REFERENCES)


def test_tokenizer_learns_the_captions_and_decodes_back():
    tokenizer = train_tokenizer(TEXTS, 300)
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]", "[PRM]")] == \
        list(range(6))
    ids = tokenizer("A black dog runs", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "a black dog runs"
    assert tokenizer.unk_token_id not in ids


def test_batches_left_pad_prompts_and_train_on_the_caption_only():
    tokenizer = train_tokenizer(TEXTS, 300)
    config = CaptionerConfig()
    batch = encode_batch(tokenizer, [["a dog runs", "two men"], []], ["a black dog", "two cyclists on a street"],
                         config)
    ids, mask, labels, positions = (batch[k] for k in ("input_ids", "attention_mask", "labels", "position_ids"))
    assert ids.shape == mask.shape == labels.shape == positions.shape
    prm = tokenizer.convert_tokens_to_ids("[PRM]")
    prompt_end = int((ids[0] == prm).nonzero()[0, 0])
    assert int((ids[1] == prm).nonzero()[0, 0]) == prompt_end  # prompts end at the same column
    assert mask[1, 0] == 0 and ids[1, 0] == 0  # the short prompt is padded on the left
    assert positions[1][mask[1] == 1].tolist() == list(range(int(mask[1].sum())))  # positions count real tokens
    assert (labels[:, : prompt_end + 1] == -100).all()  # no loss on the prompt
    caption = labels[0][labels[0] != -100].tolist()
    assert tokenizer.decode(caption[:-1]) == "a black dog" and caption[-1] == tokenizer.eos_token_id
    prompt_only = encode_batch(tokenizer, [["a dog runs"], []], None, config)
    assert "labels" not in prompt_only and prompt_only["input_ids"][0, -1] == prm  # ends where decoding starts
    assert prompt_only["attention_mask"][0].all() and prompt_only["input_ids"].shape[1] == 6  # BOS a dog runs SEP PRM


@pytest.mark.parametrize("copy", [False, True])
def test_decoding_ignores_padding_and_the_saved_captioner_round_trips(tmp_path, copy):
    torch.manual_seed(0)
    tokenizer = train_tokenizer(TEXTS, 300)
    config = CaptionerConfig(hidden_size=64, layers=2, heads=2, intermediate_size=128, dropout=0.0, beams=2,
                             max_new_tokens=6, min_new_tokens=2, copy=copy)
    model = RACaptioner(config, len(tokenizer), 16, function_token_ids(tokenizer)).eval()
    if copy:  # grounded, content words only: the image embedding goes with each beam
        model.set_word_vectors(torch.nn.functional.normalize(torch.randn(len(tokenizer), 16), dim=1))
    features = torch.randn(2, 5, 16)
    prompts = [["a black dog runs on the grass", "two men"], ["a dog"]]
    batch = encode_batch(tokenizer, prompts, None, config)
    together = model.generate(features, batch["input_ids"], batch["attention_mask"], beams=2, max_new_tokens=6)
    alone = encode_batch(tokenizer, prompts[1:], None, config)  # no left padding when decoded alone
    single = model.generate(features[1:], alone["input_ids"], alone["attention_mask"], beams=2, max_new_tokens=6)
    assert together[1, : single.shape[1]].tolist() == single[0].tolist()
    captioner_id, folder = save_captioner(model, tokenizer, tmp_path / "captioners", {"model_id": "m"})
    assert folder.name == captioner_id and len(captioner_id) == 16
    again, tokenizer_again, meta, _ = load_captioner(folder)
    assert meta["model_id"] == "m" and len(tokenizer_again) == len(tokenizer)
    assert again.generate(features, batch["input_ids"], batch["attention_mask"], beams=2,
                          max_new_tokens=6).tolist() == together.tolist()
    assert save_captioner(model, tokenizer, tmp_path / "captioners", {"model_id": "m"})[0] == captioner_id
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable captioner"):
        load_captioner(folder)
    with pytest.raises(FileNotFoundError, match="not a captioner folder"):
        load_captioner(tmp_path)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="multiple of heads"):
        CaptionerConfig(hidden_size=100, heads=3)
    with pytest.raises(ValueError, match="retrieval_dropout"):
        CaptionerConfig(retrieval_dropout=1.0)
    with pytest.raises(ValueError, match="precision"):
        CaptionerConfig(precision="fp8")
    with pytest.raises(ValueError, match="single words"):
        CaptionerConfig(exclude_words=("red car",))
    with pytest.raises(ValueError, match="copy head"):
        CaptionerConfig(copy=True, pretrained="Salesforce/blip-image-captioning-base")
    assert CaptionerConfig(exclude_words="Car, dog,car").exclude_words == ("car", "dog")
    with pytest.raises(ValueError, match="copy_substitution"):
        CaptionerConfig(copy_substitution=0.3)  # without the copy head nothing could write a placeholder


def test_copy_substitution_puts_placeholders_in_place_of_shared_words_in_prompt_and_target():
    tokenizer = train_tokenizer(TEXTS, 300, placeholders=PLACEHOLDERS)
    placeholders = placeholder_ids(tokenizer)
    assert len(placeholders) == PLACEHOLDERS and not placeholder_ids(train_tokenizer(TEXTS, 300))
    assert not set(placeholders) & {t for text in TEXTS for t in tokenizer(text)["input_ids"]}  # no text makes one
    config = CaptionerConfig(copy=True, copy_substitution=0.99, retrieval_dropout=0.0)
    collator = CaptionCollator(tokenizer, np.zeros((2, 1, 4), np.float32), config)
    dog, the = tokenizer.convert_tokens_to_ids(["dog", "the"])
    examples = [(0, "a black dog runs on the grass", ["a dog runs across a green lawn"], True),
                (1, "a black dog runs on the grass", ["a dog runs across a green lawn"], False)]  # not training
    torch.manual_seed(0)
    batch = collator(examples)
    ids, labels = batch["input_ids"], batch["labels"]
    caption = labels[0][labels[0] != -100]
    swapped = set(ids[0].tolist()) & set(placeholders)
    assert len(swapped) == 1, "one shared word, in the prompt and the target alike"
    [placeholder] = swapped
    assert placeholder in caption.tolist() and (ids[0] == placeholder).sum() == 2  # once in each
    shared = set(tokenizer("a dog runs", add_special_tokens=False)["input_ids"]) - function_token_ids(tokenizer)
    assert sum(t in ids[0].tolist() for t in shared) == len(shared) - 1 and the in ids[0].tolist()
    assert dog in ids[1].tolist() and not set(ids[1].tolist()) & set(placeholders)  # evaluation rows stay as they are
    # the grounded copy head still sees the words behind the placeholders (their CLIP vectors)
    original = batch["word_ids"][0]
    assert not set(original.tolist()) & set(placeholders) and (original != ids[0]).sum() == 2
    assert original[ids[0] == placeholder].unique().item() in shared
    # copy_substitute_all: every shared content word, each by its own placeholder
    every = CaptionCollator(tokenizer, np.zeros((2, 1, 4), np.float32),
                            CaptionerConfig(copy=True, copy_substitution=0.99, retrieval_dropout=0.0,
                                            copy_substitute_all=True))
    batch = every(examples)
    swapped = set(batch["input_ids"][0].tolist()) & set(placeholders)
    assert len(swapped) == len(shared) and not shared & set(batch["input_ids"][0].tolist())
    assert the in batch["input_ids"][0].tolist()  # function words stay
    scores = torch.zeros(1, len(tokenizer))
    assert NoRepeatInCaption(3, 0, never=placeholders)(torch.zeros(1, 0, dtype=torch.long), scores)[
        0, placeholders].eq(-float("inf")).all()  # decoding never writes one


def test_concept_mentions_and_memory_specs():
    from heads.captioning import canonical_memory, mentions

    assert mentions("A dog's ball and two buses.", ("dog", "bus", "ball", "cat")) == {"dog", "bus", "ball"}
    assert mentions("a doghouse", ("dog",)) == set()
    assert canonical_memory("val, train,train") == "train,val" == canonical_memory("train,val")
    assert canonical_memory(" all ") == "all"


def test_training_neighbours_leave_the_query_out_and_match_exact_search():
    import faiss

    from heads.neighbours import training_neighbours
    from indexer.knn import exact_neighbours

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(100, 150, dtype=np.int64)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(8))
    index.add_with_ids(vectors, ids)
    gallery = ids[::2]  # the "training" images
    rows, sims = training_neighbours(index, vectors[:6], gallery, k=3, exclude_ids=ids[:6])
    exact_rows, exact_sims = exact_neighbours(vectors[:6], vectors[::2], 3,
                                              exclude_rows=np.array([0, -1, 1, -1, 2, -1]))
    assert rows.tolist() == exact_rows.tolist() and np.allclose(sims, exact_sims, atol=1e-5)
    assert all(gallery[r] != ids[q] for q in range(6) for r in rows[q])  # never itself
    with pytest.raises(ValueError, match="sorted"):
        training_neighbours(index, vectors[:2], gallery[::-1], k=3)


def test_decoding_never_repeats_a_content_bigram_nor_any_trigram_of_its_own_caption():
    tokenizer = train_tokenizer(TEXTS + ["a man is to the right of a man", "in a park in a city"] * 3, 300)
    ids = function_token_ids(tokenizer)
    word = tokenizer.convert_tokens_to_ids
    assert word("a") in ids and word("in") in ids and word("man") not in ids and word(".") in ids
    prompt = torch.tensor([[word("man"), word("man")]])  # a prompt's bigrams do not count
    allowed = lambda caption, rule: torch.isfinite(  # noqa: E731
        rule(torch.cat([prompt, torch.tensor([[word(w) for w in caption.split()]])], 1), torch.zeros(1, 300)))[0]
    with_bigrams, trigrams_only = NoRepeatInCaption(3, 2, ids), NoRepeatInCaption(3, 2)
    after = "a man is to the right of a"
    assert not allowed(after, with_bigrams)[word("man")]  # "a man ... a man"
    assert allowed(after, trigrams_only)[word("man")]
    assert allowed(after, with_bigrams)[word("dog")] and allowed("a", with_bigrams)[word("man")]
    assert allowed("in a park in", with_bigrams)[word("a")]  # "in a ... in a": a function word may repeat
    for rule in (with_bigrams, trigrams_only):  # the trigram "in a park" may not repeat either way
        assert not allowed("in a park in a", rule)[word("park")]


def _trained_to_repeat_the_prompt(model, tokenizer, captions, images, steps, lr):
    """`model` trained (in eval mode after) to write the one retrieved caption it is given, whatever the image."""
    import random

    optimizer = torch.optim.AdamW(model.parameters(), lr)
    for _ in range(steps):
        rows = random.sample(range(len(captions)), 32)
        batch = encode_batch(tokenizer, [[captions[r]] for r in rows], [captions[r] for r in rows],
                             model.captioner_config)
        loss = model(images[rows], **batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_the_decoder_reads_the_retrieved_captions():
    """When the image tokens say nothing and the retrieved caption is the answer, a few hundred steps teach the
    decoder to copy it: the prompt reaches the decoder and the loss covers the caption only."""
    import random

    random.seed(0)
    torch.manual_seed(0)
    words = ["red", "blue", "green", "dog", "cat", "man", "woman", "car", "tree", "ball", "runs", "sits", "jumps",
             "on", "under", "near", "the", "a", "big", "small"]
    captions = [" ".join(random.choice(words) for _ in range(6)) for _ in range(400)]
    tokenizer = train_tokenizer(captions, 200)
    config = CaptionerConfig(hidden_size=64, layers=2, heads=2, intermediate_size=128, dropout=0.0)
    noise = torch.randn(400, 1, 16)  # uninformative image tokens
    model = _trained_to_repeat_the_prompt(RACaptioner(config, len(tokenizer), image_dim=16), tokenizer, captions,
                                          noise, steps=200, lr=2e-3)
    rows = list(range(32))
    with torch.no_grad():
        losses = [model(noise[rows], **encode_batch(tokenizer, [prompt(r) for r in rows], [captions[r] for r in rows],
                                                    config)).loss.item()
                  for prompt in (lambda r: [captions[r]], lambda r: [])]
    assert losses[0] < 0.1 < 2.0 < losses[1], losses
    batch = encode_batch(tokenizer, [[captions[0]]], None, config)
    new = model.generate(noise[:1], batch["input_ids"], batch["attention_mask"], beams=2, max_new_tokens=8)
    assert tokenizer.decode(new[0], skip_special_tokens=True) == captions[0]


def test_the_copy_heads_training_loss_is_the_likelihood_it_decodes_with():
    """Training scores the caption positions only; decoding scores every position: the same distribution."""
    torch.manual_seed(0)
    tokenizer = train_tokenizer(TEXTS, 200)
    config = CaptionerConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, dropout=0.0, copy=True)
    model = RACaptioner(config, len(tokenizer), 16, function_token_ids(tokenizer)).eval()
    model.set_word_vectors(torch.nn.functional.normalize(torch.randn(len(tokenizer), 16), dim=1))  # grounded
    image = torch.randn(3, 2, 16)
    batch = encode_batch(tokenizer, [[TEXTS[0], TEXTS[1]], [], [TEXTS[2]]], [TEXTS[3], TEXTS[4], TEXTS[5]], config)
    with torch.no_grad():
        loss = model(image, **batch).loss
        full = model(image, **{k: v for k, v in batch.items() if k != "labels"}).logits  # (B, T, V) log p
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    expected = -full[:, :-1][keep].gather(1, targets[keep][:, None]).mean()
    assert torch.allclose(full.exp().sum(-1), torch.ones(full.shape[:2]), atol=1e-4)  # a distribution everywhere
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("copy", [True, False])
def test_only_the_copy_head_writes_a_word_it_never_had_to_write(copy):
    """Trained to repeat its retrieved caption, where "zebra" is in no target: given "zebra" in the prompt, the
    decoder with the copy head writes it; the plain decoder cannot (its output row for the word never learned)."""
    import random

    random.seed(1)
    torch.manual_seed(1)
    words = ["red", "blue", "green", "dog", "cat", "man", "woman", "car", "tree", "ball", "runs", "sits", "near",
             "big", "small"]
    captions = [" ".join(random.choice(words) for _ in range(5)) for _ in range(400)]
    tokenizer = train_tokenizer(captions + ["a zebra", "the zebra"], 200)  # the memory's words: "zebra" is a token
    config = CaptionerConfig(hidden_size=64, layers=2, heads=2, intermediate_size=128, dropout=0.0, copy=copy,
                             copy_grounding=False)  # the pointer alone (no word vectors: noise images)
    noise = torch.randn(400, 1, 16)
    model = _trained_to_repeat_the_prompt(RACaptioner(config, len(tokenizer), 16, function_token_ids(tokenizer)),
                                          tokenizer, captions,
                                          noise, steps=150, lr=3e-3)
    wrote = []
    for prompt in ("red zebra runs near tree", "big zebra sits", "zebra"):
        batch = encode_batch(tokenizer, [[prompt]], None, config)
        new = model.generate(noise[:1], batch["input_ids"], batch["attention_mask"], beams=2, max_new_tokens=8)
        wrote.append("zebra" in tokenizer.decode(new[0], skip_special_tokens=True).split())
    assert all(wrote) if copy else not any(wrote), wrote


def test_a_pretrained_blip_reads_prompts_in_its_native_layout_and_round_trips(tmp_path):
    from transformers import BlipForConditionalGeneration

    from heads.caption_decoder import load_pretrained_blip
    from tests.helpers import write_tiny_blip

    folder = write_tiny_blip(tmp_path / "blip", TEXTS)
    config = CaptionerConfig(pretrained=str(folder), epochs=0, beams=2, max_new_tokens=5, min_new_tokens=2)
    model, tokenizer, image_processor = load_pretrained_blip(str(folder), config)
    ids = model.token_ids
    assert ids.bos == tokenizer.convert_tokens_to_ids("[DEC]") and ids.eos == ids.sep == tokenizer.sep_token_id
    # no retrieved captions: exactly BLIP's own training input, [DEC] caption [SEP] (its processor's
    # [CLS] caption [SEP] with the first token replaced by [DEC])
    plain = encode_batch(tokenizer, [[]], ["a black dog"], config, ids)
    native = tokenizer(["a black dog"])["input_ids"][0]
    assert plain["input_ids"][0].tolist() == [ids.bos, *native[1:]]
    # with retrieved captions: each closed by [SEP], then the caption
    with_retrieved = encode_batch(tokenizer, [["two men"]], ["a black dog"], config, ids)["input_ids"][0].tolist()
    assert with_retrieved == [ids.bos, *tokenizer("two men")["input_ids"][1:], *native[1:]]
    # the weights are the checkpoint's (the output layer untied, with the same values)
    reference = BlipForConditionalGeneration.from_pretrained(str(folder)).state_dict()
    state = model.blip.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in reference.items())
    pixels = torch.from_numpy(image_processor(images=[Image.new("RGB", (50, 40), (200, 30, 30))],
                                              return_tensors="np")["pixel_values"])
    prompt = encode_batch(tokenizer, [["two men"]], None, config, ids)
    captions = model.eval().generate(pixels, prompt["input_ids"], prompt["attention_mask"], beams=2, max_new_tokens=5)
    captioner_id, saved = save_captioner(model, tokenizer, tmp_path / "captioners", {"model_id": "m"}, image_processor)
    again, tokenizer_again, meta, processor_again = load_captioner(saved)
    assert meta["config"]["pretrained"] == str(folder) and len(tokenizer_again) == len(tokenizer)
    assert processor_again is not None and again.token_ids == ids
    assert again.generate(pixels, prompt["input_ids"], prompt["attention_mask"], beams=2,
                          max_new_tokens=5).tolist() == captions.tolist()
    with pytest.raises(ValueError, match="cannot load the BLIP checkpoint"):
        load_pretrained_blip(str(tmp_path / "nothing-here"), config)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        CaptionerConfig(epochs=0)


def test_the_pointer_copies_content_words_only():
    """With `copy_content_only` (the default) function words, punctuation and word pieces come from the vocabulary:
    a copied full stop ended captions early. Captioners saved before it copied every prompt token."""
    tokenizer = train_tokenizer([*TEXTS, "a dog runs ."], 200)
    batch = encode_batch(tokenizer, [["a black dog runs on the grass ."]], ["a dog"], CaptionerConfig(copy=True))
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    for content_only, copyable in ((True, {"black", "dog", "runs", "grass"}),
                                   (False, {"a", "black", "dog", "runs", "on", "the", "grass", "."})):
        config = CaptionerConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, copy=True,
                                 copy_content_only=content_only)
        model = RACaptioner(config, len(tokenizer), 16, function_token_ids(tokenizer))
        mask = model.decoder._prompt_mask(batch["input_ids"])[0].tolist()
        assert {t for t, m in zip(tokens, mask, strict=True) if m} == copyable


@pytest.mark.parametrize("grounded", [True, False])
def test_the_grounded_pointer_prefers_the_prompt_word_that_fits_the_image(grounded):
    """The pointer's own scores are made equal and the gate shut: only CLIP's word-image cosine can tell the
    prompt's words apart, and with grounding it copies the word whose vector is the image embedding."""
    torch.manual_seed(0)
    tokenizer = train_tokenizer(TEXTS, 200)
    config = CaptionerConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, dropout=0.0, copy=True,
                             copy_grounding=grounded)
    model = RACaptioner(config, len(tokenizer), 16, function_token_ids(tokenizer)).eval()
    decoder = model.decoder
    with torch.no_grad():
        decoder.copy_query.weight.zero_()
        decoder.copy_query.bias.zero_()
        decoder.copy_gate.weight.zero_()
        decoder.copy_gate.bias.fill_(-30.0)  # copy only
        if grounded:
            decoder.copy_grounding.bias.fill_(5.0)
    vectors = torch.nn.functional.normalize(torch.randn(len(tokenizer), 16), dim=1)
    if grounded:
        model.set_word_vectors(vectors)
    dog = tokenizer.convert_tokens_to_ids("dog")
    image = torch.randn(1, 3, 16)
    image[0, 0] = vectors[dog]  # the first image token is the CLIP image embedding
    batch = encode_batch(tokenizer, [["a black dog runs on the grass"]], None, config)
    with torch.no_grad():
        p = model(image, **batch).logits[0, -1].exp()  # the caption's first token
    words = [tokenizer.convert_tokens_to_ids(w) for w in ("black", "dog", "runs", "grass")]
    assert p[words].sum() == pytest.approx(1.0, abs=1e-4)
    if grounded:
        assert p[dog] > 0.9
    else:
        assert torch.allclose(p[words], torch.full((4,), 0.25), atol=1e-4)


def test_a_copy_head_missing_its_inputs_says_so_instead_of_copying_silently():
    """A content-only pointer built without the tokenizer's function words would copy them; a grounded one whose
    word vectors were never set would add nothing. Both are errors, not quiet changes of behaviour."""
    tokenizer = train_tokenizer(TEXTS, 200)
    config = CaptionerConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, copy=True)
    with pytest.raises(ValueError, match="function_ids"):
        RACaptioner(config, len(tokenizer), 16)
    model = RACaptioner(config, len(tokenizer), 16, function_token_ids(tokenizer))
    batch = encode_batch(tokenizer, [["a black dog runs on the grass"]], ["a dog"], config)
    with pytest.raises(RuntimeError, match="word vectors were never set"):
        model(torch.randn(1, 3, 16), **batch)
    model.set_word_vectors(torch.nn.functional.normalize(torch.randn(len(tokenizer), 16), dim=1))
    assert torch.isfinite(model(torch.randn(1, 3, 16), **batch).loss)


def test_captioners_saved_before_the_copy_options_load_as_they_were(tmp_path):
    import json

    tokenizer = train_tokenizer(TEXTS, 200)
    config = CaptionerConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, copy=True,
                             copy_content_only=False, copy_grounding=False)
    model = RACaptioner(config, len(tokenizer), 16, function_token_ids(tokenizer))
    _, folder = save_captioner(model, tokenizer, tmp_path, {"k": 4})
    meta_path = folder / "captioner.json"
    meta = json.loads(meta_path.read_text())
    for key in ("copy_content_only", "copy_grounding"):  # as a captioner from before these options was written
        del meta["config"][key]
    meta_path.write_text(json.dumps(meta))
    loaded, *_ = load_captioner(folder)
    assert not loaded.captioner_config.copy_content_only and not loaded.captioner_config.copy_grounding
    assert loaded.decoder.word_vectors is None
    grounded = RACaptioner(CaptionerConfig(copy=True, hidden_size=32, layers=1, heads=2, intermediate_size=64),
                           len(tokenizer), 16, function_token_ids(tokenizer))
    grounded.set_word_vectors(torch.ones(len(tokenizer), 16))
    _, folder = save_captioner(grounded, tokenizer, tmp_path, {"k": 4})
    assert torch.equal(load_captioner(folder)[0].decoder.word_vectors, torch.ones(len(tokenizer), 16))
