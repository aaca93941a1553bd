"""``--checkpoint`` specs naming one checkpoint or several labelled ones (eval and steering)."""

from __future__ import annotations


def parse_checkpoints(spec: str) -> dict[str, str]:
    """``DIR`` -> {"": DIR}; ``sft=DIR,rl=DIR`` -> labelled checkpoints, evaluated side by side."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) == 1 and "=" not in parts[0]:
        return {"": parts[0]}
    labelled = {}
    for part in parts:
        label, _, path = part.partition("=")
        if not path or not label:
            raise ValueError(f"--checkpoint with several checkpoints needs label=DIR entries, got '{part}'")
        labelled[label] = path
    return labelled
