"""A retrieval-augmented caption decoder: BLIP's text decoder reading CLIP image features and the
captions of the image's nearest training images (SmallCap-style).

    input   [pad..] [BOS] retrieved 1 [SEP] retrieved 2 [SEP] .. retrieved k [SEP] [PRM] caption [EOS]
    cross   the image's CLIP embedding and patch embeddings (1 + P tokens of the embedding model, frozen)

The decoder is `transformers`' BlipTextLMHeadModel (BERT layers with causal self-attention and
cross-attention to the image tokens) in a small configuration that trains on CPU, with a WordPiece
tokenizer trained on the training captions (`tokenizers`) and saved with it. Prompts are left-padded and
positions count real tokens only, so a caption is decoded the same whatever the batch. The loss covers the
caption only. A share of training examples gets no retrieved captions (`retrieval_dropout`), so the same
model also captions without retrieval: that is the ablation `groundex eval captions` reports.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BlipTextConfig, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.models.blip.modeling_blip_text import BlipTextLMHeadModel

from warehouse import InputError, atomic_write_json, content_hash, place

from .config import CaptionerConfig

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]", "[PRM]")  # ids 0..5, in this order
PLACEHOLDERS = 32  # copy placeholders "[CPY0]".. at the vocabulary's end (`CaptionerConfig.copy_substitution`)


def placeholder_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids of the tokenizer's copy placeholders (none for tokenizers trained without them)."""
    vocab = tokenizer.get_vocab()
    return sorted(i for t, i in vocab.items() if t.startswith("[CPY") and t.endswith("]"))


def train_tokenizer(texts: list[str], vocab_size: int, min_count: int = 2, placeholders: int = 0
                    ) -> PreTrainedTokenizerFast:
    """A lowercasing WordPiece tokenizer (`tokenizers`) whose vocabulary is learned from `texts`: the special
    tokens, every character seen (alone and as a '##' continuation, so no word is ever unknown), then the
    words seen at least `min_count` times, most frequent first, up to `vocab_size`, then `placeholders` copy
    placeholders ("[CPY0]", ...: ids that no text encodes to; training puts them in place of words).

    Built by counting rather than with `tokenizers`' WordPiece trainer, whose merges break ties in hash
    order: the same captions gave a different vocabulary in each process, and so a different captioner."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    words = sorted((w for w, n in counts.items() if n >= min_count and len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[: max(0, vocab_size - len(vocab))]
    vocab += [f"[CPY{i}]" for i in range(placeholders)]
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]", sep_token="[SEP]",
                                   additional_special_tokens=["[PRM]"])


@dataclass(frozen=True)
class TokenIds:
    """The special tokens of a decoder's input (see the module docstring). `prompt` is None where the last
    separator marks the caption's start (BLIP: with no retrieved captions its input is then its native
    `[DEC] caption [SEP]`)."""

    bos: int
    eos: int
    sep: int
    pad: int
    prompt: int | None


LEARNED_VOCABULARY_IDS = TokenIds(bos=2, eos=3, sep=4, pad=0, prompt=5)  # SPECIAL_TOKENS of `train_tokenizer`


class CaptionDecoder(nn.Module):
    """A text decoder cross-attending to image tokens; subclasses say how images become those tokens."""

    decoder: BlipTextLMHeadModel
    token_ids: TokenIds
    captioner_config: CaptionerConfig

    def encode_images(self, image_inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decoder_inputs(self, image_inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inputs the decoder takes besides the tokens and the image tokens (one row per image)."""
        return {}

    def forward(self, image_inputs: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, labels: torch.Tensor | None = None, word_ids: torch.Tensor | None = None
                ) -> Any:
        # word_ids: the prompt's words before copy substitution (`CaptionCollator`), for the grounded copy head
        extra = self.decoder_inputs(image_inputs) | ({"word_ids": word_ids} if word_ids is not None else {})
        return self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            encoder_hidden_states=self.encode_images(image_inputs), labels=labels, **extra)

    @torch.no_grad()
    def generate(self, image_inputs: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 beams: int = 3, max_new_tokens: int = 30, min_new_tokens: int = 3, length_penalty: float = 1.0,
                 function_token_ids: frozenset[int] | None = None, never: Sequence[int] = ()) -> torch.Tensor:
        """Beam search from left-padded prompts; returns the new tokens (B, <= max_new_tokens). No trigram of the
        caption repeats, and with `function_token_ids` (see `function_token_ids`) no bigram ending in any other
        token does ("a man is to the right of a man"); the tokens of `never` (copy placeholders) are never
        written."""
        from transformers import LogitsProcessorList

        encoder = self.encode_images(image_inputs)
        ids = self.token_ids
        out = self.decoder.generate(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=encoder,
            encoder_attention_mask=torch.ones(encoder.shape[:2], dtype=torch.long, device=encoder.device),
            num_beams=beams, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
            length_penalty=length_penalty, eos_token_id=ids.eos, pad_token_id=ids.pad, bos_token_id=ids.bos,
            do_sample=False, logits_processor=LogitsProcessorList([NoRepeatInCaption(3, input_ids.shape[1],
                                                                                     function_token_ids, never)]),
            **self.decoder_inputs(image_inputs))
        return out[:, input_ids.shape[1]:]


