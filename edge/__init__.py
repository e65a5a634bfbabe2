"""Everything that runs on the device. Imports numpy, Pillow, click and a TFLite runtime; never TensorFlow."""
