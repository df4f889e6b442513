"""heads: what can be said of an image beyond its embedding (issue 6, in progress).

    mine_vocabulary   keyword vocabulary from the training phrases or captions, with counts
    Vocabulary        the vocabulary; `labels` gives each image's keyword labels from its captions
    knn_scores        the kNN tagger's scores; prior_scores the baseline; tag_metrics micro/macro-F1, mAP
"""

from .tags import KNN_KS, best_threshold, knn_scores, prior_scores, tag_metrics
from .vocabulary import Vocabulary, VocabularyConfig, keywords, lemma, mine_vocabulary

__all__ = ["best_threshold", "keywords", "KNN_KS", "knn_scores", "lemma", "mine_vocabulary", "prior_scores",
           "tag_metrics", "Vocabulary", "VocabularyConfig"]
