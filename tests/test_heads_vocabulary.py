"""Keyword vocabulary mining and image labels (issue 6's first part) on invented texts."""

import numpy as np
import pytest

from heads.config import VocabularyConfig
from heads.vocabulary import Vocabulary, keywords, lemma, mine_vocabulary


@pytest.mark.parametrize("word, expected", [
    ("puppies", "puppy"), ("dresses", "dress"), ("boxes", "box"), ("benches", "bench"), ("dogs", "dog"),
    ("men", "man"), ("children", "child"), ("glass", "glass"), ("bus", "bus"), ("tennis", "tennis"),
    ("jeans", "jeans"), ("red", "red"), ("leaves", "leaf"),
])
def test_lemma_singularizes_by_rule(word, expected):
    assert lemma(word) == expected


def test_keywords_drop_stopwords_and_normalize():
    assert keywords("Two Puppies are playing in the snow , next to a red bus .") == [
        "puppy", "playing", "snow", "red", "bus"]


def test_keywords_drop_possessives_and_contractions():
    # "man's" counts as "man" (it once became "man'", a keyword of its own); contractions are no keywords
    assert keywords("The man's dogs and the children's toys don't move") == ["man", "dog", "child", "toy", "move"]


def test_vocabulary_from_phrases_counts_images_not_mentions_and_labels_images():
    phrases = [(1, "a red kite"), (1, "the red kites"), (2, "a red hat"), (3, "two dogs"), (3, "a dog"),
               (4, "a blue kite")]
    captions = [(i, "some caption") for i in range(1, 6)]  # image 5 has no phrase: still counted in `images`
    vocab = mine_vocabulary(captions, phrases, VocabularyConfig(min_images=2))
    assert vocab.source == "phrases" and vocab.images == 5
    assert vocab.words == ["kite", "red"] and vocab.image_counts == [2, 2]  # dog: one image only
    assert np.allclose(vocab.prior(), [0.4, 0.4])
    ids, labels = vocab.labels({7: ["A red dog flies kites ."], 8: ["nothing here"]})
    assert ids.tolist() == [7, 8] and labels.tolist() == [[True, True], [False, False]]


def test_vocabulary_falls_back_to_captions_and_caps_its_size(tmp_path):
    captions = [(i, f"a dog and a cat on the grass number{i % 3}") for i in range(30)]
    vocab = mine_vocabulary(captions, [], VocabularyConfig(min_images=5, max_size=3))
    assert vocab.source == "captions" and len(vocab) == 3 and vocab.words == ["cat", "dog", "grass"]
    vocab.save(tmp_path / "v.json")
    again = Vocabulary.load(tmp_path / "v.json")
    assert again.words == vocab.words and again.image_counts == vocab.image_counts and again.index["dog"] == 1
    with pytest.raises(ValueError, match="no training captions"):
        mine_vocabulary([], [], VocabularyConfig(source="captions"))
    with pytest.raises(ValueError, match="source must be"):
        VocabularyConfig(source="nouns")
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="bad.json"):
        Vocabulary.load(tmp_path / "bad.json")
