"""End-to-end builds from the other sources through the CLI: Amazon 2023 files (gzip) and the
RecBole-wheel layout of ML-100K given by --path, each ending in a searchable catalog."""

from __future__ import annotations

import gzip
import json

from typer.testing import CliRunner

from app.cli import app
from data.catalog import Catalog
from data.manifest import Manifest
from tests.conftest import RATINGS, write_recbole_wheel

runner = CliRunner()

PRODUCTS = [
    ("P1", "Cordless Drill 18V", ["Tools", "Power Tools"], "BoltCo"),
    ("P2", "Hammer Classic", ["Tools", "Hand Tools"], "Forge"),
    ("P3", "Socket Wrench Set", ["Tools", "Hand Tools"], "Forge"),
    ("P4", "Garden Hose 50ft", ["Garden", "Watering"], "GreenWay"),
    ("P5", "Lawn Sprinkler", ["Garden", "Watering"], "GreenWay"),
    ("P6", "Pruning Shears", ["Garden", "Hand Tools"], "GreenWay"),
]


def test_amazon_2023_build(tmp_path):
    meta, reviews = tmp_path / "meta.jsonl.gz", tmp_path / "reviews.jsonl.gz"
    with gzip.open(meta, "wt") as handle:
        for asin, title, categories, store in PRODUCTS:
            handle.write(json.dumps({"parent_asin": asin, "title": title, "store": store,
                                     "main_category": categories[0], "categories": categories,
                                     "description": [f"{title} by {store}."]}) + "\n")
        handle.write("{broken json\n")
    with gzip.open(reviews, "wt") as handle:
        for user in range(5):
            for step, (asin, *_rest) in enumerate(PRODUCTS[user % 2::1][:4]):
                handle.write(json.dumps({"user_id": f"U{user}", "parent_asin": asin, "rating": 5.0,
                                         "timestamp": 1_600_000_000_000 + user * 10_000 + step * 1000}) + "\n")
        handle.write(json.dumps({"user_id": "U9", "parent_asin": "MISSING", "rating": 1,
                                 "timestamp": 1_600_000_000_000}) + "\n")
    out = tmp_path / "amazon"
    result = runner.invoke(app, ["data", "build", "--dataset", "amazon", "--reviews", str(reviews),
                                 "--meta", str(meta), "--out", str(out), "--kcore", "0"])
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    assert manifest.category_key == "category"
    assert manifest.num_users == 5 and manifest.sid.num_unique == manifest.num_items
    assert manifest.load_report["rejected"] == {"meta.jsonl.gz: invalid JSON": 1,
                                                 "reviews.jsonl.gz: unknown item id": 1}
    catalog = Catalog(out)
    assert catalog.search("drill", k=1)[0].item_id == "P1"
    assert set(catalog.with_attribute("brand", "GreenWay")) <= {"P4", "P5", "P6"}


def test_ml100k_build_from_a_recbole_layout_path(tmp_path):
    wheel = write_recbole_wheel(tmp_path / "recbole.whl", bad_rows=True)
    out = tmp_path / "ml"
    result = runner.invoke(app, ["data", "build", "--path", str(wheel), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "rows rejected" in result.output and "bad rating" in result.output
    manifest = Manifest.load(out)
    assert (manifest.num_users, manifest.num_items, manifest.num_interactions) == (2, 4, len(RATINGS))
    assert manifest.load_report["rejected"]["ml-100k.inter: bad rating"] == 1
    assert Catalog(out).with_attribute("decade", "1970s") == ["4"]