class CopyingTextDecoder(BlipTextLMHeadModel):
    """BLIP's text decoder with a pointer over the prompt (See et al., 2017, "Get To The Point"): at each caption
    position the next token comes from the vocabulary with probability g, or is copied from a retrieved caption
    with probability 1 - g, by attention over the prompt's tokens:

        p(w) = g * softmax(vocab logits)(w) + (1 - g) * sum of copy attention over prompt positions holding w

    A word the decoder never had to write (its output row never trained) can still be written by copying it from a
    neighbour's caption: what retrieval augmentation promises (SmallCap). `logits` are log p, so beam search and
    logits processors work unchanged. The prompt is every token before the caption marker (`prompt_id`) other than
    the uncopyable tokens (specials; with `copy_content_only` also function words, punctuation and word pieces);
    a row without one (no retrieved captions) generates from the vocabulary alone.

    With a cache (generation), the first call sees the whole prompt and keeps its copy keys; later calls see one
    token each. Beams of one image share their prompt, so reordering beams leaves those keys valid.

    Grounded (`word_dim`, `CaptionerConfig.copy_grounding`): each prompt word's copy score also gets the cosine
    between the image's CLIP embedding (`image_embedding`) and the CLIP text embedding of the word (`word_vectors`,
    one row per vocabulary token, zero for tokens never copied), standardized over the prompt, times a weight the
    decoder sets at each caption position. The decoder's own embedding of a word it never saw in training means
    nothing, but CLIP's text tower knows the word: the pointer can prefer the prompt words that fit the image."""

    def __init__(self, config: BlipTextConfig, prompt_id: int, uncopyable: Sequence[int], copy_dim: int = 64,
                 word_dim: int | None = None):
        super().__init__(config)
        self.prompt_id = prompt_id
        # tokens the pointer never copies (specials; with `copy_content_only` function words, punctuation, pieces)
        self.register_buffer("uncopyable", torch.tensor(sorted(set(uncopyable)), dtype=torch.long), persistent=False)
        if word_dim is not None:
            self.register_buffer("word_vectors", torch.zeros(config.vocab_size, word_dim))
            # how much the cosines count at each caption position (a colour word: much; "with": little)
            self.copy_grounding = nn.Linear(config.hidden_size, 1)
            nn.init.zeros_(self.copy_grounding.weight)
            nn.init.constant_(self.copy_grounding.bias, 1.0)  # a say from the start: its lr moves it slowly
        else:
            self.word_vectors = None
        self.copy_query = nn.Linear(config.hidden_size, copy_dim)
        self.copy_key = nn.Linear(config.hidden_size, copy_dim)
        self.copy_gate = nn.Linear(config.hidden_size, 1)
        self._vectors_checked = False  # `_grounding` checks once that the word vectors were set
        self._generation = threading.local()  # per thread (the app captions from several): the prompt's keys, ids, mask

    def _prompt_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) True at the prompt tokens the pointer may copy: before the first caption marker, not uncopyable."""
        marker = (input_ids == self.prompt_id).int()
        before = marker.cumsum(dim=1) == 0
        return before & ~torch.isin(input_ids, self.uncopyable)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, encoder_hidden_states: torch.Tensor | None = None,
                encoder_attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                cache: Any = None, use_cache: bool | None = None, image_embedding: torch.Tensor | None = None,
                word_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions

        kwargs.pop("return_logits", None)
        kwargs.pop("past_key_values", None)
        if labels is not None:
            use_cache = False
        outputs = self.bert(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                            cache=cache, use_cache=use_cache, is_decoder=True,
                            **{k: v for k, v in kwargs.items() if k in ("output_attentions", "output_hidden_states")})
        hidden = outputs.last_hidden_state                                      # (B, t, H)
        first = cache is None or cache.get_seq_length() == input_ids.shape[1] or labels is not None
        if first:  # the whole sequence: its prompt is here
            prompt = (self.copy_key(hidden), input_ids, self._prompt_mask(input_ids),
                      self._grounding(input_ids, image_embedding, word_ids))
            self._generation.prompt = prompt if cache is not None else None  # kept for the steps to come
        else:
            prompt = self._generation.prompt
        keys, ids, mask, grounding = prompt
        if labels is None:
            return CausalLMOutputWithCrossAttentions(logits=self._log_probs(hidden, keys, ids, mask, grounding),
                                                     cache=outputs.cache)
        # training: only the caption's positions have targets, so only they get a distribution (4x less work)
        targets = labels[:, 1:]
        rows, positions = (targets != -100).nonzero(as_tuple=True)
        chosen = self._log_probs(hidden[:, :-1][rows, positions][:, None, :], keys[rows], ids[rows], mask[rows],
                                 None if grounding is None else grounding[rows])
        loss = nn.functional.nll_loss(chosen[:, 0], targets[rows, positions])
        return CausalLMOutputWithCrossAttentions(loss=loss)

    def _grounding(self, input_ids: torch.Tensor, image_embedding: torch.Tensor | None,
                   word_ids: torch.Tensor | None = None) -> torch.Tensor | None:
        """(B, T) each prompt token's CLIP cosine with the image, standardized over the row's copyable tokens (a
        model's cosines may all lie within a tenth; this is what the copy score adds per unit of weight), or
        None when not grounded. `word_ids`: the words behind copy placeholders (training), else `input_ids`."""
        if self.word_vectors is None:
            return None
        if image_embedding is None:
            raise ValueError("a grounded copy head needs each row's image_embedding")
        if not self._vectors_checked:  # once: on a GPU the check waits for the device
            if not bool(self.word_vectors.any()):
                raise RuntimeError("the grounded copy head's word vectors were never set "
                                   "(RACaptioner.set_word_vectors)")
            self._vectors_checked = True
        vectors = self.word_vectors[input_ids if word_ids is None else word_ids]                  # (B, T, D)
        cosine = (vectors * image_embedding[:, None, :].to(vectors.dtype)).sum(-1)
        mask = self._prompt_mask(input_ids) & (vectors != 0).any(-1)
        count = mask.sum(1, keepdim=True).clamp_min(1)
        mean = (cosine * mask).sum(1, keepdim=True) / count
        std = (((cosine - mean) * mask) ** 2).sum(1, keepdim=True).div(count).sqrt().clamp_min(1e-3)
        return ((cosine - mean) / std * mask).float()

    def _log_probs(self, hidden: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                   grounding: torch.Tensor | None = None) -> torch.Tensor:
        """(B, t, V) log p of the next token at each of `hidden`'s positions (B, t, H), given the prompt's copy
        keys (B, T, C), token ids and mask (B, T), and the grounded part of the copy scores (B, T)."""
        vocab = torch.softmax(self.cls(hidden).float(), dim=-1)
        scores = (self.copy_query(hidden) @ keys.transpose(1, 2)).float() / keys.shape[-1] ** 0.5  # (B, t, T)
        if grounding is not None:
            scores = scores + self.copy_grounding(hidden).float() * grounding[:, None, :]
        has_prompt = mask.any(dim=1)[:, None, None]                                              # (B, 1, 1)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf")).masked_fill(~has_prompt, 0.0)
        attention = torch.softmax(scores, dim=-1) * has_prompt
        copied = torch.zeros_like(vocab).scatter_add_(2, ids[:, None, :].expand(-1, hidden.shape[1], -1), attention)
        gate = torch.sigmoid(self.copy_gate(hidden).float())
        gate = torch.where(has_prompt, gate, torch.ones_like(gate))  # no retrieved captions: the vocabulary alone
        return torch.log((gate * vocab + (1 - gate) * copied).clamp_min(1e-9))


class RACaptioner(CaptionDecoder):
    """The small decoder trained from scratch, with a LayerNorm on the (frozen, L2-normalized) CLIP image
    tokens it cross-attends to."""

    def __init__(self, config: CaptionerConfig, vocab_size: int, image_dim: int,
                 function_ids: frozenset[int] = frozenset()):
        """`function_ids` (`function_token_ids` of the tokenizer): with `copy_content_only`, tokens never copied.
        With `copy_grounding`, set the words' CLIP text embeddings with `set_word_vectors` before training."""
        super().__init__()
        if config.copy and config.copy_content_only and not function_ids:
            raise ValueError("copy_content_only needs the tokenizer's function_ids (function_token_ids(tokenizer)): "
                             "without them the pointer would copy function words too")
        self.captioner_config, self.image_dim = config, image_dim
        self.token_ids = LEARNED_VOCABULARY_IDS
        self.text_config = BlipTextConfig(
            vocab_size=vocab_size, hidden_size=config.hidden_size, encoder_hidden_size=image_dim,
            intermediate_size=config.intermediate_size, num_hidden_layers=config.layers,
            num_attention_heads=config.heads, max_position_embeddings=512, hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout, bos_token_id=2, eos_token_id=3, pad_token_id=0,
            sep_token_id=4, tie_word_embeddings=False, label_smoothing=0.0)
        self.image_norm = nn.LayerNorm(image_dim)
        ids = self.token_ids
        uncopyable = {ids.pad, ids.bos, ids.eos, ids.sep, 1} | (set(function_ids) if config.copy_content_only
                                                                else set())
        self.decoder = CopyingTextDecoder(self.text_config, ids.prompt, sorted(uncopyable),
                                          word_dim=image_dim if config.copy_grounding else None) \
            if config.copy else BlipTextLMHeadModel(self.text_config)

    def set_word_vectors(self, vectors: torch.Tensor) -> None:
        """(vocab size, image dim): the CLIP text embedding of each token the pointer may copy, zero elsewhere."""
        self.decoder.word_vectors.copy_(vectors)

    def decoder_inputs(self, image_inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        # the grounded copy head compares words with the CLIP image embedding: the first image token, as stored
        grounded = self.captioner_config.copy and self.captioner_config.copy_grounding
        return {"image_embedding": image_inputs[:, 0]} if grounded else {}

    def encode_images(self, image_inputs: torch.Tensor) -> torch.Tensor:
        # image_inputs (B, T, D): the CLIP image embedding and its patch embeddings
        return self.image_norm(image_inputs)


class BlipCaptioner(CaptionDecoder):
    """A pretrained BlipForConditionalGeneration: its vision tower reads pixels, its text decoder the same
    prompts as the small decoder (retrieved captions, each closed by [SEP], after [DEC]).

    The output layer is untied from the input embeddings (and its bias from the head's) so the weights save
    as plain safetensors."""

    def __init__(self, blip: Any, config: CaptionerConfig):
        super().__init__()
        self.captioner_config, self.blip = config, blip
        text = blip.config.text_config
        self.token_ids = TokenIds(bos=text.bos_token_id, eos=text.sep_token_id, sep=text.sep_token_id,
                                  pad=text.pad_token_id, prompt=None)
        head = blip.text_decoder.cls.predictions
        if head.decoder.weight is blip.text_decoder.get_input_embeddings().weight:
            head.decoder.weight = nn.Parameter(head.decoder.weight.detach().clone())
        if head.decoder.bias is head.bias:
            head.decoder.bias = nn.Parameter(head.bias.detach().clone())
        if config.freeze_vision:
            blip.vision_model.requires_grad_(False)

    @property
    def decoder(self) -> BlipTextLMHeadModel:  # a property: a second attribute would save its weights twice
        return self.blip.text_decoder

    def encode_images(self, image_inputs: torch.Tensor) -> torch.Tensor:
        # image_inputs (B, 3, H, W): pixels from the checkpoint's image processor
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.captioner_config.freeze_vision):
            return self.blip.vision_model(pixel_values=image_inputs)[0]


# Words a caption may repeat after the same word ("in a ... in a"); any other token ends a bigram that must not
# repeat. Human captions repeat such a bigram rarely (2.4% of the demo's val captions: "a black lab ... the black
# lab"); the small decoders repeated them often ("a man is to the right of a man"; benchmarks/caption_decoding.py).
FUNCTION_WORDS = frozenset("""a an the this that these those some another each both one two three four five
of on in at with without and or but is are was were be being to its it his her their they them he she there near
by for from while as into onto up down out over under behind beside next front left right top bottom middle side
other while who which what where""".split())  # noqa: SIM905 (a word list to read, not a literal to scan)


def function_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """The token ids of `FUNCTION_WORDS`, single characters, word pieces ('##s') and the tokenizer's special tokens:
    the tokens a repeated bigram may end in (`NoRepeatInCaption`)."""
    vocab = tokenizer.get_vocab()
    # word pieces and single characters too: a word the vocabulary lacks is spelt in them, and its letters repeat
    keep = {i for t, i in vocab.items() if t in FUNCTION_WORDS or len(t) == 1 or t.startswith("##")}
    return frozenset(keep | set(tokenizer.all_special_ids))


class NoRepeatInCaption:
    """Bans a token that would repeat an n-gram of the caption being generated ("a skateboard on a
    skateboard"), and, given `function_ids`, a bigram ending in a token outside them ("a man ... a man"). Unlike
    `no_repeat_ngram_size`, the prompt does not count: copying a phrase of a retrieved caption is what
    retrieval augmentation is for."""

    def __init__(self, n: int, prompt_length: int, function_ids: frozenset[int] | None = None,
                 never: Sequence[int] = ()):
        self.n, self.prompt_length, self.function_ids, self.never = n, prompt_length, function_ids, list(never)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.never:
            scores[:, self.never] = -float("inf")
        generated = input_ids[:, self.prompt_length:].tolist()  # (B * beams, new tokens so far)
        for row, tokens in enumerate(generated):
            banned = self._repeats(tokens, self.n)
            if self.function_ids is not None:
                banned |= self._repeats(tokens, 2) - self.function_ids
            if banned:
                scores[row, list(banned)] = -float("inf")
        return scores

    @staticmethod
    def _repeats(tokens: list[int], n: int) -> set[int]:
        """The tokens that would complete an n-gram already in `tokens`."""
        if len(tokens) < n - 1 or n < 2:
            return set()
        prefix = tuple(tokens[len(tokens) - n + 1:])
        return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i:i + n - 1]) == prefix}


