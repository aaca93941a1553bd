"""``thinkrec bench-load``: the app under many clients and under a crash, from outside.

It starts the real app (``thinkrec app``) as a child process on a loopback port with a fresh
sessions database, and drives it through Gradio's API with ``gradio_client``, as any client would:

- **load**: ``clients`` clients for ``seconds``, each looping over turns (``/recommend``, half of
  them thinking, continuing its session) and feedback clicks (``/feedback`` on an item it was
  shown). Reports errors, p50/p95 per kind, turns a second and the server's peak RSS; then reads
  the sessions database and checks that every acknowledged click and turn is in it;
- **abuse** (beside the load): ``shared_streamers`` clients stream OpenAI turns on one shared session
  and read each chunk slowly (the session is busy: each gets a 409 at once or a whole stream ending
  in ``[DONE]``), a client posts bodies over the size limit (413), and one client's turns are made
  to fail inside the model's thread (the app runs with ``THINKREC_FAIL_ON``): each fails alone with
  a clear error. The normal clients' turns must not fail, and their latency is reported beside the
  abusers' outcomes by kind; the server's memory and stored sessions before and after; and the
  cores this process (the load generator, on the server's machine) used;
- **crash**: clients mid-turn, the server killed with SIGKILL, restarted on the same database:
  every acknowledged session, turn and click must still be there, the database must pass
  SQLite's integrity check, each session's turns must still pair user and assistant (a turn cut
  off half-way is absent, not half-written), and every session must take a new turn.

    thinkrec bench-load --clients 50 --seconds 120 --json results/load.json
    thinkrec bench-load --crash-only

Only addresses on this machine are used; every loop is bounded in time and stops by itself.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# The abusers' failing turn: the app under test fails a turn whose message is this (FAIL_ENV).
FAIL_TEXT = "bench-load: fail this turn inside the model's thread"
MESSAGES = ["", "what should I watch next?", "a 90s comedy please", "something with drama", "no horror",
            "an 80s action film", "more like the first one", "any decade", "start over"]


@dataclass
class LoadArgs:
    data: str = "artifacts/ml-100k"
    checkpoint: str = "checkpoints/ml-100k-tiny/sft"
    clients: int = 50                  # clients at once
    seconds: float = 120.0             # how long the load runs
    feedback_share: float = 0.3        # share of a client's actions that are clicks
    thinking_share: float = 0.5        # share of turns with thinking on
    abuse: bool = True                 # abusers beside the normal clients (see _abuse)
    shared_streamers: int = 10         # abuse: clients streaming on one shared session, reading slowly
    rate_limit: float | None = None    # the app's per-client limit on the OpenAI endpoint (None: the app's default; 0: off)
    crash: bool = True                 # also run the kill -9 test
    crash_only: bool = False           # only the kill -9 test
    seed: int = 0
    json: str | None = None            # write the report here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


class AppProcess:
    """``thinkrec app`` in a child process on a free loopback port."""

    def __init__(self, data: str, checkpoint: str, sessions_url: str, log: Path, rate_limit: float | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        command = [sys.executable, "-m", "app.cli", "app", "--data", data, "--checkpoint", checkpoint,
                   "--port", str(self.port), "--sessions-url", sessions_url]
        if rate_limit is not None:
            command += ["--rate-limit", str(rate_limit)]
        from engine.engine import FAIL_ENV

        env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", FAIL_ENV: FAIL_TEXT}
        self.process = subprocess.Popen(command, stdout=log.open("a"), stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 300.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited with {self.process.returncode}; see {self.log}")
            try:
                if httpx.get(self.url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the app did not answer on {self.url} within {timeout:.0f} s; see {self.log}")

    def _status_mb(self, field: str) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def peak_rss_mb(self) -> float:
        """The server's peak resident memory so far (VmHWM), in MB."""
        return self._status_mb("VmHWM")

    def rss_mb(self) -> float:
        """The server's resident memory now (VmRSS), in MB."""
        return self._status_mb("VmRSS")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class Ledger:
    """What the server acknowledged, per session: turns answered and feedback clicks."""

    def __init__(self):
        self.lock = threading.Lock()
        self.turns: Counter = Counter()
        self.clicks: dict[str, list[tuple[str, str]]] = {}

    def turn(self, session_id: str) -> None:
        with self.lock:
            self.turns[session_id] += 1

    def click(self, session_id: str, item_id: str, kind: str) -> None:
        with self.lock:
            self.clicks.setdefault(session_id, []).append((item_id, kind))


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def _drive(url: str, users: list[str], deadline: float, args: LoadArgs, rng: random.Random, ledger: Ledger,
           latencies: dict[str, list[float]], errors: list[str]) -> None:
    """One client's loop until ``deadline``: a new session as a random user, then turns and clicks."""
    client = _client(url)
    session_id, shown = "", []
    while time.monotonic() < deadline:
        click = bool(session_id and shown) and rng.random() < args.feedback_share
        started = time.perf_counter()
        try:
            if click:
                item = rng.choice(shown)
                kind = rng.choice(["like", "dislike"])
                client.predict(session_id, item, kind, api_name="/feedback")
                ledger.click(session_id, item, kind)
                shown.remove(item)
                latencies["feedback"].append(time.perf_counter() - started)
            else:
                thinking = rng.random() < args.thinking_share
                user = rng.choice(users) if not session_id else ""
                result = client.predict(rng.choice(MESSAGES), user, thinking, session_id, api_name="/recommend")
                if result["items"]:
                    session_id = result["session_id"]
                    ledger.turn(session_id)
                    shown = [i["item_id"] for i in result["items"]]
                latencies["thinking" if thinking else "non_thinking"].append(time.perf_counter() - started)
                if rng.random() < 0.1:                     # now and then a client starts over as someone else
                    session_id, shown = "", []
        except Exception as error:      # counted, never fatal: the report says what failed
            errors.append(f"{type(error).__name__}: {str(error)[:200]}")


