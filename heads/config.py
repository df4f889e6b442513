"""The settings of the keyword vocabulary, the taggers and the captioner.

They live apart from the code that uses them so that the command line can build its parser (and show the
defaults in `--help`) without importing torch or transformers; each validates its own fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from warehouse import InputError

__all__ = ["CaptionerConfig", "METHODS", "ProbeConfig", "PROMPT", "TaggingConfig", "VocabularyConfig"]

PROMPT = "a photo of a {}"  # the zero-shot template; '{}' is the tag


@dataclass
class VocabularyConfig:
    min_images: int = 20       # keep words mentioned for at least this many training images
    max_size: int = 1000       # at most this many words, the most frequent first
    source: str = "auto"       # phrases | captions | auto (phrases when the split has them)

    def __post_init__(self) -> None:
        if self.min_images < 1 or self.max_size < 1:
            raise InputError(f"min_images and max_size must be >= 1, got {self.min_images} and {self.max_size}")
        if self.source not in ("auto", "phrases", "captions"):
            raise InputError(f"source must be auto, phrases or captions, got {self.source!r}")


@dataclass
class ProbeConfig:
    epochs: int = 300            # full-batch passes (a probe on a few thousand 256-d vectors trains in seconds)
    lr: float = 1e-2             # AdamW
    weight_decay: float = 1e-4
    pos_weight_cap: float = 10.0  # rare tags: positives weigh sqrt(negatives / positives), at most this
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.lr <= 0 or self.pos_weight_cap < 1:
            raise InputError("epochs must be >= 1, lr > 0 and pos_weight_cap >= 1")


METHODS = ("knn", "probe", "zeroshot", "fusion")


@dataclass
class TaggingConfig:
    vocabulary: VocabularyConfig = field(default_factory=VocabularyConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)  # also the fusion tagger's
    prompt: str = PROMPT          # zero-shot template; '{}' is the tag
    caption_neighbours: int = 5   # fusion: an image without captions reads those of this many nearest training images
    max_tags: int = 20            # stored per image at most: its best tags at or above the threshold
    per_tag_thresholds: bool = False  # each tag with >= 5 positive val images gets its own threshold (chosen on
    #                                   val for that tag's F1), the others keep the global one. Off by default: on the
    #                                   real sample's 247 val images they cost micro-F1 (docs/heads.md, "Thresholds")
    keywords: tuple[str, ...] | None = None  # a given vocabulary instead of one mined from the training captions
    #                                          (zero-shot tags for collections without captions)
    untuned_threshold: float = 0.8  # zeroshot without labelled val images: keep a tag when its prompt matches the
    #                                 image this much above the collection's usual (sigmoid of the z-score: 0.8 is
    #                                 1.4 standard deviations, about the top 8% of images per keyword); with labelled
    #                                 val images the threshold is chosen on val instead

    def __post_init__(self) -> None:
        if isinstance(self.vocabulary, dict):
            self.vocabulary = VocabularyConfig(**self.vocabulary)
        if isinstance(self.probe, dict):
            self.probe = ProbeConfig(**self.probe)
        if self.caption_neighbours < 1 or self.max_tags < 1:
            raise InputError("caption_neighbours and max_tags must be >= 1")
        try:
            filled = self.prompt.format("\0")
        except (IndexError, KeyError, ValueError):
            filled = ""
        if filled.count("\0") != 1:
            raise InputError(f"the prompt template needs exactly one '{{}}' for the tag and no other field: "
                             f"{self.prompt!r}")
        if self.keywords is not None:
            self.keywords = tuple(dict.fromkeys(w.strip().lower() for w in self.keywords if w.strip()))
            if not self.keywords:
                raise InputError("keywords: the list is empty")
        if not 0 < self.untuned_threshold < 1:
            raise InputError(f"untuned_threshold must be in (0, 1), got {self.untuned_threshold}")


@dataclass
class CaptionerConfig:
    # decoder (BlipTextConfig); the default trains at a useful speed on 2 CPU cores
    hidden_size: int = 256
    layers: int = 3
    heads: int = 4
    intermediate_size: int = 1024
    vocab_size: int = 4000           # WordPiece vocabulary learned from the training captions (at most)
    dropout: float = 0.1
    image_tokens: str = "patches"    # patches: the image embedding and its patch embeddings (1 + P tokens);
                                     # global: the image embedding only (1 token: cheaper, and the decoder leans
                                     # on the retrieved captions more)
    copy: bool = False               # a pointer over the retrieved captions: words can be copied from them, even ones
    #                                  the decoder never had to write (`heads.caption_decoder.CopyingTextDecoder`).
    #                                  Off by default: so far it costs CIDEr (docs/heads.md, "New words")
    copy_content_only: bool = True   # with copy: the pointer copies content words only; function words, punctuation
    #                                  and word pieces come from the vocabulary (a copied full stop ended captions
    #                                  early). Captioners saved before this option copied every prompt token
    copy_grounding: bool = True      # with copy: a prompt word's copy score adds a learned multiple of CLIP's cosine
    #                                  between the word and the image, so words the decoder never saw still
    #                                  compete by what CLIP knows of them. Older captioners: off
    copy_substitute_all: bool = False  # with copy_substitution: every shared content word, not one at random
    copy_substitution: float = 0.0   # with copy: share of training examples in which a word the target shares with
    #                                  the prompt becomes a random placeholder token in both: only the pointer can
    #                                  write it, as a word the decoder never had to write (docs/heads.md)
    # retrieval augmentation
    k: int = 4                       # retrieved captions in the prompt (the captions of the k nearest training images)
    retrieval_dropout: float = 0.2   # share of training examples without retrieved captions (so k = 0 works too)
    max_caption_tokens: int = 32     # target captions are cut to this many tokens
    max_retrieved_tokens: int = 20   # each retrieved caption is cut to this many tokens in the prompt
    # training (Hugging Face Trainer); an epoch shows each training image once, with one of its captions
    max_train_images: int | None = None  # train the decoder on at most this many train images (a seeded random
                                         # subset); retrieval reads every captioned train image (with exclude_words,
                                         # in training only the decoder's own training images)
    exclude_words: tuple[str, ...] = ()  # train the decoder only on train images none of whose captions mention
    #                                      these words (or their plurals): concepts it can only learn from the memory
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    seed: int = 0
    precision: str = "auto"          # auto (bf16 where fast: AVX512-BF16/AMX CPUs, GPUs) | bf16 | fp32
    # decoding
    beams: int = 5                   # beam search width (demo val CIDEr 90.7 at 3, 97.8 at 5, 98.0 at 8: docs/heads.md)
    max_new_tokens: int = 30
    min_new_tokens: int = 3
    length_penalty: float = 1.0      # > 1 favours longer captions in beam search
    no_repeat_bigrams: bool = True   # a caption never repeats a bigram ending in a content word ("a man ... a man")
    # a pretrained BLIP in place of the small decoder
    pretrained: str | None = None    # a BlipForConditionalGeneration checkpoint: a Hugging Face name or a local folder.
                                     # Its vision tower reads the pixels (not the stored CLIP tokens) and its own
                                     # tokenizer replaces the learned vocabulary; the decoder settings above are unused
    freeze_vision: bool = True       # fine-tune the pretrained text decoder only (its vision tower stays as it is)

    def __post_init__(self) -> None:
        if self.epochs < (0 if self.pretrained else 1):  # a pretrained BLIP may be used as it is (epochs 0)
            raise InputError(f"epochs must be >= 1 (or 0 with a pretrained checkpoint), got {self.epochs}")
        if self.k < 0 or not 0 <= self.retrieval_dropout < 1:
            raise InputError(f"k must be >= 0 and retrieval_dropout in [0, 1), got {self.k}, {self.retrieval_dropout}")
        if min(self.hidden_size, self.layers, self.heads, self.batch_size, self.beams) < 1:
            raise InputError("hidden_size, layers, heads, batch_size and beams must be >= 1")
        if self.hidden_size % self.heads:
            raise InputError(f"hidden_size {self.hidden_size} is not a multiple of heads {self.heads}")
        if self.image_tokens not in ("patches", "global"):
            raise InputError(f"image_tokens must be patches or global, got {self.image_tokens!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise InputError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if isinstance(self.exclude_words, str):
            self.exclude_words = tuple(self.exclude_words.split(","))
        self.exclude_words = tuple(sorted({w.strip().lower() for w in self.exclude_words if w.strip()}))
        if any(not w.isalnum() for w in self.exclude_words):
            raise InputError(f"exclude_words are single words (letters and digits), got {list(self.exclude_words)}")
        if not 0 <= self.copy_substitution < 1 or (self.copy_substitution and not self.copy):
            raise InputError(f"copy_substitution is a share in [0, 1) and needs copy, got {self.copy_substitution}")
        if self.copy_substitute_all and not self.copy_substitution:
            raise InputError("copy_substitute_all says which words copy_substitution replaces: set that share too")
        if self.copy and self.pretrained:
            raise InputError("copy (the copy head) is for the small decoder; a pretrained BLIP has none")
        if self.min_new_tokens > self.max_new_tokens:
            raise InputError("min_new_tokens must be <= max_new_tokens")
