"""Input pipeline: decode once with edge's preprocessing, cache as uint8, then tf.data with augmentation.

Images are decoded and resized by `leukedge.edge.preprocess.load_rgb` (the device's own
code) and kept in memory as uint8. The model input is then (x - mean) / std in float32,
the same arithmetic as `edge.preprocess.normalize`; a test proves the tensors match.
"""

from __future__ import annotations

import numpy as np

from leukedge.edge.preprocess import Preprocessing
from leukedge.evaluation import ImageArrays, decode_samples  # noqa: F401 - decoded once, in one place

from .tfcompat import tensorflow


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


def make_dataset(arrays: ImageArrays, prep: Preprocessing, batch_size: int, training: bool, seed: int = 0):
    tf = tensorflow()
    ds = tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels))
    if training:
        ds = ds.shuffle(len(arrays.labels), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda x, y: (normalize_tf(augment_tf(x), prep), y), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda x, y: (normalize_tf(x, prep), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def class_weights(labels: np.ndarray, n_classes: int = 2) -> dict[int, float]:
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    return {k: float(len(labels) / (n_classes * counts[k])) for k in range(n_classes) if counts[k] > 0}
