"""Writers for small fixtures in the exact real formats (Flickr30k Entities, Karpathy, results.csv, HF)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

SAMPLE_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr30k-sample"


def image_bytes(size=(64, 48), colour=(200, 30, 30), fmt="JPEG", mode="RGB", **save) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def write_image(path: Path, size=(64, 48), colour=(200, 30, 30), fmt="JPEG", mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(size, colour, fmt, mode))
    return path


# Two images in the official layout. 2000000001 is annotated at 375x500 but stored at 75x100
# (scale 1/5 in x and y), 2000000002 is annotated at 500x333 and stored at 100x50 (x 1/5, y ~0.15).
SENTENCES = {
    "2000000001": [
        "[/EN#18/people A woman] in [/EN#19/clothing a green coat] is walking up [/EN#20/other a flight of steps] "
        "near [/EN#23/scene a stone archway] .",
        "[/EN#18/people An old woman] in [/EN#19/clothing a green coat] heading into [/EN#21/scene a brick house] .",
        "[/EN#18/people An old woman] walking up [/EN#20/other the steps] to [/EN#22/other her front door] .",
    ],
    "2000000002": [
        "[/EN#2/people Two cats] stare at [/EN#0/notvisual one another] on [/EN#4/scene the porch] .",
        "[/EN#2/animals/people Two cats] rest .",
    ],
}
ANNOTATIONS = {
    "2000000001": ((375, 500), [((18,), (6, 150, 106, 340)), ((19,), (6, 190, 84, 300)), ((20,), (2, 320, 114, 478)),
                                ((22,), (26, 6, 375, 386)), ((23,), (40, 25, 110, 306))], [(21, 0, 1)]),
    # entity 2 has two boxes; the second box names two entities (2 and 3); entity 4 is a scene without box
    "2000000002": ((500, 333), [((2,), (12, 10, 100, 200)), ((2, 3), (201, 50, 400, 333))], [(4, 1, 0)]),
}
STORED_SIZES = {"2000000001": (75, 100), "2000000002": (100, 50)}


def annotation_xml(image_id: str, size, boxes, no_box) -> str:
    parts = [f"<annotation>\n\t<filename>{image_id}.jpg</filename>\n\t<size>\n\t\t<width>{size[0]}</width>\n"
             f"\t\t<height>{size[1]}</height>\n\t\t<depth>3</depth>\n\t</size>"]
    for names, (x1, y1, x2, y2) in boxes:
        parts.append("\t<object>\n" + "".join(f"\t\t<name>{n}</name>\n" for n in names) +
                     f"\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n\t\t\t<xmax>{x2}</xmax>\n"
                     f"\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>")
    for name, scene, nobndbox in no_box:
        parts.append(f"\t<object>\n\t\t<name>{name}</name>\n\t\t<scene>{scene}</scene>\n"
                     f"\t\t<nobndbox>{nobndbox}</nobndbox>\n\t</object>")
    return "\n".join(parts) + "\n</annotation>"


def write_entities_root(root: Path, splits: dict[str, list[str]] | None = None) -> Path:
    """The two images above in the official Flickr30k Entities layout."""
    for image_id, lines in SENTENCES.items():
        write_image(root / "images" / f"{image_id}.jpg", STORED_SIZES[image_id])
        (root / "Sentences").mkdir(parents=True, exist_ok=True)
        (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{image_id}.xml").write_text(annotation_xml(image_id, *ANNOTATIONS[image_id]))
    splits = {"train": ["2000000001"], "val": ["2000000002"]} if splits is None else splits
    for name, ids in splits.items():
        (root / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def write_karpathy(root: Path, entries: list[dict]) -> Path:
    path = root / "dataset_flickr30k.json"
    path.write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    return path


def karpathy_entry(filename: str, split: str, raws: list[str], imgid: int = 0) -> dict:
    return {
        "sentids": list(range(imgid * 5, imgid * 5 + len(raws))), "imgid": imgid, "split": split,
        "filename": filename,
        "sentences": [{"tokens": r.lower().rstrip(" .").split(), "raw": r, "imgid": imgid, "sentid": imgid * 5 + j}
                      for j, r in enumerate(raws)],
    }


def write_results_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("image_name| comment_number| comment\n" + "\n".join(rows) + "\n")
    return path


def write_tiny_blip(folder: Path, texts: list[str]) -> Path:
    """A randomly initialised BlipForConditionalGeneration in the layout of a real checkpoint
    (`save_pretrained` of the model and of a BlipProcessor: BERT WordPiece tokenizer with [DEC] as its
    bos token, 32 px image processor); its vocabulary holds the words of `texts`."""
    import re

    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, "[DEC]"]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True,
                              bos_token="[DEC]")
    processor = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    config = BlipConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 128, "bos_token_id": len(vocab) - 1, "sep_token_id": 3, "pad_token_id": 0},
        vision_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
                       "image_size": 32, "patch_size": 8})
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def built_workdir(root: Path, n: int, epochs: int, index: bool = True, **train_options):
    """A synthetic workdir of `n` scenes with a tiny CLIP trained for `epochs` (for real) and indexed
    (unless `index` is False)."""
    import warehouse
    from indexer.config import TrainConfig
    from indexer.pipeline import index_workdir
    from indexer.train import train

    workdir = warehouse.Workdir(root)
    warehouse.ingest_synthetic(workdir, warehouse.SyntheticConfig(n=n), config=warehouse.IngestConfig(progress=False))
    train(workdir, TrainConfig(epochs=epochs, batch_size=64, progress=False, **train_options))
    if index:
        index_workdir(workdir)
    return workdir


MICRO_VIT = "TestViT-micro-16"  # a small open_clip architecture, not a groundex preset: goes through open_clip
MICRO_VIT_CONFIG = {"embed_dim": 64,
                    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
                    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def micro_vit_weights(root: Path, seed: int = 0) -> Path:
    """Register the micro architecture with open_clip (from a JSON config under `root`) and save random weights
    for it as `root/weights.safetensors`, the way a user's local open_clip weights come."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "configs" / f"{MICRO_VIT}.json").write_text(json.dumps(MICRO_VIT_CONFIG))
    open_clip.add_model_config(root / "configs")
    torch.manual_seed(seed)
    model = open_clip.create_model(MICRO_VIT)
    path = root / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def catalog_at_version(path: Path, version: int) -> None:
    """A catalog as a groundex of schema `version` made it: the released migrations up to it, applied as they
    were (older workdirs are built this way to test their upgrade)."""
    import duckdb

    from warehouse._schema import MIGRATIONS

    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    for number, steps in enumerate(MIGRATIONS[:version], start=1):
        for step in steps:
            assert isinstance(step, str), f"migration {number} has Python steps: build this version another way"
            con.execute(step)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [number])
    con.close()


