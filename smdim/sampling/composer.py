"""A checkpoint ready to make music: model + tokenizer + diffusion schedule, and piece helpers.

A diffusion checkpoint samples with smdim.sampling.samplers, an autoregressive one streams with
smdim.sampling.streaming; `Composer.generate` takes the same arguments for both.

Shared by the `sample` stage and the `smdim` CLI. The samplers themselves (samplers.py) know
nothing of checkpoints or tokenizers; this module is the glue.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from smdim.config import build_partial, build_saved
from smdim.diffusion.config import ABSENT_MEANS as DIFFUSION_ABSENT
from smdim.diffusion.config import DiffusionConfig
from smdim.diffusion.schedule import Schedule, make_schedule
from smdim.errors import SmdimError
from smdim.model.checkpoint import load_checkpoint
from smdim.model.collection import WithCollection
from smdim.sampling.config import SampleConfig
from smdim.sampling.constraints import Constraints, make_constraints
from smdim.sampling.samplers import sample_with_stats
from smdim.sampling.streaming import generate_autoregressive
from smdim.tokenization.bpe import bar_start_ids, base_tokens, is_bpe
from smdim.tokenization.keys import Transposer, parse_tonic, pitch_class_counts
from smdim.tokenization.tokenizer import tokenizer_from_text

log = logging.getLogger("smdim.sampling")

# Sampler options that autoregressive generation takes; the others are the diffusion samplers'.
STREAMING_OPTIONS = ("temperature", "top_k", "top_p", "constraints")
PRIOR = "prior"  # sample.collection: one collection per piece, in the train split's shares


@dataclass
class Piece:
    """One generated token sequence with its cost."""

    ids: list[int]
    seconds: float  # wall time of its batch divided by the batch size
    network_calls: int  # denoiser calls of its batch
    n_slack: int = 0  # slots the sampler left empty (SLACK, removed from ids)


@dataclass
class Composer:
    """Everything needed to sample and decode: built from a checkpoint by load_composer."""

    model: torch.nn.Module
    tokenizer: object  # miditok.REMI
    mask_id: int
    schedule: Schedule
    device: torch.device
    step: int | None = None  # training step of the checkpoint
    bos_id: int | None = None  # autoregressive models: the token every generation starts from
    collections: tuple[str, ...] = ()  # model.collection_cond: the names of indices 1..K
    collection_shares: tuple[float, ...] = ()  # each collection's share of the train pieces
    sample_defaults: dict = dataclasses.field(default_factory=dict)  # sampler settings the checkpoint recommends
    slack_id: int | None = None  # trained with diffusion.slack: the SLACK token, removed from every piece
    key_shares: tuple[tuple[float, ...], ...] = ()  # tonic shares of the train pieces: all, then per collection

    def collection_index(self, collection: str | None) -> int:
        """The model's index of `collection`: 1..K, or 0 ("none") for None; a one-line error for a
        name the model does not know."""
        if collection is None:
            return 0
        if not self.collections:
            raise SmdimError(f"collection {collection!r}: this model was trained without model.collection_cond; "
                             "retrain with -S model.collection_cond=true")
        if collection not in self.collections:
            raise SmdimError(f"collection {collection!r}: not one of this model's ({', '.join(self.collections)})")
        return self.collections.index(collection) + 1

    def collection_model(self, collection: str | None) -> torch.nn.Module:
        """The model asked for pieces of `collection` (None: unconditional)."""
        index = self.collection_index(collection)
        return WithCollection(self.model, index) if index else self.model

    def collections_for(self, collection: str | None, n: int, seed: int) -> list[str | None]:
        """One collection per piece for `n` pieces: None (unconditional), a name (all of them), or
        "prior": the train split's mix, drawn by systematic sampling, so each collection's count is
        its share of n up to less than one piece (150 pieces hold the corpus's mix, not up to draw
        noise, and one piece is a fair draw), in a seeded order. For an unconditioned model "prior"
        is unconditional sampling (its own learned mix)."""
        if collection != PRIOR:
            self.collection_index(collection)  # the one-line error for an unknown name
            return [collection] * n
        if not self.collections:  # an unconditioned model samples its learned mix by itself
            return [None] * n
        if len(self.collection_shares) != len(self.collections):
            raise SmdimError("collection 'prior': the checkpoint has no collection shares (trained before "
                             "they were saved); retrain it, or name one collection")
        # Systematic sampling: n evenly spaced points, one random offset, on the cumulative shares.
        g = torch.Generator().manual_seed(seed)
        cum = torch.tensor(self.collection_shares, dtype=torch.float64).cumsum(0)
        points = (torch.rand((), generator=g, dtype=torch.float64) + torch.arange(n)) / n * cum[-1]
        index = torch.searchsorted(cum, points, right=True).clamp(max=len(cum) - 1)
        return [self.collections[int(i)] for i in index[torch.randperm(n, generator=g)]]

    @functools.cached_property
    def pitch_classes(self) -> np.ndarray:
        """(V, 12) pitches of each class every id holds (smdim.tokenization.keys)."""
        return pitch_class_counts(base_tokens(self.tokenizer))

    def tonics_for(self, key: str | None, collections: Sequence[str | None], seed: int) -> list[int] | None:
        """The tonic each piece is moved to: None (keep the sampled keys), one tonic for all ('D'),
        or "prior": one per piece drawn from the train pieces' tonic shares of its collection."""
        if key is None:
            return None
        if is_bpe(self.tokenizer):
            if key == PRIOR:
                log.warning("sample.key prior: a BPE tokenizer's ids cannot be transposed one by one; "
                            "pieces keep the keys they were sampled in")
                return None
            raise SmdimError(f"key {key!r} needs a plain REMI tokenizer (this model uses BPE); set key to null")
        if key != PRIOR:
            return [parse_tonic(key)] * len(collections)
        if not self.key_shares:
            log.warning("sample.key prior: the checkpoint has no key shares (trained before they were saved); "
                        "pieces keep the keys they were sampled in")
            return None
        rng = np.random.default_rng(seed)
        tonics = []
        for c in collections:
            shares = np.asarray(self.key_shares[self.collection_index(c)], dtype=np.float64)
            tonics.append(int(rng.choice(12, p=shares / shares.sum())))
        return tonics

    def collection_indices(self, collections: Sequence[str | None]) -> torch.Tensor | None:
        """(B,) the model's collection index per row (0 = "none"); None when every row is unconditional."""
        if all(c is None for c in collections):
            return None
        return torch.tensor([self.collection_index(c) for c in collections], device=self.device)

    @property
    def causal(self) -> bool:
        """True for an autoregressive model (streaming generation), False for a denoiser."""
        return bool(self.model.cfg.causal)

    @functools.cached_property
    def bar_ids(self) -> frozenset[int]:
        """Ids that start a bar: the Bar token, and with BPE every merged token that begins with it
        (a BPE token never holds a Bar elsewhere, so counting these ids counts bars). Built once:
        the sample stage asks for it twice per piece, and it walks the whole vocabulary."""
        return bar_start_ids(self.tokenizer)

    @staticmethod
    def _seed_from(generator: torch.Generator) -> int:
        """A seed drawn from the sampling generator, on its own device (a CUDA generator cannot
        draw a CPU tensor), so one `--seed` fixes the collection mix and the keys as well."""
        return int(torch.randint(2**31, (), generator=generator, device=generator.device))

    def generate(
        self,
        n: int,
        length: int,
        *,
        generator: torch.Generator,
        batch_size: int = 4,
        fixed: torch.Tensor | None = None,
        progress: bool = False,
        collection: str | Sequence[str | None] | None = None,
        key: str | None = None,
        **sampler_kw,
    ) -> list[Piece]:
        """`n` pieces of `length` tokens, in batches; `fixed` (L,) applies to every piece;
        `collection`: one of self.collections (conditioned models), "prior" (collections_for) or one
        per piece; None = unconditional. `key` (tonics_for): each finished piece is transposed to
        it; not with `fixed` tokens, whose key is the user's."""
        if collection == PRIOR:  # the mix's seed comes from the generator, so one seed fixes everything
            collection = self.collections_for(PRIOR, n, self._seed_from(generator))
        per_piece = [collection] * n if collection is None or isinstance(collection, str) else list(collection)
        if len(per_piece) != n:
            raise SmdimError(f"{len(per_piece)} collections for {n} pieces")
        tonics = None
        if key is not None and fixed is None:
            tonics = self.tonics_for(key, per_piece, self._seed_from(generator))
        pieces: list[Piece] = []
        while len(pieces) < n:
            b = min(batch_size, n - len(pieces))
            index = self.collection_indices(per_piece[len(pieces) : len(pieces) + b])
            t0 = time.perf_counter()
            if self.causal:  # the diffusion-only options (method, steps, ...) do not apply
                kw = {k: v for k, v in sampler_kw.items() if k in STREAMING_OPTIONS}
                x, stats = generate_autoregressive(
                    self.model, length, bos_id=self.bos_id, mask_id=self.mask_id, batch_size=b,
                    generator=generator, fixed=fixed, progress=progress, collection=index, **kw,
                )
            else:
                model = self.model if index is None else WithCollection(self.model, index)
                kw = block_diffusion_settings(sampler_kw, self.model.cfg.block_diffusion)
                x, stats = sample_with_stats(
                    model, length, mask_id=self.mask_id, batch_size=b, generator=generator,
                    fixed=fixed, schedule=self.schedule, progress=progress, **kw,
                )
            seconds = (time.perf_counter() - t0) / b
            for row in x.cpu().tolist():
                ids = [i for i in row if i != self.slack_id]
                if tonics is not None:
                    ids, _ = self.transposer.shift_to(ids, self.pitch_classes, tonics[len(pieces)])
                pieces.append(Piece(ids, seconds, stats["network_calls"], len(row) - len(ids)))
        return pieces

    @functools.cached_property
    def transposer(self) -> Transposer:
        return Transposer(dict(self.tokenizer.vocab))


