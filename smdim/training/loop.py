"""The training loop: crops -> the objective's loss (diffusion or autoregressive) -> AdamW, with
validation, dvclive logs, resume, DDP, and the final validation bits per note.

Every random draw of step k (crop positions, diffusion times and masks, dropout) is seeded from
(seed, k, rank), so a run killed at any moment and restarted from models/checkpoints/last.pt
follows exactly the same data order and loss curve as an uninterrupted one.

Read `train` first: it sets the run up (smdim.training.run), then loops over `train_step`,
`validate` and `save_resume`, and ends with `save_final`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from smdim.config import to_dict
from smdim.diffusion.config import DiffusionConfig
from smdim.errors import SmdimError
from smdim.model.checkpoint import save_checkpoint
from smdim.model.collection import WithCollection
from smdim.model.config import ModelConfig
from smdim.runtime import BaseConfig, resolve_device
from smdim.training.config import TrainConfig
from smdim.training.crops import Batch, load_pieces
from smdim.training.distributed import all_mean, barrier, init_distributed, shutdown
from smdim.training.likelihood import validation_likelihood
from smdim.training.live import log_metrics
from smdim.training.objective import objective_loss, self_cond_share
from smdim.training.resume import rng_state, save_state
from smdim.training.run import (
    Run,
    TrainPaths,
    check_objective,
    clear_outputs,
    collection_shares,
    fingerprint_of,
    key_shares,
    read_vocabulary,
    resumable_state,
    start_run,
    train_collections,
    with_collections,
    with_vocab_size,
)

__all__ = ["TrainPaths", "TrainResult", "derive_seed", "train"]

log = logging.getLogger("smdim.training")

# Seed streams of one step (crops use their own streams in smdim.training.crops).
_NOISE_STREAM = 2  # diffusion times and masks
_DROPOUT_STREAM = 3  # global torch RNG (dropout)
_VALID_NOISE_STREAM = 4  # masks of the fixed validation batches


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


def train(base: BaseConfig, model_cfg: ModelConfig, diffusion_cfg: DiffusionConfig,
          cfg: TrainConfig, paths: TrainPaths) -> TrainResult:
    """Train (or resume, or skip if finished) and write models/ and results/train/."""
    info = init_distributed(resolve_device(base.device))
    try:
        torch.set_num_threads(max(1, cfg.num_threads // info.local_world_size))
        vocab = read_vocabulary(paths.tokens)
        collections = train_collections(model_cfg, paths.tokens)  # the one read of their names
        model_cfg = with_collections(with_vocab_size(model_cfg, vocab), collections)
        check_objective(model_cfg, vocab, paths.tokens)
        fingerprint = fingerprint_of(base, model_cfg, diffusion_cfg, cfg, vocab, paths.tokens)
        state = resumable_state(paths, fingerprint, info)
        if state is not None and int(state["step"]) == cfg.steps and paths.model.exists():
            if info.is_main:
                log.info("training already finished at step %d (%s); nothing to do", cfg.steps, paths.model)
            return TrainResult(cfg.steps, cfg.steps, False, None, None, None)
        clear_outputs(paths, state, info)
        run = start_run(base, model_cfg, diffusion_cfg, cfg, paths, info, vocab, fingerprint, state, collections)
        del state
        loss, val_loss, tokens_per_s = loop(run)
        save_final(run)
        barrier(info)
        return TrainResult(cfg.steps, run.start or None, True, loss, val_loss, tokens_per_s)
    finally:
        shutdown(info)


def loop(run: Run) -> tuple[float | None, float | None, float | None]:
    """Steps run.start .. train.steps; returns the last (loss, val_loss, tokens/s) logged."""
    cfg = run.cfg
    run.model.train()
    bar = tqdm(total=cfg.steps, initial=run.start, desc="train", unit="step", dynamic_ncols=True,
               mininterval=1.0, disable=not (run.info.is_main and cfg.progress))
    last_loss = last_val = tok_s = None
    train_time, steps_since = 0.0, 0  # tokens/s counts training steps only (not eval/saves)
    for step in range(run.start, cfg.steps):
        t0 = time.perf_counter()
        mean_loss, lr = train_step(run, step)
        done = step + 1
        train_time += time.perf_counter() - t0
        run.log_acc += torch.tensor([mean_loss, 1.0], dtype=torch.float64)
        steps_since += 1
        values: dict[str, float] = {}
        if _due(done, cfg.log_every, cfg.steps):
            tok_s = steps_since * cfg.batch_size * cfg.seq_len / max(train_time, 1e-9)
            train_time, steps_since = 0.0, 0
            last_loss = float(run.log_acc[0] / run.log_acc[1])
            run.log_acc.zero_()
            values.update(loss=last_loss, lr=lr, tokens_per_s=tok_s)
            bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tok_s:.0f}", refresh=False)
        if _due(done, cfg.eval_every, cfg.steps):
            last_val = values["val_loss"] = validate(run)
            if run.info.is_main:
                log.info("step %d: loss %.4f, val_loss %.4f", done, last_loss or mean_loss, last_val)
        if run.live is not None and values:
            log_metrics(run.live, done, values)
        if _due(done, cfg.checkpoint_every, cfg.steps):
            save_resume(run, done)
        bar.update(1)
    bar.close()
    return last_loss, last_val, tok_s


def train_step(run: Run, step: int) -> tuple[float, float]:
    """One optimizer step on global batch `step`; returns (loss averaged over ranks, lr used)."""
    base, cfg = run.base, run.cfg
    torch.manual_seed(derive_seed(base.seed, step, _DROPOUT_STREAM, run.info.rank))
    batch = run.train_crops.batch(base.seed, step, cfg.batch_size).rows(*run.rows)
    gen = torch.Generator(device=run.device).manual_seed(
        derive_seed(base.seed, step, _NOISE_STREAM, run.info.rank))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.use_bf16):
        loss = _loss(run, run.net, batch, gen)
    mean_loss = float(all_mean(loss.detach().float(), run.info))
    lr = run.optimizer.param_groups[0]["lr"]
    if not math.isfinite(mean_loss):
        raise SmdimError(
            f"training diverged at step {step + 1}: loss is {mean_loss}; lower train.lr "
            f"(now {lr:g}) or raise train.warmup_steps / train.grad_clip"
        )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip))
        if not math.isfinite(norm):
            raise SmdimError(
                f"training diverged at step {step + 1}: gradient norm is {norm}; lower "
                f"train.lr (now {lr:g}) or raise train.warmup_steps"
            )
    run.optimizer.step()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model)
    return mean_loss, lr


def validate(run: Run) -> float:
    """Mean loss over the fixed validation batches, with the weights that get saved."""
    run.model.eval()
    total = torch.zeros((), dtype=torch.float64)
    with _saved_weights(run) as model, torch.no_grad():
        for i, batch in enumerate(run.valid):
            gen = torch.Generator(device=run.device).manual_seed(
                derive_seed(run.base.seed, i, _VALID_NOISE_STREAM, run.info.rank))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.use_bf16):
                total += _loss(run, model, batch, gen, training=False).double().cpu()
    run.model.train()
    return float(all_mean(total / len(run.valid), run.info))


def save_resume(run: Run, step: int) -> None:
    """Write models/checkpoints/last.pt (rank 0): everything needed to continue after `step`."""
    if not run.info.is_main:
        return
    save_state(run.paths.last, {
        "step": step,
        "fingerprint": run.fingerprint,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "rng": rng_state(),
        "log_acc": run.log_acc,
        "dvclive_step": step,
    })


def save_final(run: Run) -> None:
    """Write models/model.pt (rank 0): the weights to sample from, with what rebuilds them."""
    if not run.info.is_main:
        return
    steps, paths = run.cfg.steps, run.paths
    if run.start == steps:
        log.info("training already finished at step %d; rewriting the missing %s", steps, paths.model)
    with _saved_weights(run) as model:
        save_checkpoint(paths.model, model, **_extras(run, steps))
        nll = validation_likelihood(
            model, load_pieces(paths.tokens, "valid"), seq_len=run.cfg.seq_len,
            notes_per_id=run.vocab.notes_per_id, mask_id=run.vocab.ids["MASK_None"],
            bos_id=run.vocab.ids.get("BOS_None"), pad_id=run.vocab.ids["PAD_None"], schedule=run.schedule,
            draws=run.cfg.nll_draws, batch_size=run.cfg.batch_size, excluded=_slack_ids(run),
            seed=derive_seed(run.base.seed, steps, _VALID_NOISE_STREAM))
    log.info("validation NLL %.3f bits per note (%s, %d notes)", nll.bits_per_note,
             "exact" if nll.exact else "ELBO bound", nll.notes)
    if nll.left_to_right_bits_per_note is not None:
        log.info("validation NLL %.3f bits per note (exact, blocks drawn left to right)",
                 nll.left_to_right_bits_per_note)
    if run.live is not None:
        run.live.summary.update(val_bits_per_note=nll.bits_per_note, val_bits_per_token=nll.bits_per_token)
        if nll.left_to_right_bits_per_note is not None:
            run.live.summary["val_bits_per_note_left_to_right"] = nll.left_to_right_bits_per_note
        run.live.make_summary()
        run.live.end()
    log.info("wrote %s (%s weights, step %d)", paths.model, "ema" if run.ema else "raw", steps)


def _extras(run: Run, step: int) -> dict[str, Any]:
    """What model.pt carries besides the model: tokenizer, diffusion config, provenance."""
    return {
        "mask_id": run.vocab.ids["MASK_None"], "pad_id": run.vocab.ids["PAD_None"],
        "bos_id": run.vocab.ids.get("BOS_None"),
        "diffusion": to_dict(run.diffusion_cfg), "step": step, "tokenizer": run.vocab.text,
        "train": to_dict(run.cfg), "seed": run.base.seed,
        "weights": "ema" if run.ema is not None else "raw",
        # index i + 1 of the model's collection vectors (0 = none); empty when unconditioned
        "collections": list(run.collections),
        # each collection's share of the train pieces: `sample.collection: prior` draws from it
        "collection_shares": collection_shares(run.train_crops.labels, len(run.collections)),
        # tonic shares of the train pieces (all, then per collection): `sample.key: prior`
        "key_shares": key_shares(run.train_crops, run.vocab.pitch_classes, len(run.collections)),
    }


def _saved_weights(run: Run) -> contextlib.AbstractContextManager:
    """The model with the weights that get saved: the EMA's when on, else the raw ones."""
    return run.ema.applied(run.model) if run.ema is not None else contextlib.nullcontext(run.model)


