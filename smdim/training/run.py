"""What one training run holds (model, optimizer, data, logger) and how it is set up or resumed.

`smdim.training.loop` drives a `Run`; this module builds it. Setting up is split from the loop
so that the loop reads as the training step, validation and saving, top-down.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dvclive import Live
from torch import nn

from smdim.config import to_dict
from smdim.data.collections import collection_index
from smdim.diffusion.config import DiffusionConfig
from smdim.diffusion.schedule import Schedule, make_schedule
from smdim.errors import SmdimError
from smdim.io import clear_stale_temps
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser
from smdim.runtime import BaseConfig, seed_everything
from smdim.tokenization.bpe import bar_start_ids, base_tokens, note_counts
from smdim.tokenization.keys import pitch_class_counts, tonic_shares
from smdim.tokenization.tokenizer import load_tokenizer
from smdim.training.config import RESUMABLE_FIELDS, TrainConfig
from smdim.training.crops import Batch, CropSampler, load_split, validation_batches
from smdim.training.distributed import DistInfo, barrier
from smdim.training.ema import EMA
from smdim.training.live import open_live
from smdim.training.optim import make_optimizer, make_scheduler
from smdim.training.resume import (
    first_difference,
    load_state,
    normalise,
    set_rng_state,
)

log = logging.getLogger("smdim.training")

SPECIAL = ("PAD_None", "MASK_None", "Bar_None")  # token names the loop needs the ids of


@dataclass(frozen=True)
class TrainPaths:
    """Inputs and outputs of the train stage."""

    tokens: Path  # data/tokens: shards + tokenizer.json
    models: Path  # models/: model.pt and checkpoints/last.pt
    results: Path  # results/train: dvclive metrics.json and plots/

    @property
    def last(self) -> Path:
        return self.models / "checkpoints" / "last.pt"

    @property
    def model(self) -> Path:
        return self.models / "model.pt"


@dataclass(frozen=True)
class Vocabulary:
    """The tokenizer file's text (saved into checkpoints) and the special ids training uses."""

    text: str
    size: int
    ids: dict[str, int]  # SPECIAL name (and BOS_None, SLACK_None if the tokenizer has them) -> id
    notes_per_id: np.ndarray  # (size,) notes each id stands for (bits per note)
    bar_starts: frozenset[int]  # ids that begin a bar (Bar_None, and with BPE its merges)
    pitch_classes: np.ndarray  # (size, 12) pitches of each class every id holds (the train pieces' keys)


@dataclass
class Run:
    """Everything a training run holds; built by `start_run`, driven by `smdim.training.loop`."""

    base: BaseConfig
    cfg: TrainConfig
    paths: TrainPaths
    diffusion_cfg: DiffusionConfig
    info: DistInfo
    device: torch.device
    vocab: Vocabulary
    fingerprint: dict[str, Any]  # what a resume checkpoint must match
    model: Denoiser
    net: nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: EMA | None
    schedule: Schedule
    train_crops: CropSampler
    valid: list[Batch]  # fixed validation batches (this rank's rows)
    rows: tuple[int, int]  # this rank's rows [lo, hi) of every global batch
    use_bf16: bool
    live: Live | None  # dvclive logger (rank 0 only)
    start: int  # first step to run (the resume checkpoint's step, or 0)
    log_acc: torch.Tensor  # (sum of losses, steps) since the last log line
    collections: tuple[str, ...]  # model.collection_cond: names of indices 1..K (saved in model.pt)


def read_vocabulary(tokens_dir: Path) -> Vocabulary:
    """The tokenizer of data/tokens and the ids of PAD, MASK and Bar (one-line error if absent)."""
    path = tokens_dir / "tokenizer.json"
    tokenizer = load_tokenizer(path)
    ids = {}
    for name in SPECIAL:
        try:
            ids[name] = int(tokenizer[name])
        except (KeyError, IndexError):
            raise SmdimError(
                f"{path}: the tokenizer has no {name} token; add it to the tokenize special tokens"
            ) from None
    if "BOS_None" in tokenizer.vocab:  # the autoregressive objective's window start
        ids["BOS_None"] = int(tokenizer["BOS_None"])
    if "SLACK_None" in tokenizer.vocab:  # diffusion.slack's filler
        ids["SLACK_None"] = int(tokenizer["SLACK_None"])
    return Vocabulary(path.read_text(encoding="utf-8"), len(tokenizer), ids, note_counts(tokenizer),
                      bar_start_ids(tokenizer), pitch_class_counts(base_tokens(tokenizer)))


