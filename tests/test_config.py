"""Config validation (pydantic) and the one source of defaults: dataclasses == params.yaml."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from smdim.config import build, load_params
from smdim.data.config import DownloadConfig
from smdim.errors import ConfigError
from smdim.sampling.config import SampleConfig
from smdim.sections import RUNTIME_FIELDS, SECTIONS
from smdim.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _keys(value, prefix=""):
    """Nested dict -> set of dotted leaf keys (a nested dataclass section counts as a branch)."""
    if isinstance(value, dict):
        out = set()
        for k, v in value.items():
            out |= _keys(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "beat_res" else {f"{prefix}{k}"}
        return out
    return {prefix.rstrip(".")}


def test_params_yaml_has_exactly_the_typed_sections():
    assert list(load_params(ROOT / "params.yaml")) == list(SECTIONS)


@pytest.mark.parametrize("section", list(SECTIONS))
def test_params_yaml_equals_the_dataclass_defaults(section):
    """Every default lives in the dataclass; params.yaml repeats each one, with the same value."""
    cls = SECTIONS[section]
    data = load_params(ROOT / "params.yaml")[section]
    assert build(cls, data, section) == cls(), f"params.yaml `{section}` differs from {cls.__name__}()"
    expected = _keys(dataclasses.asdict(cls())) - RUNTIME_FIELDS.get(section, set())
    assert _keys(data) == expected, f"params.yaml `{section}` lists other fields than {cls.__name__}"


@pytest.mark.parametrize(("cls", "where", "data", "message"), [
    (DownloadConfig, "download", {"local": {"limit": "all"}}, "download.local.limit: input should be a valid integer"),
    (SampleConfig, "sample", {"bars": "sixteen"}, "sample.bars: input should be a valid integer.*got 'sixteen'"),
    (DownloadConfig, "download", {"local": {"path": 123}}, "download.local.path: input should be a valid string, got 123"),
    (DownloadConfig, "download", {"maestro": {"sha256": 1234}}, "download.maestro.sha256: input should be a valid string"),
    (SampleConfig, "sample", {"method": "beam"}, "sample.method: input should be 'ancestral', 'cached', 'confidence' or 'remdm'"),
    (TrainConfig, "train", {"lr": -1.0}, "train: lr=-1.0 must be > 0"),
    (TrainConfig, "train", {"setps": 3}, "train.setps: unknown parameter; did you mean 'steps'"),
    (DownloadConfig, "download", {"embedded": {"colections": []}}, "download.embedded.colections: unknown parameter; did you mean 'collections'"),
    (TrainConfig, "train", [1, 2], "train: expected a mapping of parameters"),
    (SampleConfig, "sample", {"correct_share": 0.0}, "sample: correct_rounds must be >= 0 and correct_share in"),
    (SampleConfig, "sample", {"correct_temperature": -1}, "sample: correct_temperature must be >= 0 or null"),
], ids=["optional-int", "optional-int-word", "optional-str", "digit-sha256", "literal", "range", "typo",
        "nested-typo", "not-a-mapping", "corrector-share", "corrector-temperature"])
def test_bad_values_give_one_line_naming_the_parameter(cls, where, data, message):
    with pytest.raises(ConfigError, match=message) as e:
        build(cls, data, where)
    assert "\n" not in str(e.value)


def test_several_errors_give_one_line_each():
    with pytest.raises(ConfigError) as e:
        build(TrainConfig, {"steps": "many", "lr": "fast"}, "train")
    lines = str(e.value).splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["train.steps", "train.lr"]


def test_yaml_number_without_a_dot_is_accepted():
    # YAML 1.1 reads 1e-3 as a string; it is still a number to a user.
    assert build(TrainConfig, {"lr": "1e-3"}, "train").lr == 1e-3


def test_a_stage_prints_config_errors_without_a_traceback(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"]["local"]["limit"] = "all"
    params["download"]["embedded"]["limit"] = "few"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p = subprocess.run([sys.executable, "-m", "pipeline.download"], cwd=tmp_path, capture_output=True,
                       text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        "error: download.embedded.limit: input should be a valid integer, unable to parse string as an "
        "integer, got 'few'",
        "error: download.local.limit: input should be a valid integer, unable to parse string as an "
        "integer, got 'all'",
    ]


def test_device_names_are_checked_and_errors_name_the_setting():
    import torch

    from smdim.errors import SmdimError
    from smdim.runtime import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SmdimError, match=r"^base.device=gpu is not a device; set base.device: auto, cpu, cuda or cuda:N$"):
        resolve_device("gpu")
    with pytest.raises(SmdimError, match=r"^--device cuda:x is not a device; pass --device auto, cpu, cuda or cuda:N$"):
        resolve_device("cuda:x", setting="--device")
    if not torch.cuda.is_available():
        with pytest.raises(SmdimError, match=r"^base.device=cuda:1 but no CUDA GPU is visible; set base.device: auto"):
            resolve_device("cuda:1")


def test_saved_dict_leaves_out_fields_at_what_their_absence_means():
    from smdim.config import build_saved, saved_dict
    from smdim.model.checkpoint import ABSENT_MEANS
    from smdim.model.config import ModelConfig

    old = saved_dict(ModelConfig(refine_layers=0, collection_cond=False), ABSENT_MEANS)
    assert not set(ABSENT_MEANS) & set(old)  # all three at their "absent" value: none written
    assert build_saved(ModelConfig, old, ABSENT_MEANS, "x") == ModelConfig(refine_layers=0, collection_cond=False)
    new = saved_dict(ModelConfig(self_cond=True), ABSENT_MEANS)
    assert new["self_cond"] is True and new["refine_layers"] == 1 and new["collection_cond"] is True
