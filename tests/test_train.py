import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from leukedge.edge.card import load_card_for_model
from leukedge.edge.preprocess import Preprocessing, preprocess_file
from leukedge.train.config import ConfigError, TrainConfig, load_config

QUICK = dict(image_size=75, batch_size=16, epochs_head=1, epochs=1, fine_tune_from="mixed9", weights="none")


def test_train_time_tensors_equal_edge_time_tensors(synth_dir):
    from leukedge.train.datasets import read_dataset
    from leukedge.train.pipeline import decode_samples, make_dataset

    ds = read_dataset(synth_dir)
    prep = Preprocessing(size=80, mean=(128.0,) * 3, std=(128.0,) * 3)
    samples = ds.labelled[:5]
    arrays = decode_samples(samples, prep, progress=False)
    batch = next(iter(make_dataset(arrays, prep, batch_size=5, training=False)))[0].numpy()
    for i, s in enumerate(samples):
        edge = preprocess_file(s.path, prep)
        assert np.array_equal(batch[i], edge), f"{s.path}: train-time tensor differs from edge-time tensor"


def test_config_ranges_and_toml(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[train]\nimage_size = 96\ndropout = 0.3\nactivation = "elu"\n')
    cfg = load_config(toml, {"epochs": "2"})
    assert (cfg.image_size, cfg.dropout, cfg.activation, cfg.epochs) == (96, 0.3, "elu", 2)
    with pytest.raises(ConfigError, match="image_size"):
        load_config(None, {"image_size": 50})
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(None, {"learning_rate": 1})
    with pytest.raises(ConfigError, match="strategy"):
        load_config(None, {"strategy": "tpu"})


def test_train_writes_model_card_history_and_plots(synth_dir, tmp_path):
    from leukedge.train.fit import train

    out = tmp_path / "run"
    res = train(synth_dir, out, TrainConfig(**QUICK, min_recall_all=0.9).validate())
    for name in ("model.keras", "model.keras.json", "split.json", "history.csv", "config.toml", "training_curves.png", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    card = load_card_for_model(out / "model.keras")  # verifies the SHA-256 too
    assert card.model_format == "keras" and card.labels == ["hem", "all"] and card.positive_label == "all"
    assert card.preprocessing.size == 75
    assert card.provenance["split"]["rule"] == "official" and len(card.provenance["split"]["file_list_sha256"]) == 64
    assert card.provenance["config"]["min_recall_all"] == 0.9
    assert card.metrics["validation"]["sensitivity"] >= 0.9  # the threshold honours --min-recall-all
    assert card.threshold == pytest.approx(res["threshold"])
    # how the training cells look, measured on the training images (synthetic C-NMC: masked on black, 96 px)
    assert card.cells["style"] == "masked" and card.cells["canvas_px"] == 96 and card.cells["um_per_px"] is None
    assert 30 < card.cells["diameter_px"] < 96
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("stage,epoch") and len(history) == 3
    assert not (out / ".leukedge-resume").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".staging")]