def check_objective(model_cfg: ModelConfig, vocab: Vocabulary, tokens_dir: Path) -> None:
    """One-line error when the tokenizer lacks what the objective needs."""
    if model_cfg.causal and "BOS_None" not in vocab.ids:
        raise SmdimError(f"{tokens_dir / 'tokenizer.json'}: model.objective=autoregressive starts every "
                         "window with BOS; add BOS to tokenize.special_tokens and re-run tokenize")


# The packages whose code decides what a training step computes. DVC reruns the stage when they
# change (dvc.yaml); without their hash here, the rerun would find a finished last.pt and keep the
# model the old code trained.
TRAINING_CODE = ("model", "diffusion", "training", "autoregressive")
_SOURCE_SUFFIXES = (".py", ".cpp", ".h", ".cu")
_SMDIM = Path(__file__).resolve().parents[1]


def training_code_sha256(root: Path = _SMDIM) -> str:
    """SHA-256 over the source files (path and bytes) of TRAINING_CODE under `root` (smdim/)."""
    h = hashlib.sha256()
    for package in TRAINING_CODE:
        for f in sorted((root / package).rglob("*")):
            if f.is_file() and f.suffix in _SOURCE_SUFFIXES:
                h.update(f.relative_to(root).as_posix().encode() + b"\0")
                h.update(f.read_bytes())
    return h.hexdigest()


def fingerprint_of(base: BaseConfig, model_cfg: ModelConfig, diffusion_cfg: DiffusionConfig,
                   cfg: TrainConfig, vocab: Vocabulary, tokens_dir: Path) -> dict[str, Any]:
    """The params, data and training code a checkpoint was trained with, minus what may change on
    resume."""
    manifest = tokens_dir / "manifest.json"
    return normalise({
        "code_sha256": training_code_sha256(),
        "seed": base.seed,
        "dtype": base.dtype,
        "model": to_dict(model_cfg),
        "diffusion": to_dict(diffusion_cfg),
        "train": {k: v for k, v in to_dict(cfg).items() if k not in RESUMABLE_FIELDS},
        "tokenizer_sha256": hashlib.sha256(vocab.text.encode()).hexdigest(),
        "data_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else None,
    })


def resumable_state(paths: TrainPaths, fingerprint: dict[str, Any],
                    info: DistInfo) -> dict[str, Any] | None:
    """The resume checkpoint if it continues this run; None (start fresh) if absent or foreign."""
    state = load_state(paths.last)
    if state is None:
        return None
    why = first_difference(state["fingerprint"], fingerprint)
    if why is not None:
        # Starting over is what `dvc exp run -S ...` needs; finished runs live in the DVC cache.
        if info.is_main:
            log.warning("%s was trained with other params or training code (%s): starting fresh", paths.last, why)
        return None
    return state


def clear_outputs(paths: TrainPaths, state: dict[str, Any] | None, info: DistInfo) -> None:
    """Remove temp files of killed saves, and the old outputs when starting fresh (rank 0)."""
    barrier(info)  # every rank has read last.pt before rank 0 may replace or delete it
    if info.is_main:
        for p in (paths.last, paths.model):  # smdim.io's temp siblings whose writer is gone
            clear_stale_temps(p)
        if state is None:
            for p in (paths.last, paths.model):
                p.unlink(missing_ok=True)


