"""``thinkrec bench-budget`` on the tiny checkpoint: every budget gets accuracy and latency, the
reasoning written grows with the budget, and the report, table and plot are
written."""

from __future__ import annotations

import json
import shutil

import pytest

from app.bench.budget import BudgetArgs, parse_budgets, run_budget_curve


def test_budgets_parse_names_and_counts_and_refuse_the_rest():
    assert parse_budgets("off, short,128,full,320") == [("off", 0), ("short", 1), ("128", 128), ("full", 320)]
    assert parse_budgets("full,auto,auto") == [("full", 320), ("auto", 320)]     # a point of its own
    with pytest.raises(ValueError, match="unknown reasoning budget 'fast'"):
        parse_budgets("off,fast")
    with pytest.raises(ValueError, match="empty"):
        parse_budgets(" , ")


def test_the_curve_measures_every_budget(built_dataset, tiny_checkpoint, tmp_path):
    checkpoint = tmp_path / "sft"          # a copy: the eval leaves eval_valid.json beside it
    shutil.copytree(tiny_checkpoint, checkpoint)
    out = tmp_path / "budget.json"
    report = run_budget_curve(BudgetArgs(data=str(built_dataset), checkpoint=str(checkpoint), max_users=4,
                                         budgets="off,short,full", turns=2, json=str(out)))
    points = {p["budget"]: p for p in report["points"]}
    assert list(points) == ["off", "short", "full"]
    assert points["off"]["turn_mean_reasoning_tokens"] == 0
    # The budget caps the free levels 1-2; level 3 is always written whole (the items follow it).
    assert 0 < points["short"]["turn_mean_reasoning_tokens"] <= points["full"]["turn_mean_reasoning_tokens"]
    assert [p["tokens"] for p in points.values()] == [0, 1, 320]     # "short": each turn's shortest complete reasoning
    for point in points.values():
        assert point["invalid_rate"] == 0
        assert 0 <= point["ndcg@10"] <= point["hr@10"] <= 1
        assert 0 < point["turn_p50_s"] <= point["turn_p95_s"]
    assert json.loads(out.read_text())["points"] == report["points"]
    assert "| short | each turn's shortest |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000
