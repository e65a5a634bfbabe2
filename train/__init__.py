"""Workstation side: datasets, splits, ImageNet weights, InceptionV3, fitting, export.

Needs the `train` extra (TensorFlow, tf-keras). Keras 2 is required by
tensorflow-model-optimization, so TF_USE_LEGACY_KERAS=1 is set before TensorFlow loads.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
