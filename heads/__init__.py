"""heads: what can be said of an image beyond its embedding: keyword tags and captions.

    mine_vocabulary    keyword vocabulary from the training phrases or captions, with counts
    Vocabulary         the vocabulary; `labels` gives each image's keyword labels from its captions
    tag_workdir        fit a tagger (knn, probe, zeroshot, fusion; choices on val) and store tags in the catalog
    evaluate_tags      micro/macro-F1 and mAP of every tagger against the prior
    load_tagger        a fitted tagger and its data, to tag new images
    train_captioner    the retrieval-augmented BLIP decoder, trained with the Hugging Face Trainer
    Captioner          a trained captioner: captions for catalog images or image files
    caption_workdir    caption images and store the captions in the catalog
    evaluate_captions  BLEU-1..4, ROUGE-L, CIDEr: with retrieval, without, and the nearest caption
    caption_metrics    the metrics alone
"""

from .caption_decoder import CaptionerConfig
from .caption_metrics import caption_metrics
from .captioning import Captioner, caption_workdir, evaluate_captions, find_captioner, train_captioner
from .tag_methods import KNN_KS, LinearProbe, ProbeConfig, best_threshold, knn_scores, prior_scores, tag_metrics
from .tagging import METHODS, Tagger, TaggingConfig, evaluate_tags, load_tagger, tag_workdir
from .vocabulary import Vocabulary, VocabularyConfig, keywords, lemma, mine_vocabulary

__all__ = [
    "best_threshold", "caption_metrics", "caption_workdir", "Captioner", "CaptionerConfig", "evaluate_captions",
    "evaluate_tags", "find_captioner", "keywords", "KNN_KS", "knn_scores", "lemma", "LinearProbe", "load_tagger",
    "METHODS", "mine_vocabulary", "prior_scores", "ProbeConfig", "tag_metrics", "tag_workdir", "Tagger",
    "TaggingConfig", "train_captioner", "Vocabulary", "VocabularyConfig",
]
