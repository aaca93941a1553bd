"""Turn a stage's argument dataclass into a ``thinkrec`` subcommand.

Each stage script keeps its arguments at the top as a dataclass (the single source of truth, saved
into the checkpoint's metadata); this builds the matching typer command, with each field's trailing
comment as its ``--help`` text, so the CLI can never drift from the script.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from typing import Annotated, Optional, get_type_hints

import typer


def _field_help(cls) -> dict[str, str]:
    helps = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+):[^#]*#\s*(.+)$", line)
        if match:
            helps[match.group(1)] = match.group(2).strip()
    return helps


def add_dataclass_command(group: typer.Typer, name: str, cls, run: Callable, help_text: str) -> None:
    hints = get_type_hints(cls)
    helps = _field_help(cls)
    parameters = []
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        optional = type(None) in getattr(annotation, "__args__", ())
        base = next((a for a in getattr(annotation, "__args__", ()) if a is not type(None)), annotation)
        flag = field.name.replace('_', '-')
        # A switch that is on by default needs a way to turn it off.
        names = f"--{flag}/--no-{flag}" if base is bool and field.default is True else f"--{flag}"
        option = typer.Option(names, help=helps.get(field.name, ""))
        parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                                            annotation=Annotated[Optional[base] if optional else base, option]))

    def command(**kwargs):
        return run(cls(**kwargs))

    command.__signature__ = inspect.Signature(parameters)
    command.__doc__ = help_text
    command.__name__ = name.replace("-", "_")
    group.command(name, help=help_text)(command)
