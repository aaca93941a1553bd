"""The steering benchmark end to end on the tiny fixture: every hard request kind complies by
construction, more-like items share a category with the title, and the report is written."""

from __future__ import annotations

import json

from training.evaluate import EvalArgs, run


def test_steering_benchmark(built_dataset, tiny_checkpoint, tmp_path):
    out = tmp_path / "steering.json"
    report = run(EvalArgs(data=str(built_dataset), checkpoint=str(tiny_checkpoint), split="test", steering=True,
                          steering_users=4, steering_fresh=2, max_reasoning_tokens=48, json=str(out)))
    rows = {(r["mode"], r["kind"]): r for r in report["summary"]}
    assert {m for m, _ in rows} == {"think", "no-think"}
    assert {"genre", "avoid", "more-like"} <= {k for _, k in rows}
    for (mode, kind), row in rows.items():
        assert row["neutral_compliance"] is not None
        if kind != "more-like" and row["compliance"] is not None:
            assert row["compliance"] == 1.0, (mode, kind, row)
    # Every record's items were checked against what the request meant, not the parser's reading.
    assert all(r["parsed"] for r in report["records"] if r["kind"] != "more-like")
    saved = json.loads(out.read_text())
    assert saved["summary"] == report["summary"]
    assert out.with_suffix(".md").exists() and out.with_suffix(".png").exists()
