"""The keyword vocabulary of a collection, and each image's keyword labels.

Keywords are nouns and salient attributes. With Flickr30k Entities phrases (noun phrases: "a red
jacket") the words of the phrases are the source, so verbs and function words never enter; without
phrases, the words of the captions minus stopwords are. Words are lowercased and singularized by rule
(`lemma`: "puppies" -> "puppy", "dresses" -> "dress", "men" -> "man"), and a word is kept when it is
mentioned for at least `min_images` training images (at most `max_size` words, most frequent first).

An image's labels are the vocabulary words its human captions mention: the ground truth for training
and evaluating taggers.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from indexer.tokenizer import words
from warehouse import InputError, atomic_write_json

from .config import VocabularyConfig

IRREGULAR = {"men": "man", "women": "woman", "children": "child", "feet": "foot", "teeth": "tooth",
             "mice": "mouse", "geese": "goose", "people": "people", "police": "police", "knives": "knife",
             "leaves": "leaf", "wolves": "wolf", "shelves": "shelf", "loaves": "loaf", "halves": "half"}
# Endings that look plural but are not ("glass", "bus", "tennis", "jeans" stays "jeans": a garment).
NOT_PLURAL = ("ss", "us", "is", "ics")
KEEP_AS_IS = {"jeans", "pants", "shorts", "glasses", "sunglasses", "overalls", "goggles", "clothes", "stairs",
              "scissors", "news", "species", "series", "trousers", "binoculars", "headphones"}
_STOPWORDS_TEXT = """
a an the and or but of in on at to for from with without by into onto over under near next up down out off
about above below across along around behind between beside besides beyond through toward towards upon
while during before after against among within this that these those it its it's they them their there
here he him his she her hers we us our you your i me my one two three four five six seven eight nine ten
some many several few other another each every all both any no not is are was were be been being am has
have had do does did doing can could will would should may might must very just also than then so such
as if what which who whom whose where when how why front top bottom side left right middle background
foreground picture photo image something someone somebody thing lot group bunch pair others own same
being looking wearing
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def lemma(word: str) -> str:
    """A rule-based singular: irregular plurals, -ies -> -y, -(s|x|z|ch|sh)es -> drop 'es', -s -> drop."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if word in KEEP_AS_IS or len(word) <= 3 or word.endswith(NOT_PLURAL):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def keywords(text: str) -> list[str]:
    """The candidate keywords of a text: its words (`indexer.tokenizer.words`) without digits or possessive
    's, singularized, without stopwords ("the man's dogs" -> man, dog). Numbers ("2", "10"), codes ("mp3")
    and contractions ("don't") are no keywords."""
    out = []
    for word in words(text):
        if any(c.isdigit() for c in word):
            continue
        word = word.removesuffix("'s")
        if "'" in word:  # a contraction ("don't", "they're") is no keyword
            continue
        word = lemma(word)
        if word not in STOPWORDS and len(word) > 1:
            out.append(word)
    return out


@dataclass
class Vocabulary:
    words: list[str]                   # by decreasing image count
    image_counts: list[int]            # training images that mention each word
    images: int                        # training images the counts are out of
    source: str                        # 'phrases' or 'captions'
    config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def labels(self, texts_by_image: Mapping[int, Iterable[str]]) -> tuple[np.ndarray, np.ndarray]:
        """(image ids (N,), labels (N, V) bool): the vocabulary words each image's captions mention."""
        image_ids = np.array(sorted(texts_by_image), dtype=np.int64)
        out = np.zeros((len(image_ids), len(self.words)), dtype=bool)
        for row, image_id in enumerate(image_ids.tolist()):
            for text in texts_by_image[image_id]:
                for word in keywords(text):
                    column = self.index.get(word)
                    if column is not None:
                        out[row, column] = True
        return image_ids, out

    def prior(self) -> np.ndarray:
        """(V,) each word's training frequency: the share of training images that mention it."""
        return np.array(self.image_counts, dtype=np.float64) / max(1, self.images)

    def save(self, path: Path) -> None:
        atomic_write_json(path, {"words": self.words, "image_counts": self.image_counts, "images": self.images,
                                 "source": self.source, "config": self.config})

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["words"], data["image_counts"], data["images"], data["source"], data.get("config", {}))
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{path}: unreadable keyword vocabulary ({e})") from None


def mine_vocabulary(captions: Sequence[tuple[int, str]], phrases: Sequence[tuple[int, str]] = (),
                    config: VocabularyConfig | None = None) -> Vocabulary:
    """The vocabulary of the training texts: `captions` and `phrases` as (image id, text) pairs."""
    config = config or VocabularyConfig()
    source = config.source
    if source == "auto":
        source = "phrases" if phrases else "captions"
    texts = phrases if source == "phrases" else captions
    if not texts:
        raise InputError(f"no training {source} to mine keywords from")
    per_image: dict[int, set[str]] = {}
    for image_id, text in texts:
        per_image.setdefault(int(image_id), set()).update(keywords(text))
    counts = Counter(word for words in per_image.values() for word in words)
    images = len({int(i) for i, _ in captions} | set(per_image))
    kept = sorted(((w, n) for w, n in counts.items() if n >= config.min_images), key=lambda item: (-item[1], item[0]))
    kept = kept[: config.max_size]  # ties broken alphabetically, so the vocabulary is deterministic
    return Vocabulary([w for w, _ in kept], [n for _, n in kept], images, source, asdict(config))
