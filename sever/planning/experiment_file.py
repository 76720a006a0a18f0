"""A planned experiment as YAML text, each reason as a comment above the key it explains."""

from __future__ import annotations

import textwrap
from typing import Any

import yaml


def wrapped(text: str, width: int = 100) -> list[str]:
    """``text`` as lines of at most ``width`` characters (one empty line for empty text)."""
    return textwrap.wrap(text, width) or [""]


def experiment_text(config: dict, reasons: dict[str, str], header: list[str]) -> str:
    """The experiment file: ``header`` lines (comments), then ``config`` as YAML with the reason of each
    dotted key of ``reasons`` as a comment above it; a mapping with reasons below it is written as a
    block, anything else in flow style on one line."""
    return "\n".join(header + _emit(config, reasons, "", "")) + "\n"


def _flow(value: Any) -> str:
    """``value`` as one line of YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text[: -len("...")].strip() if text.endswith("\n...") else text


def _emit(node: dict, reasons: dict[str, str], prefix: str, indent: str) -> list[str]:
    """YAML lines of ``node``: a mapping with reasons below it as a block, anything else in flow style."""
    lines = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if dotted in reasons:
            lines += [f"{indent}# {line}" for line in wrapped(reasons[dotted])]
        nested = isinstance(value, dict) and value and any(r.startswith(dotted + ".") for r in reasons)
        if nested:
            lines.append(f"{indent}{key}:")
            lines += _emit(value, reasons, dotted + ".", indent + "  ")
        else:
            lines.append(f"{indent}{key}: {_flow(value)}")
    return lines
