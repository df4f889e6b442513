"""The bad-input corpus: every case goes through the command line a user would type (`groundex ...`, in process)
and must end in a clear one-line error (exit 2) or a recorded reject, never a traceback, and must leave what the
workdir already stored as it was. docs/reliability.md lists every case (a test below keeps the two in step).
"""

from __future__ import annotations

import io
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import annotation_xml, built_workdir, image_bytes, write_entities_root
from ui.cli import main
from warehouse import Catalog, Workdir

pytestmark = pytest.mark.slow  # 39 cases through the CLI on a trained workdir

ROOT = Path(__file__).resolve().parents[1]
CASES: dict[str, Callable] = {}


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Workdir:
    return built_workdir(tmp_path_factory.mktemp("bad") / "w", n=120, epochs=1)


def stored(workdir: Workdir) -> dict:
    """What must survive any bad input: the rows, the current indexes, the models."""
    with Catalog.open(workdir, read_only=True) as c:
        return {"images": c.query("SELECT count(*), sum(hash(sha256)) FROM images WHERE dataset = 'synthetic'")[0],
                "captions": c.query("SELECT count(*), sum(hash(text)) FROM captions WHERE source = 'human' "
                                    "AND image_id IN (SELECT id FROM images WHERE dataset = 'synthetic')")[0],
                "indexes": c.query("SELECT model_id, kind, max(version) FROM indexes GROUP BY ALL ORDER BY ALL"),
                "models": c.query("SELECT id FROM models ORDER BY id")}


def groundex(capsys, *argv: str) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    return code, text


def error(capsys, *argv: str, match: str) -> str:
    code, text = groundex(capsys, *argv)
    assert code == 2, text
    line = text.strip().splitlines()[-1]
    assert re.search(match, line, re.IGNORECASE), line
    return line


def rejects_of(workdir: Workdir, path_part: str) -> list[str]:
    with Catalog.open(workdir, read_only=True) as c:
        return [r[0] for r in c.query("SELECT reason FROM rejects WHERE path LIKE ?", [f"%{path_part}%"])]


def ingest_files(capsys, workdir: Workdir, folder: Path, files: dict[str, bytes]) -> str:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    code, text = groundex(capsys, "ingest", "folder", "--root", folder, "--workdir", workdir.root, "--no-progress")
    assert code == 0, text
    return text


def image_ingested(workdir: Workdir, name: str) -> dict | None:
    with Catalog.open(workdir, read_only=True) as c:
        rows = c.query("SELECT width, height, mode FROM images WHERE path LIKE ?", [f"%/{name}"])
    return dict(zip(("width", "height", "mode"), rows[0], strict=True)) if rows else None


def rejected(capsys, workdir, tmp_path, name: str, data: bytes, reason: str) -> None:
    ingest_files(capsys, workdir, tmp_path / "in", {name: data, "fine.png": image_bytes(fmt="PNG")})
    assert any(re.search(reason, r, re.IGNORECASE) for r in rejects_of(workdir, name)), rejects_of(workdir, name)
    assert image_ingested(workdir, name) is None and image_ingested(workdir, "fine.png") is not None


def accepted(capsys, workdir, tmp_path, name: str, data: bytes) -> dict:
    """An unusual but valid image: ingested, and usable as a search query (no crash, finite scores)."""
    ingest_files(capsys, workdir, tmp_path / "in", {name: data})
    info = image_ingested(workdir, name)
    assert info is not None, rejects_of(workdir, name)
    code, text = groundex(capsys, "search", "--workdir", workdir.root, "--image", tmp_path / "in" / name, "-k", "3")
    assert code == 0 and text.count("image ") >= 3, text
    return info


# -- images ---------------------------------------------------------------------------------------------------

@case("image-corrupt")
def _(capsys, workdir, tmp_path):
    data = bytearray(image_bytes(size=(64, 64)))
    data[200:600] = bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8))
    rejected(capsys, workdir, tmp_path, "corrupt.jpg", bytes(data), "corrupt|unreadable|truncated|not an image")


