"""Caption metrics against several references per image: BLEU-1..4, ROUGE-L and CIDEr-D.

The definitions follow the COCO caption evaluation code (coco-caption), which Flickr30k papers report:
- BLEU-n: corpus-level, clipped n-gram precisions combined geometrically, with the brevity penalty computed
  from the reference length closest to each candidate's.
- ROUGE-L: per image, the best longest-common-subsequence F-measure over the references (beta = 1.2),
  averaged over images.
- CIDEr-D: per image, the mean over n = 1..4 of the cosine between the candidate's and each reference's
  TF-IDF n-gram vectors (document frequencies over the evaluated split's references), with clipped
  candidate counts and a Gaussian length penalty (sigma 6), times 10, averaged over images.
Texts are lowercased and split into words by `indexer.tokenizer.words`, the splitter every part of groundex uses
(punctuation dropped; "dog's" stays one word, where coco-caption's PTB tokenizer makes two). All figures are in
percent (CIDEr x 100).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from indexer.tokenizer import words


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..max_n in percent."""
    matched, total = [0] * max_n, [0] * max_n
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references, strict=True):
        c, rs = words(candidate), [words(r) for r in refs]
        candidate_length += len(c)
        reference_length += min((abs(len(r) - len(c)), len(r)) for r in rs)[1]  # closest, shorter on ties
        for n in range(1, max_n + 1):
            counts = _ngrams(c, n)
            best: Counter = Counter()
            for r in rs:
                best |= _ngrams(r, n)  # max count of each n-gram over the references
            matched[n - 1] += sum(min(k, best[g]) for g, k in counts.items())
            total[n - 1] += max(0, len(c) - n + 1)
    if candidate_length == 0:
        return [0.0] * max_n
    brevity = 1.0 if candidate_length > reference_length else math.exp(1 - reference_length / candidate_length)
    scores, log_sum = [], 0.0
    for n in range(max_n):  # coco-caption's smoothing of zero counts
        log_sum += math.log((matched[n] + 1e-15) / (total[n] + 1e-9))
        scores.append(round(100 * brevity * math.exp(log_sum / (n + 1)), 2))
    return scores


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidates: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> float:
    """Mean over images of the LCS F-measure (coco-caption: max precision and max recall over references)."""
    total = 0.0
    for candidate, refs in zip(candidates, references, strict=True):
        c = words(candidate)
        if not c:
            continue
        precisions, recalls = [], []
        for r in refs:
            r = words(r)
            lcs = _lcs(c, r)
            precisions.append(lcs / len(c))
            recalls.append(lcs / max(1, len(r)))
        p, rec = max(precisions), max(recalls)
        if p > 0 and rec > 0:
            total += (1 + beta ** 2) * p * rec / (rec + beta ** 2 * p)
    return round(100 * total / max(1, len(candidates)), 2)


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0) -> float:
    """CIDEr-D x 100 (coco-caption's CIDEr-D: clipped counts, Gaussian length penalty, x 10)."""
    refs_ngrams = [[[_ngrams(words(r), n) for n in range(1, 5)] for r in refs] for refs in references]
    document_frequency: Counter = Counter()
    for refs in refs_ngrams:
        seen = set()
        for r in refs:
            for counts in r:
                seen.update(counts)
        document_frequency.update(seen)
    log_images = math.log(max(1.0, float(len(references))))

    def vector(counts_by_n: list[Counter]) -> tuple[list[dict], list[float], int]:
        vecs, norms = [], []
        for counts in counts_by_n:
            vec = {g: k * (log_images - math.log(max(1.0, document_frequency[g]))) for g, k in counts.items()}
            vecs.append(vec)
            norms.append(math.sqrt(sum(v * v for v in vec.values())))
        return vecs, norms, sum(counts_by_n[0].values())

    total = 0.0
    for candidate, refs in zip(candidates, refs_ngrams, strict=True):
        c_vec, c_norm, c_len = vector([_ngrams(words(candidate), n) for n in range(1, 5)])
        score = [0.0] * 4
        for r in refs:
            r_vec, r_norm, r_len = vector(r)
            penalty = math.exp(-((c_len - r_len) ** 2) / (2 * sigma ** 2))
            for n in range(4):
                dot = sum(min(v, r_vec[n].get(g, 0.0)) * r_vec[n].get(g, 0.0) for g, v in c_vec[n].items())
                if c_norm[n] and r_norm[n]:
                    score[n] += penalty * dot / (c_norm[n] * r_norm[n])
        total += 10.0 * sum(score) / 4 / max(1, len(refs))
    return round(100 * total / max(1, len(candidates)), 2)


def caption_metrics(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr (-D) of one candidate per image against its references, in percent."""
    if len(candidates) != len(references) or not candidates:
        raise ValueError(f"{len(candidates)} candidates for {len(references)} reference sets")
    b = bleu(candidates, references)
    return {"BLEU-1": b[0], "BLEU-2": b[1], "BLEU-3": b[2], "BLEU-4": b[3],
            "ROUGE-L": rouge_l(candidates, references), "CIDEr": cider_d(candidates, references)}
