"""What a source reader yields and the ingest writer stores: one `Sample` per image, or a `Reject`.

Readers only parse. The writer opens the image, measures it, rescales boxes from the annotation's
pixel space to the stored image's, and writes the sample whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Phrase:
    entity_id: int          # Flickr30k Entities id; 0 for 'notvisual' phrases
    types: tuple[str, ...]  # e.g. ('people',) or ('animals', 'scene')
    text: str
    first_word_index: int   # index of the phrase's first word in the caption's words


@dataclass(frozen=True)
class Caption:
    text: str                            # plain text, markup removed
    phrases: tuple[Phrase, ...] = ()


@dataclass(frozen=True)
class Box:
    """A box in continuous pixel edges of the annotation's image size (see `Sample.annotation_size`).

    Flickr30k Entities gives 1-based inclusive pixels (xmin..xmax): that is x1 = xmin - 1, x2 = xmax.
    """

    entity_ids: tuple[int, ...]
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Entity:
    """One annotated entity of an image: how many boxes it has and the release's flags."""

    entity_id: int
    n_boxes: int
    scene: bool = False
    nobndbox: bool = False


@dataclass
class Sample:
    key: str                       # stable source key, unique in the catalog, e.g. 'flickr30k/2000000003'
    dataset: str
    path: Path                     # the image file
    split: str | None = None
    captions: list[Caption] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    annotation_size: tuple[int, int] | None = None  # (width, height) the boxes refer to; None: the image's own
    # Problems found while parsing this sample that did not stop it (e.g. one bad row of a CSV):
    rejects: list[Reject] = field(default_factory=list)


@dataclass(frozen=True)
class Reject:
    path: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.reason}"
