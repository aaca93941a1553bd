"""The understanding benchmark run with the request parser as it was before issue 26 (the word
table alone, from git), for the "before" row of docs/RESULTS.md.

    python docs/experiments/understanding_before.py --commit 4570312 --json results/understanding-before.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from engine.request import Request
from training import understanding


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commit", default="4570312")
    parser.add_argument("--json", default="results/understanding-before.json")
    args = parser.parse_args()
    source = subprocess.run(["git", "show", f"{args.commit}:engine/request.py"], capture_output=True, text=True,
                            check=True).stdout
    path = Path(tempfile.mkdtemp()) / "request_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("request_before", path)
    old = importlib.util.module_from_spec(spec)
    sys.modules["request_before"] = old
    spec.loader.exec_module(old)

    class Before:
        """The old parser behind the new interface (extra context is ignored, as it was)."""

        def __init__(self, catalog, facets):
            self.inner = old.RequestParser(facets, find_title=lambda q: catalog.search_titles(q, k=3))

        def parse(self, message, last_years=(), active=None):
            return Request.model_validate(self.inner.parse(message).model_dump())

    original = understanding._Domain.__init__

    def patched(self, folder, meaning=True):
        original(self, folder, meaning=False)
        self.parser = Before(self.catalog, self.facets)
    understanding._Domain.__init__ = patched
    understanding.run_understanding(argparse.Namespace(json=args.json, data="artifacts/ml-100k", understanding_file="",
                                                       no_meaning=True))
    report = json.loads(Path(args.json).read_text())
    report["parser"] = f"engine/request.py at {args.commit}"
    Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
