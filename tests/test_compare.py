"""The side-by-side view (thinking, non-thinking, SASRec for the same turn) and the Model tab's
eval table, on the tiny engine with a real (briefly trained) SASRec."""

from __future__ import annotations

import json

import pytest

from app.compare_tab import eval_tables, side_by_side


@pytest.fixture(scope="module")
def sasrec_rank(built_dataset):
    from training.dataset_view import DatasetView
    from training.sasrec import SASRecConfig, train_sasrec

    view = DatasetView.load(built_dataset)
    model = train_sasrec(list(view.items), [r["item_ids"] for r in view.train], None,
                         SASRecConfig(epochs=2), progress=False)
    return lambda history, exclude, k: [i for i in model.recommend_batch([history], k + len(exclude))[0]
                                        if i not in exclude][:k]


def test_the_same_turn_three_ways(engine, sasrec_rank):
    wanted = engine.facets.vocabulary[0]
    result = side_by_side(engine, "u1", f"a {wanted.lower()} please", k=3, baseline=sasrec_rank)
    lists = result["lists"]
    assert set(lists) == {"thinking", "non-thinking", "SASRec"}
    history = set(engine.dataset_history("u1"))
    for mode, items in lists.items():
        assert len(items) == 3 and not {i["item_id"] for i in items} & history
    # thinkrec's lists obey the request; SASRec's are marked by whether they do, not filtered.
    assert all(i["satisfies"] for mode in ("thinking", "non-thinking") for i in lists[mode])
    assert all(i["satisfies"] == (wanted in i["categories"]) for i in lists["SASRec"])
    for mode, items in lists.items():              # "also in" names exactly the other lists holding it
        for item in items:
            holders = [m for m in lists if m != mode and item["item_id"] in {i["item_id"] for i in lists[m]}]
            assert item["also_in"] == holders
    assert result["levels"]["derivation"] and wanted in result["request"]["active"]
    assert engine.sessions.get(result["session_id"]).turns == []        # nothing saved


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
