"""train.pipeline.make_dataset: the images stay out of the TensorFlow graph (index dataset + numpy gather),
so a training set past the 2 GB graph-constant limit still builds and distributes; small arrays give the
same tensors, in the same order, as the former from_tensor_slices pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from leukedge.edge.preprocess import Preprocessing
from leukedge.evaluation import ImageArrays

S = 32


def _arrays(n=21, size=S, seed=3, images=None):
    rng = np.random.default_rng(seed)
    if images is None:
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, len(images)).astype(np.int64)
    return ImageArrays(images=images, labels=labels, paths=[f"img{i}.png" for i in range(len(images))], skipped=[])


def _prep(size=S):
    return Preprocessing(size=size, mean=(120.0, 110.0, 100.0), std=(50.0, 60.0, 70.0))


def _former_pipeline(arrays, prep, batch_size, shuffle, seed=0):
    """The pipeline as it was before this change (images as a from_tensor_slices constant), augmentation off."""
    from leukedge.train.pipeline import normalize_tf
    from leukedge.tfcompat import tensorflow

    tf = tensorflow()
    ds = tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels))
    if shuffle:
        ds = ds.shuffle(len(arrays.labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda x, y: (normalize_tf(x, prep), y))
    return ds.batch(batch_size)


def _epochs(ds, n):
    out = []
    for _ in range(n):
        out.append([(x.numpy(), y.numpy()) for x, y in ds])
    return out


def test_same_tensors_as_before_for_a_small_array():
    from leukedge.train.pipeline import make_dataset

    arrays, prep = _arrays(), _prep()
    new = _epochs(make_dataset(arrays, prep, batch_size=8, training=False), 1)[0]
    old = _epochs(_former_pipeline(arrays, prep, 8, shuffle=False), 1)[0]
    assert [len(y) for _, y in new] == [8, 8, 5]
    for (xn, yn), (xo, yo) in zip(new, old, strict=True):
        assert xn.dtype == np.float32 and xn.shape[1:] == (S, S, 3)
        np.testing.assert_array_equal(xn, xo)
        np.testing.assert_array_equal(yn, yo)
    # and the values are (x - mean) / std of the stored images, in stored order
    x0 = (arrays.images[:8].astype(np.float32) - np.float32(prep.mean)) / np.float32(prep.std)
    np.testing.assert_allclose(new[0][0], x0, rtol=1e-6)


def test_seeded_shuffle_keeps_the_former_order_and_reshuffles_each_epoch():
    from leukedge.train.pipeline import make_dataset

    arrays, prep = _arrays(), _prep()
    new = _epochs(make_dataset(arrays, prep, 8, training=True, seed=5, augment=False), 2)
    old = _epochs(_former_pipeline(arrays, prep, 8, shuffle=True, seed=5), 2)
    for ep_new, ep_old in zip(new, old, strict=True):
        for (xn, yn), (xo, yo) in zip(ep_new, ep_old, strict=True):
            np.testing.assert_array_equal(xn, xo)
            np.testing.assert_array_equal(yn, yo)
    first = np.concatenate([x for x, _ in new[0]])
    second = np.concatenate([x for x, _ in new[1]])
    assert not np.array_equal(first, second), "each epoch must be reshuffled"
    again = _epochs(make_dataset(arrays, prep, 8, training=True, seed=5, augment=False), 1)[0]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in again]), first)
    other = _epochs(make_dataset(arrays, prep, 8, training=True, seed=6, augment=False), 1)[0]
    assert not np.array_equal(np.concatenate([x for x, _ in other]), first)


def test_training_augments_and_keeps_every_image_once():
    from leukedge.train.pipeline import make_dataset

    arrays, prep = _arrays(), _prep()
    plain = np.concatenate([x for x, _ in _epochs(make_dataset(arrays, prep, 8, False, shuffle=True, seed=1), 1)[0]])
    batches = _epochs(make_dataset(arrays, prep, 8, training=True, seed=1), 1)[0]
    aug = np.concatenate([x for x, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    assert aug.shape == plain.shape and aug.dtype == np.float32
    assert sorted(labels.tolist()) == sorted(arrays.labels.tolist())
    assert not np.allclose(aug, plain), "training=True must augment"


def test_file_backed_memmap_gives_the_same_batches(tmp_path):
    from leukedge.train.pipeline import make_dataset

    arrays, prep = _arrays(), _prep()
    mm = np.memmap(tmp_path / "train.u8", dtype=np.uint8, mode="w+", shape=arrays.images.shape)
    mm[:] = arrays.images
    mm.flush()
    ro = np.memmap(tmp_path / "train.u8", dtype=np.uint8, mode="r", shape=arrays.images.shape)
    on_disk = _arrays(images=ro)
    on_disk.labels = arrays.labels
    a = _epochs(make_dataset(arrays, prep, 8, training=False), 1)[0]
    b = _epochs(make_dataset(on_disk, prep, 8, training=False), 1)[0]
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_bad_arrays_are_refused_in_one_line():
    from leukedge.train.pipeline import make_dataset

    bad = _arrays()
    bad.images = bad.images.astype(np.float32)
    with pytest.raises(ValueError, match="uint8"):
        make_dataset(bad, _prep(), 8, training=False)
    short = _arrays()
    short.labels = short.labels[:-1]
    with pytest.raises(ValueError, match="21 images but 20 labels"):
        make_dataset(short, _prep(), 8, training=False)


def test_memory_figures_for_the_full_cnmc_release():
    from leukedge.train.pipeline import CNMC_TRAIN_IMAGES, images_nbytes

    assert images_nbytes(CNMC_TRAIN_IMAGES, 224) == 10_661 * 224 * 224 * 3 == 1_604_779_008
    assert images_nbytes(CNMC_TRAIN_IMAGES, 299) == 2_859_312_183
    assert images_nbytes(CNMC_TRAIN_IMAGES, 224) < 2**31 < images_nbytes(CNMC_TRAIN_IMAGES, 299)


LARGE = textwrap.dedent("""
    import json, os, resource, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    from tensorflow.python.data.experimental.ops import distribute
    from leukedge.edge.preprocess import Preprocessing
    from leukedge.evaluation import ImageArrays
    from leukedge.train.pipeline import make_dataset

    n, s = 8100, 299                      # 8100 * 299 * 299 * 3 B = 2.17 GB > 2 GiB
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, s, s, 3), dtype=np.uint8)
    images = np.broadcast_to(one, (n, s, s, 3))   # a view: no memory behind it
    labels = (np.arange(n) % 2).astype(np.int64)
    arrays = ImageArrays(images=images, labels=labels, paths=[""] * n, skipped=[])
    prep = Preprocessing(size=s)
    res = {"nbytes": int(images.nbytes)}
    x, y = next(iter(make_dataset(arrays, prep, 8, training=True, seed=0)))
    res["train_batch"] = list(x.shape)
    ds = make_dataset(arrays, prep, 8, training=False)
    expect = (one[0].astype(np.float32) - np.float32(prep.mean)) / np.float32(prep.std)
    # what a strategy does to place the pipeline on an input device: serialize the graph, rebuild it there
    graph = ds._as_serialized_graph(external_state_policy=distribute.ExternalStatePolicy.WARN)
    res["graph_bytes"] = int(tf.strings.length(graph))
    other = distribute.replicate(ds, ["/job:localhost/replica:0/task:0/device:CPU:1"])
    xr, yr = next(iter(list(other.values())[0]))
    res["replicated_batch"] = list(xr.shape)
    res["replicated_max_err"] = float(np.abs(xr.numpy() - expect).max())
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    xd, yd = next(iter(strategy.experimental_distribute_dataset(ds)))
    parts = strategy.experimental_local_results(xd)
    res["per_replica"] = [list(p.shape) for p in parts]
    res["distributed_max_err"] = max(float(np.abs(p.numpy() - expect).max()) for p in parts)
    res["labels"] = [int(v) for p in strategy.experimental_local_results(yd) for v in p.numpy()]
    # VmHWM, this process's own peak: ru_maxrss keeps the high-water mark of the pytest process it was forked
    # from across execve (Linux), so a large test session made this check fail for nothing
    with open("/proc/self/status") as status:
        hwm = [line for line in status if line.startswith("VmHWM:")]
    res["max_rss_bytes"] = (int(hwm[0].split()[1]) * 1024 if hwm
                            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print("RESULT" + json.dumps(res))
""")


def test_a_training_set_past_2gb_builds_and_distributes():
    """A 2.17 GB uint8 array (a broadcast view of one image, so it costs no RAM) through make_dataset,
    the dataset-graph serialization a strategy uses to place the input (distribute.replicate), and
    MirroredStrategy over two logical CPUs. With the images as a graph constant the serialized graph
    of the same array is empty and replication fails (NotFoundError: FetchOutputs node not found)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="2",
               OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-c", LARGE], capture_output=True, text=True, timeout=420, env=env)
    assert r.returncode == 0 and "RESULT" in r.stdout, r.stderr[-3000:]
    res = json.loads(r.stdout.split("RESULT", 1)[1])
    assert res["nbytes"] > 2**31
    assert res["train_batch"] == [8, 299, 299, 3]
    assert 0 < res["graph_bytes"] < 1_000_000, "the dataset graph must hold indices, not images"
    assert res["replicated_batch"] == [8, 299, 299, 3] and res["replicated_max_err"] < 1e-6
    assert res["per_replica"] == [[4, 299, 299, 3], [4, 299, 299, 3]] and res["distributed_max_err"] < 1e-6
    assert res["labels"] == [0, 1, 0, 1, 0, 1, 0, 1]
    assert res["max_rss_bytes"] < res["nbytes"], "the images must not be copied"
