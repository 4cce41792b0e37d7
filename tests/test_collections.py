"""Collection conditioning (model.collection_cond): labels, crops, the model, training and generation."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from smdim.cli import main as cli
from smdim.data.collections import collection_index, collection_of
from smdim.diffusion.config import DiffusionConfig
from smdim.errors import SmdimError
from smdim.metrics.config import EvaluateConfig
from smdim.metrics.evaluate import evaluate_run
from smdim.metrics.report import markdown_report
from smdim.model.checkpoint import load_checkpoint
from smdim.model.collection import WithCollection
from smdim.model.config import ModelConfig
from smdim.model.denoiser import Denoiser
from smdim.runtime import BaseConfig
from smdim.sampling.composer import load_composer
from smdim.sampling.config import SampleConfig
from smdim.sampling.sets import collection_dir, write_set
from smdim.tokenization.decode import tokens_to_score
from smdim.tokenization.tokenizer import load_tokenizer
from smdim.training.config import TrainConfig
from smdim.training.crops import CropSampler, load_split
from smdim.training.loop import TrainPaths, train

TINY_MODEL = dict(d_model=32, n_heads=2, n_blocks=1, stride=2, d_state=4, expand=1, ffn_mult=2)
TINY_TRAIN = dict(seq_len=64, batch_size=4, steps=3, eval_every=3, eval_batches=1, checkpoint_every=3,
                  log_every=3, num_threads=1, progress=False, nll_draws=1)


def test_labels_and_indices():
    assert collection_of("embedded", "chorales/bwv10.7") == "embedded/chorales"
    assert collection_of("embedded", "han1/0001") == "embedded/han1"
    assert collection_of("pop909", "001") == "pop909"
    assert collection_of("maestro", "2004/piece") == "maestro"  # only the embedded corpus has parts
    assert collection_index(["pop909", "embedded/han1", "pop909"]) == {"embedded/han1": 1, "pop909": 2}


def test_crops_carry_each_windows_collection():
    pieces = [np.full(50, 10 + i) for i in range(4)]  # piece i holds only token 10 + i
    s = CropSampler(pieces, seq_len=16, bar_id=99, labels=[1, 2, 1, 0])
    b = s.batch(seed=3, step=0, batch_size=32)
    piece_of_row = b.tokens[:, 0] - 10
    assert torch.equal(b.collection, torch.tensor([1, 2, 1, 0])[piece_of_row])
    assert torch.equal(s.batch(3, 0, 32).collection, b.collection)  # a pure function of (seed, step)
    assert torch.equal(b.rows(4, 9).collection, b.collection[4:9])
    assert torch.equal(CropSampler(pieces, 16, 99).batch(3, 0, 8).collection, torch.zeros(8, dtype=torch.long))
    with pytest.raises(SmdimError, match="3 collection labels for 4 pieces"):
        CropSampler(pieces, 16, 99, labels=[1, 2, 3])


def test_denoiser_collection_vector():
    torch.manual_seed(0)
    model = Denoiser(ModelConfig(vocab_size=40, collection_cond=True, n_collections=2, **TINY_MODEL)).eval()
    x = torch.randint(0, 40, (2, 24))
    with torch.no_grad():
        none, first, second = (model(x, collection=torch.full((2,), c)) for c in (0, 1, 2))
        torch.testing.assert_close(model(x), none)  # no collection = index 0, "none"
        torch.testing.assert_close(WithCollection(model, 1)(x), first)
    assert not torch.allclose(first, second) and not torch.allclose(none, first)


@pytest.fixture(scope="module")
def two_collections(tokens_dir, tmp_path_factory):
    """tokens_dir's songs relabelled as two parts of the embedded corpus (han1 / chorales)."""
    out = tmp_path_factory.mktemp("two-collections")
    shutil.copy(tokens_dir / "tokenizer.json", out / "tokenizer.json")
    table = pq.read_table(tokens_dir / "shard-00000.parquet")
    ids = table.column("piece_id").to_pylist()
    renamed = [f"{'han1' if i % 2 else 'chorales'}/{p}" for i, p in enumerate(ids)]
    split = ["test" if i in (1, 2, 3, 4) else s for i, s in enumerate(table.column("split").to_pylist())]
    table = (table.set_column(table.schema.get_field_index("dataset"), "dataset", pa.array(["embedded"] * len(ids)))
             .set_column(table.schema.get_field_index("piece_id"), "piece_id", pa.array(renamed))
             .set_column(table.schema.get_field_index("split"), "split", pa.array(split)))
    pq.write_table(table, out / "shard-00000.parquet")
    return out


