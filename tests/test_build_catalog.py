"""A whole dataset build on a tiny themed catalog, then lookups and search against the real
SQLite file and FAISS index it wrote, through the Python API and the CLI."""

from __future__ import annotations

import json
import sqlite3

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import app
from data.build import build
from data.catalog import Catalog
from data.manifest import BuildConfig, Manifest, verify_files
from engine.sid import SIDTrie, parse_sid
from tests.conftest import THEMED_ITEMS

runner = CliRunner()


def test_manifest_records_counts_sids_and_hashes(built_dataset):
    manifest = Manifest.load(built_dataset)
    assert manifest.num_items == len(THEMED_ITEMS)
    assert manifest.num_users == 30 and manifest.num_interactions == 30 * 8
    assert manifest.splits == {"train": 30, "valid": 30, "test": 30}
    assert manifest.sid.num_unique == manifest.num_items and manifest.sid.collisions_after == 0
    assert len(manifest.sid.utilization) == manifest.sid.levels
    assert set(manifest.files) >= {"catalog.db", "items.faiss", "embeddings.npy", "sids.json",
                                   "splits/train.jsonl", "splits/valid.jsonl", "splits/test.jsonl"}
    assert verify_files(built_dataset, manifest) == []


def test_sql_catalog_and_faiss_index_agree(built_dataset):
    with sqlite3.connect(built_dataset / "catalog.db") as db:
        rows = db.execute("SELECT items.row, items.item_id, item_sids.sid FROM items "
                          "JOIN item_sids ON item_sids.row = items.row ORDER BY items.row").fetchall()
        genres = db.execute("SELECT value FROM item_attributes JOIN items ON items.row = item_attributes.row "
                            "WHERE items.item_id = '7' AND key = 'category'").fetchall()
    assert [r[0] for r in rows] == list(range(len(THEMED_ITEMS)))
    assert len({r[2] for r in rows}) == len(rows)
    assert sorted(g for (g,) in genres) == ["Animation", "Children's", "Comedy"]
    index = faiss.read_index(str(built_dataset / "items.faiss"))
    embeddings = np.load(built_dataset / "embeddings.npy")
    assert index.ntotal == len(rows) == len(embeddings)
    # Every item is its own nearest neighbour in the index: rows line up with the catalog.
    _, nearest = index.search(embeddings, 1)
    assert nearest[:, 0].tolist() == list(range(len(rows)))


def test_every_sid_walk_ends_in_a_catalog_item(built_dataset):
    catalog = Catalog(built_dataset)
    codes = catalog.sid_codes()
    trie = SIDTrie((item_id, tuple(c)) for item_id, c in codes.items())
    stack = [trie.cursor()]
    reached = set()
    while stack:
        cursor = stack.pop()
        if cursor.done():
            reached.add(cursor.item)
            continue
        for token in cursor.allowed():
            child = cursor.clone()
            assert child.accept(token)
            stack.append(child)
    assert reached == set(codes)


def test_lookup_by_id_and_sid(built_dataset):
    catalog = Catalog(built_dataset)
    item = catalog.item("4")
    assert item.title == "Planet of Storms" and item.year == 1990
    assert catalog.by_sid(item.sid).item_id == "4"
    assert catalog.by_sid(f"<|item_begin|>{item.sid}<|item_end|>").item_id == "4"
    with pytest.raises(KeyError, match="no item with id"):
        catalog.item("404")
    with pytest.raises(KeyError, match="no item has the SID"):
        catalog.by_sid("<a_63><b_63><c_63>")
    with pytest.raises(ValueError, match="not a SID"):
        catalog.by_sid("Planet of Storms")
    # A code of thousands of digits is no SID either, and the refusal quotes only its start.
    with pytest.raises(ValueError, match="not a SID") as refused:
        catalog.by_sid("<a_" + "9" * 5000 + ">")
    assert len(str(refused.value)) < 200


def test_title_search_exact_then_fuzzy(built_dataset):
    catalog = Catalog(built_dataset)
    exact = catalog.search("moon base alpha", k=3)
    assert exact[0].title == "Moon Base Alpha" and exact[0].match == "exact"
    fuzzy = catalog.search("Haunted Manr", k=3)
    assert fuzzy[0].title == "The Haunted Manor" and fuzzy[0].match == "title"


def test_free_text_search_finds_the_theme(built_dataset):
    catalog = Catalog(built_dataset)
    space = {"Galaxy Quest Voyage", "Rocket to the Stars", "Moon Base Alpha", "Planet of Storms", "Cosmic Drifters"}
    top = [i.title for i in catalog.search("space adventure among the stars", k=4)]
    assert len(set(top) & space) >= 3, top
    kids = {"The Little Bunny", "Puppy Parade", "Dragon Friends", "Toy Box Heroes"}
    top = [i.title for i in catalog.search("cartoon for children", k=4)]
    assert len(set(top) & kids) >= 3, top
    scores = [i.score for i in catalog.search_text("scary ghosts", k=5)]
    assert scores == sorted(scores, reverse=True)


def test_similar_items_exclude_the_anchor(built_dataset):
    similar = Catalog(built_dataset).similar("2", k=3)
    assert "2" not in [i.item_id for i in similar] and len(similar) == 3


