"""``thinkrec serve-model`` before any vLLM is involved: what it refuses, and the server command and
environment it would start (the real server runs in tests/test_vllm.py, ``-m vllm``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.checkpoint import CheckpointMismatch
from engine.serving.vllm_server import ServeArgs, main, server_command, server_environment
from engine.serving.vllm_trie import TRIE_ENV, TrieSpec, served_model_name, write_trie_spec


def test_refuses_a_checkpoint_of_another_catalog_before_building_anything(tiny_checkpoint, built_dataset, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    meta = json.loads((other / "thinkrec.json").read_text())
    meta["dataset_fingerprint"] = "0123456789abcdef"
    (other / "thinkrec.json").write_text(json.dumps(meta))
    venv = tmp_path / "venv"
    with pytest.raises(CheckpointMismatch, match="does not match the catalog"):
        main(ServeArgs(checkpoint=str(other), data=str(built_dataset), venv=str(venv)))
    assert not venv.exists()                  # refused before the multi-GB environment is made


def test_refuses_an_unmerged_lora_adapter(tiny_checkpoint, built_dataset, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_checkpoint, adapter)
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(SystemExit, match="Merge it first"):
        main(ServeArgs(checkpoint=str(adapter), data=str(built_dataset), venv=str(tmp_path / "venv")))


def test_server_command_and_environment(tiny_checkpoint, built_dataset, tmp_path):
    from data.catalog import Catalog
    from engine.checkpoint import load_checked

    tokenizer, meta = load_checked(tiny_checkpoint, built_dataset)
    name = served_model_name(meta.dataset_fingerprint, meta.sid_levels, meta.sid_codebook_size)
    args = ServeArgs(checkpoint=str(tiny_checkpoint), data=str(built_dataset), port=8123, max_model_len=100_000)
    command = server_command(Path("/venv/bin/python"), args, "cpu", name)
    flag = {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}
    positions = json.loads((tiny_checkpoint / "config.json").read_text())["max_position_embeddings"]
    assert flag["--max-model-len"] == str(positions)          # capped at what the model supports
    assert flag["--dtype"] == "float32" and flag["--logprobs-mode"] == "processed_logits"
    assert flag["--served-model-name"] == name and meta.dataset_fingerprint in name
    assert "--gpu-memory-utilization" not in command
    assert "--gpu-memory-utilization" in server_command(Path("p"), args, "cuda", name)

    trie_file = write_trie_spec(tmp_path / "trie.json", tokenizer, Catalog(built_dataset).sid_codes(),
                                meta.dataset_fingerprint)
    env = server_environment(trie_file, args, "cpu")
    assert env[TRIE_ENV] == str(trie_file.resolve()) and env["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    assert env["HF_HUB_OFFLINE"] == "1" and "VLLM_CPU_KVCACHE_SPACE" in env
    spec = TrieSpec(trie_file)
    assert len(spec.trie) == len(Catalog(built_dataset)) and spec.begin_id == tokenizer.item_begin_id
