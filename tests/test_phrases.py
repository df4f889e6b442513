"""The phrase chunker (heads.chunker) and grounded captions (heads.phrases): spans, types, the rule baseline, the
CLI, and grounding the phrases of a caption."""

import json

import numpy as np
import pytest

from heads.chunker import (
    LABELS,
    Chunk,
    ChunkerConfig,
    MarkedCaption,
    RuleChunker,
    chunks_from_labels,
    marked_captions,
    open_chunker,
    span_scores,
    viterbi,
)
from heads.phrases import evaluate_chunks, ground_caption, train_workdir_chunker
from tests.helpers import built_workdir
from ui.cli import main
from warehouse import Catalog, IngestConfig, SyntheticConfig, Workdir, ingest_synthetic


def test_viterbi_never_opens_a_phrase_inside_another():
    rng = np.random.default_rng(0)
    for _ in range(50):
        labels = [LABELS[i] for i in viterbi(np.log(rng.dirichlet(np.ones(len(LABELS)), size=9)))]
        for before, label in zip(["O", *labels], labels, strict=False):
            if label.startswith("I-"):
                assert before in (f"B-{label[2:]}", label), labels


def test_chunks_come_from_labels_without_edge_punctuation():
    words = ["A", "man", "rides", "a", "bike."]
    labels = [LABELS.index(x) for x in ("B-people", "I-people", "O", "B-vehicles", "I-vehicles")]
    assert chunks_from_labels(words, labels) == [Chunk(0, 2, "people", "A man"), Chunk(3, 5, "vehicles", "a bike")]


def test_a_chunk_starts_and_ends_on_a_word_and_punctuation_alone_is_none():
    words = ['"', "a", "dog", '"', "and", ","]
    labels = [LABELS.index(x) for x in ("B-animals", "I-animals", "I-animals", "I-animals", "O", "B-other")]
    assert chunks_from_labels(words, labels) == [Chunk(1, 3, "animals", "a dog")]
    gold = [MarkedCaption(tuple(words), ((0, 4, ("animals",)),))]  # an annotated span is compared the same way
    assert span_scores([[Chunk(1, 3, "animals", "a dog")]], gold)["f1"] == 100.0


def test_span_scores_count_exact_matches_and_types():
    words = ("a", "man", "in", "a", "red", "jacket")
    gold = [MarkedCaption(words, ((0, 2, ("people",)), (3, 6, ("clothing",))))]
    predicted = [[Chunk(0, 2, "people", "a man"), Chunk(4, 6, "clothing", "red jacket")]]
    assert span_scores(predicted, gold) == {"precision": 50.0, "recall": 50.0, "f1": 50.0, "type_accuracy": 100.0,
                                            "matched": 1, "predicted": 2, "annotated": 2}
    wrong_type = [[Chunk(0, 2, "animals", "a man"), Chunk(3, 6, "clothing", "a red jacket")]]
    assert span_scores(wrong_type, gold)["type_accuracy"] == 50.0


def test_the_rule_baseline_splits_at_function_words_and_types_by_the_last_word():
    train = [MarkedCaption(("a", "bike"), ((0, 2, ("vehicles",)),)),
             MarkedCaption(("the", "man"), ((0, 2, ("people",)),)),
             MarkedCaption(("a", "woman"), ((0, 2, ("people",)),))]
    rule = RuleChunker.fit(train)  # an unseen last word ("street") gets the commonest type
    assert rule.chunk("The old man is riding a bike down the street.") == [
        Chunk(0, 3, "people", "The old man"), Chunk(5, 7, "vehicles", "a bike"), Chunk(8, 10, "people", "the street")]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    workdir = Workdir(tmp_path_factory.mktemp("chunk") / "w")
    ingest_synthetic(workdir, SyntheticConfig(n=150), config=IngestConfig(progress=False))
    return workdir


