"""``thinkrec bench-load`` end to end on the tiny fixture: a real app process driven through its
API by several clients, then killed with SIGKILL mid-turn and restarted on the same database."""

from __future__ import annotations

from app.bench.load import LoadArgs, main


def test_load_and_crash_lose_nothing(built_dataset, tiny_checkpoint, tmp_path):
    report = main(LoadArgs(data=str(built_dataset), checkpoint=str(tiny_checkpoint), clients=4, seconds=8, shared_streamers=3,
                           json=str(tmp_path / "load.json")))
    load, crash = report["load"], report["crash"]
    assert load["errors"] == 0, load["error_kinds"]
    assert load["non_thinking"]["n"] + load["thinking"]["n"] >= 4
    store = load["store"]
    assert store["turns_acknowledged"] >= 4
    assert store["lost_turns"] == store["lost_clicks"] == store["sessions_with_unpaired_turns"] == 0
    assert store["integrity_check"] == "ok"
    assert load["peak_rss_mb"] > 0
    # The abusers: the busy shared session answers 409 or a whole stream, oversize bodies 413, the
    # per-client limit 429 (all abusers share one address), the failing turns fail alone and say so;
    # the normal clients above saw no error.
    abuse = load["abuse"]
    assert set(abuse) <= {"stream_done", "stream_http_409", "stream_http_429", "oversize_http_413",
                          "oversize_http_429", "failing_turn_refused_clearly"}, abuse
    assert abuse.get("oversize_http_413", 0) >= 1 and abuse.get("failing_turn_refused_clearly", 0) >= 1
    assert abuse.get("stream_http_409", 0) + abuse.get("stream_done", 0) >= 1
    assert load["after"]["sessions"] >= load["before"]["sessions"] >= 1
    # The crash: acknowledged work survives, no session is left half-written, all take new turns.
    assert crash["clicks_acknowledged"] == crash["sessions"]
    assert crash["lost_turns"] == crash["lost_clicks"] == crash["sessions_with_unpaired_turns"] == 0
    assert crash["integrity_check"] == "ok"
    assert crash["resumed_sessions"] == crash["sessions"]
    assert (tmp_path / "load.json").exists()
