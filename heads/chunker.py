"""A phrase chunker learned from the Flickr30k Entities markup: which words of a caption are a phrase, and its type.

Every `[/EN#id/type words]` span of the training captions is a labelled noun phrase. The chunker tags each word
of a caption B-type / I-type / O (BIO over the nine Entities types) with a small bidirectional GRU over word and
suffix embeddings, trained on CPU in seconds, and decodes with Viterbi so that a span never starts inside another
(I-t follows B-t or I-t). Words are a caption's whitespace tokens, as in the Entities reader, so a chunk's
`start` is the `first_word_index` that the catalog stores; punctuation stuck to a word stays outside the chunk's
text.

`RuleChunker` is the baseline the learned one is measured against: a phrase is a run of words between function
words (prepositions, conjunctions, auxiliaries, pronouns, -ing verbs), and its type is the type its last word
carries most often in the training phrases.

A phrase with several types (e.g. animals/scene, 0.6% of the sample's phrases) is learned as its first type; a
predicted type counts as right when it is any of the annotated ones.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from warehouse import ENTITY_TYPES, Artefact, ArtefactStore, Catalog, InputError, Workdir, atomic_write_json

_logger = logging.getLogger(__name__)
LABELS = ("O", *(f"B-{t}" for t in ENTITY_TYPES), *(f"I-{t}" for t in ENTITY_TYPES))
_B = {t: 1 + n for n, t in enumerate(ENTITY_TYPES)}
_I = {t: 1 + len(ENTITY_TYPES) + n for n, t in enumerate(ENTITY_TYPES)}
_EDGE = re.compile(r"^[^\w]+|[^\w]+$")
_WORD = re.compile(r"\w")
PAD, UNK = 0, 1
SUFFIX_BUCKETS = 4096


def normalise(word: str) -> str:
    """The form a word is looked up by: lower case, punctuation at its edges removed ('<p>' when nothing is left)."""
    return _EDGE.sub("", word.lower()) or "<p>"


@dataclass(frozen=True)
class Chunk:
    """A phrase found in a caption: words [start, end) of its whitespace tokens, and its type."""

    start: int
    end: int
    type: str
    text: str  # the words, punctuation at the phrase's edges removed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def chunk_text(words: Sequence[str], start: int, end: int) -> str:
    """Words [start, end) joined, punctuation at the phrase's edges removed."""
    text = " ".join(words[start:end])
    return _EDGE.sub("", text) or text


def trimmed_span(words: Sequence[str], start: int, end: int) -> tuple[int, int]:
    """[start, end) without the tokens at its edges that are punctuation only (a quote, a lone comma): a phrase
    starts and ends on a word."""
    while start < end and not _WORD.search(words[start]):
        start += 1
    while end > start and not _WORD.search(words[end - 1]):
        end -= 1
    return start, end


@dataclass(frozen=True)
class MarkedCaption:
    """A caption's words and its annotated phrases ((start, end, types) over the words)."""

    words: tuple[str, ...]
    spans: tuple[tuple[int, int, tuple[str, ...]], ...]
    caption_id: int | None = None
    image_id: int | None = None
    phrase_ids: tuple[int, ...] = ()  # the catalog's phrase id of each span

    def labels(self) -> list[int]:
        out = [0] * len(self.words)
        for start, end, types in self.spans:
            kind = types[0] if types and types[0] in _B else "other"
            out[start] = _B[kind]
            for i in range(start + 1, min(end, len(out))):
                out[i] = _I[kind]
        return out


def marked_captions(catalog: Catalog, split: str) -> list[MarkedCaption]:
    """The human captions of `split` that carry phrase markup, with their spans."""
    return [MarkedCaption(tuple(text.split()), tuple((a, b, types) for a, b, types, *_ in spans), caption_id, image_id,
                          tuple(phrase_id for _, _, _, phrase_id, _ in spans))
            for caption_id, image_id, text, spans in catalog.marked_captions(split)]


# -- the model --------------------------------------------------------------------------------------------------


@dataclass
class ChunkerConfig:
    """How the chunker is trained (`groundex chunk train`)."""

    epochs: int = 4
    min_steps: int = 600       # small collections get more epochs, so that they take at least this many steps
    batch_size: int = 64
    lr: float = 3e-3
    word_dim: int = 64
    suffix_dim: int = 24
    hidden: int = 96
    min_count: int = 2         # words seen fewer times in train captions are unknown
    word_dropout: float = 0.05  # known words read as unknown while training (generated captions bring new ones)
    seed: int = 0