def _abuse(url: str, session_id: str, deadline: float, args: LoadArgs, outcomes: Counter, lock: threading.Lock,
           threads: list[threading.Thread]) -> None:
    """Start the abusers (module docstring); each loops until ``deadline`` and counts its outcomes."""
    import httpx

    def count(kind: str) -> None:
        with lock:
            outcomes[kind] += 1

    # Each abuser keeps one connection, as a determined client would. A fresh ``httpx.stream`` per
    # request builds a new client and TLS context each time: about 50 ms of this process's CPU per
    # request, against 2 ms on a kept client. At the abusers' request rate, that put the load
    # generator on the server's cores and slowed the normal turns by itself.
    def shared_streamer() -> None:
        body = {"model": "thinkrec", "stream": True, "session_id": session_id, "reasoning_effort": "low",
                "messages": [{"role": "user", "content": "something different"}]}
        client = httpx.Client(timeout=120)
        while time.monotonic() < deadline:
            try:
                with client.stream("POST", url + "v1/chat/completions", json=body) as response:
                    if response.status_code != 200:
                        response.read()
                        count(f"stream_http_{response.status_code}")
                        time.sleep(0.2)
                        continue
                    done = False
                    for line in response.iter_lines():
                        time.sleep(0.05)                         # a slow reader
                        done = done or line.strip() == "data: [DONE]"
                    count("stream_done" if done else "stream_cut")
            except httpx.HTTPError as error:
                count(f"stream_{type(error).__name__}")
        client.close()

    def oversize() -> None:
        blob = "x" * (2 << 20)
        client = httpx.Client(timeout=60)
        while time.monotonic() < deadline:
            try:
                response = client.post(url + "v1/chat/completions",
                                       json={"model": "thinkrec", "messages": [{"role": "user", "content": blob}]})
                count(f"oversize_http_{response.status_code}")
            except httpx.HTTPError as error:
                count(f"oversize_{type(error).__name__}")
            time.sleep(1.0)
        client.close()

    def failing() -> None:
        client = _client(url)
        while time.monotonic() < deadline:
            try:
                result = client.predict(FAIL_TEXT, "", False, "", api_name="/recommend")
                failed = not result["items"] and any("failed" in n for n in result["notices"])
                count("failing_turn_refused_clearly" if failed else "failing_turn_answered")
            except Exception as error:
                count(f"failing_{type(error).__name__}")
            time.sleep(1.0)

    for target in [shared_streamer] * args.shared_streamers + [oversize, failing]:
        threads.append(threading.Thread(target=target, daemon=True))


def _stored_sessions(sessions_url: str) -> int:
    from engine.sessions import SessionStore

    return len(SessionStore(sessions_url).recent(limit=10**9))


def _check_store(sessions_url: str, ledger: Ledger, at_least: bool = False) -> dict:
    """Every acknowledged turn and click is in the database (``at_least``: a turn the server
    finished but could not acknowledge before a crash may be there too)."""
    from engine.sessions import SessionStore

    store = SessionStore(sessions_url)
    lost_turns = lost_clicks = broken = 0
    for session_id in set(ledger.turns) | set(ledger.clicks):
        session = store.get(session_id)
        answered = sum(1 for t in session.turns if t.role == "assistant" and t.items)
        if answered < ledger.turns[session_id] or (not at_least and answered > ledger.turns[session_id]):
            lost_turns += abs(ledger.turns[session_id] - answered)
        roles = [t.role for t in session.turns]
        if any(roles[n] == "assistant" and (n == 0 or roles[n - 1] != "user") for n in range(len(roles))):
            broken += 1
        stored = Counter(store.feedback_of(session_id))
        expected = Counter(ledger.clicks.get(session_id, []))
        lost_clicks += sum((expected - stored).values())
    with store.engine.connect() as connection:
        integrity = connection.exec_driver_sql("PRAGMA integrity_check").scalar()
    return {"sessions": len(set(ledger.turns) | set(ledger.clicks)), "turns_acknowledged": sum(ledger.turns.values()),
            "clicks_acknowledged": sum(len(c) for c in ledger.clicks.values()), "lost_turns": lost_turns,
            "lost_clicks": lost_clicks, "sessions_with_unpaired_turns": broken, "integrity_check": integrity}


