"""Workstation side: datasets, splits, ImageNet weights, InceptionV3, fitting, export.

Needs the `train` extra (TensorFlow, tf-keras). TensorFlow is only ever imported through
`leukedge.tfcompat` (beside the evaluation that loads Keras models too), which sets
TF_USE_LEGACY_KERAS=1 first (tfmot needs Keras 2).
"""