def encode_batch(tokenizer: PreTrainedTokenizerBase, retrieved: list[list[str]], captions: list[str] | None,
                 config: CaptionerConfig, ids: TokenIds | None = None) -> dict[str, torch.Tensor]:
    """Token tensors for a batch: prompts left-padded, captions (when given) right-padded, labels -100
    outside the caption, positions counting real tokens only. `ids`: the decoder's special tokens (default:
    those of a learned vocabulary, `SPECIAL_TOKENS`)."""
    ids = ids or LEARNED_VOCABULARY_IDS
    flat = [c for texts in retrieved for c in texts]
    encoded = iter(tokenizer(flat, add_special_tokens=False, truncation=True,
                             max_length=config.max_retrieved_tokens)["input_ids"] if flat else [])
    prompts = []
    for texts in retrieved:
        prompt = [ids.bos]
        for _ in texts:
            prompt += next(encoded) + [ids.sep]
        prompts.append(prompt + ([] if ids.prompt is None else [ids.prompt]))
    targets = [[] for _ in prompts]
    if captions is not None:
        targets = [t + [ids.eos] for t in tokenizer(captions, add_special_tokens=False, truncation=True,
                                                     max_length=config.max_caption_tokens - 1)["input_ids"]]
    prompt_len = max(map(len, prompts))
    target_len = max(map(len, targets))
    n = len(prompts)
    input_ids = torch.full((n, prompt_len + target_len), ids.pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for row, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        start = prompt_len - len(p)
        input_ids[row, start:prompt_len + len(t)] = torch.tensor(p + t)
        mask[row, start:prompt_len + len(t)] = 1
        if t:
            labels[row, prompt_len:prompt_len + len(t)] = torch.tensor(t)
    batch = {"input_ids": input_ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
    if captions is not None:
        batch["labels"] = labels
    else:  # generation: the prompt only
        batch = {k: v[:, :prompt_len] for k, v in batch.items()}
    return batch


class CaptionExamples(torch.utils.data.Dataset):
    """Training examples by image: each time an image is drawn, one of its captions (at random) is the
    target and the others' retrieved captions are the prompt."""

    def __init__(self, captions: list[list[str]], retrieved: list[list[str]]):
        self.captions, self.retrieved = captions, retrieved

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, row: int) -> tuple[int, str, list[str], bool]:
        # torch's global generator, which the Trainer seeds and saves with each checkpoint: a resumed run draws
        # the captions the uninterrupted one would have.
        choice = int(torch.randint(len(self.captions[row]), ()).item())
        return row, self.captions[row][choice], self.retrieved[row], True


class PixelSource:
    """Image pixels by row, loaded from the files when a batch asks for them (a pretrained BLIP reads pixels;
    a whole split of them would not fit in memory): `source[rows]` -> float32 (n, 3, H, W)."""

    def __init__(self, paths: list[str], image_processor: Any):
        self.paths, self.image_processor = list(paths), image_processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows: Any) -> np.ndarray:
        from warehouse import load_image

        rows = range(len(self.paths))[rows] if isinstance(rows, slice) else rows
        images = [load_image(self.paths[int(r)]) for r in rows]
        return np.asarray(self.image_processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)

    def __add__(self, other: PixelSource) -> PixelSource:
        return PixelSource(self.paths + other.paths, self.image_processor)


