"""The side-by-side view (thinking, non-thinking, SASRec under the same request filter, for the same
turn) and the Model tab's eval table, on the tiny engine with a real (briefly trained) SASRec."""

from __future__ import annotations

import json

import pytest

from app.compare_tab import eval_tables, side_by_side


@pytest.fixture(scope="module")
def sasrec_model(built_dataset):
    from training.dataset_view import DatasetView
    from training.sasrec import SASRecConfig, train_sasrec

    view = DatasetView.load(built_dataset)
    return train_sasrec(list(view.items), [r["item_ids"] for r in view.train], None,
                        SASRecConfig(epochs=2), progress=False)


def test_the_same_turn_three_ways(engine, sasrec_model):
    from app.cli import filtered_sasrec_ranker

    wanted = engine.facets.vocabulary[0]
    result = side_by_side(engine, "u1", f"a {wanted.lower()} please", k=3,
                          baseline=filtered_sasrec_ranker(sasrec_model, engine.facets))
    lists = result["lists"]
    assert set(lists) == {"thinking", "non-thinking", "SASRec"}
    history = set(engine.dataset_history("u1"))
    for mode, items in lists.items():
        assert len(items) == 3 and not {i["item_id"] for i in items} & history
    # Every list obeys the request: SASRec's column gets the same filter as thinkrec's trie.
    assert all(i["satisfies"] and wanted in i["categories"] for items in lists.values() for i in items)
    # ... and is SASRec's own ranking with the items the filter rules out taken out.
    ranking = sasrec_model.recommend_batch([engine.dataset_history("u1")], len(sasrec_model.item_ids))[0]
    admitted = [i for i in ranking if wanted in engine.facets.categories_of(i)]
    assert [i["item_id"] for i in lists["SASRec"]] == admitted[:3]
    for mode, items in lists.items():              # "also in" names exactly the other lists holding it
        for item in items:
            holders = [m for m in lists if m != mode and item["item_id"] in {i["item_id"] for i in lists[m]}]
            assert item["also_in"] == holders
    assert result["levels"]["derivation"] and wanted in result["request"]["active"]
    with pytest.raises(KeyError):                   # nothing saved: not even the scratch session
        engine.sessions.get(result["session_id"])


def test_the_compare_sasrec_column_keeps_a_more_like_request(engine, sasrec_model):
    """A "more like <title>" turn: SASRec's items share a category with the title and leave it out,
    as thinkrec's do; with no request, the column is SASRec's plain top-k."""
    from app.cli import filtered_sasrec_ranker

    rank = filtered_sasrec_ranker(sasrec_model, engine.facets)
    history = engine.dataset_history("u1")
    anchor = next(i for i in engine.facets.item_ids if i not in history and engine.facets.categories_of(i))
    title = engine.catalog.items([anchor])[0].title
    result = side_by_side(engine, "u1", f"more like {title}", k=4, baseline=rank)
    column = result["lists"]["SASRec"]
    like = set(engine.facets.categories_of(anchor))
    assert column and all(set(i["categories"]) & like and i["satisfies"] for i in column)
    assert anchor not in {i["item_id"] for i in column} and not {i["item_id"] for i in column} & set(history)
    assert rank(history, set(), 4) == sasrec_model.recommend_batch([history], 4)[0]


def test_the_model_tab_reads_the_eval_saved_beside_the_checkpoint(tmp_path):
    assert "No eval saved" in eval_tables(tmp_path)
    report = {"split": "test", "num_users": 9, "date": "2026-12-02 10:00",
              "results": {"sasrec": {"hr@10": 0.2, "ndcg@10": 0.1188, "invalid_rate": 0.0},
                          "thinkrec": {"hr@10": 0.15, "ndcg@10": 0.0874, "invalid_rate": 0.0}}}
    (tmp_path / "eval_test.json").write_text(json.dumps(report))
    table = eval_tables(tmp_path)
    assert "| thinkrec | 0.1500 | 0.0874 | 0.000 |" in table and "**test** split, 9 users" in table


def test_eval_saves_its_table_beside_the_checkpoint(built_dataset, tiny_checkpoint, tmp_path):
    from training.evaluate import EvalArgs, run

    run(EvalArgs(data=str(built_dataset), checkpoint=str(tiny_checkpoint), split="valid", max_users=4,
                 methods="popularity,thinkrec", json=str(tmp_path / "valid.json")))
    saved = json.loads((tiny_checkpoint / "eval_valid.json").read_text())
    assert saved["num_users"] == 4 and set(saved["results"]) == {"popularity", "thinkrec"}
    assert "| thinkrec |" in eval_tables(tiny_checkpoint)
    # A run on fewer users is a check: it does not replace the eval of more.
    run(EvalArgs(data=str(built_dataset), checkpoint=str(tiny_checkpoint), split="valid", max_users=2,
                 methods="popularity", json=str(tmp_path / "valid2.json")))
    assert json.loads((tiny_checkpoint / "eval_valid.json").read_text())["num_users"] == 4
