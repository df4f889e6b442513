"""The app's pages on a built workdir through AppTest: seconds per interaction, against the bare search
call in the same process (the baseline), and any exception a page raised.

    python benchmarks/ui_pages.py --workdir /tmp/gw-sample [--model e8c58fc968e013ca] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

APP = str(Path(__file__).resolve().parents[1] / "ui" / "app" / "main.py")
QUERIES = ["a dog running on the beach", "a man in a red jacket", "two children playing soccer",
           "a woman riding a bike"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--model", default=None, help="embedding model (default: the newest with an index)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ["GROUNDEX_WORKDIR"] = args.workdir
    from streamlit.testing.v1 import AppTest

    from indexer.search import Searcher
    from warehouse import Workdir

    out: dict = {"workdir": args.workdir, "machine": f"{os.cpu_count()} cores, no GPU" if not _cuda() else "GPU"}
    at = AppTest.from_file(APP, default_timeout=300)
    started = time.perf_counter()
    at.run()
    out["first_load_s"] = round(time.perf_counter() - started, 2)
    if args.model:
        at.selectbox(key="model_select").set_value(args.model).run()
    model = at.selectbox(key="model_select").value
    out["model"] = model
    page_runs = []
    for query in QUERIES * 2:
        started = time.perf_counter()
        at.text_input(key="search_query").input(query).run()
        page_runs.append(time.perf_counter() - started)
    searcher = Searcher(Workdir(args.workdir), model)
    searcher.text_to_image("warm up", k=12)
    bare = []
    for query in QUERIES * 2:
        started = time.perf_counter()
        searcher.text_to_image(query, k=12)
        bare.append(time.perf_counter() - started)
    out["search_page_rerun_s"] = {"median": round(statistics.median(page_runs), 3), "max": round(max(page_runs), 3)}
    out["bare_text_to_image_s"] = {"median": round(statistics.median(bare), 4)}
    out["page_over_bare"] = round(statistics.median(page_runs) / statistics.median(bare), 1)
    pages = {}
    for page, action in [("pages/image.py", ("image_phrase", "a man")), ("pages/regions.py", ("regions_phrase",
                                                                                               "a red shirt")),
                         ("pages/upload.py", None), ("pages/explore.py", None), ("pages/evaluation.py", None),
                         ("pages/sql.py", None)]:
        started = time.perf_counter()
        at.switch_page(page).run()
        if action:
            at.text_input(key=action[0]).input(action[1]).run()
        pages[page] = {"seconds": round(time.perf_counter() - started, 2),
                       "exceptions": [str(e.value)[:200] for e in at.exception],
                       "errors": [str(e.value)[:200] for e in at.error]}
    out["pages"] = pages
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
