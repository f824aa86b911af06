"""Serving: the TFLite runner and its TensorFlow-free preprocessing."""
