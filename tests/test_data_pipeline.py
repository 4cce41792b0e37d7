"""download -> tokenize through real `dvc repro` in a temporary git+DVC project."""

from __future__ import annotations

import json

import yaml
from conftest import BIN, run

from smdim.data.shards import read_shards
from smdim.tokenization.tokenizer import load_tokenizer


def test_dvc_repro_tokenize_with_pop909_mirror(make_project, shared_data):
    proj = make_project({"download": {"datasets": ["pop909"],
                                      "pop909": {"mirror": str(shared_data / "pop909"), "limit": 6}}})
    # Keep only this area's stages: the other stages are tested by their own areas.
    stages = yaml.safe_load((proj / "dvc.yaml").read_text())["stages"]
    mine = {k: stages[k] for k in ("download", "tokenize")}
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": mine}, sort_keys=False))
    run(["git", "commit", "-qam", "data stages only"], proj)
    dvc = str(BIN / "dvc")
    dag = run([dvc, "dag", "--dot"], proj).stdout
    assert '"download" -> "tokenize"' in dag

    run([dvc, "repro", "tokenize"], proj)
    raw = json.loads((proj / "data/raw/pop909/manifest.json").read_text())
    assert raw["counts"]["files"] == 6 and raw["source"]["kind"] == "mirror"
    df = read_shards(proj / "data/tokens")
    assert list(df["piece_id"]) == [f"{i:03d}" for i in range(1, 7)]
    assert set(df["split"]) <= {"train", "valid", "test"}
    tok = load_tokenizer(proj / "data/tokens/tokenizer.json")
    assert max(int(t.max()) for t in df["tokens"]) < len(tok)
    metrics = json.loads((proj / "results/tokenize/metrics.json").read_text())
    assert metrics["pieces"] == 6 and metrics["vocab_size"] == len(tok) and metrics["tokens_per_s"] > 0

    again = run([dvc, "repro", "tokenize"], proj).stdout
    assert "up to date" in again and "Running stage" not in again

    # Editing tokenizer code invalidates tokenize only; download stays cached.
    with open(proj / "smdim/tokenization/encode.py", "a") as f:
        f.write("\n# touched by the test\n")
    status = json.loads(run([dvc, "status", "--json"], proj).stdout)
    assert "tokenize" in status and "download" not in status