ImageInputs = np.ndarray | PixelSource  # what a decoder's images are: CLIP tokens (N, T, D) or pixels by row


class CaptionCollator:
    """Batches of (row of `image_inputs`, caption, retrieved captions, may drop) examples for the Trainer
    (training and evaluation alike); drops the retrieved captions of a `retrieval_dropout` share of the
    examples that may drop (training ones; from torch's generator, which the Trainer seeds and checkpoints)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_inputs: ImageInputs, config: CaptionerConfig,
                 ids: TokenIds | None = None):
        self.tokenizer, self.image_inputs, self.config, self.ids = tokenizer, image_inputs, config, ids
        self.placeholders = placeholder_ids(tokenizer) if config.copy_substitution else []
        self.unsubstituted = function_token_ids(tokenizer) | set(self.placeholders) if self.placeholders else set()

    def __call__(self, examples: list[tuple[int, str, list[str], bool]]) -> dict[str, torch.Tensor]:
        retrieved = []
        for _, _, texts, may_drop in examples:
            drop = may_drop and float(torch.rand(())) < self.config.retrieval_dropout  # torch's: see above
            retrieved.append([] if drop else texts[: self.config.k])
        batch = encode_batch(self.tokenizer, retrieved, [c for _, c, _, _ in examples], self.config, self.ids)
        if self.placeholders:
            if self.config.copy_grounding:  # the grounded copy head compares the words themselves with the image
                batch["word_ids"] = batch["input_ids"].clone()
            for row, (_, _, _, may_drop) in enumerate(examples):
                if may_drop and retrieved[row] and float(torch.rand(())) < self.config.copy_substitution:
                    self._substitute(batch, row)
        rows = [r for r, _, _, _ in examples]
        batch["image_inputs"] = torch.from_numpy(np.asarray(self.image_inputs[rows], dtype=np.float32))
        return batch

    def _substitute(self, batch: dict[str, torch.Tensor], row: int) -> None:
        """Replace one content word that the row's target shares with its prompt (every one, each by its own, with
        `copy_substitute_all`) by a random copy placeholder, everywhere in the row: its output row tells the decoder
        nothing, so the pointer must copy it (as it must a word the decoder never had to write). Draws from torch's
        generator, as the dropout does."""
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        target = labels[labels != -100]
        prompt = ids[: int((labels != -100).nonzero()[0]) if (labels != -100).any() else len(ids)]
        shared = sorted((set(target.tolist()) & set(prompt.tolist())) - self.unsubstituted)
        if not shared:
            return
        if not self.config.copy_substitute_all:
            shared = [shared[int(torch.randint(len(shared), ()))]]
        order = torch.randperm(len(self.placeholders))
        for word, p in zip(shared, order.tolist(), strict=False):  # distinct placeholders, as many as there are
            ids[ids == word] = self.placeholders[p]
            labels[labels == word] = self.placeholders[p]


# -- saving and loading ---------------------------------------------------------------------------


def load_pretrained_blip(name_or_path: str, config: CaptionerConfig) -> tuple[BlipCaptioner, Any, Any]:
    """(captioner, tokenizer, image processor) from a BlipForConditionalGeneration checkpoint: a local folder
    (as written by `save_pretrained`) or a Hugging Face name (from the local cache, or downloaded where the
    hub is reachable)."""
    from transformers import AutoTokenizer, BlipForConditionalGeneration, BlipImageProcessor

    try:
        # safetensors only: a pytorch_model.bin is a pickle, and nothing from a user's path is unpickled
        blip = BlipForConditionalGeneration.from_pretrained(name_or_path, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        image_processor = BlipImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the BLIP checkpoint {name_or_path!r}: {str(e).splitlines()[0]}") from None
    return BlipCaptioner(blip, config), tokenizer, image_processor


def write_captioner(model: CaptionDecoder, tokenizer: PreTrainedTokenizerBase, folder: Path, extra: dict[str, Any],
                    image_processor: Any = None) -> None:
    """Write a captioner's files into `folder` (weights, tokenizer, captioner.json, and a pretrained BLIP's image
    processor)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(str(folder))
    meta = {"config": asdict(model.captioner_config), **extra}
    if isinstance(model, BlipCaptioner):
        meta["blip_config"] = model.blip.config.to_dict()
        image_processor.save_pretrained(str(folder))
    else:
        meta.update({"image_dim": model.image_dim, "vocab_size": model.text_config.vocab_size})
    atomic_write_json(folder / "captioner.json", meta)


