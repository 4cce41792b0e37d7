"""The evaluation: OA of generated pieces vs ground truth (with intervals), the train-vs-test
ceiling, OA vs length, muspy metrics, structure (SRS) and memorisation.

Headline rule: headline = average OA over the non-constant attributes x usable rate (the share of
generated files that are readable and hold at least two distinct onsets), so every unusable piece
costs as much as a usable piece that overlaps nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import symusic
from tqdm import tqdm

from smdim.data.collections import collection_of
from smdim.errors import SmdimError
from smdim.metrics.bootstrap import bootstrap_oa
from smdim.metrics.config import EvaluateConfig
from smdim.metrics.features import ATTRIBUTES, EMPTY, SINGLE_ONSET, UNREADABLE
from smdim.metrics.line import LINE_METRICS, piece_line_metrics
from smdim.metrics.memorisation import melody_ngrams, memorisation
from smdim.metrics.muspy_metrics import set_summary
from smdim.metrics.oa import Support, is_constant, set_oa
from smdim.metrics.pieces import FeatureSet, Piece, extract_features
from smdim.metrics.reference import at_least, crop_scores, select_pieces
from smdim.metrics.samples import collection_sets, length_sets, main_pieces, resolve_crop
from smdim.metrics.structure import n_bars, srs
from smdim.metrics.texture import TEXTURE_METRICS, piece_texture_metrics

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
    support: Support = "data",
    bootstrap: int = 0,
    seed: int = 0,
    what: str = "generated",
) -> dict:
    """OA per attribute (+ "average", headline, usable rate, intervals if `bootstrap` > 0) of
    `generated` vs `reference` (Scores or MIDI paths), with counts and the loaded usable Scores."""
    gen = extract_features(generated, what)
    ref = extract_features(reference, "reference")
    if ref.n < 2:
        raise SmdimError(
            f"only {ref.n} usable reference piece(s) ({dict(ref.skipped) or 'none given'}); "
            "OA needs at least 2: check the test split of data/tokens or raise evaluate.max_reference"
        )
    excluded = [a for a in attributes if is_constant(ref.features[a])]
    usable_rate = gen.n / gen.n_given if gen.n_given else 0.0
    if gen.n < 1:
        # An untrained or broken model can emit no notes at all. Nothing of it overlaps real music,
        # so it scores 0 (not an error: an ablation that collapses must still show in metrics diff).
        log.warning("no usable %s piece among %d (%s): OA = 0", what, gen.n_given, dict(gen.skipped) or "none given")
        oa = {**{a: 0.0 for a in attributes}, "average": 0.0}
    else:
        oa = set_oa({a: gen.features[a] for a in attributes}, {a: ref.features[a] for a in attributes},
                    resolution=resolution, support=support)
    out = {
        "oa": oa,
        "headline": oa["average"] * usable_rate,
        "usable_rate": usable_rate,
        "in_average": {a: a not in excluded for a in attributes},
        "n_generated": gen.n,
        "n_reference": ref.n,
        "skipped": {"generated": _skips(gen), "reference": _skips(ref)},
        "feature_means": {"generated": gen.summary(), "reference": ref.summary()},
        "scores": {"generated": gen.scores, "reference": ref.scores},
    }
    if bootstrap and gen.n_given:
        out["ci"] = bootstrap_oa(
            {a: gen.features[a] for a in attributes}, {a: ref.features[a] for a in attributes},
            gen.n_given - gen.n, excluded=excluded, resamples=bootstrap, seed=seed,
            resolution=resolution, support=support,
        )
    return out


def _structure(generated: Sequence[symusic.Score], test: Sequence[symusic.Score], cfg: EvaluateConfig) -> dict:
    """Mean SRS of the generated and test pieces with >= srs_min_bars bars (None if there are none)."""
    out: dict = {}
    for name, scores in (("generated", generated), ("test", test)):
        values = [srs(s, cfg.srs_threshold) for s in scores if n_bars(s) >= cfg.srs_min_bars]
        out[name] = float(np.mean(values)) if values else None
        out[f"n_{name}"] = len(values)
    return out


def _memorisation(generated: Sequence[symusic.Score], test: Sequence[symusic.Score],
                  train: pd.DataFrame, decode: Decode) -> dict | None:
    # Whole training songs: a generated piece copying any part of one must be found.
    train_grams = [melody_ngrams(decode(list(t))) for t in tqdm(train["tokens"], desc="melodies", leave=False)]
    try:
        g = memorisation([melody_ngrams(s) for s in generated], train_grams)
        t = memorisation([melody_ngrams(s) for s in test], train_grams)
    except ValueError as e:  # a tiny corpus: report the rest, say why this one is missing
        log.warning("memorisation left out: %s", e)
        return None
    return {"generated": g["rate"], "test": t["rate"],
            "generated_max_similarity": g["max_similarity"], "test_max_similarity": t["max_similarity"]}


def evaluate_run(
    cfg: EvaluateConfig,
    *,
    seed: int,
    samples_dir: str | Path,
    test: pd.DataFrame,
    train: pd.DataFrame,
    decode: Decode,
    bar_id: int | Collection[int] | None,  # the id(s) a bar starts with (BPE: a set)
) -> dict:
    """The whole stage result (see the module docstring).

    `test`/`train` are token shards (columns dataset, piece_id, tokens); `decode` turns token ids
    into a Score with the same tokenizer the generated pieces came from.
    """
    generated = main_pieces(samples_dir)
    if len(test) < 2:
        raise SmdimError(
            f"the test split of data/tokens has {len(test)} piece(s); OA needs at least 2: "
            "use a larger corpus or change the tokenize split parameters"
        )
    if len(train) < 1:
        raise SmdimError("the train split of data/tokens is empty; the ceiling row needs train pieces")

    ref_rows = select_pieces(test, cfg.max_reference, seed)
    ceil_rows = select_pieces(train, len(ref_rows), seed)
    crop = resolve_crop(cfg.crop_tokens, samples_dir)
    kw = {"attributes": cfg.attributes, "resolution": cfg.resolution, "support": cfg.support}

    def crops(rows: pd.DataFrame, length: int | None, split_seed: int) -> list[symusic.Score]:
        tokens = [list(t) for t in rows["tokens"]]
        return crop_scores(tokens, length, decode, split_seed, bar_id=bar_id, start=cfg.crop_start)

    lengths = length_sets(samples_dir)
    log.info("OA: %d generated pieces vs %d test pieces (crop %s tokens); lengths %s",
             len(generated), len(ref_rows), crop, list(lengths) or "none")
    ref_main = crops(ref_rows, crop, seed)
    main = evaluate(generated, ref_main, bootstrap=cfg.bootstrap, seed=seed, **kw)
    ceiling = evaluate(crops(ceil_rows, crop, seed + 1), ref_main, what="train", **kw)

    by_length = _oa_vs_length(lengths, test, train, cfg, seed, crops, kw)
    long_generated = main["scores"]["generated"] + [s for r in by_length["scores"] for s in r]
    memo = _memorisation(main["scores"]["generated"], ref_main, train, decode) if cfg.memorisation else None
    by_collection = _oa_by_collection(collection_sets(samples_dir), test, cfg, seed, crops, crop, kw)
    sets = {"generated": main["scores"]["generated"], "test": main["scores"]["reference"],
            "train": ceiling["scores"]["generated"]}

    out = {
        "headline": main["headline"],
        "usable_rate": main["usable_rate"],
        "oa": main["oa"],
        "oa_ci": {k: v for k, v in main.get("ci", {}).items() if k != "headline"},
        "headline_ci": main.get("ci", {}).get("headline"),
        "in_average": main["in_average"],
        "oa_ceiling": ceiling["oa"],
        "oa_vs_length": by_length["oa"],
        "oa_ceiling_vs_length": by_length["ceiling"],
        "n_reference_vs_length": by_length["n_reference"],
        "short_left_out_vs_length": by_length["left_out"],
        "n_files": len(generated),
        "n_generated": main["n_generated"],
        "n_reference": main["n_reference"],
        "n_ceiling": ceiling["n_generated"],
        # Totals here (dvc metrics stay readable); reasons in skipped_by_reason, for the report.
        "skipped": {
            "generated": sum(main["skipped"]["generated"].values()),
            "reference": sum(main["skipped"]["reference"].values()),
            "ceiling": sum(ceiling["skipped"]["generated"].values()),
            "by_length": by_length["skipped"],
        },
        "skipped_by_reason": {
            "generated": main["skipped"]["generated"],
            "reference": main["skipped"]["reference"],
            "ceiling": ceiling["skipped"]["generated"],
        },
        "muspy": set_summary(sets),
        "line": set_summary(sets, piece_line_metrics, LINE_METRICS),
        "texture": set_summary(sets, piece_texture_metrics, TEXTURE_METRICS),
        "srs": _structure(long_generated, [decode(list(t)) for t in ref_rows["tokens"]], cfg),
        "feature_means": {
            "generated": main["feature_means"]["generated"],
            "test": main["feature_means"]["reference"],
            "train": ceiling["feature_means"]["generated"],
        },
    }
    if by_collection:
        out["oa_by_collection"] = by_collection
    if crop is not None:
        out["crop_tokens"] = crop
    if memo is not None:
        out["memorisation"] = memo
    return out


def _oa_by_collection(sets: dict[str, list[Path]], test: pd.DataFrame, cfg: EvaluateConfig, seed: int,
                      crops, crop: int | None, kw: dict) -> dict[str, dict]:
    """OA of each by_collection/ set (a conditioned model asked for that collection) against the
    test pieces of the same collection, with its bootstrap CI, and the two sets' chord textures (a
    model asked for chorales can score its OA and still lose its voices)."""
    out: dict[str, dict] = {}
    labels = [collection_of(d, p) for d, p in zip(test["dataset"], test["piece_id"], strict=True)]
    for name, files in sets.items():
        rows = test[[label == name for label in labels]]
        if len(rows) < 2:
            log.warning("OA for collection %s left out: %d test piece(s)", name, len(rows))
            continue
        r = evaluate(files, crops(select_pieces(rows, cfg.max_reference, seed), crop, seed),
                     bootstrap=cfg.bootstrap, seed=seed, **kw)
        out[name] = {"headline": r["headline"], "headline_ci": r.get("ci", {}).get("headline"),
                     "usable_rate": r["usable_rate"], "n_generated": r["n_generated"],
                     "n_reference": r["n_reference"],
                     "texture": set_summary({"generated": r["scores"]["generated"], "test": r["scores"]["reference"]},
                                            piece_texture_metrics, TEXTURE_METRICS)}
    return out


def _oa_vs_length(lengths: dict[int, list[Path]], test: pd.DataFrame, train: pd.DataFrame,
                  cfg: EvaluateConfig, seed: int, crops: Callable, kw: dict) -> dict:
    """Average OA of each by_length/<L>/ set vs L-token windows of the test pieces with >= L tokens."""
    res: dict = {"oa": {}, "ceiling": {}, "n_reference": {}, "left_out": {}, "skipped": {}, "scores": []}
    for length, files in tqdm(lengths.items(), desc="OA vs length", leave=False):
        key = str(length)
        long_test = at_least(test, length)
        res["left_out"][key] = len(test) - len(long_test)
        res["n_reference"][key] = min(len(long_test), cfg.max_reference or len(long_test))
        if not files or len(long_test) < 2:
            log.warning("length %d: %d generated files, %d test pieces of >= %d tokens: left out of OA vs length",
                        length, len(files), len(long_test), length)
            continue
        ref_rows = select_pieces(long_test, cfg.max_reference, seed)
        ref = crops(ref_rows, length, seed)
        r = evaluate(files, ref, what=f"length {length}", **kw)
        long_train = select_pieces(at_least(train, length), len(ref_rows), seed)
        if len(long_train):
            res["ceiling"][key] = evaluate(crops(long_train, length, seed + 1), ref, what="train", **kw)["oa"]["average"]
        res["oa"][key] = r["oa"]["average"]
        res["skipped"][key] = sum(r["skipped"]["generated"].values())
        res["scores"].append(r["scores"]["generated"])
    return res
