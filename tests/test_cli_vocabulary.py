"""One CLI vocabulary: a flag means the same thing in every command, defaults come from the config dataclasses, and
a renamed flag's old spelling stops with a hint naming the new one. Parsing only: nothing is built."""

import argparse

import pytest

from heads.config import CaptionerConfig, TaggingConfig
from indexer.config import EMBED_BATCH, EmbedConfig, TrainConfig
from ui.cli import build_parser, main


def _options(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command, action) for every visible option of every command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif action.option_strings and action.help != argparse.SUPPRESS:
            yield " ".join(path), action


def _uses(flag: str) -> dict[str, argparse.Action]:
    return {command: a for command, a in _options(build_parser()) if flag in a.option_strings}


def test_k_is_the_number_of_results_and_nothing_else():
    uses = _uses("-k")
    assert set(uses) == {"search", "ground"}
    assert all(a.help.startswith("number of ") and a.default == 10 for a in uses.values())


@pytest.mark.parametrize("flag", ["--device", "--no-progress", "--workdir", "--captioner", "--precision"])
def test_a_shared_flag_has_one_help_text(flag):
    uses = _uses(flag)
    assert len(uses) > 1 and len({a.help for a in uses.values()}) == 1, uses


def test_model_names_a_recorded_model_everywhere():
    uses = _uses("--model")
    assert "train" not in uses and len(uses) >= 7
    assert all("label or hash prefix" in a.help for a in uses.values())


def test_every_command_that_runs_a_model_on_demand_takes_device():
    assert {"train", "index", "search", "ground", "tag", "caption generate", "eval grounding", "eval tags",
            "eval captions", "eval chunks", "chunk text"} <= set(_uses("--device"))


def test_every_command_with_a_progress_bar_can_turn_it_off():
    assert {"ingest folder", "train", "index", "tag", "caption train", "caption generate", "eval grounding",
            "eval captions", "demo", "chunk train", "eval chunks"} <= set(_uses("--no-progress"))


@pytest.mark.parametrize("argv, hint", [
    (["train", "--model", "tiny"], "--model is now --base"),
    (["caption", "train", "-k", "2"], "-k is now --neighbours"),
    (["caption", "train", "--pretrained", "some/blip"], "--pretrained is now --base"),
    (["caption", "generate", "-k", "2"], "-k is now --neighbours"),
    (["caption", "generate", "--max-length", "20"], "--max-length is now --max-new-tokens"),
    (["caption", "generate", "--min-length", "2"], "--min-length is now --min-new-tokens"),
    (["eval", "captions", "--split", "val", "--ks", "0,1"], "--ks is now --neighbours"),
], ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_a_renamed_flag_stops_with_a_hint(argv, hint, tmp_path, capsys):
    assert main([*argv, "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and hint in err, err
    assert not (tmp_path / "w").exists()  # nothing ran


@pytest.mark.parametrize("argv, hidden", [
    (["train"], ["--model"]),
    (["caption", "train"], ["-k", "--pretrained"]),
    (["caption", "generate"], ["-k", "--max-length", "--min-length"]),
    (["eval", "captions"], ["--ks"]),
])
def test_the_old_spellings_are_hidden_from_help(argv, hidden, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    out = capsys.readouterr().out
    listed = {line.split()[0].rstrip(",") for line in out.splitlines() if line.startswith("  -")}
    assert not set(hidden) & listed and not any(f"[{flag} " in out for flag in hidden), out


def _defaults(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args([*argv])


def test_defaults_come_from_the_configs():
    index = _defaults("index")
    assert (index.batch_size, index.shard_size, index.precision) == (EmbedConfig().batch_size,
                                                                     EmbedConfig().shard_size, EmbedConfig().precision)
    caption, c = _defaults("caption", "train"), CaptionerConfig()
    assert (caption.epochs, caption.batch_size, caption.lr, caption.neighbours, caption.layers, caption.hidden_size,
            caption.precision, caption.seed, caption.base) == (c.epochs, c.batch_size, c.lr, c.k, c.layers,
                                                               c.hidden_size, c.precision, c.seed, c.pretrained)
    generate = _defaults("caption", "generate")  # None: the captioner's own setting
    assert (generate.neighbours, generate.beams, generate.max_new_tokens, generate.min_new_tokens) == (None,) * 4
    tag, t = _defaults("tag"), TaggingConfig()
    assert (tag.min_images, tag.max_tags) == (t.vocabulary.min_images, t.max_tags)
    train, d = _defaults("train"), TrainConfig()
    assert (train.base, train.batch_size, train.lr, train.mode, train.seed) == (d.base, d.batch_size, d.lr, d.mode,
                                                                               d.seed)


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["index", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: {EMBED_BATCH['cpu']} on the CPU, {EMBED_BATCH['cuda']} on a GPU)" in out
    assert f"(default: {EmbedConfig().shard_size})" in out