def _cpu_seconds() -> float:
    """CPU time of this process (all its client threads), user and system."""
    spent = os.times()
    return spent.user + spent.system


def run_load(args: LoadArgs, scratch: Path) -> dict:
    sessions_url = f"sqlite:///{scratch / 'load.db'}"
    server = AppProcess(args.data, args.checkpoint, sessions_url, scratch / "load-app.log", args.rate_limit)
    try:
        users = _dataset_users(args.data)
        ledger, errors = Ledger(), []
        latencies: dict[str, list[float]] = {"thinking": [], "non_thinking": [], "feedback": []}
        warm = _client(server.url).predict("", users[0], True, "", api_name="/recommend")        # warm-up
        before = {"rss_mb": round(server.rss_mb()), "sessions": _stored_sessions(sessions_url)}
        deadline = time.monotonic() + args.seconds
        threads = [threading.Thread(target=_drive, args=(server.url, users, deadline, args,
                                                         random.Random(args.seed * 1000 + n), ledger, latencies,
                                                         errors), daemon=True)
                   for n in range(args.clients)]
        outcomes: Counter = Counter()
        if args.abuse:
            _abuse(server.url, warm["session_id"], deadline, args, outcomes, threading.Lock(), threads)
        started, own_cpu = time.perf_counter(), _cpu_seconds()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=args.seconds + 600)
        wall = time.perf_counter() - started
        own_cpu = _cpu_seconds() - own_cpu
        peak = server.peak_rss_mb()
        after = {"rss_mb": round(server.rss_mb()), "sessions": _stored_sessions(sessions_url)}
    finally:
        server.stop()
    report = {"clients": args.clients, "seconds": round(wall, 1), "errors": len(errors),
              "error_kinds": Counter(e.split(":")[0] for e in errors).most_common(5), "peak_rss_mb": round(peak),
              "before": before, "after": after, "abuse": dict(sorted(outcomes.items())),
              "turns_per_s": round((len(latencies["thinking"]) + len(latencies["non_thinking"])) / wall, 2),
              # The clients run on the server's machine: the cores they took from it (1.0 = one core).
              "load_generator_cores": round(own_cpu / wall, 2)}
    for kind, values in latencies.items():
        report[kind] = {"n": len(values), "p50_s": round(statistics.median(values), 3) if values else None,
                        "p95_s": round(_percentile(values, 0.95), 3) if values else None}
    report["store"] = _check_store(sessions_url, ledger)
    return report


def run_crash(args: LoadArgs, scratch: Path, sessions: int = 6) -> dict:
    """Sessions with acknowledged turns and clicks, then turns in flight and SIGKILL; restart and check."""
    sessions_url = f"sqlite:///{scratch / 'crash.db'}"
    users = _dataset_users(args.data)
    ledger = Ledger()
    server = AppProcess(args.data, args.checkpoint, sessions_url, scratch / "crash-app.log")
    ids = []
    try:
        client = _client(server.url)
        for n in range(sessions):
            result = client.predict("", users[n], False, "", api_name="/recommend")
            ids.append(result["session_id"])
            ledger.turn(result["session_id"])
            item = result["items"][0]["item_id"]
            client.predict(result["session_id"], item, "like" if n % 2 else "dislike", api_name="/feedback")
            ledger.click(result["session_id"], item, "like" if n % 2 else "dislike")
        # Thinking turns in flight on every session, then the kill while they decode.
        in_flight = [threading.Thread(target=_swallow, args=(server.url, session_id), daemon=True) for session_id in ids]
        for thread in in_flight:
            thread.start()
        time.sleep(1.5)
        killed_during_turns = any(thread.is_alive() for thread in in_flight)
        server.kill()
        for thread in in_flight:
            thread.join(timeout=60)
    finally:
        server.stop()
    restarted = AppProcess(args.data, args.checkpoint, sessions_url, scratch / "crash-app.log")
    try:
        store = _check_store(sessions_url, ledger, at_least=True)
        client = _client(restarted.url)
        resumed = sum(1 for session_id in ids
                      if client.predict("", "", False, session_id, api_name="/recommend")["session_id"] == session_id)
    finally:
        restarted.stop()
    return {"sessions": sessions, "killed_during_turns": killed_during_turns, "resumed_sessions": resumed} | store


def _swallow(url: str, session_id: str) -> None:
    try:
        _client(url).predict("a 90s comedy please", "", True, session_id, api_name="/recommend")
    except Exception:       # the server is killed under this call: an error is the expected outcome
        pass


def _dataset_users(data: str) -> list[str]:
    from data.clean import read_split

    return [row["user_id"] for row in read_split(Path(data) / "splits" / "test.jsonl")]


def main(args: LoadArgs) -> dict:
    report = {}
    with tempfile.TemporaryDirectory(prefix="thinkrec-load-") as folder:
        scratch = Path(folder)
        if not args.crash_only:
            print(f"load: {args.clients} clients for {args.seconds:.0f} s ...", flush=True)
            report["load"] = run_load(args, scratch)
        if args.crash or args.crash_only:
            print("crash: kill -9 mid-turn, restart ...", flush=True)
            report["crash"] = run_crash(args, scratch)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    return report
