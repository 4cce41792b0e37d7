"""Each DVC stage lists, in its deps, every smdim/ file its script imports (so a code change
re-runs exactly the stages it affects) and nothing it does not import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

_IMPORTED = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
files = sorted({m.__file__ for m in list(sys.modules.values())
                if getattr(m, "__file__", None) and m.__name__.split(".")[0] == "smdim"})
print(json.dumps(files))
"""


def _covered(rel: str, deps: list[str]) -> bool:
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", [s for s in STAGES if (ROOT / f"pipeline/{s}.py").exists()])
def test_stage_deps_match_its_imports(stage):
    p = subprocess.run([sys.executable, "-c", _IMPORTED, f"pipeline.{stage}"], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    imported = {Path(f).resolve().relative_to(ROOT).as_posix() for f in json.loads(p.stdout)}
    imported.discard("smdim/__init__.py")  # the package docstring only
    deps = [d for d in STAGES[stage]["deps"] if isinstance(d, str) and d.startswith("smdim/")]
    missing = sorted(f for f in imported if not _covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage} imports but does not list: {missing}"
    unused = sorted(d for d in deps if not any(_covered(f, [d]) for f in imported))
    assert not unused, f"dvc.yaml stage {stage} lists code it does not import: {unused}"