class ChunkerNet(nn.Module):
    def __init__(self, n_words: int, config: ChunkerConfig):
        super().__init__()
        self.words = nn.Embedding(n_words, config.word_dim, padding_idx=PAD)
        self.suffixes = nn.Embedding(SUFFIX_BUCKETS, config.suffix_dim, padding_idx=PAD)
        self.rnn = nn.GRU(config.word_dim + config.suffix_dim, config.hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * config.hidden, len(LABELS))

    def forward(self, words: torch.Tensor, suffixes: torch.Tensor) -> torch.Tensor:
        """(B, T) word and suffix ids, padded with PAD at the end -> (B, T, labels) logits. The GRU reads each
        caption packed to its own length, so a caption's labels do not depend on the batch it is padded in."""
        x = torch.cat([self.words(words), self.suffixes(suffixes)], dim=-1)
        lengths = (words != PAD).sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=words.shape[1])
        return self.out(h)


def _suffix_id(word: str) -> int:
    """A stable bucket (1..SUFFIX_BUCKETS-1) for the word's last three letters (Python's hash() is salted)."""
    tail = word[-3:].encode()
    return 1 + int.from_bytes(tail.ljust(3, b"\0"), "little") % (SUFFIX_BUCKETS - 1)


def _transitions() -> np.ndarray:
    """(L, L) 0 where label b may follow label a, -inf where not (I-t only after B-t or I-t)."""
    allowed = np.zeros((len(LABELS), len(LABELS)), dtype=np.float32)
    for t in ENTITY_TYPES:
        allowed[:, _I[t]] = -np.inf
        allowed[_B[t], _I[t]] = allowed[_I[t], _I[t]] = 0.0
    return allowed


_ALLOWED = _transitions()
_START = np.array([0.0 if not label.startswith("I-") else -np.inf for label in LABELS], dtype=np.float32)


def viterbi(log_probs: np.ndarray) -> list[int]:
    """The best label sequence under the BIO constraints for (T, L) per-word log-probabilities."""
    t_len = len(log_probs)
    if t_len == 0:
        return []
    score = _START + log_probs[0]
    back = np.zeros((t_len, len(LABELS)), dtype=np.int64)
    for t in range(1, t_len):
        total = score[:, None] + _ALLOWED
        back[t] = total.argmax(0)
        score = total.max(0) + log_probs[t]
    path = [int(score.argmax())]
    for t in range(t_len - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1]


def chunks_from_labels(words: Sequence[str], labels: Sequence[int]) -> list[Chunk]:
    chunks: list[Chunk] = []
    start, kind = None, None
    for i, label in enumerate([*labels, 0]):
        name = LABELS[label]
        if start is not None and not name.startswith("I-"):
            first, end = trimmed_span(words, start, i)
            if first < end:  # punctuation alone is no phrase
                chunks.append(Chunk(first, end, kind, chunk_text(words, first, end)))
            start = None
        if name.startswith("B-"):
            start, kind = i, name[2:]
    return chunks