def test_rebuild_is_cached_and_deterministic(built_dataset, generic_files, tmp_path):
    config = Manifest.load(built_dataset).config
    before = (built_dataset / "manifest.json").read_text()
    build(config, built_dataset)                     # same config: reused, nothing rewritten
    assert (built_dataset / "manifest.json").read_text() == before
    again = build(config, tmp_path / "again")        # fresh folder: same SIDs, same fingerprint
    assert again.fingerprint == Manifest.load(built_dataset).fingerprint
    assert json.loads((tmp_path / "again" / "sids.json").read_text()) == \
        json.loads((built_dataset / "sids.json").read_text())


def test_tampered_artifact_triggers_a_rebuild(generic_files, tmp_path):
    interactions, items = generic_files
    config = BuildConfig(dataset="generic", interactions=str(interactions), items=str(items))
    first = build(config, tmp_path / "a")
    (tmp_path / "a" / "sids.json").write_text("{}")
    second = build(config, tmp_path / "a")
    assert second.created_at >= first.created_at
    assert verify_files(tmp_path / "a", second) == []


def test_cli_search_and_lookup(built_dataset):
    result = runner.invoke(app, ["catalog", "search", "--data", str(built_dataset), "--query",
                                 "Rocket to the Stars", "--k", "2", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert hits[0]["item_id"] == "2" and len(hits) == 2
    result = runner.invoke(app, ["catalog", "lookup", "--data", str(built_dataset), "--sid", hits[0]["sid"], "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["title"] == "Rocket to the Stars"
    assert parse_sid(hits[0]["sid"]) == tuple(hits[0]["codes"])


@pytest.mark.parametrize("args, message", [
    (["--sid", "<a_63><b_63><c_63>"], "no item has the SID"),
    (["--sid", "<b_1>"], "not a SID"),
    (["--item-id", "nope"], "no item with id 'nope'"),
    ([], "exactly one of"),
])
def test_cli_lookup_errors_exit_non_zero(built_dataset, args, message):
    result = runner.invoke(app, ["catalog", "lookup", "--data", str(built_dataset), *args])
    assert result.exit_code != 0
    assert message in result.output


def test_cli_reports_missing_dataset_folder(tmp_path):
    result = runner.invoke(app, ["catalog", "search", "--data", str(tmp_path), "--query", "x"])
    assert result.exit_code != 0 and "no manifest.json" in result.output


def test_cli_build_reports_missing_column(tmp_path):
    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu1,1\n")
    (tmp_path / "items.jsonl").write_text('{"item_id": "1", "title": "A"}\n')
    result = runner.invoke(app, ["data", "build", "--dataset", "generic", "--out", str(tmp_path / "out"),
                                 "--interactions", str(tmp_path / "interactions.csv"),
                                 "--items", str(tmp_path / "items.jsonl")])
    assert result.exit_code != 0
    assert "interactions.csv" in result.output and "timestamp" in result.output


def test_catalog_finds_films_listed_twice(tmp_path):
    """Two ids, one title and year (ML-100K has such pairs): the catalog maps both to the first."""
    import json as _json

    from data.build import build
    from data.catalog import Catalog
    from data.manifest import BuildConfig
    from tests.conftest import THEMED_ITEMS

    rows = [{"item_id": i, "title": t, "year": y, "categories": c, "description": d} for i, t, y, c, d in THEMED_ITEMS]
    rows.append({**rows[0], "item_id": "99", "description": "The same film, listed again."})
    (tmp_path / "items.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    lines = ["user_id,item_id,timestamp,rating"] + [f"u{u},{r['item_id']},{1000 * u + n},4"
                                                    for u in range(1, 6) for n, r in enumerate(rows[u - 1:u + 5] + rows[-1:])]
    (tmp_path / "interactions.csv").write_text("\n".join(lines) + "\n")
    build(BuildConfig(dataset="generic", interactions=str(tmp_path / "interactions.csv"),
                      items=str(tmp_path / "items.jsonl")), tmp_path / "built")
    assert Catalog(tmp_path / "built").duplicates() == {"1": "1", "99": "1"}


def test_the_command_line_says_a_bad_value_in_one_line(built_dataset, tmp_path):
    """Through the installed entry point (main): a value the user got wrong is an ``error:`` line and
    exit 1, never a traceback, and a broken manifest is named."""
    import subprocess
    import sys

    def thinkrec(*args):
        return subprocess.run([sys.executable, "-c", "from app.cli import main; main()", *args],
                              capture_output=True, text=True, timeout=300)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"dataset": 3\n')
    for args, said in ((["eval", "--split", "nonsense", "--data", str(built_dataset)], "--split must be valid or test"),
                       (["eval", "--max-users", "-1", "--data", str(built_dataset)], "--max-users must be"),
                       (["eval", "--json", str(tmp_path), "--data", str(built_dataset)], "is a folder"),
                       (["trace", "list", "--sessions-url", "notaurl"], "error:"),
                       (["data", "info", "--data", str(broken)], "manifest.json is unreadable or incomplete")):
        result = thinkrec(*args)
        assert result.returncode == 1 and said in result.stderr, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, args