def test_resume_continues_an_interrupted_run(synth_dir, tmp_path, monkeypatch):
    from leukedge.train import fit

    out = tmp_path / "run"
    cfg = TrainConfig(**{**QUICK, "epochs": 2}).validate()

    def crash(*a, **k):
        raise KeyboardInterrupt("simulated crash during export")

    monkeypatch.setattr(fit, "staged_dir", crash)
    with pytest.raises(KeyboardInterrupt):
        fit.train(synth_dir, out, TrainConfig(**{**QUICK, "epochs": 1}).validate())
    state = json.loads((out / ".leukedge-resume" / "state.json").read_text())
    assert len(state["history"]) == 2 and not (out / "model.keras").exists()
    monkeypatch.undo()
    fit.train(synth_dir, out, cfg, resume=True)
    rows = (out / "history.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:2] for r in rows] == [["head", "1"], ["finetune", "2"], ["finetune", "3"]]


def test_corrupt_images_are_skipped_or_fatal_with_strict(synth_dir, tmp_path):
    from leukedge.train.datasets import DatasetError
    from leukedge.train.fit import train

    root = tmp_path / "C-NMC_Leukemia"
    shutil.copytree(synth_dir, root)
    victim = sorted(root.glob("training_data/*/all/*.bmp"))[0]
    victim.write_bytes(victim.read_bytes()[:500])
    out = tmp_path / "strict"
    with pytest.raises(DatasetError, match="truncated"):
        train(root, out, TrainConfig(**QUICK, strict=True).validate())
    assert not out.exists()
    res = train(root, tmp_path / "lenient", TrainConfig(**{**QUICK, "epochs": 0}).validate())
    skipped = res["card"]["provenance"]["data"]["skipped_images"]
    assert len(skipped) == 1 and victim.name in skipped[0][0]


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "leukedge.cli", "train", str(tmp_path / "empty"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "two class folders" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_mirrored_strategy_over_two_logical_cpus(synth_dir, tmp_path):
    script = textwrap.dedent(f"""
        import os, json
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from leukedge.train.config import TrainConfig
        from leukedge.train.fit import train
        cfg = TrainConfig(image_size=75, batch_size=16, epochs_head=1, epochs=0, weights="none", strategy="mirrored")
        res = train({str(synth_dir)!r}, {str(tmp_path / 'mirrored')!r}, cfg.validate())
        print("RESULT", json.dumps(res["timing"]))
    """)
    # MirroredStrategy needs a device per replica: the script makes two logical CPUs before TF initialises.
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert r.returncode == 0, r.stderr[-2000:]
    timing = json.loads(r.stdout.split("RESULT", 1)[1])
    assert timing["replicas"] == 2
    assert (tmp_path / "mirrored" / "model.keras").is_file()


def test_tune_writes_a_config_that_train_accepts(synth_dir, tmp_path):
    from leukedge.train.tune import tune

    cfg = TrainConfig(image_size=75, weights="none", batch_size=16).validate()
    res = tune(synth_dir, tmp_path / "tune", cfg, trials=3, epochs=2)
    assert len(res["trials"]) == 3
    best = load_config(tmp_path / "tune" / "best.toml")
    assert best.dropout == pytest.approx(res["best"]["dropout"]) and best.dense_units == res["best"]["dense_units"]
    assert "| trial | val_f1 |" in (tmp_path / "tune" / "trials.md").read_text()


def test_tune_stops_at_its_time_budget(synth_dir, tmp_path):
    from leukedge.train.tune import tune

    cfg = TrainConfig(image_size=75, weights="none", batch_size=16).validate()
    res = tune(synth_dir, tmp_path / "tune", cfg, trials=50, epochs=1, max_seconds=1)
    assert 1 <= len(res["trials"]) < 50


def test_batchnorm_learns_only_when_training_from_scratch():
    from leukedge.train.model import build_inception_v3, set_trainable_from

    model = build_inception_v3(75)
    set_trainable_from(model, "mixed9")
    assert not model.get_layer("bn_80").trainable and model.get_layer("conv_80").trainable
    assert not model.get_layer("conv_10").trainable
    set_trainable_from(model, "all", train_batchnorm=True)
    assert model.get_layer("bn_0").trainable and model.get_layer("bn_93").trainable


def test_quality_flagged_training_images_are_skipped_or_refused_and_statistics_recorded(synth_dir, tmp_path):
    """A blank (all-black) 'cell' in the training set is dropped with a count, or refused with --strict-quality;
    the card records the training images' statistics for the device's quality and OOD checks."""
    from PIL import Image

    from leukedge.train.datasets import DatasetError
    from leukedge.train.fit import train

    root = tmp_path / "C-NMC_Leukemia"
    shutil.copytree(synth_dir, root)
    victim = sorted(root.glob("training_data/*/all/*.bmp"))[0]
    with Image.open(victim) as im:
        size = im.size
    Image.new("RGB", size, (0, 0, 0)).save(victim)
    with pytest.raises(DatasetError, match="strict-quality"):
        train(root, tmp_path / "strict", TrainConfig(**{**QUICK, "epochs": 0, "strict_quality": True}).validate())
    res = train(root, tmp_path / "lenient", TrainConfig(**{**QUICK, "epochs": 0}).validate())
    dropped = res["card"]["provenance"]["data"]["skipped_for_quality"]
    assert [d[0] for d in dropped] == [str(victim)]
    assert res["card"]["input_statistics"]["n_images"] >= 20


def test_train_and_tune_resolve_identical_preprocessing_from_one_config(synth_dir, monkeypatch):
    """Issue 19: both steps take their preprocessing from one resolver; tune used to drop bit_depth, so a
    12-bit TIFF could be decoded differently in a tuning trial than in training."""
    from leukedge.train import fit, tune
    from leukedge.train.config import TrainConfig
    from leukedge.train.preprocessing import resolve_preprocessing

    class Seen(Exception):
        pass

    def capture(samples, prep, *args, **kwargs):
        raise Seen(prep)

    cfg = TrainConfig(image_size=75, weights="none", bit_depth=12, epochs_head=0, epochs=0).validate()
    seen = {}
    for name, module in (("train", fit), ("tune", tune)):
        monkeypatch.setattr(module, "decode_samples", capture)
        with pytest.raises(Seen) as exc:
            fit.train(synth_dir, "unused", cfg) if name == "train" else tune._features(synth_dir, cfg)
        seen[name] = exc.value.args[0]
    assert seen["train"] == seen["tune"] == resolve_preprocessing(cfg)
    assert seen["tune"].bit_depth == 12