def start_run(base: BaseConfig, model_cfg: ModelConfig, diffusion_cfg: DiffusionConfig,
              cfg: TrainConfig, paths: TrainPaths, info: DistInfo, vocab: Vocabulary,
              fingerprint: dict[str, Any], state: dict[str, Any] | None,
              collections: tuple[str, ...]) -> Run:
    """Build the model, optimizer and data; restore `state` when resuming."""
    device = torch.device(info.device)
    seed_everything(base.seed)  # identical initial weights on every rank and every fresh run
    model = Denoiser(model_cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    start = 0
    log_acc = torch.zeros(2, dtype=torch.float64)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        log_acc = state["log_acc"].clone()
        start = int(state["step"])
        if info.is_main:
            log.info("resuming from %s at step %d of %d", paths.last, start, cfg.steps)
    # Extending a finished run: the scheduler follows the new train.steps from here on.
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * scheduler.lr_lambdas[0](start)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]

    net: nn.Module = model
    if info.enabled:
        # A self-conditioned net leaves its `prev` projection unused on the batches without a first
        # pass (drawn per rank), which DDP must be told to expect.
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if device.type == "cuda" else None,
            find_unused_parameters=model.cfg.self_cond,
        )
    lo, hi = info.share(cfg.batch_size)
    if info.is_main:
        log.info("loading crops from %s", paths.tokens)
    bar_ids, pad_id = vocab.bar_starts, vocab.ids["PAD_None"]
    (train_pieces, train_labels), (valid_pieces, valid_labels) = (load_split(paths.tokens, s) for s in ("train", "valid"))
    index = collection_index(collections)
    labels = (lambda names: [index.get(n, 0) for n in names]) if index else (lambda names: None)
    slack = slack_id(diffusion_cfg, model_cfg, vocab)
    train_crops = CropSampler(train_pieces, cfg.seq_len, bar_ids, pad_id, labels(train_labels),
                              slack=diffusion_cfg.slack if slack is not None else 0.0, slack_id=slack)
    valid_crops = CropSampler(valid_pieces, cfg.seq_len, bar_ids, pad_id, labels(valid_labels))
    valid = [b.rows(lo, hi) for b in validation_batches(valid_crops, base.seed, cfg.eval_batches, cfg.batch_size)]
    use_bf16 = base.dtype == "bfloat16" and device.type == "cuda"
    if base.dtype == "bfloat16" and not use_bf16 and info.is_main:
        log.info("base.dtype=bfloat16 applies to CUDA only; training in float32 on %s", device)

    live = None
    if info.is_main:
        live = open_live(paths.results, start if state is not None else None)
        n_params = sum(p.numel() for p in model.parameters())
        log.info("model %s: %.2fM parameters; %d train pieces (%d tokens), %d valid pieces; "
                 "world size %d", model_cfg.block, n_params / 1e6, len(train_crops),
                 train_crops.n_tokens, len(valid_crops), info.world_size)
    return Run(base, cfg, paths, diffusion_cfg, info, device, vocab, fingerprint, model, net, optimizer,
               scheduler, ema, make_schedule(diffusion_cfg), train_crops, valid, (lo, hi), use_bf16,
               live, start, log_acc, collections)


def slack_id(diffusion_cfg: DiffusionConfig, model_cfg: ModelConfig, vocab: Vocabulary) -> int | None:
    """The SLACK token's id when training scatters it (DiffusionConfig.uses_slack), else None."""
    if not diffusion_cfg.uses_slack(model_cfg.causal):
        return None
    if "SLACK_None" not in vocab.ids:
        raise SmdimError(f"diffusion.slack={diffusion_cfg.slack}: data/tokens has no SLACK token; add SLACK "
                         "to tokenize.special_tokens")
    return vocab.ids["SLACK_None"]


def with_vocab_size(model_cfg: ModelConfig, vocab: Vocabulary) -> ModelConfig:
    """The model config with the vocabulary size of data/tokens filled in."""
    return dataclasses.replace(model_cfg, vocab_size=vocab.size)


def train_collections(model_cfg: ModelConfig, tokens_dir: Path) -> tuple[str, ...]:
    """The train split's collections in index order (1..K) when model.collection_cond, else ()."""
    if not model_cfg.collection_cond:
        return ()
    return tuple(collection_index(load_split(tokens_dir, "train")[1]))


def collection_shares(labels: np.ndarray, k: int) -> list[float]:
    """Share of the pieces labelled 1..k in `labels` (0 = unlabelled, left out); [] when k is 0."""
    counts = np.bincount(labels, minlength=k + 1)[1:k + 1]
    return (counts / max(int(counts.sum()), 1)).tolist() if k else []


def key_shares(crops: CropSampler, pitch_classes: np.ndarray, k: int) -> list[list[float]]:
    """Share of each tonic (12) among the train pieces: row 0 all of them, row i those of
    collection i (1..k). `sample.key: prior` draws each piece's key from its collection's row."""
    pieces = [crops.flat[o:o + n] for o, n in zip(crops.offsets, crops.lengths, strict=True)]
    return [tonic_shares(pieces, pitch_classes)] + [
        tonic_shares([p for p, label in zip(pieces, crops.labels, strict=True) if label == c], pitch_classes)
        for c in range(1, k + 1)
    ]


def with_collections(model_cfg: ModelConfig, collections: tuple[str, ...]) -> ModelConfig:
    """The model config with n_collections filled in (0 when model.collection_cond is off)."""
    return dataclasses.replace(model_cfg, n_collections=len(collections))