def block_diffusion_settings(sampler_kw: dict, block: int) -> dict:
    """A block-diffusion model's sampler (model.block_diffusion = block > 0): the confidence order
    within each block, the blocks left to right, and no corrector, whose redraws would leave MASK in
    blocks that later ones read as clean. Other settings pass through; block 0 changes nothing."""
    if not block:
        return sampler_kw
    method = sampler_kw.get("method", "ancestral")
    if method != "confidence":
        raise SmdimError(f"sample.method={method}: a block-diffusion model (model.block_diffusion: {block}) "
                         "samples with sample.method: confidence")
    return {**sampler_kw, "block_tokens": block, "correct_rounds": 0}


def load_composer(path: str, device: str = "cpu") -> Composer:
    """Load a training checkpoint (with `mask_id`, `tokenizer`, `diffusion` extras) onto `device`."""
    model, extra = load_checkpoint(path, map_location=device)
    if not extra.get("tokenizer"):
        raise SmdimError(f"{path}: checkpoint has no `tokenizer` extra; it was not written by the train stage")
    tokenizer = tokenizer_from_text(extra["tokenizer"])
    mask_id = int(extra.get("mask_id", tokenizer.vocab.get("MASK_None", -1)))
    if mask_id < 0:
        raise SmdimError(f"{path}: no mask_id in the checkpoint and no MASK_None token in its tokenizer")
    vocab = getattr(getattr(model, "cfg", None), "vocab_size", len(tokenizer))
    if vocab != len(tokenizer):
        raise SmdimError(f"{path}: model vocabulary {vocab} != tokenizer size {len(tokenizer)}; retrain")
    if "diffusion" not in extra:
        log.warning("%s: no diffusion config in the checkpoint; assuming the linear schedule", path)
    diffusion = build_saved(DiffusionConfig, extra.get("diffusion"), DIFFUSION_ABSENT, f"{path}:diffusion")
    collections = tuple(extra.get("collections") or ())
    key_shares = _key_shares(path, extra.get("key_shares"), 1 + len(collections))
    step = extra.get("step")
    bos_id = extra.get("bos_id", tokenizer.vocab.get("BOS_None"))
    if model.cfg.causal and bos_id is None:
        raise SmdimError(f"{path}: an autoregressive model without a BOS token; retrain with BOS in "
                         "tokenize.special_tokens")
    return Composer(model.eval(), tokenizer, mask_id, make_schedule(diffusion), torch.device(device),
                    int(step) if step is not None else None, bos_id, collections,
                    _collection_shares(path, extra.get("collection_shares"), len(collections)),
                    # Checked here, so a hand-edited value fails at load naming the file and field.
                    build_partial(SampleConfig, extra.get("sample_defaults"), f"{path}:sample_defaults"),
                    tokenizer.vocab.get("SLACK_None") if diffusion.uses_slack(model.cfg.causal) else None,
                    key_shares)


