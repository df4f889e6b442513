"""Train, evaluate and apply the retrieval-augmented captioner on a workdir.

Retrieval: for an image, its k nearest images of the caption memory (the train split's captioned images
unless another memory is chosen: `CaptionData`) in the embedding model's FAISS image index (the image itself
left out), and of each the caption nearest to the image in the joint embedding space. Training examples are
every (train image, human caption) pair; validation is the val split's pairs (loss each epoch).
`groundex eval captions` compares the captioner with its retrieved captions, the same model without them, and
the nearest-neighbour-caption baseline (the first retrieved caption).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from indexer.config import MissingEmbeddingError
from indexer.index import load_index
from indexer.shards import load_embeddings
from indexer.tokenizer import words
from warehouse import Artefact, ArtefactStore, Catalog, InputError, RunState, Workdir, recorded_run

from .caption_decoder import (
    PLACEHOLDERS,
    CaptionCollator,
    CaptionDecoder,
    CaptionerConfig,
    CaptionExamples,
    ImageInputs,
    PixelSource,
    RACaptioner,
    encode_batch,
    function_token_ids,
    load_captioner,
    load_pretrained_blip,
    placeholder_ids,
    train_tokenizer,
    write_captioner,
)
from .caption_metrics import caption_metrics
from .neighbours import training_neighbours

_logger = logging.getLogger(__name__)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer runs inside the training loop
MAX_K = 8  # retrieved captions kept per image (the k swept by the evaluation go up to this)


def _memory_names(memory: str) -> list[str]:
    """The names in a caption memory spec, in order, once each ('val, train,val' -> ['val', 'train'])."""
    return list(dict.fromkeys(name.strip() for name in (memory or "").split(",") if name.strip()))


def memory_splits(memory: str, splits: list[str]) -> list[str] | None:
    """The splits a caption memory spec names: 'train', a comma-separated list ('train,val'), or 'all' (None:
    every captioned image, with or without a split). `splits`: the catalog's splits, to check the names against."""
    names = _memory_names(memory)
    if names == ["all"]:
        return None
    if not names:
        raise InputError(f"caption memory {memory!r} names no split: give train, SPLIT,SPLIT or all")
    unknown = [name for name in names if name not in splits]
    if unknown:
        raise InputError(f"caption memory {memory!r}: no split {', '.join(map(repr, unknown))} in the catalog "
                         f"(splits: {', '.join(splits) or 'none'}; or all)")
    return names


def canonical_memory(memory: str) -> str:
    """One spelling of a memory spec ('val, train,train' -> 'train,val'): what a cache of memories is keyed on."""
    return ",".join(sorted(_memory_names(memory)))


