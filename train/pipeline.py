"""Input pipeline: decode once with edge's preprocessing, cache as uint8, then tf.data with augmentation.

Images are decoded and resized by `leukedge.edge.preprocess.load_rgb` (the device's own
code) and kept in memory as uint8. The model input is then (x - mean) / std in float32,
the same arithmetic as `edge.preprocess.normalize`; a test proves the tensors match.
"""

from __future__ import annotations

import numpy as np

from leukedge.edge.preprocess import Preprocessing
from leukedge.evaluation import ImageArrays, decode_samples  # noqa: F401 - decoded once, in one place

from leukedge.tfcompat import tensorflow


def normalize_tf(x, prep: Preprocessing):
    tf = tensorflow()
    mean = tf.constant(np.asarray(prep.mean, np.float32))
    std = tf.constant(np.asarray(prep.std, np.float32))
    return (tf.cast(x, tf.float32) - mean) / std


def augment_tf(x, seed: int | None = None):
    """Cell-appropriate augmentation on uint8 RGB: flips, 90-degree turns, mild colour jitter.

    A segmented cell has no canonical orientation, so every flip and quarter turn is a
    valid sample; colour jitter is kept small because stain colour carries signal.
    """
    tf = tensorflow()
    x = tf.image.random_flip_left_right(x)
    x = tf.image.random_flip_up_down(x)
    x = tf.image.rot90(x, tf.random.uniform([], 0, 4, dtype=tf.int32))
    x = tf.cast(x, tf.float32)
    x = tf.image.random_brightness(x, 10.0)
    x = tf.image.random_contrast(x, 0.9, 1.1)
    x = tf.image.random_saturation(x, 0.9, 1.1)
    return tf.clip_by_value(x, 0.0, 255.0)


# Bytes of the full C-NMC 2019 training release held as uint8 (10,661 images, N*S*S*3):
# 224 px: 1,604,779,008 B (1.60 GB, 1.49 GiB); 299 px: 2,859,312,183 B (2.86 GB, 2.66 GiB). The second
# is past the 2 GiB protobuf limit on a serialized graph; so is any larger input or release.
CNMC_TRAIN_IMAGES = 10_661


def images_nbytes(n: int, size: int) -> int:
    """Bytes of n uint8 RGB images of size x size pixels held in memory: n * size * size * 3."""
    return int(n) * int(size) * int(size) * 3


def _gather_fn(images):
    """A numpy function i -> images[i] (uint8, C-contiguous) for tf.numpy_function."""

    def take(i):
        return np.ascontiguousarray(images[int(i)], dtype=np.uint8)

    return take


def make_dataset(arrays: ImageArrays, prep: Preprocessing, batch_size: int, training: bool, seed: int = 0,
                 *, shuffle: bool | None = None, augment: bool | None = None):
    """tf.data pipeline of (normalized float32 image batch (B, S, S, 3), label batch (B,)) from decoded arrays.

    arrays.images: uint8 (N, S, S, 3), any array that numpy can index by row (an ndarray, an np.memmap
    of a file, a broadcast view); arrays.labels: int (N,). batch_size: images per batch (the global
    batch under a distribution strategy); the last batch may be smaller. training: shuffle and augment
    (each can be set on its own with `shuffle` / `augment`; None follows `training`). seed: the shuffle
    seed; the order is reshuffled every epoch, the same sequence of orders for the same seed (every
    worker of a multi-worker run sees the same order, which data sharding relies on).

    The images never enter the TensorFlow graph: the dataset holds only the row indices and labels
    (about 16 bytes an image) and gathers each image from the numpy array with tf.numpy_function.
    A serialized graph is limited to 2 GiB (protobuf), and a strategy serializes the dataset graph
    when it places the input on a device other than the one the dataset was built on
    (tf.data.experimental.replicate); so do tf.data service and iterator checkpoints. With the images
    as a from_tensor_slices constant, a 2.17 GB array serialized to an empty graph and the replica
    failed (NotFoundError, TF 2.21); the constant was also a second full copy of the images (peak
    5.2 GB for that array). The full C-NMC training release (10,661 images) needs 1.49 GiB (1.60 GB)
    at 224 px and 2.66 GiB (2.86 GB) at 299 px (images_nbytes); this pipeline holds it once, in the
    given array, and serializes to ~130 kB for 8,100 images. The order, augmentation and tensors are
    those of the former pipeline. The cost is one Python call per image (microseconds against a
    training step); the Python function cannot be sent to another process, so each worker of a
    multi-worker run builds its own pipeline (as train does).

    Raises ValueError when images is not (N, S, S, 3) uint8 or labels has another length.
    """
    tf = tensorflow()
    images, labels = arrays.images, np.asarray(arrays.labels)
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4 or shape[3] != 3 or getattr(images, "dtype", None) != np.uint8:
        raise ValueError(f"make_dataset: images must be uint8 (N, S, S, 3), got {getattr(images, 'dtype', '?')} "
                         f"{shape}")
    if len(labels) != shape[0]:
        raise ValueError(f"make_dataset: {shape[0]} images but {len(labels)} labels")
    shuffle = training if shuffle is None else shuffle
    augment = training if augment is None else augment
    take = _gather_fn(images)
    image_shape = shape[1:]

    def load(i, y):
        # numpy_function pins itself to the host ("/job:.../task:0", no device); stripped of its job when a
        # strategy serializes the graph to place it on an input device, that becomes the malformed "/device::0".
        # Naming the host CPU here survives the stripping (a Python function only runs on a CPU anyway).
        with tf.device("/device:CPU:0"):
            x = tf.numpy_function(take, [i], tf.uint8, stateful=False)
        x.set_shape(image_shape)
        x = normalize_tf(augment_tf(x) if augment else x, prep)
        return x, y

    ds = tf.data.Dataset.from_tensor_slices((np.arange(shape[0], dtype=np.int64), labels))
    if shuffle:
        ds = ds.shuffle(shape[0], seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def class_weights(labels: np.ndarray, n_classes: int = 2) -> dict[int, float]:
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    return {k: float(len(labels) / (n_classes * counts[k])) for k in range(n_classes) if counts[k] > 0}
