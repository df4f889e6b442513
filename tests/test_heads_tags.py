"""Tag scores, thresholds and metrics (issue 6's taggers) on tiny synthetic data."""

import numpy as np
import pytest

from heads.tag_methods import (
    best_threshold,
    cross_fitted_predictions,
    f1_scores,
    knn_scores,
    mean_average_precision,
    per_tag_thresholds,
    prior_scores,
    tag_metrics,
)


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_knn_votes_follow_the_nearest_neighbours_and_can_leave_an_image_out():
    from indexer.knn import exact_neighbours

    gallery = unit([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=bool)
    rows, sims = exact_neighbours(unit([[1, 0.05], [0.05, 1]]), gallery, 2)
    scores = knn_scores(rows, sims, labels, k=2)
    assert scores.argmax(axis=1).tolist() == [0, 1] and np.allclose(scores.sum(axis=1), 1)
    assert np.allclose(scores[0], [1, 0])
    # leaving image 0 out of its own query: its next neighbour votes instead
    rows, sims = exact_neighbours(gallery[:1], gallery, 1, exclude_rows=np.array([0]))
    assert rows.tolist() == [[1]] and np.allclose(knn_scores(rows, sims, labels, k=1), [[1, 0]])
    # a missing neighbour (-1) does not vote
    assert np.allclose(knn_scores(np.array([[2, -1]]), np.array([[0.5, -np.inf]]), labels, k=2), [[0, 1]])
    with pytest.raises(ValueError, match="k must be"):
        knn_scores(rows, sims, labels, k=5)


def test_f1_map_and_threshold_on_known_cases():
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=bool)
    assert f1_scores(labels.copy(), labels) == (100.0, 100.0)
    predicted = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0]], dtype=bool)  # tag 0 right, tag 1 missed
    micro, macro = f1_scores(predicted, labels)
    assert micro == pytest.approx(100 * 4 / 6, abs=0.01) and macro == 50.0  # tag 2 has no positives: left out
    scores = np.array([[0.9, 0.2, 0.1], [0.1, 0.8, 0.1], [0.7, 0.6, 0.3]])
    assert mean_average_precision(scores, labels) == 100.0
    threshold, f1 = best_threshold(scores, labels)
    assert 0.3 < threshold <= 0.6 and f1 == 100.0
    assert tag_metrics(scores, labels, threshold)["micro_f1"] == 100.0


def test_per_tag_thresholds_fit_each_tag_and_keep_the_global_one_for_rare_tags():
    rng = np.random.default_rng(0)
    n = 200
    labels = np.zeros((n, 3), dtype=bool)
    labels[:, 0] = rng.random(n) < 0.5
    labels[:, 1] = rng.random(n) < 0.5
    labels[:3, 2] = True  # three positives: too few for a threshold of its own
    scores = np.zeros((n, 3), dtype=np.float32)
    scores[:, 0] = np.where(labels[:, 0], 0.85, 0.6)   # separable at ~0.7 (a global 0.3 tags everything)
    scores[:, 1] = np.where(labels[:, 1], 0.25, 0.1)   # separable at ~0.2
    scores[:, 2] = np.where(labels[:, 2], 0.9, 0.1)
    thresholds = per_tag_thresholds(scores, labels, fallback=0.3)
    assert 0.6 < thresholds[0] <= 0.85 and 0.1 < thresholds[1] <= 0.25 and thresholds[2] == pytest.approx(0.3)
    assert f1_scores(scores >= thresholds, labels) == (100.0, 100.0)
    assert f1_scores(scores >= 0.3, labels)[1] < 100  # no single threshold separates tags 0 and 1 both
    # cross-fitted: each half thresholded with thresholds chosen on the other, so still perfect here ...
    assert f1_scores(cross_fitted_predictions(scores, labels), labels) == (100.0, 100.0)
    # ... but a tag whose scores carry no signal gets no credit from choosing on the images it is scored on
    noise = rng.random((n, 1)).astype(np.float32)
    noisy_labels = rng.random((n, 1)) < 0.2
    chosen_here = f1_scores(noise >= per_tag_thresholds(noise, noisy_labels, 0.5), noisy_labels)[0]
    honest = f1_scores(cross_fitted_predictions(noise, noisy_labels), noisy_labels)[0]
    assert honest < chosen_here


def test_the_prior_baseline_scores_every_image_alike():
    scores = prior_scores(np.array([0.5, 0.1]), 3)
    assert scores.shape == (3, 2) and np.allclose(scores, [[0.5, 0.1]] * 3)
    labels = np.array([[1, 0], [1, 1], [0, 0]], dtype=bool)
    assert mean_average_precision(scores, labels) < 100  # it cannot rank images


def test_linear_probe_learns_separable_tags_and_round_trips(tmp_path):
    from heads.config import ProbeConfig
    from heads.tag_methods import LinearProbe, train_probe

    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(3, 16)))
    which = rng.integers(3, size=300)
    features = unit(centres[which] + 0.2 * rng.normal(size=(300, 16)))
    labels = np.stack([which == 0, which == 1, (which == 2) & (rng.random(300) < 0.1)], axis=1)  # tag 2 is rare
    probe = train_probe(features[:200], labels[:200], ProbeConfig(epochs=200))
    scores = probe.scores(features[200:])
    assert scores.shape == (100, 3) and scores.min() >= 0 and scores.max() <= 1
    assert mean_average_precision(scores[:, :2], labels[200:, :2]) > 95
    probe.save(tmp_path / "probe.safetensors")
    again = LinearProbe.load(tmp_path / "probe.safetensors")
    assert np.allclose(again.scores(features[:5]), probe.scores(features[:5]))
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        LinearProbe.load(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="feature rows"):
        train_probe(features[:3], labels[:2])


def test_zeroshot_scores_rank_images_by_their_prompt_and_share_one_scale():
    from heads.tag_methods import prompts, zeroshot_scores

    assert prompts(["dog", "red car"]) == ["a photo of a dog", "a photo of a red car"]
    with pytest.raises(ValueError, match="needs a"):
        prompts(["dog"], "a photo")
    rng = np.random.default_rng(0)
    prompt_vectors = unit(rng.normal(size=(2, 8)))
    images = unit(np.concatenate([prompt_vectors[0] + 0.3 * rng.normal(size=(20, 8)),
                                  prompt_vectors[1] + 0.3 * rng.normal(size=(20, 8))]))
    scores = zeroshot_scores(images, prompt_vectors, reference=images)
    labels = np.zeros((40, 2), dtype=bool)
    labels[:20, 0], labels[20:, 1] = True, True
    assert mean_average_precision(scores, labels) > 95 and scores.min() > 0 and scores.max() < 1
    assert abs(np.median(scores[:, 0]) - np.median(scores[:, 1])) < 0.2  # standardized: one threshold fits both


@pytest.mark.parametrize("template", ["{} and {}", "{name} {}", "a photo"])
def test_a_prompt_template_needs_exactly_one_field_for_the_tag(template):
    from heads.config import TaggingConfig
    from warehouse import InputError

    with pytest.raises(InputError, match="exactly one"):
        TaggingConfig(prompt=template)
    assert TaggingConfig(prompt="a {{braced}} photo of {}").prompt  # literal braces are fine
