"""Data: sources (arrays), augmentation recipes, and the host tf.data pipeline.

Only `pipeline` and `augment_tf` import TensorFlow; import them explicitly where needed so
`import rwl_jax` and the accelerator path never pull TensorFlow in.
"""

from rwl_jax.data.recipe import AugmentRecipe, CIFAR10_MEAN, CIFAR10_STD
