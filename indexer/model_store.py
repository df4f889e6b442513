"""CLIP models as artefacts of a workdir: store a trained one, add one without training, export, remove, list.

A model enters a workdir in one of three ways, and every command that takes `--model` then treats them alike:
- trained here (`groundex train`, recorded by `store_model` with its run and figures);
- added from open_clip (`groundex model add ViT-B-32 --pretrained laion2b_s34b_b79k`, an `hf-hub:` id, or a local
  `.safetensors` file for an open_clip architecture);
- imported from a folder that `groundex model export` wrote in another workdir (same bytes, same hash, and its
  record: label, parent, runs and figures).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import open_clip

from warehouse import (
    Artefact,
    ArtefactStore,
    Catalog,
    InputError,
    Workdir,
    atomic_write_json,
    content_hash,
    hashed_files,
    missing_files,
    utc_now,
)

from .models import (
    PRESET_PREFIX,
    GroundexModel,
    create_model,
    list_presets,
    load_checkpoint,
    resolve_name,
    write_checkpoint,
)

_logger = logging.getLogger(__name__)
RECORD_FILE = "groundex-model.json"  # an exported model's record (what `model add` reads back)
CARD_FILE = "MODEL_CARD.md"


def model_info(model: GroundexModel, **extra: Any) -> dict[str, Any]:
    """What the catalog records of a model's architecture and inputs."""
    try:
        grid: list[int] | None = list(model.patch_grid)
    except NotImplementedError:
        grid = None
    return {"name": model.spec.name, "embed_dim": model.embed_dim, "image_size": model.image_size,
            "resize": model.resize, "patch_grid": grid, **extra}


def store_model(workdir: Workdir, model: GroundexModel, *, source: str, parent_id: str | None = None,
                run_id: int | None = None, metrics: dict[str, Any] | None = None, label: str | None = None,
                **info: Any) -> Artefact:
    """Write `model` as a content-addressed checkpoint in the workdir and record it."""
    if label is not None:
        check_model_label(label)
    store = ArtefactStore(workdir)
    with store.staging("model") as staging:
        write_checkpoint(model, staging)
        return store.commit("model", staging, source=source, parent_id=parent_id, run_id=run_id, metrics=metrics,
                            label=label, info=model_info(model, **info))


def check_model_label(label: str) -> None:
    """A model's label must not read as something else `--base` or `model add` takes: a preset or an open_clip
    name (the catalog refuses labels taken by another model, or made only of hex digits like a hash prefix)."""
    if resolve_name(label).startswith(PRESET_PREFIX) or label in open_clip.list_models():
        raise InputError(f"label {label!r} is a model name (preset or open_clip): choose another")


def label_model(workdir: Workdir, ref: str, label: str | None) -> Artefact:
    """Name a recorded model (None: clear its label)."""
    if label is not None:
        check_model_label(label)
    with Catalog.open(workdir) as catalog:
        artefact = catalog.artefact("model", ref)
        catalog.set_label("model", artefact.id, label)
        return catalog.artefact("model", artefact.id)


def add_model(workdir: Workdir, source: str, pretrained: str | None = None, label: str | None = None,
              resize: str | None = None) -> Artefact:
    """Record a model without training: an exported groundex model folder, or an open_clip model name (with a
    pretrained tag, an `hf-hub:` id, or a local .safetensors file)."""
    workdir.read_manifest()  # a clear error when W is not a workdir
    folder = Path(source).expanduser()
    if folder.is_dir():
        if pretrained is not None:
            raise InputError(f"{source} is a model folder: it brings its own weights (drop --pretrained)")
        return _import_folder(workdir, folder, label, resize)
    if source.removeprefix("groundex-") in list_presets() and pretrained is None:
        raise InputError(f"{source!r} is a groundex preset, trained from scratch on a workdir's captions: use "
                         f"`groundex train --base {source}`, or add an open_clip model (open_clip.list_models()) "
                         "or a folder exported by `groundex model export`")
    if pretrained is not None and Path(pretrained).expanduser().exists():
        pretrained = str(Path(pretrained).expanduser().resolve())
        origin = f"weights:{pretrained}"
    else:
        origin = f"open_clip:{source}" + (f":{pretrained}" if pretrained else "")
    model = create_model(source, pretrained, device="cpu", resize=resize or "center-crop")
    preprocess = getattr(model.clip.visual, "preprocess_cfg", None) or {}
    if resize is None:  # by default, the preprocessing the weights were trained with (docs/indexer.md)
        mode = preprocess.get("resize_mode", "shortest")
        if mode not in ("shortest", "squash"):
            raise InputError(f"{source}'s weights were trained with resize mode {mode!r}, which groundex does not "
                             "reproduce: pass --resize center-crop or --resize squash")
        model.spec.resize = "squash" if mode == "squash" else "center-crop"
    if preprocess.get("interpolation", "bicubic") != "bicubic":
        _logger.warning("%s was trained on %s-resized images; groundex resizes with bicubic", source,
                        preprocess["interpolation"])
    if pretrained is None:
        _logger.warning("no --pretrained weights given: %s is recorded with random weights", source)
    return store_model(workdir, model, source=origin, label=label, mode="none", trainable_params=0,
                       total_params=sum(p.numel() for p in model.parameters()))