def _key_shares(path: str, rows, n_rows: int) -> tuple[tuple[float, ...], ...]:
    """The checkpoint's tonic shares (all pieces, then one row per collection)."""
    want = f"{n_rows} row" + ("s" if n_rows != 1 else "")
    table = _shares(path, "key_shares", rows, (n_rows, 12), f"{want} of 12 non-negative tonic shares, each summing")
    return tuple(tuple(float(x) for x in row) for row in table)


def _collection_shares(path: str, values, n_collections: int) -> tuple[float, ...]:
    """Each collection's share of the train pieces (`sample.collection: prior`)."""
    return tuple(float(x) for x in _shares(path, "collection_shares", values, (n_collections,),
                                           f"{n_collections} non-negative shares, one per collection, summing"))


def _shares(path: str, name: str, values, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A table of shares from the checkpoint, checked here so a hand-edited or damaged checkpoint
    fails at load with one line, not mid-sampling; absent (older checkpoints) = empty."""
    if values is None or (hasattr(values, "__len__") and len(values) == 0):
        return np.empty((0,) * len(shape))
    try:
        table = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        table = np.empty(0)
    if table.shape != shape or not np.isfinite(table).all() or (table < 0).any() or (table.sum(-1) <= 0).any():
        raise SmdimError(f"{path}: {name} must be {what} above 0; re-export the checkpoint or retrain")
    return table


def keep_bars(ids: Sequence[int], bar_ids: set[int], bars: int) -> list[int]:
    """The tokens of the first `bars` bars (everything before the (bars + 1)-th Bar token)."""
    seen = 0
    for i, tok in enumerate(ids):
        if tok in bar_ids:
            seen += 1
            if seen == bars + 1:
                return list(ids[:i])
    return list(ids)


def count_bars(ids: Sequence[int], bar_ids: set[int]) -> int:
    """Number of Bar tokens."""
    return sum(1 for tok in ids if tok in bar_ids)


def constraints_for(composer: Composer, pitch_range, max_polyphony, ban_prefixes=(), scale=None,
                    grammar: bool = True, scale_notes: int = 8) -> Constraints:
    """Sampling constraints on the composer's vocabulary (special tokens always banned)."""
    return make_constraints(
        composer.tokenizer, pitch_range=pitch_range, max_polyphony=max_polyphony, ban_prefixes=ban_prefixes,
        scale=scale, grammar=grammar, slack_id=composer.slack_id, scale_notes=scale_notes,
    )
