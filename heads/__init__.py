"""heads: what can be said of an image beyond its embedding (issue 6, in progress).

    mine_vocabulary   keyword vocabulary from the training phrases or captions, with counts
    Vocabulary        the vocabulary; `labels` gives each image's keyword labels from its captions
"""

from .vocabulary import Vocabulary, VocabularyConfig, keywords, lemma, mine_vocabulary

__all__ = ["keywords", "lemma", "mine_vocabulary", "Vocabulary", "VocabularyConfig"]