# -- servers the tests start: `groundex serve`, `groundex ui` ------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """A `preexec_fn` for servers a test starts: the kernel sends them SIGTERM if the test process dies first (a
    crash, a CI timeout), so no server outlives the suite even when a fixture's own cleanup never runs."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_server(argv: list[str], health_url: str, log: Path, timeout_s: float = 120):
    """`argv` started in a session of its own (so that nothing it starts can hide among the test's processes),
    once `health_url` answers 200; its output goes to `log`."""
    import subprocess
    import time
    import urllib.request

    with open(log, "w") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                  preexec_fn=die_with_parent)
    deadline = time.monotonic() + timeout_s
    while True:  # bounded: health checks on our own loopback port
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"{argv[2:4]} did not come up: {log.read_text()[-3000:]}")
        time.sleep(0.3)


def stop_server(server, sig: int, port: int) -> int:
    """Sends `sig` to the server's process alone (as `kill` or a process manager does), and checks that nothing of
    it is left: no process in its session's group, and its port free to listen on again. Returns its exit code."""
    import os
    import socket
    import subprocess

    server.send_signal(sig)
    try:
        code = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, 9)
        raise AssertionError(f"the server did not stop within 30 s of signal {sig}") from None
    try:
        os.killpg(server.pid, 0)
        left = True
    except ProcessLookupError:
        left = False
    if left:
        os.killpg(server.pid, 9)
        raise AssertionError(f"processes of the server's group outlived it after signal {sig}")
    with socket.socket() as s:  # SO_REUSEADDR: closed connections may linger; a listener still there may not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    return code
