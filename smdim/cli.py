"""`smdim` command line: generate a piece (or continue a prompt), or infill bars of a MIDI file.

The same flags work for diffusion and autoregressive checkpoints; --method and --steps only
apply to diffusion. An autoregressive model infills from the left context only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smdim.errors import SmdimError, run_stage
from smdim.sampling.config import CONFIDENCE_SCORES, METHODS, REMASK_STRATEGIES, SampleConfig

# The sampling defaults are the `sample` section's (params.yaml equals these dataclass defaults).
DEFAULTS = SampleConfig()


def _bars(text: str) -> tuple[int, int]:
    """'5-8' -> (5, 8); '5' -> (5, 5)."""
    try:
        first, _, last = text.partition("-")
        span = (int(first), int(last or first))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bars like 5-8 or 5, got {text!r}") from None
    if span[0] < 1 or span[1] < span[0]:
        raise argparse.ArgumentTypeError(f"expected 1 <= first <= last, got {text!r}")
    return span


# Sampler flags a checkpoint may recommend values for (its `sample_defaults`, such as the shipped
# model's). They parse to None when not given: the flag wins, then the checkpoint, then DEFAULTS.
SETTINGS = ("method", "steps", "temperature", "confidence", "confidence_noise", "block_tokens", "remask",
            "remask_eta", "correct_rounds", "correct_share", "correct_temperature", "top_k", "top_p", "scale",
            "scale_notes", "key", "grammar", "collection")


def _default(name: str) -> str:
    return f"(default: the checkpoint's recommendation if it has one, else {getattr(DEFAULTS, name)})"


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help=f"trained denoiser (default: {DEFAULTS.checkpoint} if it exists, "
                   "else the shipped pretrained model)")
    p.add_argument("--out", required=True, type=Path, help="output MIDI file")
    p.add_argument("--method", choices=METHODS, help=f"sampler {_default('method')}")
    p.add_argument("--steps", type=int, help=f"denoising steps {_default('steps')}")
    p.add_argument("--temperature", type=float, help=f"softmax temperature, 0 = greedy {_default('temperature')}")
    p.add_argument("--confidence", choices=CONFIDENCE_SCORES,
                   help=f"confidence sampler: how it ranks masked slots {_default('confidence')}")
    p.add_argument("--confidence-noise", type=float, metavar="G",
                   help=f"confidence sampler: Gumbel noise on the unmasking order, annealed to 0 "
                        f"{_default('confidence_noise')}")
    p.add_argument("--block-tokens", type=int, metavar="N",
                   help=f"confidence sampler: finish N-token blocks left to right, 0 = whole piece "
                        f"{_default('block_tokens')}")
    p.add_argument("--remask", choices=REMASK_STRATEGIES, help=f"remdm sampler: remasking strategy {_default('remask')}")
    p.add_argument("--remask-eta", type=float, help=f"remdm sampler: remasking eta in [0, 1] {_default('remask_eta')}")
    p.add_argument("--correct-rounds", type=int, metavar="R",
                   help=f"diffusion: Gibbs corrector rounds after the sampler {_default('correct_rounds')}")
    p.add_argument("--correct-share", type=float, metavar="S",
                   help=f"diffusion: share of the generated tokens redrawn per corrector round {_default('correct_share')}")
    p.add_argument("--correct-temperature", type=float, metavar="T",
                   help=f"diffusion: temperature of the corrector's draws {_default('correct_temperature')}")
    p.add_argument("--top-k", type=int, metavar="K", help=f"draw among the K most probable tokens {_default('top_k')}")
    p.add_argument("--top-p", type=float, metavar="P",
                   help=f"nucleus sampling with mass P; 1 = off {_default('top_p')}")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--pitch-range", type=int, nargs=2, metavar=("LO", "HI"), help="allowed MIDI pitches")
    p.add_argument("--max-polyphony", type=int, metavar="K", help="max notes starting together")
    p.add_argument("--scale", metavar="TONIC:MODE",
                   help="only pitches of this scale, e.g. C:major, D:dorian, C:pentatonic (Chinese gong); "
                        "'auto': each piece keeps to the key of its first decided pitches; 'none': any "
                        f"{_default('scale')}")
    p.add_argument("--scale-notes", type=int, metavar="N",
                   help=f"--scale auto: decided pitches before a piece's key is fixed {_default('scale_notes')}")
    p.add_argument("--key", metavar="TONIC",
                   help="transpose the piece to this tonic (C, F#, Bb); 'prior': a tonic drawn from the train "
                        f"pieces' keys; 'none': keep the sampled key; not with a prompt {_default('key')}")
    p.add_argument("--no-grammar", dest="grammar", action="store_const", const=False,
                   help="do not mask tokens that break the REMI grammar")
    p.add_argument("--collection", metavar="NAME",
                   help="models trained with model.collection_cond: pieces of this collection, e.g. "
                        "embedded/chorales, embedded/han1; 'prior' draws one in the train split's shares, "
                        f"'none' asks for none {_default('collection')}")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default: %(default)s)")
    p.add_argument("--png", action="store_true", help="also write a piano roll next to --out")
    p.add_argument("--audio", type=Path, metavar="FILE",
                   help="also render audio to FILE (.wav, .ogg or .flac): FluidSynth if installed, else numpy")


def parser() -> argparse.ArgumentParser:
    """The argument parser of `smdim`."""
    ap = argparse.ArgumentParser(prog="smdim", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a new piece")
    _sampling_args(g)
    g.add_argument("--tokens", type=int, default=DEFAULTS.n_tokens, help="tokens to generate (default: %(default)s)")
    g.add_argument("--bars", type=int, help="keep the first BARS bars of the generated tokens")
    g.add_argument("--prompt", type=Path, metavar="MIDI", help="continue this MIDI file (its first --prompt-bars bars)")
    g.add_argument("--prompt-bars", type=int, default=4, metavar="K",
                   help="bars of --prompt kept as the fixed opening (default: %(default)s)")
    i = sub.add_parser("infill", help="regenerate bars of an existing MIDI file, keeping the rest")
    _sampling_args(i)
    i.add_argument("--midi", required=True, type=Path, help="input MIDI file")
    i.add_argument("--bars", required=True, type=_bars, help="bars to regenerate, 1-based inclusive: 5-8")
    i.add_argument("--context", type=int, default=1024,
                   help="max tokens around the span fed to the model (default: %(default)s)")
    return ap


def generate(args: argparse.Namespace) -> None:
    """`smdim generate`: sample --tokens tokens, keep --bars bars, write MIDI (and PNG)."""
    import torch

    from smdim.sampling.composer import count_bars, keep_bars, load_composer

    if args.tokens < 1 or (args.bars is not None and args.bars < 1):
        raise SmdimError("--tokens and --bars must be >= 1")
    c = load_composer(_checkpoint(args), _device(args.device))
    fixed = _prompt_fixed(c, args) if args.prompt else None
    g = torch.Generator(device=c.device).manual_seed(args.seed)
    [piece] = c.generate(1, args.tokens, generator=g, fixed=fixed, **_sampler_kw(args, c))
    ids = piece.ids
    if args.bars:
        ids = keep_bars(ids, c.bar_ids, args.bars)
        if count_bars(ids, c.bar_ids) < args.bars:
            print(f"warning: only {count_bars(ids, c.bar_ids)} bars in {args.tokens} tokens; "
                  "raise --tokens for more", file=sys.stderr)
    _write(c, ids, args)


def _checkpoint(args: argparse.Namespace) -> str:
    """--checkpoint, else models/model.pt once trained, else the pretrained model shipped with smdim."""
    if args.checkpoint:
        return args.checkpoint
    if Path(DEFAULTS.checkpoint).exists():
        return DEFAULTS.checkpoint
    from smdim.pretrained import PRESET, PRETRAINED

    print(f"no {DEFAULTS.checkpoint} yet: using the pretrained model {PRETRAINED.name} ({PRESET}, "
          "embedded corpus); `dvc repro` trains your own", file=sys.stderr)
    return str(PRETRAINED)


def _prompt_fixed(composer, args: argparse.Namespace):
    """The first --prompt-bars bars of --prompt (+ a Bar) as the fixed opening of the --tokens."""
    from smdim.sampling.composer import keep_bars
    from smdim.sampling.conditioning import prefix_fixed

    if args.prompt_bars < 1:
        raise SmdimError("--prompt-bars must be >= 1")
    # The next Bar token closes the last prompt bar: the continuation starts a new bar instead of
    # adding notes to it.
    prefix = keep_bars(_encode(composer, args.prompt), composer.bar_ids, args.prompt_bars)
    prefix.append(composer.tokenizer["Bar_None"])
    if len(prefix) >= args.tokens:
        raise SmdimError(f"{args.prompt}: its first {args.prompt_bars} bars are {len(prefix)} tokens, not "
                         f"fewer than --tokens {args.tokens}; raise --tokens or lower --prompt-bars")
    return prefix_fixed(prefix, args.tokens)[0]


def _encode(composer, path: Path) -> list[int]:
    """Token ids of a MIDI file under the checkpoint's tokenizer (one-line error when unreadable)."""
    from smdim.tokenization.encode import encode_file

    if not path.is_file():
        raise SmdimError(f"{path}: MIDI file not found")
    try:
        return encode_file(composer.tokenizer, path)
    except Exception as e:  # symusic/miditok raise assorted errors on broken files
        raise SmdimError(f"{path}: cannot read MIDI ({type(e).__name__}: {e})") from None


