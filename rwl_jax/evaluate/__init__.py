"""Evaluation: weighted kNN (and its k sweep) and the linear probe on frozen encoder features,
semi-supervised fine-tuning (finetune.py); top-1 and top-5."""

from rwl_jax.evaluate.knn import knn_accuracy, knn_sweep, knn_top1
from rwl_jax.evaluate.linear_probe import linear_probe_accuracy, linear_probe_top1
