"""heads: what can be said of an image beyond its embedding (issue 6, in progress).

    mine_vocabulary   keyword vocabulary from the training phrases or captions, with counts
    Vocabulary        the vocabulary; `labels` gives each image's keyword labels from its captions
    knn_scores        the kNN tagger's scores; train_probe the linear probe; zeroshot_scores prompts;
                      prior_scores the baseline
    tag_metrics       micro/macro-F1 and mAP; best_threshold chooses a threshold on held-out data
"""

from .tags import (
    KNN_KS,
    LinearProbe,
    ProbeConfig,
    best_threshold,
    knn_scores,
    prior_scores,
    prompts,
    tag_metrics,
    train_probe,
    zeroshot_scores,
)
from .vocabulary import Vocabulary, VocabularyConfig, keywords, lemma, mine_vocabulary

__all__ = ["best_threshold", "keywords", "KNN_KS", "knn_scores", "lemma", "LinearProbe", "mine_vocabulary",
           "prior_scores", "ProbeConfig", "prompts", "tag_metrics", "train_probe", "Vocabulary", "VocabularyConfig",
           "zeroshot_scores"]