@pytest.fixture(scope="module")
def conditioned(two_collections, tmp_path_factory):
    root = tmp_path_factory.mktemp("conditioned")
    cfg = TrainConfig(**TINY_TRAIN, collection_dropout=0.5)
    train(BaseConfig(seed=3, device="cpu"), ModelConfig(collection_cond=True, **TINY_MODEL), DiffusionConfig(),
          cfg, TrainPaths(two_collections, root / "models", root / "results"))
    return root / "models" / "model.pt"


def test_trained_model_round_trips_its_collections(conditioned, two_collections):
    model, extra = load_checkpoint(conditioned)
    assert extra["collections"] == ["embedded/chorales", "embedded/han1"]
    assert model.cfg.collection_cond and model.cfg.n_collections == 2
    assert model.collection_embed.weight.shape == (3, 32)
    composer = load_composer(str(conditioned))
    assert composer.collections == ("embedded/chorales", "embedded/han1")
    _, labels = load_split(two_collections, "train")
    assert set(labels) == set(composer.collections)


def test_generate_asks_for_a_collection(conditioned, tmp_path, capsys):
    out = tmp_path / "han.mid"
    cli(["generate", "--checkpoint", str(conditioned), "--collection", "embedded/han1", "--tokens", "48",
         "--steps", "4", "--out", str(out)])
    assert out.stat().st_size > 0
    with pytest.raises(SystemExit):
        cli(["generate", "--checkpoint", str(conditioned), "--collection", "embedded/jazz", "--out", str(out)])
    err = capsys.readouterr().err
    assert "error: collection 'embedded/jazz': not one of this model's (embedded/chorales, embedded/han1)" in err


def test_unconditioned_model_refuses_a_collection(tokens_dir, tmp_path, capsys):
    train(BaseConfig(seed=3, device="cpu"), ModelConfig(**TINY_MODEL, collection_cond=False), DiffusionConfig(), TrainConfig(**TINY_TRAIN),
          TrainPaths(tokens_dir, tmp_path / "models", tmp_path / "results"))
    assert load_checkpoint(tmp_path / "models/model.pt")[1]["collections"] == []
    with pytest.raises(SystemExit):
        cli(["generate", "--checkpoint", str(tmp_path / "models/model.pt"), "--collection", "pop909",
             "--out", str(tmp_path / "x.mid")])
    assert "trained without model.collection_cond" in capsys.readouterr().err
    # "prior" on an unconditioned model: its own learned mix, i.e. unconditional sampling
    assert load_composer(str(tmp_path / "models/model.pt")).collections_for("prior", 4, seed=0) == [None] * 4


def test_per_collection_sets_are_scored_against_their_collection(conditioned, two_collections, tmp_path):
    composer = load_composer(str(conditioned))
    cfg = SampleConfig(batch_size=4, steps=4, n_tokens=64)
    sets = {name: write_set(composer, cfg, tmp_path, f"by_collection/{collection_dir(name)}", 4, 64, 5,
                            bars=None, pianorolls=False, collection=name)
            for name in composer.collections}
    main = write_set(composer, cfg, tmp_path, "pieces", 4, 64, 5, bars=None, pianorolls=False)
    (tmp_path / "samples.json").write_text(json.dumps({"pieces": main, "by_collection": sets}))
    assert (tmp_path / "by_collection/embedded__han1/000.mid").is_file()
    tok = load_tokenizer(two_collections / "tokenizer.json")
    shards = pq.read_table(two_collections / "shard-00000.parquet").to_pandas()
    result = evaluate_run(
        EvaluateConfig(bootstrap=50, memorisation=False), seed=0, samples_dir=tmp_path,
        test=shards[shards.split == "test"], train=shards[shards.split == "train"],
        decode=lambda ids: tokens_to_score(tok, ids), bar_id=tok["Bar_None"])
    by = result["oa_by_collection"]
    assert set(by) == {"embedded/chorales", "embedded/han1"}
    assert all(v["n_reference"] == 2 and v["n_generated"] <= 4 and 0 <= v["headline"] <= 1 for v in by.values())
    # Chord textures per collection: the generated set's and that collection's own test pieces'.
    for v in by.values():
        assert set(v["texture"]) == {"generated", "test", "gap"}
        for s, n_max in (("generated", v["n_generated"]), ("test", v["n_reference"])):
            steady = v["texture"][s]["voice_steadiness"]
            assert steady["n"] <= n_max and (steady["mean"] is None) == (steady["n"] == 0)
            assert steady["mean"] is None or 0 < steady["mean"] <= 1
    test_textures = sum(v["texture"]["test"]["voice_steadiness"]["n"] for v in by.values())
    assert test_textures == result["texture"]["test"]["voice_steadiness"]["n"] > 0  # the same 4 test pieces
    report = markdown_report(result)
    assert "## Per collection" in report
    for name, v in by.items():
        steady = v["texture"]["test"]["voice_steadiness"]
        assert f"| {name} | {v['headline']:.3f} [" in report
        assert f"{v['n_generated']} / 2 |" in report and f", {steady['n']}) |" in report