def _import_folder(workdir: Workdir, folder: Path, label: str | None, resize: str | None) -> Artefact:
    absent = missing_files("model", folder)
    if absent:
        raise FileNotFoundError(f"{folder}: not a groundex model folder (missing {', '.join(absent)}; "
                                "`groundex model export` writes one)")
    if resize is not None:
        raise InputError("--resize applies to open_clip models; an exported model keeps the setting it was made with")
    record: dict[str, Any] = {}
    if (folder / RECORD_FILE).is_file():
        try:
            record = json.loads((folder / RECORD_FILE).read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{folder / RECORD_FILE}: not valid JSON ({e})") from None
    model_id = content_hash("model", folder)
    if record.get("id") not in (None, model_id):
        raise InputError(f"{folder}: its files hash to {model_id}, but {RECORD_FILE} says {record['id']}: the "
                         "weights or config were changed after export")
    model = load_checkpoint(folder, "cpu")  # refuses files that do not make a model, before anything is copied
    with Catalog.open(workdir, read_only=True) as catalog:
        taken = {a.label for a in catalog.artefacts("model")}
    if label is None and record.get("label") not in taken:
        label = record.get("label")  # the exported model's own name, where it is free here
    if label is not None:
        check_model_label(label)
    info = {**record.get("info", {}), **model_info(model)}
    info.setdefault("mode", "none")
    info["exported_runs"] = record.get("runs", [])
    store = ArtefactStore(workdir)
    with store.staging("model") as staging:
        for name in hashed_files("model", folder):  # the weights, config and tokenizer, and a box head if any
            shutil.copyfile(folder / name, staging / name)
        return store.commit("model", staging, source=f"import:{folder.resolve()}",
                            parent_id=record.get("parent_id"), metrics=record.get("metrics"), label=label, info=info)


def model_records(workdir: Workdir, ref: str | None = None) -> list[dict[str, Any]]:
    """Every model (or the one `ref` names) with its runs: the one that made it, and the evaluations run with it
    (newest of each command)."""
    with Catalog.open(workdir, read_only=True) as catalog:
        out = []
        for artefact in catalog.artefacts("model") if ref is None else [catalog.artefact("model", ref)]:
            runs = catalog.runs_of_model(artefact.id)
            evaluations = {}
            for run in runs:
                if run["command"].startswith("eval ") and run["status"] == "ok":
                    evaluations.setdefault(run["command"], {"run_id": run["id"], **_figures(run["result"])})
            made_by = next((r for r in runs if r["id"] == artefact.run_id), None)
            out.append({**artefact.as_dict(), "architecture": artefact.info.get("name"),
                        "made_by": None if made_by is None else {"run_id": made_by["id"], "command": made_by["command"],
                                                                 "config": made_by["config"]},
                        "evaluations": evaluations,
                        "indexes": catalog.index_kinds(artefact.id)})
    return out


def _figures(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of an evaluation run's result (no examples or per-item lists)."""
    return {k: v for k, v in result.items() if not isinstance(v, list) and k not in ("examples",)}


def export_model(workdir: Workdir, ref: str | None, out: Path) -> Path:
    """Write a self-contained model folder: weights, config, tokenizer, its record and a model card."""
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new folder")
    record = model_records(workdir, ref)[0]
    out.mkdir(parents=True, exist_ok=True)
    source = Path(record["path"])
    for name in hashed_files("model", source):
        shutil.copyfile(source / name, out / name)
    if content_hash("model", out) != record["id"]:
        raise InputError(f"model {record['id']}: its files in {source} no longer match its hash; run `groundex verify`")
    runs = ([record["made_by"]] if record["made_by"] else []) + record["info"].get("exported_runs", [])
    info = {k: v for k, v in record["info"].items() if k != "exported_runs"}
    exported = {"format": "groundex-model", "version": 1, "id": record["id"], "label": record["label"],
                "source": record["source"], "parent_id": record["parent_id"], "info": info,
                "metrics": record["metrics"], "runs": runs, "evaluations": record["evaluations"],
                "exported_at": utc_now().isoformat(timespec="seconds"), "exported_from": str(workdir.root.resolve())}
    atomic_write_json(out / RECORD_FILE, exported)
    (out / CARD_FILE).write_text(model_card(exported))
    return out


def model_card(record: dict[str, Any]) -> str:
    """A short human-readable card from an exported record."""
    info = record["info"]
    lines = [f"# groundex model {record['id']}" + (f" ({record['label']})" if record.get("label") else ""), "",
             f"- architecture: `{info.get('name')}` (embedding width {info.get('embed_dim')}, input "
             f"{info.get('image_size')} px, resize `{info.get('resize')}`, patch grid {info.get('patch_grid')})",
             f"- weights from: {record['source']}" + (f", fine-tuned from {record['parent_id']}"
                                                       if record.get("parent_id") else ""),
             f"- training mode: {info.get('mode')}; parameters trained {info.get('trainable_params')} of "
             f"{info.get('total_params')}"]
    data = info.get("data")
    if data:
        lines.append(f"- training data: {data.get('train_images')} images, {data.get('train_captions')} captions of "
                     f"split `{data.get('train_split')}` ({', '.join(data.get('datasets', [])) or 'unknown'})")
    if record.get("metrics"):
        lines += ["", "## Figures at save time (validation)", "", "```json",
                  json.dumps(record["metrics"], indent=2, sort_keys=True), "```"]
    for command, figures in sorted(record.get("evaluations", {}).items()):
        lines += ["", f"## `groundex {command}` (run {figures.get('run_id')})", "", "```json",
                  json.dumps(figures, indent=2, sort_keys=True, default=str), "```"]
    if record.get("runs"):
        lines += ["", "## Runs that made it", ""]
        lines += [f"- run {r.get('run_id')}: `groundex {r.get('command')}`" for r in record["runs"]]
    lines += ["", "Add it to another workdir with `groundex model add THIS_FOLDER --workdir W`.", ""]
    return "\n".join(lines)


def remove_model(workdir: Workdir, ref: str, with_dependents: bool = False) -> dict[str, Any]:
    """Remove a model, its embeddings, indexes, tags, regions and grounding parameters. Refused while a captioner or
    tagger reads its vectors, unless `with_dependents` removes those too (with their generated captions and
    training state). Models fine-tuned from it are kept: they hold their own weights and keep its id as parent."""
    store = ArtefactStore(workdir)
    with Catalog.open(workdir) as catalog:  # the write lock is held until every file is gone
        artefact = catalog.artefact("model", ref)
        dependents = catalog.artefacts("captioner", artefact.id) + catalog.artefacts("tagger", artefact.id)
        if dependents and not with_dependents:
            names = ", ".join(f"{a.kind} {a.display}" for a in dependents)
            raise InputError(f"model {artefact.display} is read by {names}: remove them first, or pass "
                             "--with-dependents to remove them with it")
        children = [a.display for a in catalog.artefacts("model", artefact.id)]
        with catalog.transaction():
            for dependent in dependents:
                catalog.forget_artefact(dependent.kind, dependent.id)
            catalog.forget_model(artefact.id)
        for dependent in dependents:
            store.remove(dependent.kind, dependent.id)
        store.remove("model", artefact.id)
        for path in (workdir.model_embeddings_dir(artefact.id), workdir.model_indexes_dir(artefact.id),
                     store.training_dir("captioner", artefact.id)):
            shutil.rmtree(path, ignore_errors=True)
        workdir.grounding_config_path(artefact.id).unlink(missing_ok=True)
        stale = [k for k in workdir.read_manifest().get("artefacts", {}) if k.startswith(f"index:{artefact.id}:")]
        workdir.update_manifest(remove=stale)
    return {"removed": artefact.id, "label": artefact.label,
            "dependents_removed": [f"{a.kind} {a.id}" for a in dependents],
            "children_kept": children}