def infill(args: argparse.Namespace) -> None:
    """`smdim infill`: regenerate bars FIRST-LAST of --midi with everything else fixed."""
    import torch

    from smdim.sampling.composer import load_composer
    from smdim.sampling.conditioning import bar_infill_fixed

    if not args.midi.is_file():
        raise SmdimError(f"{args.midi}: MIDI file not found")
    c = load_composer(_checkpoint(args), _device(args.device))
    tokens = _encode(c, args.midi)
    first, last = args.bars
    fixed, (start, end) = bar_infill_fixed(tokens, c.bar_ids, first, last)
    # Feed a window of at most --context tokens around the span (the span itself always fits).
    margin = max(args.context - (end - start), 0)
    lo = max(0, start - margin // 2)
    hi = min(len(tokens), end + (margin - (start - lo)))
    lo = max(0, min(lo, hi - max(args.context, end - start)))
    g = torch.Generator(device=c.device).manual_seed(args.seed)
    kw = _sampler_kw(args, c, ban_prefixes=("Bar_",))  # Bar tokens stay where they are
    [piece] = c.generate(1, hi - lo, generator=g, fixed=fixed[0, lo:hi], **kw)
    _write(c, tokens[:lo] + piece.ids + tokens[hi:], args)


def settings(args: argparse.Namespace, composer) -> dict:
    """Each SETTINGS flag: as given, else the checkpoint's recommendation, else DEFAULTS; 'none' -> None."""
    out = {}
    for name in SETTINGS:
        value = getattr(args, name)
        if value is None:
            value = composer.sample_defaults.get(name, getattr(DEFAULTS, name))
        out[name] = None if value == "none" else value
    return out


def _sampler_kw(args, composer, ban_prefixes=()) -> dict:
    from smdim.sampling.composer import constraints_for

    kw = settings(args, composer)
    if kw["steps"] < 1:
        raise SmdimError("--steps must be >= 1")
    scale, scale_notes, grammar = kw.pop("scale"), kw.pop("scale_notes"), kw.pop("grammar")
    kw["constraints"] = constraints_for(composer, args.pitch_range, args.max_polyphony, ban_prefixes,
                                        scale=scale, grammar=grammar, scale_notes=scale_notes)
    return kw


def _device(name: str) -> str:
    from smdim.runtime import (
        resolve_device,  # lazy like every torch import here: `--help` stays instant
    )

    return resolve_device(name, setting="--device")


def _write(composer, ids: list[int], args: argparse.Namespace) -> None:
    from smdim.render.audio import render_audio
    from smdim.render.pianoroll import save_pianoroll
    from smdim.tokenization.decode import write_midi

    write_midi(composer.tokenizer, ids, args.out)
    if args.png:
        save_pianoroll(args.out, args.out.with_suffix(".png"), title=args.out.name)
    print(f"wrote {args.out} ({len(ids)} tokens)")
    if args.audio:
        audio = render_audio(args.out, args.audio)
        print(f"wrote {args.audio} ({audio.seconds:.1f} s of audio by {audio.renderer})")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `smdim` console script."""
    args = parser().parse_args(argv)
    run_stage(lambda: {"generate": generate, "infill": infill}[args.command](args))


if __name__ == "__main__":
    main()