@case("image-truncated")
def _(capsys, workdir, tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    data = buffer.getvalue()
    rejected(capsys, workdir, tmp_path, "cut.png", data[: len(data) // 2], "truncated|corrupt")


@case("image-zero-bytes")
def _(capsys, workdir, tmp_path):
    rejected(capsys, workdir, tmp_path, "empty.jpg", b"", "0 bytes")


@case("image-not-an-image")
def _(capsys, workdir, tmp_path):
    rejected(capsys, workdir, tmp_path, "notes.jpg", b"these are my holiday notes\n" * 20, "not an image")


@case("image-decompression-bomb")
def _(capsys, workdir, tmp_path):
    buffer = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, format="PNG")  # 144 Mpx in a few kB
    rejected(capsys, workdir, tmp_path, "bomb.png", buffer.getvalue(), "too large")


@case("image-1x1")
def _(capsys, workdir, tmp_path):
    assert accepted(capsys, workdir, tmp_path, "dot.png", image_bytes(size=(1, 1), fmt="PNG"))["width"] == 1


@case("image-huge-aspect-ratio")
def _(capsys, workdir, tmp_path):
    assert accepted(capsys, workdir, tmp_path, "strip.png", image_bytes(size=(4000, 3), fmt="PNG"))["height"] == 3


@case("image-cmyk")
def _(capsys, workdir, tmp_path):
    data = image_bytes(size=(40, 30), colour=(0, 200, 200, 0), mode="CMYK")
    assert accepted(capsys, workdir, tmp_path, "print.jpg", data)["mode"] == "CMYK"


@case("image-16-bit")
def _(capsys, workdir, tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 65535, 48 * 32).reshape(32, 48).astype(np.uint16)).save(buffer, format="PNG")
    assert accepted(capsys, workdir, tmp_path, "scan16.png", buffer.getvalue())["mode"].startswith("I")


@case("image-palette-with-alpha")
def _(capsys, workdir, tmp_path):
    image = Image.new("P", (32, 32), 1)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    assert accepted(capsys, workdir, tmp_path, "sticker.png", buffer.getvalue())["mode"] == "P"


@case("image-exif-rotated")
def _(capsys, workdir, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 60x20, shown 20x60
    data = image_bytes(size=(60, 20), exif=exif.tobytes())
    info = accepted(capsys, workdir, tmp_path, "phone.jpg", data)
    assert (info["width"], info["height"]) == (20, 60)


@case("image-animated-gif")
def _(capsys, workdir, tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    accepted(capsys, workdir, tmp_path, "blink.gif", buffer.getvalue())


# -- annotations (the official Flickr30k Entities layout) -------------------------------------------------------

def ingest_entities(capsys, workdir, tmp_path, change: Callable[[Path], None]) -> list[str]:
    root = write_entities_root(tmp_path / "f30k")
    for path in (root / "images").glob("*.jpg"):  # new keys for this case: not already in the shared workdir
        path.rename(path.with_name(f"{tmp_path.name[-20:]}-{path.name}"))
    for folder in ("Sentences", "Annotations"):
        for path in (root / folder).iterdir():
            path.rename(path.with_name(f"{tmp_path.name[-20:]}-{path.name}"))
    for split in ("train", "val"):
        ids = (root / f"{split}.txt").read_text().split()
        (root / f"{split}.txt").write_text("".join(f"{tmp_path.name[-20:]}-{i}\n" for i in ids))
    change(root)
    code, text = groundex(capsys, "ingest", "flickr30k", "--root", root, "--workdir", workdir.root, "--no-progress")
    assert code == 0, text
    return rejects_of(workdir, tmp_path.name[-20:])


def one_file(root: Path, folder: str, image: str) -> Path:
    return next(p for p in (root / folder).iterdir() if p.name.endswith(image))


@case("annotation-malformed-xml")
def _(capsys, workdir, tmp_path):
    rejects = ingest_entities(capsys, workdir, tmp_path, lambda r: one_file(r, "Annotations", "2000000001.xml")
                              .write_text("<annotation><size><width>3"))
    assert any("xml" in r.lower() for r in rejects), rejects


@case("annotation-missing-size")
def _(capsys, workdir, tmp_path):
    rejects = ingest_entities(capsys, workdir, tmp_path, lambda r: one_file(r, "Annotations", "2000000001.xml")
                              .write_text("<annotation><object><name>18</name></object></annotation>"))
    assert any("size" in r.lower() for r in rejects), rejects


@case("annotation-box-outside-image")
def _(capsys, workdir, tmp_path):
    rejects = ingest_entities(capsys, workdir, tmp_path, lambda r: one_file(r, "Annotations", "2000000002.xml")
                              .write_text(annotation_xml("x", (500, 333), [((2,), (600, 400, 700, 500))], [])))
    assert any("outside" in r for r in rejects), rejects


@case("annotation-box-inverted")
def _(capsys, workdir, tmp_path):
    rejects = ingest_entities(capsys, workdir, tmp_path, lambda r: one_file(r, "Annotations", "2000000002.xml")
                              .write_text(annotation_xml("x", (500, 333), [((2,), (300, 200, 100, 50))], [])))
    assert any("inverted" in r for r in rejects), rejects


@case("annotation-unknown-entity-id")
def _(capsys, workdir, tmp_path):
    rejects = ingest_entities(capsys, workdir, tmp_path, lambda r: one_file(r, "Annotations", "2000000002.xml")
                              .write_text(annotation_xml("x", (500, 333), [((2,), (12, 10, 100, 200)),
                                                                           ((77,), (10, 10, 50, 50))], [])))
    assert any("77" in r for r in rejects), rejects


@case("annotation-broken-phrase-markup")
def _(capsys, workdir, tmp_path):
    def change(root):
        path = one_file(root, "Sentences", "2000000002.txt")
        path.write_text(path.read_text() + "[/EN#9/people A dog without an end .\n")
    rejects = ingest_entities(capsys, workdir, tmp_path, change)
    assert any("not closed" in r for r in rejects), rejects
    with Catalog.open(workdir, read_only=True) as c:  # the reject names the file and the line
        assert c.query("SELECT line FROM rejects WHERE reason LIKE '%not closed%' AND path LIKE ?",
                       [f"%{tmp_path.name[-20:]}%"]) == [(3,)]


@case("annotation-not-utf8")
def _(capsys, workdir, tmp_path):
    rejects = ingest_entities(capsys, workdir, tmp_path, lambda r: one_file(r, "Sentences", "2000000002.txt")
                              .write_bytes("[/EN#2/people Deux chats] \xe0 la porte .\n".encode("latin-1")))
    assert any("utf-8" in r.lower() for r in rejects), rejects


# -- queries ----------------------------------------------------------------------------------------------------

@case("query-empty")
def _(capsys, workdir, tmp_path):
    error(capsys, "search", "--workdir", workdir.root, "", match="empty")


@case("query-whitespace")
def _(capsys, workdir, tmp_path):
    error(capsys, "search", "--workdir", workdir.root, " \t\n ", match="empty")


@case("query-10000-characters")
def _(capsys, workdir, tmp_path):
    error(capsys, "search", "--workdir", workdir.root, "a red dog " * 1000, match="characters")


@case("query-emoji-and-scripts")
def _(capsys, workdir, tmp_path):
    code, text = groundex(capsys, "search", "--workdir", workdir.root, "🐶 犬 собака كلب 🚗", "-k", "2")
    assert code == 0 and text.count("image ") == 2, text


@case("query-k-zero-or-negative")
def _(capsys, workdir, tmp_path):
    error(capsys, "search", "--workdir", workdir.root, "a dog", "-k", "0", match="positive")
    error(capsys, "search", "--workdir", workdir.root, "a dog", "-k", "-3", match="positive")


@case("query-k-huge")
def _(capsys, workdir, tmp_path):
    code, text = groundex(capsys, "search", "--workdir", workdir.root, "a dog", "-k", str(10**9), "--json")
    assert code == 0, text
    with Catalog.open(workdir, read_only=True) as c:
        indexed = c.current_index(c.model().id, "image")["n"]
    assert text.count('"image_id"') == indexed


@case("query-sql-injection-where")
def _(capsys, workdir, tmp_path):
    for where in ("1=1; DROP TABLE images", "1=1) OR (1=1", "id IN (SELECT id FROM images); DELETE FROM images"):
        code, text = groundex(capsys, "search", "--workdir", workdir.root, "a dog", "--where", where)
        assert code in (0, 2), text  # a harmless condition may run; none may write
    error(capsys, "search", "--workdir", workdir.root, "a dog", "--where", "1=1; DROP TABLE images",
          match="bad --where")
    error(capsys, "search", "--workdir", workdir.root, "a dog", "--where", "1=1); DROP TABLE images; --",
          match="one condition")


@case("query-where-reads-files")
def _(capsys, workdir, tmp_path):
    error(capsys, "search", "--workdir", workdir.root, "a dog", "--where",
          "length(read_text('/etc/passwd')::VARCHAR) > 0", match="bad --where")
    error(capsys, "search", "--workdir", workdir.root, "a dog", "--where",
          f"id IN (SELECT 1 FROM read_csv('{ROOT / 'pyproject.toml'}'))", match="bad --where")


@case("query-sql-injection-tag-filter")
def _(capsys, workdir, tmp_path):
    from indexer.search import Searcher
    from ui.app.resources import where_clause

    condition = where_clause("val' OR 1=1 --", ["dog' OR 1=1 --", "x'); DROP TABLE images; --"], "")
    assert "'" not in condition.sql  # the app's split and tag choices are bound values, never SQL text
    assert Searcher(workdir).text_to_image("a dog", k=5, where=condition) == []  # no image has that split or tags
    assert len(Searcher(workdir).text_to_image("a dog", k=5, where=where_clause("val", [], ""))) == 5


@case("query-unknown-image-id")
def _(capsys, workdir, tmp_path):
    error(capsys, "search", "--workdir", workdir.root, "--image-id", "987654321", match="987654321")


@case("query-path-traversal-image-id")
def _(capsys, workdir, tmp_path):
    with pytest.raises(SystemExit) as exit_info:  # argparse: image ids are integers, never paths
        main(["search", "--workdir", str(workdir.root), "--image-id", "../../etc/passwd"])
    assert exit_info.value.code == 2 and "invalid int value" in capsys.readouterr().err


@case("query-image-file-missing-or-not-image")
def _(capsys, workdir, tmp_path):
    error(capsys, "search", "--workdir", workdir.root, "--image", tmp_path / "nope.jpg", match="nope.jpg")
    (tmp_path / "passwd").write_text("root:x:0:0")
    error(capsys, "search", "--workdir", workdir.root, "--image", tmp_path / "passwd", match="not an image")


@case("upload-name-path-traversal")
def _(capsys, workdir, tmp_path):
    from ui.app.data import decode_upload

    with pytest.raises(ValueError, match=re.escape("../../etc/passwd")):
        decode_upload("../../etc/passwd", b"not an image")
    image = decode_upload("../../../tmp/x.png", image_bytes(fmt="PNG"))  # the name is only a label
    assert image.size == (64, 48) and not (ROOT.parent / "tmp" / "x.png").exists()


@case("upload-too-large")
def _(capsys, workdir, tmp_path):
    from ui.app.data import decode_upload

    with pytest.raises(ValueError, match="limited to"):
        decode_upload("big.jpg", b"\xff" * 100, max_bytes=10)
    buffer = io.BytesIO()
    Image.new("1", (9_000, 9_000)).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="too large"):
        decode_upload("bomb.png", buffer.getvalue())


@case("workdir-not-a-workdir")
def _(capsys, workdir, tmp_path):
    error(capsys, "search", "--workdir", tmp_path, "a dog", match="not a groundex workdir")


# -- checkpoints ------------------------------------------------------------------------------------------------

def copy_checkpoint(workdir: Workdir, tmp_path: Path) -> Path:
    with Catalog.open(workdir, read_only=True) as c:
        source = Path(c.model().path)
    return Path(shutil.copytree(source, tmp_path / "ckpt"))


@case("checkpoint-wrong-shape")
def _(capsys, workdir, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = copy_checkpoint(workdir, tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    name = next(k for k, v in weights.items() if v.ndim == 2)
    weights[name] = np.zeros((3, 5), dtype=weights[name].dtype)
    save_file(weights, str(folder / "model.safetensors"))
    error(capsys, "train", "--workdir", workdir.root, "--base", folder, "--epochs", "1", match="do not fit")


@case("checkpoint-truncated")
def _(capsys, workdir, tmp_path):
    folder = copy_checkpoint(workdir, tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    error(capsys, "train", "--workdir", workdir.root, "--base", folder, "--epochs", "1", match="safetensors")


@case("checkpoint-pickle-offered")
def _(capsys, workdir, tmp_path):
    evil = tmp_path / "weights.pt"
    evil.write_bytes(b"\x80\x04cposix\nsystem\n(S'touch /tmp/groundex-pwned'\ntR.")
    error(capsys, "train", "--workdir", workdir.root, "--base", "tiny", "--pretrained", evil, "--epochs", "1",
          match="pickle")
    folder = copy_checkpoint(workdir, tmp_path)  # a pickle under the safetensors name
    (folder / "model.safetensors").write_bytes(evil.read_bytes())
    error(capsys, "train", "--workdir", workdir.root, "--base", folder, "--epochs", "1", match="safetensors")
    assert not Path("/tmp/groundex-pwned").exists()


@case("checkpoint-blip-pickle-only")
def _(capsys, workdir, tmp_path):
    folder = tmp_path / "blip"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "blip"}')
    (folder / "pytorch_model.bin").write_bytes(struct.pack("<I", 0x80) + b"pickle")
    error(capsys, "caption", "train", "--workdir", workdir.root, "--base", folder, "--epochs", "0",
          match="safetensors|pretrained|blip")


# -- the runner -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, capsys, workdir, tmp_path):
    before = stored(workdir)
    CASES[name](capsys, workdir, tmp_path)
    assert stored(workdir) == before, "bad input changed what was stored"


def test_the_corpus_is_large_and_documented():
    assert len(CASES) >= 30
    doc = (ROOT / "docs" / "reliability.md").read_text()
    missing = [name for name in CASES if f"`{name}`" not in doc]
    assert not missing, f"docs/reliability.md does not list: {missing}"
