"""The shipped pretrained denoiser: configs/cpu_1h.yaml trained on the embedded corpus, weights in fp16.

`smdim generate` falls back to it when models/model.pt does not exist, so the tool makes music
right after install. Reproduce it (same bytes; about an hour on a 2-core CPU):

    dvc exp run $(python -m smdim.preset_flags configs/cpu_1h.yaml)
    python -m smdim.pretrained models/model.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from smdim.config import build, build_partial, build_saved, load_params, saved_dict, to_dict
from smdim.diffusion.config import ABSENT_MEANS as DIFFUSION_ABSENT
from smdim.diffusion.config import DiffusionConfig
from smdim.errors import SmdimError
from smdim.model.checkpoint import ABSENT_MEANS, FORMAT, read_payload, save_atomic
from smdim.model.config import ModelConfig
from smdim.sampling.config import SampleConfig
from smdim.training.config import TrainConfig

PRETRAINED = Path(__file__).with_name("embedded_cpu_1h.pt")
PRESET = "configs/cpu_1h.yaml"
PRESET_FILE = Path(__file__).resolve().parents[2] / PRESET  # in a checkout; export runs there
# What inference and provenance need; configs pass through today's dataclasses in a canonical form,
# so a checkpoint from an older smdim with the same weights exports to the same bytes.
KEEP = ("mask_id", "pad_id", "bos_id", "step", "seed", "weights", "tokenizer", "collection_shares", "key_shares")


def export(src: str | Path, dst: str | Path = PRETRAINED) -> Path:
    """Copy a trained checkpoint with its floating-point weights in float16 (half the bytes).

    Loading needs nothing special: load_state_dict copies fp16 values into the fp32 parameters.
    """
    payload = read_payload(Path(src), "cpu")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SmdimError(f"{src}: not an smdim denoiser checkpoint; pass models/model.pt")
    state = {k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    old = payload.get("extra", {})
    extra = {k: old[k] for k in KEEP if k in old}
    # Fields at what their absence means are left out (smdim.config.saved_dict), and the train
    # section keeps the keys its run saved: no later field or default changes these bytes.
    saved_train = old.get("train") or {}
    extra.update(
        diffusion=saved_dict(build_saved(DiffusionConfig, old.get("diffusion"), DIFFUSION_ABSENT, f"{src}:diffusion"),
                             DIFFUSION_ABSENT),
        train={k: v for k, v in to_dict(build(TrainConfig, saved_train, f"{src}:train")).items() if k in saved_train},
        collections=list(old.get("collections", [])), weights_dtype="float16", preset=PRESET,
    )
    # The preset's sampler settings travel with the weights: `smdim generate` uses them unless told
    # otherwise, whatever the global defaults become later.
    preset = (load_params(PRESET_FILE).get("sample") or {}) if PRESET_FILE.is_file() else {}
    extra["sample_defaults"] = build_partial(SampleConfig, preset, f"{PRESET}:sample")
    # A field newer than the checkpoint takes what its absence means, never today's default (the
    # shipped file has no refinement layer: a default of 1 would describe weights it does not hold).
    config = saved_dict(build_saved(ModelConfig, payload["config"], ABSENT_MEANS, f"{src}:config"), ABSENT_MEANS)
    save_atomic({"format": FORMAT, "config": config, "state_dict": state, "extra": extra}, dst)
    return Path(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description="Write the shipped pretrained model from a trained checkpoint.")
    ap.add_argument("checkpoint", type=Path, help="trained checkpoint, e.g. models/model.pt")
    ap.add_argument("--out", type=Path, default=PRETRAINED, help="default: %(default)s")
    args = ap.parse_args()
    out = export(args.checkpoint, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")

