"""Theory lab: closed forms, spectral quantities and the spiked-covariance toolkit (docs/theory.md).

Pure NumPy / JAX, no training loop and no TensorFlow.
"""
