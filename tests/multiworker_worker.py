"""One process of tests/test_multiworker.py: train tests/helpers.tiny_model for a few steps and save its weights.

    python tests/multiworker_worker.py --strategy multiworker --out w0.npz   # TF_CONFIG names the cluster and task
    python tests/multiworker_worker.py --strategy default --out ref.npz      # the single-worker reference

The strategy comes from the project's own `leukedge.train.fit.get_strategy` and the data from
`leukedge.train.pipeline.make_dataset` (seeded shuffle, augmentation off). The model is deterministic
between runs: the same seeded initial weights, dropout rate 0, BatchNormalization frozen (inference
mode, so the statistics do not depend on how the global batch is split over replicas), plain SGD.
Writes an .npz with the trained weights (arr_0..), the initial weights (init_0..) and a JSON summary
on stdout after "RESULT". Meant to run with CUDA hidden and few threads (the test sets the env).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # helpers.py beside this file


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategy", default="default")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n", type=int, default=32, help="training images (a multiple of --batch: no ragged last batch)")
    ap.add_argument("--batch", type=int, default=8, help="global batch size")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shuffle-seed", type=int, default=7)
    ap.add_argument("--train-bn", action="store_true", help="BatchNormalization in training mode (per-replica batch "
                    "statistics: a split run then differs from a single one; for showing why the test freezes it)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()

    import numpy as np

    from helpers import tiny_model
    from leukedge.edge.preprocess import Preprocessing
    from leukedge.evaluation import ImageArrays
    from leukedge.train.fit import get_strategy
    from leukedge.train.pipeline import make_dataset
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, a.threads))
    strategy = get_strategy(a.strategy)

    rng = np.random.default_rng(123)
    images = rng.integers(0, 256, (a.n, a.size, a.size, 3), dtype=np.uint8)
    labels = (rng.random(a.n) < 0.5).astype(np.int64)
    arrays = ImageArrays(images=images, labels=labels, paths=[f"fake{i}.png" for i in range(a.n)], skipped=[])
    ds = make_dataset(arrays, Preprocessing(size=a.size), a.batch, training=True, seed=a.shuffle_seed, augment=False)

    with strategy.scope():
        model = tiny_model(a.size, seed=0)
        model.get_layer("head_dropout").rate = 0.0
        for layer in model.layers:
            if isinstance(layer, tf.keras.layers.BatchNormalization) and not a.train_bn:
                layer.trainable = False
        model.compile(optimizer=tf.keras.optimizers.SGD(a.lr), loss="sparse_categorical_crossentropy")
    init = model.get_weights()
    hist = model.fit(ds, epochs=a.epochs, verbose=0)
    weights = model.get_weights()
    np.savez(a.out, *weights, **{f"init_{i}": w for i, w in enumerate(init)})
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    print("RESULT" + json.dumps({"replicas": int(strategy.num_replicas_in_sync), "strategy": type(strategy).__name__,
                                 "multiworker": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy),
                                 "task": task, "loss": [float(v) for v in hist.history["loss"]],
                                 "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