def test_the_learned_chunker_beats_the_rule_baseline_and_reloads(scenes, capsys):
    assert main(["chunk", "text", "--workdir", str(scenes.root), "a dog"]) == 2
    assert "no phrase chunker in this workdir yet" in capsys.readouterr().err
    assert main(["chunk", "train", "--workdir", str(scenes.root), "--no-progress", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    learned, rule = trained["val"], trained["rule_val"]
    assert learned["f1"] > 90 and learned["f1"] > rule["f1"] + 5 and learned["type_accuracy"] > 90, trained
    chunker = open_chunker(scenes)
    assert chunker.id == trained["chunker_id"]
    with Catalog.open(scenes, read_only=True) as catalog:
        val = marked_captions(catalog, "val")
        assert catalog.artefact("chunker").metrics["val"] == learned
    assert span_scores(chunker.chunk_words([c.words for c in val]), val) == learned  # the stored weights
    text = " ".join(val[0].words)
    assert main(["chunk", "text", "--workdir", str(scenes.root), text, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(p["start"], p["end"]) for p in printed["phrases"]] == [(c.start, c.end) for c in chunker.chunk(text)]
    assert main(["chunk", "text", "--workdir", str(scenes.root), text, "--model", "m"]) == 2  # nothing to ground in
    assert "give it with --image" in capsys.readouterr().err
    result = evaluate_chunks(scenes, "val", ground=False)
    assert result["chunker"] == learned and result["rule"] == rule
    # a caption's chunks do not depend on the batch it is padded in
    short, long = "a dog", " ".join(max((c.words for c in val), key=len))
    assert chunker.chunk_many([short, long, "x " * 40]) == [chunker.chunk(short), chunker.chunk(long),
                                                              chunker.chunk("x " * 40)]
    with pytest.raises(Exception, match="learns on train"):
        evaluate_chunks(scenes, "train", ground=False)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """A workdir with a (1-epoch) model whose images are indexed with their patches."""
    return built_workdir(tmp_path_factory.mktemp("grounded") / "w", n=120, epochs=1)


def test_grounded_phrases_come_from_the_model_and_are_evaluated_on_val(indexed, capsys):
    workdir = indexed
    train_workdir_chunker(workdir, ChunkerConfig(min_steps=100), progress=False)
    from grounding.ground import Grounder

    grounder = Grounder(workdir)
    chunker = open_chunker(workdir)
    with Catalog.open(workdir, read_only=True) as catalog:
        image_id, _ = catalog.image_rows("val")[0]
        text = catalog.image_details([image_id])[image_id]["captions"][0]
    phrases = ground_caption(grounder, chunker, text, image_id)
    assert [p.text for p in phrases] == [c.text for c in chunker.chunk(text)] and phrases
    for p in phrases:
        if "notvisual" in p.types:
            assert p.box is None and p.model_id is None
        else:  # the box is the grounding's best box for the phrase
            best = grounder.ground(p.text, image_id).boxes[0]
            assert p.box == pytest.approx((best.x1, best.y1, best.x2, best.y2)) and p.model_id == grounder.model_id
    assert main(["eval", "chunks", "--workdir", str(workdir.root), "--split", "val", "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["grounding"]
    assert result["matched_with_boxes"] <= result["phrases_with_boxes"] > 0
    assert result["box_acc@0.5_end_to_end"] <= result["box_acc@0.5_annotated_phrases"]
    # synthetic captions have no punctuation inside phrases: a matched chunk grounds the annotated words
    assert result["box_acc@0.5_matched_chunks"] == result["box_acc@0.5_same_annotated_phrases"]


def test_grounding_many_images_at_once_is_grounding_each_image(indexed):
    """`ground_in_images` (stored patches, read in one pass) gives each image the groundings that the image file
    itself gets: no patches of one image used for another."""
    from grounding.ground import Grounder

    grounder = Grounder(indexed)
    workdir = indexed
    with Catalog.open(workdir, read_only=True) as catalog:
        ids = [i for i, _ in catalog.image_rows("train")][:4]
        paths = {i: d["path"] for i, d in catalog.image_details(ids).items()}
    requests = [(ids[2], ["a dog", "a red car"]), (ids[0], ["a tree"]), (ids[3], []), (ids[1], ["a dog"])]
    together = grounder.ground_in_images(requests)
    assert [len(g) for g in together] == [2, 1, 0, 1]
    for (image_id, phrases), found in zip(requests, together, strict=True):
        alone = grounder.ground_phrases(phrases, paths[image_id])  # from the file, embedded now
        for a, b in zip(found, alone, strict=True):
            assert a.image_id == image_id and a.phrase == b.phrase
            # the same map up to float16 storage: another image's map would correlate far less
            assert np.corrcoef(a.heatmap.ravel(), b.heatmap.ravel())[0, 1] > 0.98
