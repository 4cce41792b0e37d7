"""End to end: `smdim generate | infill` and the `sample` stage on a tiny random checkpoint."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BIN, ROOT, run

from smdim.cli import main
from smdim.config import to_dict
from smdim.diffusion.config import DiffusionConfig
from smdim.io import read_json
from smdim.model.checkpoint import save_checkpoint
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser
from smdim.tokenization.config import TokenizeConfig
from smdim.tokenization.decode import write_midi
from smdim.tokenization.encode import encode_file
from smdim.tokenization.tokenizer import build_tokenizer

SMDIM = str(BIN / "smdim")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised small Denoiser saved the way the train stage saves it."""
    d = tmp_path_factory.mktemp("ckpt")
    tok = build_tokenizer(TokenizeConfig())
    tok.save(d / "tokenizer.json")
    torch.manual_seed(0)
    model = Denoiser(ModelConfig(vocab_size=len(tok), d_model=32, n_heads=2, n_blocks=1, d_state=4))
    save_checkpoint(
        d / "model.pt", model, mask_id=tok["MASK_None"], pad_id=tok["PAD_None"], step=0,
        diffusion=to_dict(DiffusionConfig(T=64)), tokenizer=(d / "tokenizer.json").read_text(),
    )
    return d / "model.pt"


