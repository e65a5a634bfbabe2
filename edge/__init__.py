"""Everything that runs on the device. Imports numpy, Pillow and a TFLite runtime (click only to draw a batch's progress bar on a terminal); never TensorFlow."""