def _loss(run: Run, net: torch.nn.Module, batch: Batch, gen: torch.Generator,
          training: bool = True) -> torch.Tensor:
    """The objective's loss in nats per real token (diffusion: an upper bound; autoregressive: exact)."""
    x0 = batch.tokens.to(run.device, non_blocking=True)  # (b, L)
    pad_mask = batch.pad_mask.to(run.device, non_blocking=True)  # (b, L)
    if run.model.cfg.collection_cond:
        collection = batch.collection.to(run.device)  # (b,)
        if training and run.cfg.collection_dropout > 0:  # these windows learn the "none" vector
            drop = torch.rand(collection.shape, generator=gen, device=gen.device) < run.cfg.collection_dropout
            collection = collection.masked_fill(drop.to(run.device), 0)
        net = WithCollection(net, collection)
    # Validation windows hold no slack: score them by the model's odds among the other tokens.
    excluded = () if training else _slack_ids(run)
    return objective_loss(net, run.model.cfg.causal, x0, pad_mask, mask_id=run.vocab.ids["MASK_None"],
                          bos_id=run.vocab.ids.get("BOS_None"),
                          schedule=run.schedule if training else run.schedule.for_validation(), generator=gen,
                          excluded=excluded, block_share=run.diffusion_cfg.block_share if training else 0.0,
                          self_cond_share=self_cond_share(run.model.cfg, training),
                          block_diffusion=run.model.cfg.block_diffusion)


def _slack_ids(run: Run) -> tuple[int, ...]:
    return (run.train_crops.slack_id,) if run.train_crops.slack_id is not None else ()


def _due(done: int, every: int, last: int) -> bool:
    """True on every `every`-th step and on the last one."""
    return done % every == 0 or done == last
