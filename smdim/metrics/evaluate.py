"""The evaluation: OA of generated pieces vs ground truth, the train-vs-test ceiling, OA vs length."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import symusic
from tqdm import tqdm

from smdim.errors import SmdimError
from smdim.io import read_json
from smdim.metrics.config import EvaluateConfig
from smdim.metrics.features import ATTRIBUTES, EMPTY, SINGLE_ONSET, UNREADABLE, NoFeatures
from smdim.metrics.memorisation import melody_ngrams, memorisation
from smdim.metrics.oa import Support, set_oa
from smdim.metrics.pieces import FeatureSet, Piece, extract_features, load_piece, midi_files
from smdim.metrics.reference import crop_scores, select_pieces

log = logging.getLogger(__name__)
Decode = Callable[[list[int]], symusic.Score]


def _skips(fs: FeatureSet) -> dict[str, int]:
    # Every reason always present, so `dvc metrics diff` compares like with like.
    return {r: int(fs.skipped.get(r, 0)) for r in (EMPTY, SINGLE_ONSET, UNREADABLE)}


def evaluate(
    generated: Sequence[Piece],
    reference: Sequence[Piece],
    *,
    attributes: Sequence[str] = tuple(ATTRIBUTES),
    resolution: int = 10,
    support: Support = "kde",
    what: str = "generated",
) -> dict:
    """OA per attribute (+ "average") of `generated` vs `reference` (Scores or MIDI paths), with counts."""
    gen = extract_features(generated, what)
    ref = extract_features(reference, "reference")
    if ref.n < 2:
        raise SmdimError(
            f"only {ref.n} usable reference piece(s) ({dict(ref.skipped) or 'none given'}); "
            "OA needs at least 2: check the test split of data/tokens or raise evaluate.max_reference"
        )
    if gen.n < 1:
        # An untrained or broken model can emit no notes at all. Nothing of it overlaps real music,
        # so it scores 0 (not an error: an ablation that collapses must still show in metrics diff).
        log.warning("no usable %s piece among %d (%s): OA = 0", what, len(generated), dict(gen.skipped) or "none given")
        return {
            "oa": {**{a: 0.0 for a in attributes}, "average": 0.0},
            "n_generated": 0,
            "n_reference": ref.n,
            "skipped": {"generated": _skips(gen), "reference": _skips(ref)},
            "feature_means": {"generated": {}, "reference": ref.summary()},
        }
    oa = set_oa(
        {a: gen.features[a] for a in attributes},
        {a: ref.features[a] for a in attributes},
        resolution=resolution,
        support=support,
    )
    return {
        "oa": oa,
        "n_generated": gen.n,
        "n_reference": ref.n,
        "skipped": {"generated": _skips(gen), "reference": _skips(ref)},
        "feature_means": {"generated": gen.summary(), "reference": ref.summary()},
    }


def _readable(files: Sequence[Path]) -> list[symusic.Score]:
    out = []
    for f in files:
        try:
            out.append(load_piece(f))
        except NoFeatures:  # unreadable files are already counted in "skipped"
            continue
    return out


def resolve_crop(crop_tokens: int | str | None, samples_dir: str | Path) -> int | None:
    """evaluate.crop_tokens -> a token count or None; "auto" = median n_tokens in samples.json."""
    if crop_tokens != "auto":
        return crop_tokens  # type: ignore[return-value]
    path = Path(samples_dir) / "samples.json"
    data = read_json(path)
    rows = data.get("pieces", data) if isinstance(data, dict) else data
    try:
        lengths = [int(r["n_tokens"]) for r in rows if isinstance(r, dict)]
    except (KeyError, TypeError, ValueError):
        lengths = []
    if not lengths:
        raise SmdimError(
            f"{path}: no per-piece n_tokens to set evaluate.crop_tokens=auto; "
            "set evaluate.crop_tokens to a token count (or null for whole pieces)"
        )
    return int(statistics.median(lengths))


def length_dirs(samples_dir: str | Path) -> dict[int, Path]:
    """results/samples/by_length/<L>/ directories, keyed by the integer L, ascending."""
    root = Path(samples_dir) / "by_length"
    if not root.is_dir():
        return {}
    dirs = {int(p.name): p for p in root.iterdir() if p.is_dir() and p.name.isdigit()}
    return dict(sorted(dirs.items()))


def evaluate_run(
    cfg: EvaluateConfig,
    *,
    seed: int,
    samples_dir: str | Path,
    test: pd.DataFrame,
    train: pd.DataFrame,
    decode: Decode,
    bar_id: int | None,
) -> dict:
    """The whole stage result: main OA, train-vs-test ceiling, OA vs generated length.

    `test`/`train` are token shards (columns dataset, piece_id, tokens); `decode` turns token ids
    into a Score with the same tokenizer the generated pieces came from.
    """
    samples_dir = Path(samples_dir)
    pieces_dir = samples_dir / "pieces"
    if not pieces_dir.is_dir():
        raise SmdimError(f"{pieces_dir}: not found; run the sample stage first (dvc repro sample)")
    generated = midi_files(pieces_dir)
    if not generated:
        raise SmdimError(f"{pieces_dir}: no .mid files; run the sample stage first (dvc repro sample)")
    if len(test) < 2:
        raise SmdimError(
            f"the test split of data/tokens has {len(test)} piece(s); OA needs at least 2: "
            "use a larger corpus or change the tokenize split parameters"
        )
    if len(train) < 1:
        raise SmdimError("the train split of data/tokens is empty; the ceiling row needs train pieces")

    ref_rows = select_pieces(test, cfg.max_reference, seed)
    ceil_rows = select_pieces(train, len(ref_rows), seed)
    ref_tokens = [list(t) for t in ref_rows["tokens"]]
    ceil_tokens = [list(t) for t in ceil_rows["tokens"]]
    crop = resolve_crop(cfg.crop_tokens, samples_dir)
    kw = {"attributes": cfg.attributes, "resolution": cfg.resolution, "support": cfg.support}

    def crops(tokens: list[list[int]], length: int | None, split_seed: int) -> list[symusic.Score]:
        return crop_scores(tokens, length, decode, split_seed, bar_id=bar_id, start=cfg.crop_start)

    lengths = length_dirs(samples_dir)
    log.info("OA: %d generated pieces vs %d test pieces (crop %s tokens); lengths %s",
             len(generated), len(ref_rows), crop, list(lengths) or "none")
    progress = tqdm(total=2 + 2 * len(lengths), desc="evaluate", unit="set")
    ref_main = crops(ref_tokens, crop, seed)
    main = evaluate(generated, ref_main, **kw)
    progress.update()
    ceiling = evaluate(crops(ceil_tokens, crop, seed + 1), ref_main, what="train", **kw)
    progress.update()

    vs_length: dict[str, float] = {}
    ceiling_vs_length: dict[str, float] = {}
    skipped_by_length: dict[str, dict[str, int]] = {}
    for length, directory in lengths.items():
        files = midi_files(directory)
        if not files:
            log.warning("%s: no .mid files, left out of OA vs length", directory)
            progress.update(2)
            continue
        ref_l = crops(ref_tokens, length, seed)
        r = evaluate(files, ref_l, what=f"length {length}", **kw)
        progress.update()
        c = evaluate(crops(ceil_tokens, length, seed + 1), ref_l, what="train", **kw)
        progress.update()
        vs_length[str(length)] = r["oa"]["average"]
        ceiling_vs_length[str(length)] = c["oa"]["average"]
        skipped_by_length[str(length)] = r["skipped"]["generated"]
    progress.close()

    memo = None
    if cfg.memorisation:
        # Whole training songs: a generated piece copying any part of one must be found.
        train_grams = [melody_ngrams(decode(list(t))) for t in tqdm(train["tokens"], desc="melodies", leave=False)]
        gen_grams = [melody_ngrams(s) for s in _readable(generated)]
        test_grams = [melody_ngrams(s) for s in ref_main]
        try:
            g, t = memorisation(gen_grams, train_grams), memorisation(test_grams, train_grams)
            memo = {"generated": g["rate"], "test": t["rate"],
                    "generated_max_similarity": g["max_similarity"], "test_max_similarity": t["max_similarity"]}
        except ValueError as e:  # a tiny corpus: report the rest, say why this one is missing
            log.warning("memorisation left out: %s", e)

    out = {
        "oa": main["oa"],
        "oa_ceiling": ceiling["oa"],
        "oa_vs_length": vs_length,
        "oa_ceiling_vs_length": ceiling_vs_length,
        "n_generated": main["n_generated"],
        "n_reference": main["n_reference"],
        "n_ceiling": ceiling["n_generated"],
        # Totals here (dvc metrics stay readable); reasons in skipped_by_reason, for the report.
        "skipped": {
            "generated": sum(main["skipped"]["generated"].values()),
            "reference": sum(main["skipped"]["reference"].values()),
            "ceiling": sum(ceiling["skipped"]["generated"].values()),
            "by_length": {k: sum(v.values()) for k, v in skipped_by_length.items()},
        },
        "skipped_by_reason": {
            "generated": main["skipped"]["generated"],
            "reference": main["skipped"]["reference"],
            "ceiling": ceiling["skipped"]["generated"],
        },
        "feature_means": {
            "generated": main["feature_means"]["generated"],
            "test": main["feature_means"]["reference"],
            "train": ceiling["feature_means"]["generated"],
        },
    }
    if crop is not None:
        out["crop_tokens"] = crop
    if memo is not None:
        out["memorisation"] = memo
    return out