@pytest.fixture(scope="module")
def ar_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised autoregressive model saved the way the train stage saves it."""
    d = tmp_path_factory.mktemp("ar-ckpt")
    tok = build_tokenizer(TokenizeConfig())
    torch.manual_seed(0)
    model = Denoiser(ModelConfig(vocab_size=len(tok), d_model=32, n_heads=2, n_blocks=1, d_state=4,
                                 objective="autoregressive", block="mamba"))
    tok.save(d / "tokenizer.json")
    save_checkpoint(d / "model.pt", model, mask_id=tok["MASK_None"], pad_id=tok["PAD_None"],
                    bos_id=tok["BOS_None"], step=0, diffusion=to_dict(DiffusionConfig()),
                    tokenizer=(d / "tokenizer.json").read_text())
    return d / "model.pt"


@pytest.mark.parametrize("objective", ["diffusion", "autoregressive"])
def test_generate_continues_a_prompt(objective, checkpoint, ar_checkpoint, shared_data, tmp_path):
    tok = build_tokenizer(TokenizeConfig())
    bar = tok["Bar_None"]
    song = shared_data / "pop909" / "001.mid"
    ck = checkpoint if objective == "diffusion" else ar_checkpoint
    out = tmp_path / "cont.mid"
    main(["generate", "--checkpoint", str(ck), "--prompt", str(song), "--prompt-bars", "2",
          "--tokens", "160", "--steps", "4", "--out", str(out)])
    write_midi(tok, encode_file(tok, song), tmp_path / "roundtrip.mid")
    prompt = bars_of(encode_file(tok, tmp_path / "roundtrip.mid"), bar)[:2]
    pitches = lambda bars: [sorted(i for i in b if tok[i].startswith("Pitch_")) for b in bars]  # noqa: E731
    got = bars_of(encode_file(tok, out), bar)
    assert len(got) > 2 and pitches(got[:2]) == pitches(prompt)


def bars_of(ids: list[int], bar_id: int) -> list[list[int]]:
    """Token ids split into bars (each list starts with its Bar token)."""
    out: list[list[int]] = []
    for i in ids:
        if i == bar_id or not out:
            out.append([])
        out[-1].append(i)
    return out


def test_generate(checkpoint, tmp_path):
    args = ["generate", "--checkpoint", str(checkpoint), "--tokens", "96", "--steps", "8",
            "--pitch-range", "48", "84", "--max-polyphony", "3", "--seed", "1", "--png"]
    # The installed console script once; in-process after that (same code, no import cost).
    p = run([SMDIM, *args, "--out", "a.mid"], tmp_path)
    assert "wrote a.mid" in p.stdout and (tmp_path / "a.mid").stat().st_size > 0
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    main([*args, "--out", str(tmp_path / "b.mid")])
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()  # same seed, same piece
    main([*args[:-2], "2", "--out", str(tmp_path / "c.mid")])
    assert (tmp_path / "a.mid").read_bytes() != (tmp_path / "c.mid").read_bytes()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generate_on_cuda_is_seeded(tmp_path):
    """The defaults (`collection` and `key` prior) draw their seeds from the sampling generator,
    which is a CUDA generator under `--device cuda` (a device check found that draw failing there)."""
    from smdim.pretrained import PRETRAINED

    args = ["generate", "--checkpoint", str(PRETRAINED), "--device", "cuda", "--tokens", "128",
            "--steps", "8", "--seed", "3"]
    main([*args, "--out", str(tmp_path / "a.mid")])
    main([*args, "--out", str(tmp_path / "b.mid")])
    assert (tmp_path / "a.mid").stat().st_size > 0
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()


def test_infill_keeps_everything_outside_the_bars(checkpoint, shared_data, tmp_path):
    tok = build_tokenizer(TokenizeConfig())
    bar = tok["Bar_None"]
    song = shared_data / "pop909" / "001.mid"
    out = tmp_path / "infilled.mid"
    main(["infill", "--checkpoint", str(checkpoint), "--midi", str(song), "--bars", "5-8",
          "--steps", "8", "--context", "512", "--out", str(out)])
    # Compare after the same decode -> encode trip: encoding orders the notes of one onset by
    # their raw (unquantised) durations, so only a decoded original re-encodes comparably.
    write_midi(tok, encode_file(tok, song), tmp_path / "roundtrip.mid")
    before = bars_of(encode_file(tok, tmp_path / "roundtrip.mid"), bar)
    after = bars_of(encode_file(tok, out), bar)
    assert len(after) == len(before)
    # Onsets and pitches outside the span are kept. (Durations may not survive the MIDI file: a
    # note that a generated note of the same pitch interrupts is cut there, as MIDI requires.)
    kept = [tok[n] for n in tok.vocab if n.startswith(("Bar_", "Position_", "Pitch_"))]
    def notes(bars):  # per bar and onset, the set of pitches (their order follows the durations)
        out = []
        for b in bars:
            onsets: list[list[int]] = []
            for i in b:
                if i in kept:
                    if tok[i].startswith(("Bar_", "Position_")) or not onsets:
                        onsets.append([i])
                    else:
                        onsets[-1].append(i)
            out.append([(o[0], sorted(o[1:])) for o in onsets])
        return out
    assert notes(after[:4]) == notes(before[:4]) and notes(after[8:]) == notes(before[8:])
    assert after[4:8] != before[4:8]


@pytest.mark.parametrize("command", ["generate", "infill"])
def test_audio_next_to_the_midi(checkpoint, shared_data, tmp_path, command):
    import soundfile

    args = ["--checkpoint", str(checkpoint), "--steps", "4", "--out", str(tmp_path / "a.mid"),
            "--audio", str(tmp_path / "a.wav")]
    extra = ["--tokens", "96"] if command == "generate" else [
        "--midi", str(shared_data / "pop909" / "001.mid"), "--bars", "2-3", "--context", "256"]
    main([command, *args, *extra])
    x, sr = soundfile.read(str(tmp_path / "a.wav"), dtype="float32")
    assert sr == 22050 and len(x) > 0 and float(abs(x).max()) < 1.0


def one_line_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1
    return err


def test_errors_are_one_line(checkpoint, shared_data, tmp_path, capsys):
    song = shared_data / "pop909" / "001.mid"
    ck = ["--checkpoint", str(checkpoint)]
    err = one_line_error(["infill", *ck, "--midi", str(song), "--bars", "900-901", "--out", "x.mid"], capsys)
    assert "bars 900-901 requested but the piece has only " in err
    err = one_line_error(["generate", "--checkpoint", str(tmp_path / "no.pt"), "--out", "x.mid"], capsys)
    assert "checkpoint not found" in err
    bad = shared_data / "bad-midi" / "corrupted_control168.mid"
    assert "cannot read MIDI" in one_line_error(["infill", *ck, "--midi", str(bad), "--bars", "1", "--out", "x.mid"], capsys)
    assert not (tmp_path / "x.mid").exists()


def test_sample_stage_with_dvc(checkpoint, make_project):
    proj = make_project({"sample": {"n": 3, "n_tokens": 64, "bars": 2, "steps": 6, "batch_size": 2,
                                    "lengths": [32, 48], "n_per_length": 1, "max_polyphony": 4,
                                    "cost_bars": [2]}})  # the default 16 and 64 bars took most of the test
    (proj / "models").mkdir()
    shutil.copy(checkpoint, proj / "models" / "model.pt")
    dag = run([str(BIN / "dvc"), "dag", "--dot"], proj).stdout  # also checks outs do not overlap
    assert '"train" -> "sample"' in dag and '"sample" -> "evaluate"' in dag
    run([str(BIN / "dvc"), "repro", "--single-item", "sample"], proj)
    out = proj / "results" / "samples"
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != ".gitignore")
    assert names == [
        "by_length/32/000.mid", "by_length/48/000.mid",
        "contact_sheet.png", "metrics.json", "pieces/000.mid", "pieces/000.png", "pieces/001.mid",
        "pieces/001.png", "pieces/002.mid", "pieces/002.png", "samples.json",
    ]
    samples, metrics = read_json(out / "samples.json"), read_json(out / "metrics.json")
    assert [p["file"] for p in samples["pieces"]] == ["pieces/000.mid", "pieces/001.mid", "pieces/002.mid"]
    assert all(p["n_bars"] <= 2 and p["n_tokens"] <= 64 for p in samples["pieces"])
    assert set(samples["by_length"]) == {"32", "48"}
    # `bars` cuts the main set only: a by_length piece keeps every slot that is not slack
    assert [p["n_tokens"] + p["n_slack"] for p in samples["by_length"]["48"]] == [48]
    assert 0 <= metrics["token_error_rate"] <= 1 and metrics["seconds_per_token"] > 0
    assert metrics["generate_2_bars"]["seconds"] > 0 and "generate_16_bars" not in metrics
    # dvc sees the stage as up to date, and a sample param change makes it stale again.
    assert "up to date" in run([str(BIN / "dvc"), "status", "sample"], proj).stdout
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["sample"]["temperature"] = 0.5
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run([str(BIN / "dvc"), "status", "sample"], proj).stdout
    assert "modified" in status and "sample" in status


def test_console_script_is_declared():
    assert 'smdim = "smdim.cli:main"' in (ROOT / "pyproject.toml").read_text()
    p = run([sys.executable, "-m", "smdim.cli", "--help"], ROOT)
    assert "generate" in p.stdout and "infill" in p.stdout


def test_cli_defaults_are_the_sample_sections():
    """The CLI has no sampling defaults of its own: a flag not given takes the checkpoint's
    recommendation (sample_defaults), else SampleConfig's (= params.yaml's)."""
    from smdim import cli
    from smdim.pretrained import PRETRAINED
    from smdim.sampling.config import SampleConfig

    args = cli.parser().parse_args(["generate", "--out", "x.mid"])
    cfg = SampleConfig()
    assert args.tokens == cfg.n_tokens
    got = cli.settings(args, types.SimpleNamespace(sample_defaults={}))
    assert got == {name: getattr(cfg, name) for name in cli.SETTINGS}
    recommends = types.SimpleNamespace(sample_defaults={"method": "cached", "top_p": 0.95, "key": "none"})
    got = cli.settings(args, recommends)
    assert (got["method"], got["top_p"], got["key"], got["steps"]) == ("cached", 0.95, None, cfg.steps)
    # A flag beats the recommendation; 'none' and --no-grammar switch a setting off.
    flags = cli.parser().parse_args(["generate", "--out", "x.mid", "--method", "remdm", "--top-p", "0.9",
                                     "--scale", "none", "--collection", "none", "--no-grammar"])
    got = cli.settings(flags, recommends)
    assert (got["method"], got["top_p"], got["scale"], got["collection"], got["grammar"]) == (
        "remdm", 0.9, None, None, False)
    # No --checkpoint: sample.checkpoint once it exists, else the shipped pretrained model.
    assert args.checkpoint is None and cli._checkpoint(args) in (cfg.checkpoint, str(PRETRAINED))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_names_the_flag(checkpoint, tmp_path, capsys):
    out = tmp_path / "x.mid"
    err = one_line_error(["generate", "--checkpoint", str(checkpoint), "--device", "cuda", "--out", str(out)], capsys)
    assert "--device cuda but no CUDA GPU is visible; pass --device auto or cpu" in err
    assert not out.exists()


def test_generate_with_the_literature_samplers(checkpoint, tmp_path, capsys):
    base = ["generate", "--checkpoint", str(checkpoint), "--tokens", "64", "--steps", "8", "--seed", "3"]
    for flags in (["--method", "remdm", "--remask", "conf", "--remask-eta", "0.1", "--top-p", "0.9"],
                  ["--confidence", "margin", "--top-k", "5"],
                  ["--correct-rounds", "3", "--correct-share", "0.2", "--correct-temperature", "0.3"]):
        a, b = tmp_path / "a.mid", tmp_path / "b.mid"
        main([*base, *flags, "--out", str(a)])
        main([*base, *flags, "--out", str(b)])
        assert a.read_bytes() == b.read_bytes()  # seeded
    assert "top_p" in one_line_error([*base, "--top-p", "2", "--out", str(tmp_path / "x.mid")], capsys)
    assert "correct_share" in one_line_error([*base, "--correct-share", "0", "--out", str(tmp_path / "x.mid")], capsys)