def save_captioner(model: CaptionDecoder, tokenizer: PreTrainedTokenizerBase, folder_root: Path,
                   extra: dict[str, Any], image_processor: Any = None) -> tuple[str, Path]:
    """Save to `folder_root/<content hash>/`, unrecorded; returns (hash, folder). A workdir's captioners are stored
    through its ArtefactStore (heads.captioning)."""
    folder_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder_root))
    try:
        write_captioner(model, tokenizer, staging, extra, image_processor)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return place("captioner", staging, folder_root)


def captioner_hash(folder: Path) -> str:
    """A captioner's id: sha256 over its weights, tokenizer and captioner.json (first 16 hex digits)."""
    return content_hash("captioner", folder)


def load_captioner(folder: Path) -> tuple[CaptionDecoder, PreTrainedTokenizerBase, dict[str, Any], Any]:
    """A captioner saved by `save_captioner`: (model in eval mode, tokenizer, its captioner.json, and the image
    processor of a pretrained BLIP or None)."""
    meta_path = folder / "captioner.json"
    image_processor = None
    try:
        meta = json.loads(meta_path.read_text())
        # options newer than a saved captioner: what it did before them
        config = CaptionerConfig(**{"copy": False, "copy_content_only": False, "copy_grounding": False,
                                    **meta["config"]})
        model: CaptionDecoder
        if "blip_config" in meta:
            from transformers import AutoTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

            model = BlipCaptioner(BlipForConditionalGeneration(BlipConfig.from_dict(meta["blip_config"])), config)
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            image_processor = BlipImageProcessor.from_pretrained(str(folder))
        else:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
            model = RACaptioner(config, meta["vocab_size"], meta["image_dim"], function_token_ids(tokenizer))
        weights_path = folder / "model.safetensors"
        if not weights_path.is_file():
            raise FileNotFoundError(2, "missing", str(weights_path))
        try:
            weights = load_file(str(weights_path))
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise InputError(f"{weights_path.name}: {e}") from None
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise InputError(f"weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{folder}: not a captioner folder ({e.filename} is missing)") from None
    except (ValueError, KeyError, TypeError, RuntimeError, OSError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{folder}: unreadable captioner ({e})") from None
    return model.eval(), tokenizer, meta, image_processor
