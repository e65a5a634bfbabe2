"""Channel pruning (optimize.channels), the recovery fine-tune (optimize.recover) and the slim registry rows.

The small Inception-like model of tests/helpers.tiny_model has what matters in InceptionV3: Conv ->
BatchNorm(scale=False) -> ReLU units, three branches (one behind an average pool) joined by a channel
concatenation, a max pool, a convolution after the concatenation, global pooling and a Dense head.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from helpers import export_tflite, make_card, tiny_model
from leukedge.optimize.channels import (
    ChannelError,
    apply_plan,
    channel_graph,
    count_macs,
    importance,
    plan,
    slim,
)

SIZE = 64


def _dead_filter(model, conv: str, f: int) -> None:
    """Make filter f of `conv` output exactly 0 after its BatchNorm(scale=False) and ReLU: zero kernel,
    BatchNorm mean and beta 0 (so the normalized value is 0 + beta = 0)."""
    layer = model.get_layer(conv)
    k = layer.kernel.numpy()
    k[..., f] = 0
    layer.kernel.assign(k)
    bn = model.get_layer(channel_graph(model).consumers[conv][0])
    beta, mean, var = bn.get_weights()
    beta[f], mean[f] = 0.0, 0.0
    bn.set_weights([beta, mean, var])


@pytest.fixture(scope="module")
def model(synth_arrays):
    from helpers import fit_briefly

    x, y, _ = synth_arrays
    return fit_briefly(tiny_model(SIZE, seed=3), x, y, epochs=3)


def _x(n=6, seed=0):
    return np.random.default_rng(seed).normal(0, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def test_graph_follows_channels_through_pooling_and_the_concatenation(model):
    g = channel_graph(model)
    assert g.prunable == ["conv_a", "conv_b", "conv_c", "conv_d", "conv_e"]
    concat = g.consumers[g.chain_end["conv_b"]][0]
    assert g.in_segments["conv_e"] == [("conv_b", 8), ("conv_c", 8), ("conv_d", 8)]
    assert g.out_segments[concat] == g.in_segments["conv_e"]
    assert g.in_segments["conv_d"] == [("conv_a", 8)]  # through the average pool
    assert g.in_segments["head_dense"] == [("conv_e", 16)]  # through global pooling
    assert "probabilities" in g.frozen and "head_dense" in g.frozen and "image" in g.frozen
    assert type(model.get_layer(g.chain_end["conv_a"])).__name__ == "Activation"  # conv -> BN -> ReLU


def test_nothing_pruned_leaves_outputs_unchanged(model):
    g = channel_graph(model)
    keep = {c: np.arange(g.filters[c]) for c in g.prunable}
    same = apply_plan(g, keep)
    x = _x()
    np.testing.assert_array_equal(same.predict(x, verbose=0), model.predict(x, verbose=0))
    thin, report = slim(model, 1.0, "l1")
    np.testing.assert_array_equal(thin.predict(x, verbose=0), model.predict(x, verbose=0))
    assert report["macs"] == report["macs_before"] == count_macs(model) and report["convolutions_pruned"] == 0


def test_removing_filters_equals_zeroing_their_channels_and_shapes_agree(model):
    """Remove filters from each branch of the concatenation, from the convolution feeding all branches
    (one through a pool) and from the one feeding the head: the thin model computes what the original
    computes with those channels set to 0, so every slice (concatenation offsets included) is right."""
    from leukedge.graph import clone_float

    g = channel_graph(model)
    drop = {"conv_a": [0, 5], "conv_b": [7], "conv_c": [0, 3], "conv_d": [2], "conv_e": [1, 9, 15]}
    keep = {c: np.setdiff1d(np.arange(g.filters[c]), drop.get(c, [])) for c in g.prunable}
    thin = apply_plan(g, keep)
    assert thin.get_layer("conv_e").kernel.shape == (3, 3, 7 + 6 + 7, 13)
    assert thin.get_layer("conv_d").kernel.shape == (1, 1, 6, 7)
    assert thin.get_layer("head_dense").kernel.shape == (13, 16)
    reference = clone_float(model)
    for conv, filters in drop.items():
        for f in filters:
            _dead_filter(reference, conv, f)
    x = _x()
    np.testing.assert_allclose(thin.predict(x, verbose=0), reference.predict(x, verbose=0), atol=1e-5)
    assert not np.allclose(thin.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_count_macs_by_hand():
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    L = tf.keras.layers
    inp = L.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", use_bias=False)(inp)  # 8*8 * 3*3*3 * 4 = 6912
    x = L.Conv2D(6, 1, strides=2)(x)  # 4*4 * 1*1*4 * 6 = 384
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(2)(x)  # 6 * 2 = 12
    assert count_macs(tf.keras.Model(inp, out)) == 6912 + 384 + 12


@pytest.mark.parametrize("criterion", ["taylor", "l1"])
def test_criteria_rank_a_dead_filter_last_and_the_plan_drops_it(model, criterion, synth_arrays):
    from leukedge.graph import clone_float

    x, y, _ = synth_arrays
    m = clone_float(model)
    _dead_filter(m, "conv_c", 3)
    g = channel_graph(m)
    scores = importance(g, criterion, x[:16], y[:16])
    assert set(scores) == set(g.prunable) and scores["conv_c"].shape == (8,)
    assert scores["conv_c"][3] == 0.0 and np.all(np.delete(scores["conv_c"], 3) > 0)
    p = plan(g, 0.8, scores, align=1)
    assert len(p.keep["conv_c"]) < 8 and 3 not in p.keep["conv_c"]


def test_plan_meets_the_budget_and_its_count_matches_the_model(model):
    g = channel_graph(model)
    scores = importance(g, "l1")
    for share in (0.3, 0.5, 0.8):
        p = plan(g, share, scores, align=1)
        thin = apply_plan(g, p.keep)
        assert count_macs(thin) == p.macs  # the planner's count is the model's
        assert 0.6 * share < p.macs / p.macs_before <= share
    with pytest.raises(ChannelError, match="must lie in"):
        plan(g, 0.0, scores)
    with pytest.raises(ChannelError, match="cannot keep only"):
        plan(g, 0.01, scores, align=1)  # every conv at 1 filter still keeps the head's and first conv's work
    with pytest.raises(ChannelError, match="unknown importance criterion"):
        importance(g, "hessian")
    with pytest.raises(ChannelError, match="needs calibration images"):
        importance(g, "taylor")


def test_align_rounds_kept_counts_of_wide_convolutions():
    from leukedge.optimize.channel_importance import _kept_count

    assert _kept_count(0.7, 192, 8) == 136 and _kept_count(0.7, 192, 8) % 8 == 0
    assert _kept_count(0.7, 16, 8) == 11  # narrower than 4 tiles: any count
    assert _kept_count(0.01, 64, 8) == 8  # at least one tile
    assert _kept_count(1.0, 48, 8) == 48


def test_tile_rule_keeps_one_tile_layers_whole_and_rounds_wider_ones_to_whole_tiles():
    """--channel-tile N (optimize.channel_importance._kept_count): a layer of at most N filters costs one tile
    whatever it keeps, so it keeps all; a wider one keeps whole tiles (at least one, at most every filter)."""
    from leukedge.optimize.channel_importance import _kept_count

    assert _kept_count(0.5, 32, 8, tile=64) == 32 and _kept_count(0.01, 64, 8, tile=64) == 64
    assert _kept_count(0.5, 192, 8, tile=64) == 128 and _kept_count(0.3, 192, 8, tile=64) == 64
    assert _kept_count(0.01, 384, 8, tile=64) == 64  # at least one tile
    assert _kept_count(0.6, 80, 8, tile=64) == 64 and _kept_count(0.9, 80, 8, tile=64) == 80  # never past every filter
    assert _kept_count(1.0, 80, 8, tile=64) == 80 and _kept_count(1.0, 200, 8, tile=64) == 200  # width 1 keeps all
    assert _kept_count(0.7, 48, 8, tile=16) == 32 and _kept_count(0.7, 16, 8, tile=0) == 11  # no tile: as before


def test_a_tile_aware_plan_keeps_whole_tiles_within_the_budget(model):
    g = channel_graph(model)
    scores = importance(g, "l1")
    tile = 4
    p = plan(g, 0.6, scores, tile=tile)
    assert p.tile == tile and p.macs <= 0.6 * p.macs_before
    for conv in g.prunable:
        kept, filters = len(p.keep[conv]), g.filters[conv]
        assert kept == filters if filters <= tile else kept % tile == 0 and tile <= kept <= filters
    thin = apply_plan(g, p.keep)
    assert count_macs(thin) == p.macs
    assert any(len(p.keep[c]) < g.filters[c] for c in g.prunable)


def test_channel_tile_option_names_a_tile():
    from leukedge.edge.machine import int8_channel_tile
    from leukedge.options import ConfigError, validate
    from leukedge.optimize.channels import channel_tile_for
    from leukedge.optimize.run import OptimizeOptions

    assert channel_tile_for("none") == 0 and channel_tile_for("64") == 64 and channel_tile_for("16") == 16
    assert channel_tile_for("auto") == int8_channel_tile()
    with pytest.raises(ChannelError, match="channel tile '12'"):
        channel_tile_for("12")
    with pytest.raises(ConfigError, match="channel_tile=12"):
        validate(OptimizeOptions(channel_tile="12"))


@pytest.mark.parametrize("features, tile", [
    ({"avx2": True, "avx512f": True, "avx512_vnni": True, "amx_int8": True}, 64),  # Sapphire Rapids
    ({"avx2": True, "avx512f": True, "avx512bw": True, "avx512_vnni": True, "amx_int8": False}, 16),  # Ice Lake
    ({"avx2": True, "avx_vnni": True}, 8),  # Alder Lake, AVX2 class
    ({"avx2": True}, 8),
    ({"neon": True, "dotprod": True}, 16),  # Cortex-A76 (Pi 5)
    ({"neon": True, "dotprod": False}, 8),  # Cortex-A72 (Pi 4)
    ({}, 8),
])
def test_int8_channel_tile_follows_the_processor(features, tile):
    from leukedge.edge.machine import int8_channel_tile

    assert int8_channel_tile(features) == tile


def test_what_cannot_be_pruned_is_frozen():
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    L = tf.keras.layers
    inp = L.Input((16, 16, 3))
    a = L.Conv2D(8, 3, padding="same", name="a")(inp)
    b = L.Conv2D(8, 3, padding="same", name="b")(inp)
    s = L.Add(name="sum")([a, b])  # element-wise between branches: channels must stay aligned
    c = L.Conv2D(8, 3, padding="same", name="c")(s)
    f = L.Flatten(name="flat")(c)  # spatial flatten: channels interleave with positions
    d = L.Conv2D(4, 1, name="d")(s)
    out = L.Dense(2, name="out")(L.Concatenate()([f, L.GlobalMaxPooling2D()(d)]))
    g = channel_graph(tf.keras.Model(inp, out))
    assert g.prunable == ["d"]
    assert "sum" in g.frozen["a"] and "flat" in g.frozen["c"]
    with pytest.raises(ChannelError, match="not a prunable convolution"):
        apply_plan(g, {"a": np.arange(4)})
    with pytest.raises(ChannelError, match="distinct indices"):
        apply_plan(g, {"d": np.array([0, 0])})


def test_a_slim_model_converts_to_int8_and_passes_its_self_test(model, synth_arrays, tmp_path):
    from leukedge.edge.card import card_path_for
    from leukedge.edge.classifier import Classifier
    from leukedge.edge.selftest import self_test
    from leukedge.optimize.golden import make_golden

    x, y, _ = synth_arrays
    thin, report = slim(model, 0.5, "taylor", x[:24], y[:24], align=1)
    assert report["macs"] <= 0.5 * report["macs_before"] and report["params"] < report["params_before"]
    path = export_tflite(thin, tmp_path, "int8", calib=x[:24])
    card = Classifier.load(path).card
    card.golden = make_golden(Classifier.load(path), n=8, seed=1)
    card.save(card_path_for(path))
    clf = Classifier.load(path)
    result = self_test(clf)
    assert result.ok, result.message
    assert clf.backend.input_dtype == np.int8


# -- registry -----------------------------------------------------------------------------------------

def test_slim_names_parse_and_compose_with_the_size_family():
    from leukedge.optimize.variants import VariantError, choices, resolve

    v = resolve("slim60-int8")
    assert (v.name, v.builder, v.conversion, v.format, v.macs_kept, v.input_size, v.sizes) == \
        ("slim60-int8", "slim", "int8", "tflite", 0.6, None, True)
    assert v.prunes and v.needs_calibration and v.needs_finetune_data
    s = resolve("slim60-int8@160")
    assert (s.name, s.base, s.input_size, s.macs_kept) == ("slim60-int8@160", "slim60-int8", 160, 0.6)
    o = resolve("slim45-onnx-int8")
    assert (o.format, o.conversion, o.runtime, o.macs_kept) == ("onnx", "onnx-qdq", "ONNX Runtime", 0.45)
    assert resolve("int8@160").macs_kept is None and resolve("int8").name == "int8"
    assert "slimNN-<integer variant>@SIZE" in choices()
    for bad, needle in (("slim5-int8", "10..95"), ("slim99-int8", "10..95"), ("slim60-float16", "goes before"),
                        ("slim60-pruned-int8", "goes before"), ("slim60-qat-int8", "goes before"),
                        ("slim60-int9", "goes before"), ("slim60-int8@12", "75..1024"), ("slimx-int8", "unknown"),
                        ("float16@160", "slimNN")):
        with pytest.raises(VariantError, match=needle):
            resolve(bad)


# -- recovery -----------------------------------------------------------------------------------------

def test_paired_augmentation_gives_both_views_the_same_draw():
    """The parent's view is the student's at 2x (nearest): after augmentation, every other pixel of the
    parent's view must equal the student's view, whatever flip, turn and colour change was drawn."""
    from leukedge.edge.preprocess import Preprocessing, normalize
    from leukedge.optimize.recover import RecoveryOptions, Views, _paired_dataset

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    big = small.repeat(2, axis=1).repeat(2, axis=2)
    views = Views(small, big, np.arange(5) % 2, Preprocessing(size=32), Preprocessing(size=64))
    ds = _paired_dataset(views, RecoveryOptions(batch=5, seed=4))
    changed = 0
    for xs, xt, _ in ds.take(4):
        np.testing.assert_allclose(xt.numpy()[:, ::2, ::2], xs.numpy(), atol=1e-4)
        changed += int(not np.allclose(xs.numpy(), normalize(small, views.student_prep), atol=1e-3))
    assert changed >= 1  # augmentation did something


def _views(x_uint8, y, prep):
    from leukedge.optimize.recover import Views

    return Views(x_uint8, None, y, prep, prep)


def test_recovery_brings_a_pruned_model_back_towards_its_parent(model, synth_dir):
    from leukedge.edge.preprocess import Preprocessing, load_rgb, normalize
    from leukedge.optimize.recover import RecoveryOptions, logit_function, mean_kl, recover
    from leukedge.train.datasets import read_dataset

    ds = read_dataset(synth_dir)
    prep = Preprocessing(size=SIZE)
    imgs = np.stack([load_rgb(s.path, SIZE) for s in ds.labelled])
    y = np.array([s.label for s in ds.labelled])
    thin, _ = slim(model, 0.4, "l1", align=1)
    parent_z = np.asarray(logit_function(model, "probabilities")(normalize(imgs, prep)))
    before = mean_kl(parent_z, np.asarray(logit_function(thin, "probabilities")(normalize(imgs, prep))))
    opts = RecoveryOptions(steps=60, lr=3e-3, batch=8, eval_every=20, patience=3, recalibrate_images=32, seed=0)
    out, report = recover(thin, model, _views(imgs, y, prep), _views(imgs, y, prep), opts)
    after = mean_kl(parent_z, np.asarray(logit_function(out, "probabilities")(normalize(imgs, prep))))
    assert after < 0.5 * before, report["history"]
    assert abs(after - report["best_kl"]) < 1e-4  # the model returned holds the best weights measured
    assert report["batchnorm"]["layers"] == 5 and report["history"][0]["step"] == 0


def test_early_stopping_restores_the_best_weights(model, synth_dir):
    """A learning rate far too high makes every step worse: training stops after `patience`
    measurements and the model returned is the one measured at step 0."""
    from leukedge.edge.preprocess import Preprocessing, load_rgb, normalize
    from leukedge.graph import clone_float
    from leukedge.optimize.recover import RecoveryOptions, recover
    from leukedge.train.datasets import read_dataset

    ds = read_dataset(synth_dir)
    prep = Preprocessing(size=SIZE)
    imgs = np.stack([load_rgb(s.path, SIZE) for s in ds.labelled])
    y = np.array([s.label for s in ds.labelled])
    student = clone_float(model)
    start = student.predict(normalize(imgs, prep), verbose=0)
    opts = RecoveryOptions(steps=40, lr=0.9, batch=8, eval_every=5, patience=2, recalibrate_images=0)
    out, report = recover(student, model, _views(imgs, y, prep), _views(imgs, y, prep), opts)
    assert report["stopped_early"] and report["steps_run"] == 10 and report["best_step"] == 0
    np.testing.assert_allclose(out.predict(normalize(imgs, prep), verbose=0), start, atol=1e-6)


# -- the optimize step ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def optimized(tiny_models, synth_dir, tmp_path_factory):
    """`leukedge optimize` of the tiny parent with a slim variant at its size and at another, and int8 there."""
    from leukedge.optimize.run import OptimizeOptions, optimize
    from leukedge.train.datasets import read_dataset
    from leukedge.train.splits import make_split, write_split

    d = tmp_path_factory.mktemp("slim-parent")
    keras = d / "model.keras"
    shutil.copy(tiny_models["keras"], keras)
    ds = read_dataset(synth_dir)
    split = make_split(ds)
    make_card(keras, SIZE, "float", "keras", provenance={
        "data": {"root": str(synth_dir)}, "split": split.describe(ds), "config": {"val_fraction": 0.2}})
    write_split(split, ds, d / "split.json")
    out = tmp_path_factory.mktemp("slim-opt") / "opt"
    opts = OptimizeOptions(variants=("int8", "slim50-int8", "slim50-int8@80", "int8@80"), calibration_size=24,
                           prune_steps=20, resize_steps=20, finetune_batch=8, max_f1_drop=1.0, max_recall_drop=1.0)
    return out, optimize(keras, out, opts)


def test_slim_variants_build_from_the_registry_with_cards_recording_work(optimized):
    from leukedge.edge.card import load_card_for_model
    from leukedge.edge.classifier import Classifier
    from leukedge.edge.selftest import self_test

    out, summary = optimized
    by = {r["variant"]: r for r in summary["variants"]}
    assert set(by) == {"int8", "slim50-int8", "slim50-int8@80", "int8@80"}
    for name in ("slim50-int8", "slim50-int8@80"):
        card = load_card_for_model(out / f"{name}.tflite")
        opt = card.optimization
        assert opt["macs"] <= 0.5 * opt["parent_macs"] and opt["params"] < opt["parent_params"]
        assert opt["slim"]["criterion"] == "taylor" and opt["recovery"]["steps_run"] >= 1
        assert opt["slim"]["tile"] == 0  # --channel-tile none, the default: the portable rounding
        clf = Classifier.load(out / f"{name}.tflite")
        assert self_test(clf).ok
    assert load_card_for_model(out / "slim50-int8@80.tflite").preprocessing.size == 80
    resized = load_card_for_model(out / "int8@80.tflite").optimization["resized"]
    assert resized["macs"] > load_card_for_model(out / "slim50-int8@80.tflite").optimization["macs"]
    assert resized["recovery"]["history"][0]["step"] == 0
    assert by["slim50-int8"]["size_bytes"] < by["int8"]["size_bytes"]


# -- the seed study (benchmarks/seed_study.py) ----------------------------------------------------------

def test_seed_study_runs_in_parts_and_an_interrupted_study_loses_nothing(tiny_models, synth_dir, tmp_path):
    import json as _json

    from leukedge.benchmarks import seed_study
    from leukedge.train.datasets import read_dataset
    from leukedge.train.splits import make_split, write_split

    d = tmp_path / "run"
    d.mkdir()
    keras = d / "model.keras"
    shutil.copy(tiny_models["keras"], keras)
    ds = read_dataset(synth_dir)
    split = make_split(ds, rule="random", val_fraction=0.25, test_fraction=0.25)
    make_card(keras, SIZE, "float", "keras", provenance={
        "data": {"root": str(synth_dir)}, "split": split.describe(ds), "config": {"val_fraction": 0.25}})
    write_split(split, ds, d / "split.json")
    out = tmp_path / "study"
    args = [str(keras), "--out", str(out), "--variants", "slim50-int8", "--seeds", "0,1", "--set",
            "calibration_size=16", "prune_steps=6", "finetune_batch=8", "max_f1_drop=1", "max_recall_drop=1"]
    assert seed_study.main(args + ["--max-parts", "1"]) == 0
    first = out / "parts" / "slim50-int8-seed0" / "result.json"
    assert first.exists() and not (out / "parts" / "slim50-int8-seed1" / "result.json").exists()
    partial = _json.loads((out / "summary.json").read_text())["variants"]["slim50-int8"]
    assert partial["seeds_missing"] == [1] and not partial["meets_criterion"]
    stamp = first.stat().st_mtime_ns
    (out / "parts" / "slim50-int8-seed1" / "optimize").mkdir(parents=True)  # a part interrupted mid-way
    assert seed_study.main(args) == 0
    assert first.stat().st_mtime_ns == stamp  # the finished part was not redone
    summary = _json.loads((out / "summary.json").read_text())
    row = summary["variants"]["slim50-int8"]
    assert row["seeds_done"] == [0, 1] and row["seeds_missing"] == []
    assert not row["meets_criterion"]  # two seeds are fewer than the criterion's three
    assert row["f1_drop_spread"] == max(row["f1_drops"]) - min(row["f1_drops"])
    part = row["parts"][1]
    assert part["recovery"]["steps_run"] >= 1 and part["macs"] > 0 and 0 <= part["test"]["f1_positive"] <= 1
    md = (out / "summary.md").read_text()
    assert md.count("| slim50-int8 | 0 |") == md.count("| slim50-int8 | 1 |") == 1  # one row per seed
    fixed = part["at_parent_threshold"]  # the fixed-operating-point figure: parent's threshold, T = 1
    assert fixed["threshold"] > 0 and all(-1 <= fixed[k]["f1_drop"] <= 1 for k in ("validation", "test"))
    drops = [p["at_parent_threshold"]["validation"]["f1_drop"] for p in row["parts"]]
    assert row["fixed_validation_f1_drops"] == drops
    assert row["fixed_validation_f1_drop_spread"] == max(drops) - min(drops)
    assert "At one fixed operating point" in md
    sens = [p["at_parent_threshold"]["validation"]["sensitivity_drop"] for p in row["parts"]]
    assert row["fixed_validation_sensitivity_drops"] == sens and all(-1 <= d <= 1 for d in sens)
    assert row["fixed_within_budgets"] == [True, True]  # budgets of 1: what --keep-threshold would pass
    assert not row["fixed_meets_criterion"]  # two seeds, as above