class CaptionData:
    """What the captioner reads of a workdir for one embedding model: image tokens (global + patch
    embeddings) and the retrieved captions of any image.

    The caption **memory** is the human captions retrieval draws from: those of the train split by default, of
    the splits named (`memory='train,val'`), or of every captioned image (`'all'`). It is read from the catalog
    when this object is made, so captions ingested (and embedded by `groundex index`) after the captioner was
    trained are retrieved at once, with no retraining. An image's own captions are never in its memory."""

    def __init__(self, workdir: Workdir, model_id: str | None = None, memory: str = "train"):
        self.workdir = workdir
        with Catalog.open(workdir, read_only=True) as catalog:
            self.model_id = catalog.model(model_id).id
            current = catalog.current_index(self.model_id, "image")
            if current is None:
                raise FileNotFoundError(f"no image index for model {self.model_id}: run `groundex index` first")
            splits = memory_splits(memory, catalog.splits())
            memory_rows = [row for split in splits for row in catalog.caption_rows(split)] if splits is not None \
                else catalog.caption_rows()
        if not memory_rows:
            raise InputError(f"the caption memory ({memory}) holds no human captions to retrieve from")
        self.memory = memory
        self.index = load_index(current["path"])
        try:
            caption_ids, caption_vectors = load_embeddings(workdir, self.model_id, "caption",
                                                           [r[0] for r in memory_rows])
            by_id = {c: (i, t) for c, i, t in memory_rows}
            self.memory_ids = np.array(sorted({i for _, i, _ in memory_rows}), dtype=np.int64)
            _, self.memory_vectors = load_embeddings(workdir, self.model_id, "image", self.memory_ids)
        except MissingEmbeddingError as e:
            raise MissingEmbeddingError(f"the caption memory ({memory}) holds images or captions not embedded yet: "
                                        f"run `groundex index` ({e})") from None
        # each memory image's captions: texts and embeddings, grouped by gallery row
        self.captions_of: list[list[str]] = [[] for _ in self.memory_ids]
        self.caption_vectors_of: list[list[np.ndarray]] = [[] for _ in self.memory_ids]
        rows = np.searchsorted(self.memory_ids, [by_id[int(c)][0] for c in caption_ids])
        for row, c, vector in zip(rows.tolist(), caption_ids.tolist(), caption_vectors, strict=True):
            self.captions_of[row].append(by_id[c][1])
            self.caption_vectors_of[row].append(vector)
        self.caption_vectors_of = [np.stack(v) for v in self.caption_vectors_of]

    def subset(self, image_ids: np.ndarray) -> CaptionData:
        """The same data with a memory of `image_ids`' captions only (those of them in this memory)."""
        keep = np.flatnonzero(np.isin(self.memory_ids, image_ids))
        out = object.__new__(CaptionData)
        out.__dict__.update(self.__dict__)
        out.memory = f"{self.memory} (the decoder's training images)"
        out.memory_ids, out.memory_vectors = self.memory_ids[keep], self.memory_vectors[keep]
        out.captions_of = [self.captions_of[i] for i in keep]
        out.caption_vectors_of = [self.caption_vectors_of[i] for i in keep]
        return out

    def describe_memory(self) -> dict[str, Any]:
        """What retrieval draws from: the spec, and how many images and captions it holds."""
        return {"memory": self.memory, "images": int(len(self.memory_ids)),
                "captions": int(sum(len(c) for c in self.captions_of))}

    def image_inputs(self, image_ids: np.ndarray, config: CaptionerConfig, image_processor: Any = None
                     ) -> tuple[np.ndarray, ImageInputs]:
        """(the images' embeddings (N, D) float32, which retrieval searches with; what the decoder reads of
        them: their CLIP tokens, or a pretrained BLIP's pixels)."""
        _, vectors = load_embeddings(self.workdir, self.model_id, "image", image_ids)
        if config.pretrained is None:
            return vectors, self.image_tokens(image_ids, vectors, config.image_tokens)
        with Catalog.open(self.workdir, read_only=True) as catalog:
            path_of = dict(catalog.image_rows(ids=image_ids.tolist()))
        return vectors, PixelSource([path_of[int(i)] for i in image_ids], image_processor)

    def image_tokens(self, image_ids: np.ndarray, vectors: np.ndarray, kind: str = "patches") -> np.ndarray:
        """(N, 1 + P, D) float16: each image's embedding (`vectors`) followed by its patch embeddings (kind
        'patches'), or (N, 1, D) the embedding alone (kind 'global')."""
        if kind == "global":
            return vectors[:, None, :].astype(np.float16)
        _, patches = load_embeddings(self.workdir, self.model_id, "patch", image_ids)
        return np.concatenate([vectors[:, None, :], patches], axis=1).astype(np.float16)

    def retrieve(self, vectors: np.ndarray, image_ids: np.ndarray | None, k: int = MAX_K) -> list[list[str]]:
        """The captions of each image's k nearest memory images (never its own), one per neighbour: the
        neighbour's caption nearest to the image."""
        return [[text for _, text in found] for found in self.retrieve_with_sources(vectors, image_ids, k)]

    def retrieve_with_sources(self, vectors: np.ndarray, image_ids: np.ndarray | None, k: int = MAX_K
                              ) -> list[list[tuple[int, str]]]:
        """`retrieve`, each caption with the id of the memory image it comes from."""
        if k == 0:
            return [[] for _ in vectors]
        rows, _ = training_neighbours(self.index, vectors, self.memory_ids, k, exclude_ids=image_ids,
                                      gallery_vectors=self.memory_vectors)
        out = []
        for vector, neighbours in zip(vectors, rows, strict=True):
            found = []
            for row in neighbours[neighbours >= 0].tolist():
                text = self.captions_of[row][int(np.argmax(self.caption_vectors_of[row] @ vector))]
                found.append((int(self.memory_ids[row]), text))
            out.append(found)
        return out

    def split_examples(self, split: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """(image ids of the split's captioned images, [(row into those ids, caption)])."""
        with Catalog.open(self.workdir, read_only=True) as catalog:
            rows = catalog.caption_rows(split)
        image_ids = np.array(sorted({i for _, i, _ in rows}), dtype=np.int64)
        positions = np.searchsorted(image_ids, [i for _, i, _ in rows])
        return image_ids, [(int(p), t) for p, (_, _, t) in zip(positions, rows, strict=True)]


# -- training -------------------------------------------------------------------------------------


def train_captioner(workdir: Workdir, config: CaptionerConfig | None = None, model_id: str | None = None,
                    resume: bool | None = None, progress: bool = True) -> dict[str, Any]:
    """Fit the tokenizer and the decoder with the Hugging Face Trainer (eval and a checkpoint each epoch); the
    best epoch by val loss is saved as the captioner. `resume`: True continues from the last checkpoint, False
    starts over, None (default) continues only an interrupted run of this very config.
    An epoch draws each training image once with one of its captions as the target."""
    config = config or CaptionerConfig()
    pretrained = load_pretrained_blip(config.pretrained, config) if config.pretrained else None  # fail early
    data = CaptionData(workdir, model_id)
    examples = _choose_examples(data, config)
    torch.manual_seed(config.seed)
    model: CaptionDecoder | None = None  # the small decoder is built once the image tokens' width is known
    image_processor = None
    if config.pretrained is None:
        # the vocabulary of the whole caption memory: words of images left out of the decoder's training
        # (`exclude_words`) are tokens it can copy from retrieved captions, though it never had to write them
        tokenizer = train_tokenizer([t for texts in data.captions_of for t in texts], config.vocab_size,
                                    placeholders=PLACEHOLDERS if config.copy_substitution else 0)
    else:
        model, tokenizer, image_processor = pretrained
    store = ArtefactStore(workdir)
    # with exclude_words, retrieval in training reads the decoder's own training images only: the left-out words
    # appear nowhere in its training, as for words that arrive with captions ingested later
    retrieval = data.subset(examples.train_ids) if config.exclude_words else data
    with recorded_run(workdir, "caption train", asdict(config), data.model_id) as (run_id, result):
        datasets = _build_datasets(retrieval, examples, config, image_processor)
        if model is None:
            model = RACaptioner(config, len(tokenizer), datasets.train_inputs.shape[-1], function_token_ids(tokenizer))
            if config.copy and config.copy_grounding:
                model.set_word_vectors(copy_word_vectors(workdir, data.model_id, tokenizer))
        output_dir = store.training_dir("captioner", data.model_id)
        run_state = RunState(output_dir)  # this run's config, and whether it finished
        resume = _decide_resume(run_state, output_dir, config, resume)
        if not resume and output_dir.exists():  # a fresh run: earlier checkpoints must not mix into --resume later
            shutil.rmtree(output_dir)
        run_state.start(asdict(config))
        trainer = _build_trainer(model, tokenizer, datasets, config, output_dir, progress)
        started = time.perf_counter()
        if config.epochs:
            trainer.train(resume_from_checkpoint=True if resume else None)
        else:  # a pretrained BLIP as it is: its val loss only
            trainer.evaluate()
        seconds = time.perf_counter() - started
        losses = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
        captioner = _save_captioner(store, model, tokenizer, image_processor, config, data.model_id, run_id,
                                    len(examples.train_ids), losses)
        captioner_id, folder = captioner.id, captioner.path
        run_state.finish(captioner_id=captioner_id)
        result.update({"captioner_id": captioner_id, "path": str(folder), "model_id": data.model_id,
                       "train_images": len(datasets.train), "val_examples": len(datasets.val),
                       "excluded_words": list(config.exclude_words),
                       "vocab_size": len(tokenizer), "val_loss_by_epoch": [round(x, 4) for x in losses],
                       "best_val_loss": round(min(losses), 4) if losses else None,
                       "train_seconds": round(seconds, 1), "resumed": resume})
    return result


def copy_word_vectors(workdir: Workdir, model_id: str, tokenizer: Any) -> torch.Tensor:
    """(vocabulary, D) the grounded copy head's word vectors: CLIP's text embedding of each token the pointer may
    copy, in the zero-shot template ("a photo of a purple"); zero for the tokens it never copies and for copy
    placeholders (they name nothing)."""
    from indexer.devices import default_device

    from .config import PROMPT
    from .tagging import encode_texts

    skip = function_token_ids(tokenizer) | set(placeholder_ids(tokenizer))
    tokens = [(i, t) for t, i in tokenizer.get_vocab().items() if i not in skip]
    with Catalog.open(workdir, read_only=True) as catalog:
        path = catalog.model(model_id).path
    vectors = encode_texts(path, [PROMPT.format(t) for _, t in tokens], default_device())
    out = torch.zeros(len(tokenizer), vectors.shape[1])
    out[[i for i, _ in tokens]] = torch.from_numpy(vectors)
    return out


@dataclass
class _Examples:
    """The (image, caption) pairs the captioner learns from (train) and is chosen on (val)."""
    train_ids: np.ndarray             # the train split's captioned images (max_train_images of them, when set)
    train: list[tuple[int, str]]      # (row into train_ids, caption)
    val_ids: np.ndarray
    val: list[tuple[int, str]]        # (row into val_ids, caption)


def mentions(text: str, concepts: tuple[str, ...] | list[str]) -> set[str]:
    """The concepts a text names, as a word or its plural ('dog', 'dogs'; 'bus', 'buses')."""
    found = {w.split("'")[0] for w in words(text)}  # "dog's" names a dog
    return {c for c in concepts if c in found or f"{c}s" in found or f"{c}es" in found}


def _choose_examples(data: CaptionData, config: CaptionerConfig) -> _Examples:
    """Every caption of the train and val images; train images drawn at random (seeded) when there are more than
    `config.max_train_images`. With `config.exclude_words`, train images whose captions mention one of them are
    left out (they stay in the caption memory)."""
    train_ids, train_examples = data.split_examples("train")
    if config.exclude_words:
        named = {row for row, text in train_examples if mentions(text, config.exclude_words)}
        if len(named) == len(train_ids):
            raise InputError(f"every train image's captions mention one of {', '.join(config.exclude_words)}")
        keep = np.array([row for row in range(len(train_ids)) if row not in named], dtype=np.int64)
        _logger.info("exclude_words: %d of %d train images left out of the decoder's training", len(named),
                     len(train_ids))
        position = {int(old): new for new, old in enumerate(keep)}
        train_ids = train_ids[keep]
        train_examples = [(position[row], text) for row, text in train_examples if row in position]
    if config.max_train_images is not None and config.max_train_images < len(train_ids):
        rng = np.random.default_rng(config.seed)
        keep = np.sort(rng.choice(len(train_ids), config.max_train_images, replace=False))
        position = {int(old): new for new, old in enumerate(keep)}
        train_ids = train_ids[keep]
        train_examples = [(position[row], text) for row, text in train_examples if row in position]
    val_ids, val_examples = data.split_examples("val")
    if not val_examples:
        raise InputError("the val split has no captions: the captioner is evaluated and chosen on val each epoch")
    return _Examples(train_ids, train_examples, val_ids, val_examples)


@dataclass
class _Datasets:
    """What the Trainer reads: the examples with their images' retrieved captions, and the images' inputs."""
    train: CaptionExamples                         # by train image: its captions, one drawn each epoch
    val: list[tuple[int, str, list[str], bool]]    # (row into `inputs`, caption, retrieved captions, may drop them)
    train_inputs: ImageInputs
    val_inputs: ImageInputs

    @property
    def inputs(self) -> ImageInputs:
        """The one feature array the collator reads: the train rows, then the val rows."""
        return _join(self.train_inputs, self.val_inputs)


def _build_datasets(data: CaptionData, examples: _Examples, config: CaptionerConfig, image_processor: Any
                    ) -> _Datasets:
    """The examples' image inputs and retrieved captions (`config.k` per image), as the Trainer's datasets."""
    inputs, retrieved = {}, {}
    for name, ids in (("train", examples.train_ids), ("val", examples.val_ids)):
        _logger.info("retrieving captions for %d %s images", len(ids), name)
        vectors, inputs[name] = data.image_inputs(ids, config, image_processor)
        retrieved[name] = data.retrieve(vectors, ids, config.k)
    captions_by_row: list[list[str]] = [[] for _ in examples.train_ids]
    for row, caption in examples.train:
        captions_by_row[row].append(caption)
    offset = len(examples.train_ids)  # val rows follow the train rows in `_Datasets.inputs`
    val = [(offset + row, caption, retrieved["val"][row], False) for row, caption in examples.val]
    return _Datasets(CaptionExamples(captions_by_row, retrieved["train"]), val, inputs["train"], inputs["val"])


def _decide_resume(run_state: RunState, output_dir: Path, config: CaptionerConfig, resume: bool | None) -> bool:
    """Whether this run continues from the checkpoints in `output_dir`: `resume` when there are any, and with None
    only when the saved run was interrupted and had this very config."""
    has_checkpoint = any(output_dir.glob("checkpoint-*"))
    if resume is None:
        resume = has_checkpoint and run_state.should_resume(asdict(config), None)
        if resume:
            _logger.warning("resuming the interrupted captioner training in %s (resume=False, or `groundex "
                            "caption train --restart`, starts over)", output_dir)
    elif resume and not has_checkpoint:
        _logger.warning("no checkpoint in %s to resume from; training from the start", output_dir)
    return resume and has_checkpoint


def _build_trainer(model: CaptionDecoder, tokenizer: Any, datasets: _Datasets, config: CaptionerConfig,
                   output_dir: Path, progress: bool) -> Any:
    """A Trainer that evaluates and saves a checkpoint each epoch and ends with the best epoch's weights (by val
    loss); its log output goes to the logger (see `_quiet_logs`)."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, learning_rate=config.lr, weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float below 1: a share of the steps
        lr_scheduler_type="cosine", eval_strategy="epoch",
        save_strategy="epoch", save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="eval_loss",
        greater_is_better=False, logging_strategy="epoch", report_to=[], seed=config.seed,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(), bf16=_use_bf16(config))
    trainer = Trainer(model=model, args=args, train_dataset=datasets.train, eval_dataset=datasets.val,
                      data_collator=CaptionCollator(tokenizer, datasets.inputs, config, model.token_ids),
                      processing_class=tokenizer)
    _quiet_logs(trainer, progress)
    return trainer


def _save_captioner(store: ArtefactStore, model: CaptionDecoder, tokenizer: Any, image_processor: Any,
                    config: CaptionerConfig, model_id: str, run_id: int, train_images: int, losses: list[float]
                    ) -> Artefact:
    """Write the trained captioner to a staging folder and commit it to the store, recorded with its embedding
    model (`model_id`), the run, and its best val loss."""
    with store.staging("captioner") as staging:
        write_captioner(model.cpu(), tokenizer, staging, {"model_id": model_id,
                                                          "train_images": int(train_images)}, image_processor)
        captioner = store.commit(
            "captioner", staging, source=f"blip:{config.pretrained}" if config.pretrained else "trained",
            parent_id=model_id, run_id=run_id,
            metrics={"best_val_loss": round(min(losses), 4) if losses else None},
            info={"decoder": "blip" if config.pretrained else "small", "train_images": int(train_images)})
    return captioner


def _join(a: ImageInputs, b: ImageInputs) -> ImageInputs:
    return a + b if isinstance(a, PixelSource) else np.concatenate([a, b])


def _quiet_logs(trainer: Any, progress: bool) -> None:
    """The Trainer prints each log dict to stdout (its progress bar's `write`, or PrinterCallback without a
    bar), which would corrupt `--json` output: keep the bars on stderr, and send the val loss to the logger
    (and stderr, with progress)."""
    import sys

    from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

    class EpochLog(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "eval_loss" in logs:
                message = f"captioner epoch {state.epoch:.0f}: val loss {logs['eval_loss']:.4f}"
                _logger.info(message)
                if progress:
                    tqdm.write(message, file=sys.stderr)

    class BarsOnly(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            pass

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if progress:
        trainer.add_callback(BarsOnly)
    trainer.add_callback(EpochLog)


def _use_bf16(config: CaptionerConfig) -> bool:
    """The shared precision policy (`indexer.devices.precision_uses_bf16`) on the device the Trainer uses."""
    from indexer.devices import default_device, precision_uses_bf16

    return precision_uses_bf16(config.precision, default_device())


# -- using a trained captioner --------------------------------------------------------------------


def find_captioner(workdir: Workdir, captioner_id: str | None = None) -> Artefact:
    """A captioner by label or hash (a unique prefix is enough), or the newest one."""
    with Catalog.open(workdir, read_only=True) as catalog:
        return catalog.artefact("captioner", captioner_id)


class Captioner:
    """A trained captioner with the data it retrieves from: captions for catalog images or new ones."""

    def __init__(self, workdir: Workdir, captioner_id: str | None = None, device: str | None = None,
                 memory: str = "train"):
        """`memory`: the human captions retrieval draws from (`CaptionData`): 'train', 'SPLIT,SPLIT' or 'all'."""
        artefact = find_captioner(workdir, captioner_id)
        self.folder, self.id = artefact.path, artefact.id
        self.model, self.tokenizer, self.meta, self.image_processor = load_captioner(self.folder)
        self.config: CaptionerConfig = self.model.captioner_config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.data = CaptionData(workdir, self.meta["model_id"], memory)  # the default memory
        self._memories = {canonical_memory(memory): self.data}
        self._encoder: Any = None  # the embedding model, loaded on the first caption_file
        self._function_ids: frozenset[int] | None = None  # the tokens a repeated bigram may end in
        self._never = placeholder_ids(self.tokenizer)  # copy placeholders: learned in training, never written

    def memory_data(self, memory: str | None = None) -> CaptionData:
        """The retrieval data of another caption memory (None: the one this captioner was opened with), read from
        the catalog on first use and kept."""
        if memory is None:
            return self.data
        key = canonical_memory(memory)
        if key not in self._memories:
            if len(self._memories) >= 8:  # a server's clients may ask for many: keep the opening one and 7 more
                self._memories.pop(next(k for k in self._memories if self._memories[k] is not self.data))
            self._memories[key] = CaptionData(self.data.workdir, self.data.model_id, memory)
        return self._memories[key]

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from indexer.models import load_checkpoint

            with Catalog.open(self.data.workdir, read_only=True) as catalog:
                path = catalog.model(self.data.model_id).path
            self._encoder = load_checkpoint(path, self.device)
        return self._encoder

    def caption_inputs(self, image_inputs: ImageInputs, retrieved: list[list[str]], beams: int | None = None,
                       max_new_tokens: int | None = None, min_new_tokens: int | None = None,
                       length_penalty: float | None = None, batch_size: int = 32, progress: bool = False
                       ) -> list[str]:
        """Captions of images given what the decoder reads of them (`CaptionData.image_inputs`) and their
        retrieved captions (already cut to k)."""
        c = self.config
        if c.no_repeat_bigrams and self._function_ids is None:
            self._function_ids = function_token_ids(self.tokenizer)
        out: list[str] = []
        for s in tqdm(range(0, len(image_inputs), batch_size), desc="caption", unit="batch", disable=not progress):
            batch = encode_batch(self.tokenizer, retrieved[s:s + batch_size], None, c, self.model.token_ids)
            new = self.model.generate(
                torch.from_numpy(np.asarray(image_inputs[s:s + batch_size], dtype=np.float32)).to(self.device),
                batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device),
                beams=beams or c.beams, max_new_tokens=max_new_tokens or c.max_new_tokens,
                min_new_tokens=c.min_new_tokens if min_new_tokens is None else min_new_tokens,
                length_penalty=c.length_penalty if length_penalty is None else length_penalty,
                function_token_ids=self._function_ids if c.no_repeat_bigrams else None, never=self._never)
            out += [t.strip() for t in self.tokenizer.batch_decode(new.cpu(), skip_special_tokens=True)]
        return out

    def caption_images(self, image_ids: np.ndarray, k: int | None = None, progress: bool = False,
                       memory: str | None = None, **decoding: Any) -> tuple[list[str], list[list[str]]]:
        """(captions, retrieved captions) of catalog images from their stored embeddings. `memory`: the captions
        retrieval draws from (None: the captioner's, see `memory_data`)."""
        k = self.config.k if k is None else k
        data = self.memory_data(memory)
        vectors, inputs = data.image_inputs(image_ids, self.config, self.image_processor)
        retrieved = [r[:k] for r in data.retrieve(vectors, image_ids, max(k, 1))]
        return self.caption_inputs(inputs, retrieved, progress=progress, **decoding), retrieved

    def caption_file(self, path: str | Path, k: int | None = None, memory: str | None = None, **decoding: Any
                     ) -> tuple[str, list[str]]:
        """(caption, retrieved captions) of an image file that need not be in the catalog."""
        from warehouse import load_image

        return self.caption_image(load_image(path), k, memory, **decoding)

    def caption_image(self, image: Any, k: int | None = None, memory: str | None = None, **decoding: Any
                      ) -> tuple[str, list[str]]:
        """(caption, retrieved captions) of a PIL image (RGB); `memory` as in `caption_images`."""
        with torch.no_grad():
            vector, patches = self.encoder.encode_image_and_patches(self.encoder.pixels_from_images([image]))
        inputs: ImageInputs
        if self.image_processor is not None:  # a pretrained BLIP reads the pixels
            inputs = np.asarray(self.image_processor(images=[image], return_tensors="np")["pixel_values"])
        elif self.config.image_tokens == "patches":  # the embedding (1, 1, D), then the patches (1, P, D)
            inputs = torch.cat([vector[:, None, :], patches], dim=1).cpu().numpy()
        else:
            inputs = vector[:, None, :].cpu().numpy()
        k = self.config.k if k is None else k
        retrieved = [self.memory_data(memory).retrieve(vector.float().cpu().numpy(), None, max(k, 1))[0][:k]]
        return self.caption_inputs(inputs, retrieved, **decoding)[0], retrieved[0]


def caption_workdir(workdir: Workdir, captioner_id: str | None = None, split: str | None = None,
                    k: int | None = None, device: str | None = None, progress: bool = True, memory: str = "train",
                    ground: bool = False, chunker: str | None = None, **decoding: Any) -> dict[str, Any]:
    """`groundex caption generate`: caption the split's images (all when None) and store the captions.
    `memory`: the captions retrieval draws from (see `CaptionData`). `ground`: also store each caption's phrases,
    found by `chunker` (label or hash; default the newest) and grounded by the captioner's embedding model."""
    captioner = Captioner(workdir, captioner_id, device, memory)
    phrase_chunker = None
    if ground:  # before the long part: a workdir without a chunker fails now, not after captioning
        from .chunker import open_chunker

        phrase_chunker = open_chunker(workdir, chunker)
    with Catalog.open(workdir, read_only=True) as catalog:
        image_ids = np.array(catalog.embedded_ids(captioner.data.model_id, "image"), dtype=np.int64)
        if split is not None:
            image_ids = np.intersect1d(image_ids, [i for i, _ in catalog.image_rows(split)])
    with recorded_run(workdir, "caption generate", {"split": split, "k": k, "memory": memory, "ground": ground,
                                                    "chunker": chunker, **decoding}, captioner.id) as (_, result):
        captions, _ = captioner.caption_images(image_ids, k, progress=progress, **decoding)
        phrases = None
        if phrase_chunker is not None:
            from grounding.ground import Grounder

            from .phrases import ground_captions

            grounder = Grounder(workdir, captioner.data.model_id, device)
            phrases = ground_captions(grounder, phrase_chunker, image_ids.tolist(), captions, progress)
            result["grounded"] = {"chunker_id": phrase_chunker.id, "model_id": grounder.model_id,
                                  "phrases": sum(map(len, phrases)),
                                  "boxes": sum(p.box is not None for ps in phrases for p in ps)}
        with Catalog.open(workdir) as catalog:
            stored = catalog.replace_generated_captions(captioner.id, list(zip(image_ids.tolist(), captions,
                                                                               strict=True)), phrases)
        result.update({"captioner_id": captioner.id, "images": int(len(image_ids)), "stored": stored,
                       "memory": captioner.data.describe_memory(),
                       "examples": [{"image_id": int(i), "caption": c,
                                     **({"phrases": [p.as_dict() for p in phrases[n]]} if phrases else {})}
                                    for n, (i, c) in enumerate(zip(image_ids[:3], captions[:3], strict=True))]})
    return result


def evaluate_captions(workdir: Workdir, split: str, captioner_id: str | None = None,
                      ks: tuple[int, ...] | None = None, limit: int | None = None, device: str | None = None,
                      progress: bool = True, memory: str = "train", baseline_id: str | None = None,
                      beams: int | None = None) -> dict[str, Any]:
    """`groundex eval captions`: BLEU-1..4, ROUGE-L and CIDEr on the split's human captions for the
    captioner (its k), the same model with no retrieved captions, the nearest-neighbour caption, and the
    captioner at each k of `ks`. `memory`: the captions retrieval draws from (an image's own never count).
    `baseline_id`: a second captioner (one trained without retrieval, `k=0`) scored with no retrieved captions as
    `trained_without_retrieval`. `beams`: the beam width for every captioner (default: each one's own)."""
    if split == "train":
        raise InputError("the captioner learns on train: evaluate on val or test")
    captioner = Captioner(workdir, captioner_id, device, memory)
    image_ids, examples = captioner.data.split_examples(split)
    if limit is not None:
        image_ids = image_ids[:limit]
    if len(image_ids) == 0:
        raise InputError(f"split {split!r} has no captioned images to evaluate captions on")
    references: list[list[str]] = [[] for _ in image_ids]
    for row, text in examples:
        if row < len(image_ids):
            references[row].append(text)
    k_model = captioner.config.k
    ks = tuple(sorted({0, k_model, *(ks or (1, 2))}))  # 0 and the captioner's own k are always reported
    baseline = Captioner(workdir, baseline_id, device, memory) if baseline_id is not None else None
    if baseline is not None and baseline.data.model_id != captioner.data.model_id:
        raise InputError(f"baseline captioner {baseline.id} reads embedding model {baseline.data.model_id}, "
                         f"captioner {captioner.id} reads {captioner.data.model_id}: compare captioners of one model")
    with recorded_run(workdir, "eval captions", {"split": split, "ks": list(ks), "memory": memory,
                                                 "baseline": baseline.id if baseline else None, "beams": beams},
                      captioner.id) as (_, result):
        vectors, inputs = captioner.data.image_inputs(image_ids, captioner.config, captioner.image_processor)
        retrieved = captioner.data.retrieve(vectors, image_ids, max(max(ks), 1))
        by_k, samples = {}, {}
        for k in ks:
            captions = captioner.caption_inputs(inputs, [r[:k] for r in retrieved], beams, progress=progress)
            by_k[str(k)] = caption_metrics(captions, references)
            samples[str(k)] = captions[:5]
        nearest = [r[0] if r else "" for r in retrieved]
        methods = {"retrieval_augmented": by_k[str(k_model)], "no_retrieval": by_k["0"],
                   "nearest_caption": caption_metrics(nearest, references)}
        if baseline is not None:
            _, baseline_inputs = baseline.data.image_inputs(image_ids, baseline.config, baseline.image_processor)
            plain = baseline.caption_inputs(baseline_inputs, [[] for _ in image_ids], beams, progress=progress)
            methods["trained_without_retrieval"] = {**caption_metrics(plain, references),
                                                    "captioner_id": baseline.id}
        result.update({
            "split": split, "captioner_id": captioner.id, "model_id": captioner.data.model_id,
            "images": int(len(image_ids)), "k": k_model, "beams": beams or captioner.config.beams,
            "memory": captioner.data.describe_memory(),
            "methods": methods,
            "by_k": by_k,
            "examples": [{"image_id": int(image_ids[i]), "references": references[i][:2],
                          "retrieved": retrieved[i][:k_model],
                          "retrieval_augmented": samples[str(k_model)][i], "no_retrieval": samples["0"][i],
                          "nearest_caption": nearest[i]} for i in range(min(5, len(image_ids)))],
        })
    return result
