"""Shrink a trained model for the device: pruning, quantization, TFLite conversion, gated by measured F1."""
