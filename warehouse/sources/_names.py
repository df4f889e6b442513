"""File names taken from inside a data file are never paths."""

from __future__ import annotations

from typing import Any


def is_plain_file_name(name: Any) -> bool:
    """True for a non-empty, non-hidden name without directory parts ('a.jpg'; not '../a.jpg', '.x', 'a/b')."""
    return isinstance(name, str) and bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0")
