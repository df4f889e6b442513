"""Shared output of the benchmark scripts: print the result and write it as JSON (and markdown)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit(result: dict[str, Any], out: Path | None, markdown: str | None = None) -> None:
    """Print `result` (and `markdown`); with `out`, write JSON there and the markdown next to it (.md)."""
    print(json.dumps(result, indent=2))
    if markdown:
        print(markdown)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        if markdown:
            out.with_suffix(".md").write_text(markdown)
