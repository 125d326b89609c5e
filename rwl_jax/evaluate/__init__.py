"""Evaluation on frozen encoder features: weighted kNN and the linear probe, top-1 accuracy."""

from rwl_jax.evaluate.knn import knn_top1
from rwl_jax.evaluate.linear_probe import linear_probe_top1
