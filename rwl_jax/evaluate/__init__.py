"""Evaluation on frozen encoder features: weighted kNN and the linear probe, top-1 and top-5."""

from rwl_jax.evaluate.knn import knn_accuracy, knn_top1
from rwl_jax.evaluate.linear_probe import linear_probe_accuracy, linear_probe_top1