class Chunker:
    """A trained chunker: `chunk(text)` -> the caption's phrases with their types."""

    def __init__(self, vocab: dict[str, int], net: ChunkerNet, config: ChunkerConfig, artefact_id: str | None = None):
        self.vocab = vocab
        self.net = net.eval()
        self.config = config
        self.id = artefact_id

    def _encode(self, captions: Sequence[Sequence[str]], dropout: float = 0.0,
                rng: random.Random | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        width = max((len(c) for c in captions), default=0)
        words = torch.zeros((len(captions), max(width, 1)), dtype=torch.long)
        suffixes = torch.zeros_like(words)
        for row, caption in enumerate(captions):
            for col, word in enumerate(caption):
                form = normalise(word)
                index = self.vocab.get(form, UNK)
                if dropout and rng is not None and rng.random() < dropout:
                    index = UNK
                words[row, col] = index
                suffixes[row, col] = _suffix_id(form)
        return words, suffixes

    @torch.no_grad()
    def chunk_words(self, captions: Sequence[Sequence[str]], batch_size: int = 256) -> list[list[Chunk]]:
        out: list[list[Chunk]] = []
        for i in range(0, len(captions), batch_size):
            batch = captions[i:i + batch_size]
            logits = self.net(*self._encode(batch))
            log_probs = torch.log_softmax(logits.float(), dim=-1).numpy()
            out += [chunks_from_labels(words, viterbi(log_probs[row, :len(words)])) for row, words in enumerate(batch)]
        return out

    def chunk(self, text: str) -> list[Chunk]:
        return self.chunk_words([text.split()])[0]

    def chunk_many(self, texts: Sequence[str]) -> list[list[Chunk]]:
        return self.chunk_words([t.split() for t in texts])

    # -- storage -------------------------------------------------------------------------------------------------

    def save(self, workdir: Workdir, metrics: dict[str, Any], run_id: int | None = None,
             label: str | None = None) -> Artefact:
        store = ArtefactStore(workdir)
        with store.staging("chunker") as folder:
            weights = {k: v.contiguous() for k, v in self.net.state_dict().items()}
            save_file(weights, str(folder / "weights.safetensors"))
            atomic_write_json(folder / "chunker.json", {"config": asdict(self.config), "labels": list(LABELS),
                                                        "vocabulary": sorted(self.vocab, key=self.vocab.get)})
            artefact = store.commit("chunker", folder, source="trained", run_id=run_id, metrics=metrics, label=label,
                                    info={"words": len(self.vocab), "types": list(ENTITY_TYPES)})
        self.id = artefact.id
        return artefact

    @classmethod
    def load(cls, folder: Path, artefact_id: str | None = None) -> Chunker:
        meta = json.loads((folder / "chunker.json").read_text())
        if list(meta["labels"]) != list(LABELS):
            raise InputError(f"{folder}: this chunker was trained with other labels than this groundex knows")
        config = ChunkerConfig(**meta["config"])
        vocab = {w: i for i, w in enumerate(meta["vocabulary"])}
        net = ChunkerNet(len(vocab), config)
        net.load_state_dict(load_file(str(folder / "weights.safetensors")))
        return cls(vocab, net, config, artefact_id)


def open_chunker(workdir: Workdir, ref: str | None = None) -> Chunker:
    """The chunker named by `ref` (label or hash prefix), or the newest."""
    with Catalog.open(workdir, read_only=True) as catalog:
        artefact = catalog.artefact("chunker", ref)
    return Chunker.load(artefact.path, artefact.id)


def train_chunker(train: Sequence[MarkedCaption], val: Sequence[MarkedCaption], config: ChunkerConfig | None = None,
                  progress: Callable[[int, int, float], None] | None = None) -> tuple[Chunker, dict[str, Any]]:
    """Fit the chunker on `train` (`config.epochs`, more when that is under `config.min_steps` steps); report span F1
    and type accuracy on `val`."""
    config = config or ChunkerConfig()
    if not train:
        raise InputError("no training captions with phrase markup: the chunker learns from annotated phrases "
                         "(Flickr30k Entities `Sentences/`, or the synthetic scenes)")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    counts = Counter(normalise(w) for c in train for w in c.words)
    vocab = {"<pad>": PAD, "<unk>": UNK}
    for word, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if n >= config.min_count:
            vocab[word] = len(vocab)
    chunker = Chunker(vocab, ChunkerNet(len(vocab), config), config)
    net = chunker.net
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    order = list(range(len(train)))
    per_epoch = math.ceil(len(order) / config.batch_size)
    epochs = max(config.epochs, math.ceil(config.min_steps / per_epoch))
    steps = epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.1)
    started = time.perf_counter()
    step = 0
    for _ in range(epochs):
        rng.shuffle(order)
        net.train()
        for i in range(0, len(order), config.batch_size):
            batch = [train[j] for j in order[i:i + config.batch_size]]
            words, suffixes = chunker._encode([c.words for c in batch], config.word_dropout, rng)
            labels = torch.full_like(words, -100)
            for row, caption in enumerate(batch):
                labels[row, :len(caption.words)] = torch.tensor(caption.labels())
            loss = nn.functional.cross_entropy(net(words, suffixes).flatten(0, 1), labels.flatten(), ignore_index=-100)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if progress is not None:
                progress(step, steps, loss.item())
    net.eval()
    scores = span_scores(chunker.chunk_words([c.words for c in val]), val) if val else {}
    _logger.info("chunker: %d epochs, %d steps, %.1f s; val %s", epochs, steps, time.perf_counter() - started, scores)
    return chunker, {"epochs": epochs, "steps": steps, "val": scores, "train_captions": len(train),
                     "val_captions": len(val), "words": len(vocab)}


# -- the rule baseline ---------------------------------------------------------------------------------------------

