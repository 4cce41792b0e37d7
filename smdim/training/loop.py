"""The training loop: crops -> diffusion loss -> AdamW, with validation, dvclive logs, resume, DDP.

Every random draw of step k (crop positions, diffusion times and masks, dropout) is seeded from
(seed, k, rank), so a run killed at any moment and restarted from models/checkpoints/last.pt
follows exactly the same data order and loss curve as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from smdim.base import BaseConfig
from smdim.config import to_dict
from smdim.data.crops import Batch, CropSampler, load_pieces, validation_batches
from smdim.errors import SmdimError
from smdim.stage import resolve_device, seed_everything
from smdim.training.config import RESUMABLE_FIELDS, TrainConfig
from smdim.training.distributed import all_mean, barrier, init_distributed, shutdown
from smdim.training.ema import EMA
from smdim.training.optim import make_optimizer, make_scheduler
from smdim.training.resume import (
    first_difference,
    load_state,
    normalise,
    remove_stale_temps,
    rng_state,
    save_state,
    set_rng_state,
)

log = logging.getLogger(__name__)

# Seed streams of one step (crops use their own streams in smdim.data.crops).
_NOISE_STREAM = 2  # diffusion times and masks
_DROPOUT_STREAM = 3  # global torch RNG (dropout)
_VALID_NOISE_STREAM = 4  # masks of the fixed validation batches


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
class TrainResult:
    """What a call to `train` did."""

    step: int  # optimizer steps done in total
    resumed_from: int | None  # step of the checkpoint it continued from (None = fresh)
    ran: bool  # False when training had already finished (nothing written)
    loss: float | None  # mean training loss of the last log interval
    val_loss: float | None  # last validation loss
    tokens_per_s: float | None  # training throughput (window positions per second, all ranks)


def derive_seed(seed: int, step: int, stream: int, rank: int = 0) -> int:
    """A 63-bit torch seed that depends only on its arguments."""
    ss = np.random.SeedSequence([seed % 2**63, step, stream, rank])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _special_id(tokenizer: Any, name: str, where: Path) -> int:
    try:
        return int(tokenizer[name])
    except (KeyError, IndexError):
        raise SmdimError(
            f"{where}: the tokenizer has no {name} token; add it to the tokenize special tokens"
        ) from None


def train(
    base: BaseConfig, model_cfg: Any, diffusion_cfg: Any, cfg: TrainConfig, paths: TrainPaths
) -> TrainResult:
    """Train (or resume, or skip if finished) and write models/ and results/train/."""
    from smdim.diffusion.schedule import make_schedule
    from smdim.model.denoiser import Denoiser
    from smdim.tokenization.tokenizer import load_tokenizer

    info = init_distributed(resolve_device(base.device))
    try:
        torch.set_num_threads(max(1, cfg.num_threads // info.local_world_size))
        tok_path = paths.tokens / "tokenizer.json"
        tokenizer = load_tokenizer(tok_path)
        tok_text = tok_path.read_text(encoding="utf-8")
        ids = {name: _special_id(tokenizer, name, tok_path) for name in ("PAD_None", "MASK_None", "Bar_None")}
        model_cfg = dataclasses.replace(model_cfg, vocab_size=len(tokenizer))
        fingerprint = normalise({
            "seed": base.seed,
            "dtype": base.dtype,
            "model": to_dict(model_cfg),
            "diffusion": to_dict(diffusion_cfg),
            "train": {k: v for k, v in to_dict(cfg).items() if k not in RESUMABLE_FIELDS},
            "tokenizer_sha256": hashlib.sha256(tok_text.encode()).hexdigest(),
            "data_sha256": _sha256(paths.tokens / "manifest.json"),
        })

        state = load_state(paths.last)
        if state is not None:
            why = first_difference(state["fingerprint"], fingerprint)
            if why is None and int(state["step"]) > cfg.steps:
                why = f"checkpoint step {state['step']} > train.steps {cfg.steps}"
            if why is not None:
                # Starting over is what `dvc exp run -S ...` needs; finished runs live in the DVC cache.
                if info.is_main:
                    log.warning("%s was trained with other params (%s): starting fresh", paths.last, why)
                state = None
        if state is not None and int(state["step"]) == cfg.steps and paths.model.exists():
            if info.is_main:
                log.info("training already finished at step %d (%s); nothing to do", cfg.steps, paths.model)
            return TrainResult(cfg.steps, cfg.steps, False, None, None, None)

        barrier(info)  # every rank has read last.pt before rank 0 may replace or delete it
        if info.is_main:
            remove_stale_temps(paths.models)
            if state is None:
                for p in (paths.last, paths.model):
                    p.unlink(missing_ok=True)

        device = torch.device(info.device)
        seed_everything(base.seed)  # identical initial weights on every rank and every fresh run
        model = Denoiser(model_cfg).to(device)
        optimizer = make_optimizer(model, cfg)
        scheduler = make_scheduler(optimizer, cfg)
        ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
        start = 0
        log_acc = torch.zeros(2, dtype=torch.float64)  # (sum of losses, steps) since the last log
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
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[info.local_rank] if device.type == "cuda" else None
            )
        schedule = make_schedule(diffusion_cfg)
        lo, hi = info.share(cfg.batch_size)
        if info.is_main:
            log.info("loading crops from %s", paths.tokens)
        train_crops = CropSampler(load_pieces(paths.tokens, "train"), cfg.seq_len, ids["Bar_None"], ids["PAD_None"])
        valid_crops = CropSampler(load_pieces(paths.tokens, "valid"), cfg.seq_len, ids["Bar_None"], ids["PAD_None"])
        valid = [b.rows(lo, hi) for b in validation_batches(valid_crops, base.seed, cfg.eval_batches, cfg.batch_size)]
        use_bf16 = base.dtype == "bfloat16" and device.type == "cuda"
        if base.dtype == "bfloat16" and not use_bf16 and info.is_main:
            log.info("base.dtype=bfloat16 applies to CUDA only; training in float32 on %s", device)

        live = None
        if info.is_main:
            from smdim.training.live import open_live

            live = open_live(paths.results, start if state is not None else None)
            n_params = sum(p.numel() for p in model.parameters())
            log.info("model %s: %.2fM parameters; %d train pieces (%d tokens), %d valid pieces; "
                     "world size %d", model_cfg.block, n_params / 1e6, len(train_crops),
                     train_crops.n_tokens, len(valid_crops), info.world_size)
        del state

        def extras(step: int) -> dict[str, Any]:
            return {
                "mask_id": ids["MASK_None"], "pad_id": ids["PAD_None"],
                "diffusion": to_dict(diffusion_cfg), "step": step, "tokenizer": tok_text,
                "train": to_dict(cfg), "seed": base.seed,
                "weights": "ema" if ema is not None else "raw",
            }

        def evaluate() -> float:
            """Mean loss over the fixed validation batches, with the weights that get saved."""
            model.eval()
            ctx = ema.applied(model) if ema is not None else contextlib.nullcontext(model)
            total = torch.zeros((), dtype=torch.float64)
            with ctx, torch.no_grad():
                for i, b in enumerate(valid):
                    gen = torch.Generator(device=device).manual_seed(
                        derive_seed(base.seed, i, _VALID_NOISE_STREAM, info.rank))
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                        loss, _ = _loss(model, b, device, ids["MASK_None"], schedule, gen)
                    total += loss.double().cpu()
            model.train()
            return float(all_mean(total / len(valid), info))

        def checkpoint(step: int) -> None:
            if not info.is_main:
                return
            save_state(paths.last, {
                "step": step,
                "fingerprint": fingerprint,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "rng": rng_state(),
                "log_acc": log_acc,
                "dvclive_step": step,
            })

        model.train()
        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                   mininterval=1.0, disable=not (info.is_main and cfg.progress))
        last_loss = last_val = tok_s = None
        train_time, steps_since = 0.0, 0  # tokens/s counts training steps only (not eval/saves)
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            torch.manual_seed(derive_seed(base.seed, step, _DROPOUT_STREAM, info.rank))
            batch = train_crops.batch(base.seed, step, cfg.batch_size).rows(lo, hi)
            gen = torch.Generator(device=device).manual_seed(derive_seed(base.seed, step, _NOISE_STREAM, info.rank))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                loss, _ = _loss(net, batch, device, ids["MASK_None"], schedule, gen)
            mean_loss = float(all_mean(loss.detach().float(), info))
            lr = optimizer.param_groups[0]["lr"]
            if not math.isfinite(mean_loss):
                raise SmdimError(
                    f"training diverged at step {step + 1}: loss is {mean_loss}; lower train.lr "
                    f"(now {lr:g}) or raise train.warmup_steps / train.grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
                if not math.isfinite(norm):
                    raise SmdimError(
                        f"training diverged at step {step + 1}: gradient norm is {norm}; lower "
                        f"train.lr (now {lr:g}) or raise train.warmup_steps"
                    )
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            done = step + 1
            train_time += time.perf_counter() - t0
            log_acc += torch.tensor([mean_loss, 1.0], dtype=torch.float64)
            steps_since += 1
            values: dict[str, float] = {}
            if done % cfg.log_every == 0 or done == cfg.steps:
                tok_s = steps_since * cfg.batch_size * cfg.seq_len / max(train_time, 1e-9)
                train_time, steps_since = 0.0, 0
                last_loss = float(log_acc[0] / log_acc[1])
                log_acc.zero_()
                values.update(loss=last_loss, lr=lr, tokens_per_s=tok_s)
                bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tok_s:.0f}", refresh=False)
            if done % cfg.eval_every == 0 or done == cfg.steps:
                last_val = evaluate()
                values["val_loss"] = last_val
                if info.is_main:
                    log.info("step %d: loss %.4f, val_loss %.4f", done, last_loss or mean_loss, last_val)
            if live is not None and values:
                from smdim.training.live import log_metrics

                log_metrics(live, done, values)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint(done)
            bar.update(1)
        bar.close()

        if info.is_main:
            from smdim.model.checkpoint import save_checkpoint

            if start == cfg.steps:
                log.info("training already finished at step %d; rewriting the missing %s", start, paths.model)
            with (ema.applied(model) if ema is not None else contextlib.nullcontext(model)) as m:
                save_checkpoint(paths.model, m, **extras(cfg.steps))
            if live is not None:
                live.end()
            log.info("wrote %s (%s weights, step %d)", paths.model, extras(0)["weights"], cfg.steps)
        barrier(info)
        return TrainResult(cfg.steps, start if start else None, True, last_loss, last_val, tok_s)
    finally:
        shutdown(info)


def _loss(net: nn.Module, batch: Batch, device: torch.device, mask_id: int, schedule: Any,
          gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    from smdim.diffusion.loss import diffusion_loss

    x0 = batch.tokens.to(device, non_blocking=True)  # (b, L)
    pad_mask = batch.pad_mask.to(device, non_blocking=True)  # (b, L)
    return diffusion_loss(net, x0, mask_id=mask_id, schedule=schedule, pad_mask=pad_mask, generator=gen)