def test_prior_mix_follows_the_train_split(conditioned, two_collections, tmp_path):
    composer = load_composer(str(conditioned))
    _, labels = load_split(two_collections, "train")
    shares = [labels.count(name) / len(labels) for name in composer.collections]
    assert composer.collection_shares == pytest.approx(shares)
    mix = composer.collections_for("prior", 7, seed=5)
    assert mix == composer.collections_for("prior", 7, seed=5)  # seeded
    assert mix != composer.collections_for("prior", 7, seed=6)  # the order is drawn, the counts are not
    counts = [mix.count(name) for name in composer.collections]
    assert sum(counts) == 7 and all(abs(c - 7 * s) < 1 for c, s in zip(counts, shares, strict=True))
    assert composer.collections_for("embedded/han1", 3, seed=0) == ["embedded/han1"] * 3
    assert composer.collections_for(None, 2, seed=0) == [None, None]

    cfg = SampleConfig(batch_size=4, steps=4, n_tokens=48)
    records = write_set(composer, cfg, tmp_path, "pieces", 7, 48, 5, bars=None, pianorolls=False, collection="prior")
    assert [r["collection"] for r in records] == mix


def test_a_mixed_batch_conditions_each_row_on_its_own_collection(conditioned):
    composer = load_composer(str(conditioned))
    x = torch.randint(0, composer.mask_id, (3, 32), generator=torch.Generator().manual_seed(0))
    asked = ["embedded/han1", "embedded/chorales", None]
    with torch.no_grad():
        mixed = WithCollection(composer.model, composer.collection_indices(asked))(x)
        alone = [composer.collection_model(c)(x[i : i + 1])[0] for i, c in enumerate(asked)]
    torch.testing.assert_close(mixed, torch.stack(alone))
    assert not torch.allclose(alone[0], alone[1])


def test_prior_needs_collection_shares(conditioned):
    older = dataclasses.replace(load_composer(str(conditioned)), collection_shares=())
    with pytest.raises(SmdimError, match="the checkpoint has no collection shares"):
        older.collections_for("prior", 4, seed=0)
    with pytest.raises(SmdimError, match="3 collections for 2 pieces"):
        older.generate(2, 16, generator=torch.Generator(), collection=["embedded/han1"] * 3)


@pytest.mark.parametrize("shares", [[0.5], [0.5, -0.1], [0.0, 0.0], "han1", [0.5, float("nan")]],
                         ids=["short", "negative", "all-zero", "not-numbers", "nan"])
def test_damaged_collection_shares_fail_at_load_with_one_line(conditioned, tmp_path, shares):
    ckpt = torch.load(conditioned, weights_only=True)
    ckpt["extra"]["collection_shares"] = shares  # as a hand edit might leave it
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(SmdimError, match=r"edited.pt: collection_shares must be 2 non-negative shares, one per "
                                         r"collection, summing above 0; re-export the checkpoint or retrain$"):
        load_composer(str(tmp_path / "edited.pt"))
    ckpt["extra"]["collection_shares"] = [0.0, 3.0]  # well formed (shares need not sum to 1): loads
    torch.save(ckpt, tmp_path / "fine.pt")
    assert load_composer(str(tmp_path / "fine.pt")).collections_for("prior", 3, seed=0) == ["embedded/han1"] * 3