_PREPOSITIONS = ("about above across after against along alongside amid among around as at atop before behind below "
                 "beneath beside besides between beyond by down during except for from in inside into like near next "
                 "of off on onto opposite out outside over past per through throughout to toward towards under "
                 "underneath until up upon via while with within without")
_CONJUNCTIONS = "and or but nor so yet than then because if although though whereas"
_AUXILIARIES = ("is are was were be been being am has have had do does did can could will would shall should may "
                "might must")
_PRONOUNS = ("who whom whose which that what where when why how he she it they we you i him them us me himself herself "
             "itself themselves there here not no very too also just each other")
FUNCTION_WORDS = frozenset(word for group in (_PREPOSITIONS, _CONJUNCTIONS, _AUXILIARIES, _PRONOUNS)
                           for word in group.split())


class RuleChunker:
    """The baseline: phrases are runs of words between function words, typed by their last word's commonest type."""

    def __init__(self, head_types: dict[str, str], default: str = "other"):
        self.head_types = head_types
        self.default = default

    @classmethod
    def fit(cls, train: Iterable[MarkedCaption]) -> RuleChunker:
        by_head: dict[str, Counter[str]] = {}
        overall: Counter[str] = Counter()
        for caption in train:
            for _start, end, types in caption.spans:
                kind = types[0] if types else "other"
                by_head.setdefault(normalise(caption.words[end - 1]), Counter())[kind] += 1
                overall[kind] += 1
        default = overall.most_common(1)[0][0] if overall else "other"
        return cls({head: c.most_common(1)[0][0] for head, c in by_head.items()}, default)

    @staticmethod
    def _breaks(word: str) -> bool:
        form = normalise(word)
        return form == "<p>" or form in FUNCTION_WORDS or (form.endswith("ing") and len(form) > 4)

    def chunk_words(self, captions: Sequence[Sequence[str]]) -> list[list[Chunk]]:
        out = []
        for words in captions:
            chunks: list[Chunk] = []
            start = None
            for i, word in enumerate([*words, "."]):
                breaks = i == len(words) or self._breaks(word)
                if start is not None and breaks:
                    head = normalise(words[i - 1])
                    chunks.append(Chunk(start, i, self.head_types.get(head, self.default), chunk_text(words, start, i)))
                    start = None
                if not breaks and start is None:
                    start = i
                if i < len(words) and re.search(r"[^\w]$", word) and start is not None:  # "dog," ends a phrase
                    head = normalise(word)
                    chunks.append(Chunk(start, i + 1, self.head_types.get(head, self.default),
                                        chunk_text(words, start, i + 1)))
                    start = None
            out.append(chunks)
        return out

    def chunk(self, text: str) -> list[Chunk]:
        return self.chunk_words([text.split()])[0]


# -- scoring ---------------------------------------------------------------------------------------------------------


def span_scores(predicted: Sequence[Sequence[Chunk]], gold: Sequence[MarkedCaption]) -> dict[str, Any]:
    """Exact-match span precision / recall / F1 (percent), and the type accuracy of the matched spans (a type is
    right when it is one of the annotated ones). Annotated spans are compared without punctuation-only tokens at
    their edges, as chunks are made (`trimmed_span`)."""
    n_pred = n_gold = matched = typed = 0
    for chunks, caption in zip(predicted, gold, strict=True):
        spans = {trimmed_span(caption.words, s, e): types for s, e, types in caption.spans}
        n_pred += len(chunks)
        n_gold += len(spans)
        for chunk in chunks:
            types = spans.get((chunk.start, chunk.end))
            if types is not None:
                matched += 1
                typed += chunk.type in types
    precision = matched / n_pred if n_pred else 0.0
    recall = matched / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(100 * precision, 1), "recall": round(100 * recall, 1), "f1": round(100 * f1, 1),
            "type_accuracy": round(100 * typed / matched, 1) if matched else 0.0, "matched": matched,
            "predicted": n_pred, "annotated": n_gold}


def matched_chunks(predicted: Sequence[Sequence[Chunk]], gold: Sequence[MarkedCaption]
                   ) -> list[tuple[int, int, Chunk]]:
    """(caption index, span index in the caption's annotated spans, chunk) for every exactly matched chunk."""
    out = []
    for n, (chunks, caption) in enumerate(zip(predicted, gold, strict=True)):
        where = {trimmed_span(caption.words, s, e): k for k, (s, e, _) in enumerate(caption.spans)}
        out += [(n, where[(c.start, c.end)], c) for c in chunks if (c.start, c.end) in where]
    return out
