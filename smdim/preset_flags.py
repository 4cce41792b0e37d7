"""Turn a preset file (nested overrides of params.yaml, e.g. configs/paper.yaml) into DVC flags.

    dvc exp run $(python -m smdim.preset_flags configs/paper.yaml)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from smdim.config import load_params
from smdim.errors import SmdimError, run_stage


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def hydra_value(v: Any) -> str:
    """A value in the override grammar of `dvc exp run -S` (no spaces: it goes through $(...))."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    text = str(v)
    if any(c.isspace() for c in text):
        raise SmdimError(f"preset value {text!r} contains spaces; not supported by this helper")
    return text


def preset_flags(preset: str | Path, params: str | Path = "params.yaml") -> list[str]:
    """`-S key=value` flags for every leaf of `preset`, checked against the keys of `params`."""
    overrides = flatten(load_params(preset))
    known = flatten(load_params(params))
    flags = []
    for key, v in overrides.items():
        if key not in known and not any(k.startswith(f"{key}.") for k in known):
            raise SmdimError(f"{preset}: {key} is not a parameter in {params}; fix the preset")
        flags += ["-S", f"{key}={hydra_value(v)}"]
    return flags


def main(argv: list[str] | None = None) -> None:
    """Print the flags for the preset named on the command line."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SmdimError("usage: python -m smdim.preset_flags configs/paper.yaml")
    print(" ".join(preset_flags(argv[0])))


if __name__ == "__main__":
    run_stage(main)
