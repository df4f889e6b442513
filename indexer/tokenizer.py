"""Tokenizers: a word-level vocabulary learned from the training captions, or open_clip's BPE.

A from-scratch model learns far faster with a vocabulary of the few thousand words its captions use
than with CLIP's 49k BPE table (most of whose rows it would never see). Token layout:
[SOT] w1 ... wn [EOT] [PAD]...; the text tower pools at EOT (open_clip `pool_type='eos'`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from warehouse import InputError

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """The words of a text, lowercased: runs of letters and digits, with an apostrophe suffix kept ("dog's");
    punctuation dropped. The one word splitter: the word tokenizer, the caption metrics (heads.caption_metrics)
    and the keyword vocabulary (heads.vocabulary) all use it."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    PAD, SOT, EOT, UNK = 0, 1, 2, 3
    SPECIALS = ("<pad>", "<sot>", "<eot>", "<unk>")

    def __init__(self, vocab: Sequence[str], context_length: int = 32):
        if list(vocab[: len(self.SPECIALS)]) != list(self.SPECIALS):
            raise InputError(f"vocabulary must start with {self.SPECIALS}")
        if context_length < 3:
            raise InputError(f"context_length must be >= 3, got {context_length}")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context_length = context_length

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 2, max_size: int = 20_000,
              context_length: int = 32) -> WordTokenizer:
        """Words seen at least `min_count` times, most frequent first, at most `max_size` in all."""
        counts = Counter(w for t in texts for w in words(t))
        kept = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
        return cls(list(cls.SPECIALS) + kept[: max_size - len(cls.SPECIALS)], context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids = [self.index.get(w, self.UNK) for w in words(text)][: self.context_length - 2]
        return [self.SOT, *ids, self.EOT]

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), self.PAD, dtype=torch.long)  # (N, L)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"kind": "word", "context_length": self.context_length, "vocab": self.vocab}


class OpenClipTokenizer:
    """open_clip's tokenizer for a named model (BPE files ship inside the open_clip package).

    A hub model (`hf-hub:ORG/NAME`) keeps what its config says of its tokenizer (context length, and the Hugging
    Face tokenizer name when its text tower has one), so that it loads again without the hub: open_clip's own BPE
    ships with open_clip; a Hugging Face tokenizer must be in the local hub cache."""

    def __init__(self, model_name: str, context_length: int | None = None, hf_tokenizer_name: str | None = None,
                 tokenizer_kwargs: dict[str, Any] | None = None, tokenizer_mode: str | None = None):
        import open_clip
        from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

        self.model_name = model_name
        self._hub = model_name.startswith("hf-hub:")
        self.hf_tokenizer_name, self.tokenizer_mode = hf_tokenizer_name, tokenizer_mode
        self.tokenizer_kwargs = dict(tokenizer_kwargs or {})
        if self._hub and hf_tokenizer_name:
            self._tokenizer = HFTokenizer(hf_tokenizer_name, context_length=context_length or 77,
                                          tokenizer_mode=tokenizer_mode, **self.tokenizer_kwargs)
        elif self._hub:
            self._tokenizer = SimpleTokenizer(context_length=context_length or 77, **self.tokenizer_kwargs)
        else:
            self._tokenizer = open_clip.get_tokenizer(model_name)
        self.context_length = getattr(self._tokenizer, "context_length", 77)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        return self._tokenizer(texts)

    def to_json(self) -> dict[str, Any]:
        if self._hub:
            return {"kind": "open_clip", "model_name": self.model_name, "context_length": self.context_length,
                    "hf_tokenizer_name": self.hf_tokenizer_name, "tokenizer_kwargs": self.tokenizer_kwargs,
                    "tokenizer_mode": self.tokenizer_mode}
        return {"kind": "open_clip", "model_name": self.model_name}


def tokenizer_from_json(spec: dict[str, Any]) -> WordTokenizer | OpenClipTokenizer:
    if spec.get("kind") == "word":
        return WordTokenizer(spec["vocab"], spec["context_length"])
    if spec.get("kind") == "open_clip":
        return OpenClipTokenizer(spec["model_name"], spec.get("context_length"), spec.get("hf_tokenizer_name"),
                                 spec.get("tokenizer_kwargs"), spec.get("tokenizer_mode"))
    raise InputError(f"unknown tokenizer kind {spec.get('kind')!r} (expected 'word' or 'open_clip')")
