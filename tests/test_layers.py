"""The import layers hold: pyproject's ``[tool.importlinter]`` contracts pass on the repo, and the
same check fails, naming the contract and the import, when a forbidden import is added to a copy.

    lint-imports                                  # the same check by hand, from the repo root
    python -m pytest tests/test_layers.py

lint-imports runs in a subprocess so it sees the folder it is pointed at (the repo or a copy), not
the modules this test process already imported.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "engine", "training", "app")
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
LAYERS = next(c["name"] for c in CONTRACTS if c["type"] == "layers")
NO_TORCH = next(c["name"] for c in CONTRACTS if "torch" in c.get("forbidden_modules", []))
INSIDE = {c["containers"][0]: c["name"] for c in CONTRACTS if c.get("containers")}


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on ``folder`` (its pyproject.toml and packages), without the cache folder it
    would otherwise leave behind."""
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
               "--no-cache", "--no-logo"]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)


def test_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout


@pytest.mark.parametrize("module, added, contract, expected", [
    # A lazy import inside a function counts as much as one at the top.
    ("data/text.py", "\n\ndef _reach_up():\n    from engine.sid import SIDTrie\n",
     LAYERS, ["data is not allowed to import engine", "data.text -> engine.sid"]),
    # The UI asking for the engine itself pulls torch in through data.embed: the chain is named.
    ("app/ui.py", "\nfrom engine.engine import Engine\n",
     NO_TORCH, ["app.ui is not allowed to import torch", "app.ui -> engine.engine", "-> torch"]),
    # Inside a package: a back-arrow (decoding reaching up to the scheduler) and a new circle
    # (the GRPO maths importing the rollouts that import it) fail too.
    ("engine/decoding.py", "\n\ndef _reach_up():\n    from engine.scheduler import BatchScheduler\n",
     INSIDE["engine"], ["engine.decoding -> engine.scheduler"]),
    ("training/grpo.py", "\n\ndef _circle():\n    from training.rollouts import Rollout\n",
     INSIDE["training"], ["training.grpo -> training.rollouts"]),
], ids=["data-imports-engine", "ui-imports-torch-through-engine", "engine-back-arrow", "training-circle"])
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, added, contract, expected):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + added)

    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert f"{contract} BROKEN" in result.stdout, result.stdout
    for text in expected:
        assert text in result.stdout, result.stdout


def test_the_ui_loads_without_torch():
    """What import-linter cannot see: whether gradio (an outside package) pulls torch in itself."""
    code = "import sys, app.ui; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_catalog_bench_model_is_the_tiny_preset():
    """app/bench/catalog.py writes the ``tiny`` preset's shape out (the engine may not import
    training): the two configs must stay the same."""
    from app.bench.catalog import bench_model_config
    from training.presets import preset_config

    assert bench_model_config(1000).to_dict() == preset_config("tiny", 1000, pad_id=0, eos_id=1).to_dict()
