"""The `sample` section of params.yaml: what the sample stage generates and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from smdim.errors import SmdimError
from smdim.sampling.scales import AUTO, pitch_classes
from smdim.tokenization.keys import parse_tonic

SamplerMethod = Literal["ancestral", "cached", "confidence", "remdm"]  # see smdim/sampling/samplers.py
UnmaskSchedule = Literal["cosine", "linear"]
# how the confidence sampler ranks masked slots (left_to_right: by position, a fixed order)
ConfidenceScore = Literal["logprob", "margin", "entropy", "left_to_right"]
RemaskStrategy = Literal["cap", "rescale", "conf"]  # ReMDM's sigma_t, see smdim/sampling/remdm.py
METHODS: tuple[str, ...] = get_args(SamplerMethod)
UNMASK_SCHEDULES: tuple[str, ...] = get_args(UnmaskSchedule)
CONFIDENCE_SCORES: tuple[str, ...] = get_args(ConfidenceScore)
REMASK_STRATEGIES: tuple[str, ...] = get_args(RemaskStrategy)


@dataclass(frozen=True)
class SampleConfig:
    checkpoint: str = "models/model.pt"  # trained denoiser (its extras hold tokenizer + diffusion config)
    out_dir: str = "results/samples"  # pieces/, by_length/<L>/, contact_sheet.png, samples.json, metrics.json
    n: int = 150  # pieces in the main set (pieces/NNN.mid + .png); 150: OA average 95% CI ~ +-0.016
    n_tokens: int = 256  # token slots per main-set piece (slack ones are removed)
    bars: int | None = None  # then keep only the first `bars` bars of each piece (null = keep all)
    method: SamplerMethod = "confidence"  # reverse process, see smdim/sampling
    steps: int = 32  # denoising steps S per piece (any S >= 1; the training T is the upper useful limit)
    temperature: float = 0.8  # softmax temperature of the token draws (0 = greedy; see docs/sampling_study.md)
    unmask_schedule: UnmaskSchedule = "cosine"  # confidence method: masked share per step
    confidence_noise: float = 0.5  # confidence method: Gumbel noise scale on confidences (annealed to 0)
    confidence: ConfidenceScore = "logprob"  # confidence method: rank slots by the drawn token's log-prob,
    # the top-2 probability margin (Kim et al. 2025), minus the entropy, or left_to_right (leftmost
    # masked slot first; no confidence_noise: with linear unmasking and one token per step, each token
    # is drawn from its conditional given everything on its left, as a block-diffusion model learns)
    block_tokens: int = 0  # confidence method: 0 = rank all slots at once; N = finish N-token blocks
    # left to right, steps // n_blocks steps each (semi-autoregressive, LLaDA)
    remask: RemaskStrategy = "cap"  # remdm method: sigma_t = min(eta, sigma_max) | eta * sigma_max | cap
    # spread over decoded tokens by low confidence
    remask_eta: float = 0.02  # remdm method: eta in [0, 1] (0 = no remasking, the ancestral sampler)
    correct_rounds: int = 8  # Gibbs corrector rounds after the sampler, each redrawing a random
    # correct_share of the generated tokens given the rest (smdim/sampling/corrector.py; 0 = off)
    correct_temperature: float | None = 0.5  # temperature of the corrector's draws (null = `temperature`)
    correct_share: float = 0.1  # share of the generated tokens masked and redrawn per corrector round, in (0, 1]
    top_k: int | None = None  # draw only among the k most probable allowed tokens (null = off)
    top_p: float | None = None  # nucleus: draw only from the smallest set with probability >= top_p (null = off)
    pitch_range: list[int] | None = None  # [lo, hi] MIDI pitches allowed (inclusive); null = any
    max_polyphony: int | None = None  # max notes starting at one REMI position; null = no cap
    scale: str | None = None  # only pitches of this scale, e.g. C:major, D:dorian, C:pentatonic; null = any;
    # auto = each piece keeps to the key its first scale_notes decided pitches fit (smdim/sampling/key.py)
    scale_notes: int = 8  # scale auto: decided pitches before a piece's key is fixed
    key: str | None = "prior"  # transpose each finished piece: prior = to a tonic drawn from the train
    # pieces' keys (of its collection), a tonic (C, F#, Bb) = all to it, null = keep the sampled keys
    grammar: bool = True  # logit masks that follow the REMI grammar (Bar, Position, Pitch, Velocity, Duration)
    batch_size: int = 4  # pieces generated together
    lengths: list[int] = field(default_factory=lambda: [128, 256, 512])  # by_length/<L>/ sets
    n_per_length: int = 4  # pieces per length in by_length/ (0 = skip the OA-vs-length sets)
    collection: str | None = "prior"  # models with model.collection_cond: the main set's collection, null =
    # unconditional, "prior" = one per piece in the train split's shares, or a name (embedded/han1, ...)
    per_collection: int = 0  # models with model.collection_cond: pieces asked for each collection, by_collection/<name>/ (0 = none)
    cost_bars: list[int] = field(default_factory=lambda: [16, 64])  # time + peak memory of one piece of this many bars (batch 1)
    seed_offset: int = 0  # added to base.seed: another set of samples from the same model
    pianorolls: bool = True  # write pieces/NNN.png next to each main-set MIDI

    def __post_init__(self) -> None:
        if self.n < 1 or self.n_tokens < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("n, n_tokens, steps and batch_size must be >= 1")
        if self.bars is not None and self.bars < 1:
            raise ValueError(f"bars must be >= 1 or null, got {self.bars}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.block_tokens < 0:
            raise ValueError(f"block_tokens must be >= 0 (0 = the whole sequence at once), got {self.block_tokens}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or null, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or null, got {self.top_p}")
        if not 0 <= self.remask_eta <= 1:
            raise ValueError(f"remask_eta must be in [0, 1], got {self.remask_eta}")
        if self.correct_temperature is not None and self.correct_temperature < 0:
            raise ValueError(f"correct_temperature must be >= 0 or null, got {self.correct_temperature}")
        if self.correct_rounds < 0 or not 0 < self.correct_share <= 1:
            raise ValueError(f"correct_rounds must be >= 0 and correct_share in (0, 1] (got {self.correct_rounds}, "
                             f"{self.correct_share})")
        if self.pitch_range is not None and (len(self.pitch_range) != 2 or self.pitch_range[0] > self.pitch_range[1]):
            raise ValueError(f"pitch_range must be [lo, hi] with lo <= hi, got {self.pitch_range}")
        if self.scale_notes < 1:
            raise ValueError(f"scale_notes must be >= 1, got {self.scale_notes}")
        if self.scale is not None and self.scale != AUTO:
            try:
                pitch_classes(self.scale)
            except SmdimError as e:
                raise ValueError(str(e)) from None
        if self.key is not None and self.key != "prior":
            try:
                parse_tonic(self.key)
            except SmdimError as e:
                raise ValueError(str(e)) from None
        if self.max_polyphony is not None and self.max_polyphony < 1:
            raise ValueError(f"max_polyphony must be >= 1 or null, got {self.max_polyphony}")
        if any(b < 1 for b in self.cost_bars):
            raise ValueError(f"cost_bars must be >= 1, got {self.cost_bars}")
        if self.per_collection < 0:
            raise ValueError(f"per_collection={self.per_collection} must be >= 0")
        if any(n < 1 for n in self.lengths) or self.n_per_length < 0:
            raise ValueError("lengths must be >= 1 and n_per_length >= 0")
