"""The reference recipe of the RWL paper's own code (CLRW), shared by every CIFAR-10 config.

CIFAR ResNet-18 (3x3 stem, no max-pool), MLP head 512-512-512, batch 256, SGD momentum 0.9,
weight decay 5e-4, cosine schedule, lr 0.1, temperature 0.4, 100 epochs (the CLRW README's run;
the code's defaults are 800 epochs at lr 0.06). Views: RandomResizedCrop(32, scale 0.2-1), flip,
colour jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2, CIFAR mean/std. Evaluation: kNN
(k=200, cosine, temperature-weighted votes) and a linear probe on the frozen 512-d features.

Method configs (cifar10_<method>.py) change only what differs from this. The fields of the other
methods (model.predictor_dims, ema, vicreg, barlow) are read only by those methods.

The configs ship inside the package, so they work from any directory after `pip install`: name one
by its file (`--config=configs/cifar10_rwl.py`, found in the package when no such file is here) or
by its name (`--config=cifar10_rwl`); `:smoke` after either gives the minutes-on-a-CPU variant
(`--config=cifar10_rwl:smoke`). A config of your own starts from this recipe:

  from rwl_jax.configs import common

  def get_config(arg=None):
    config = common.get_config()
    config.method, config.temperature = "rwl", 0.2
    return common.variant(config, arg)
"""

import ml_collections

from rwl_jax.data.recipe import AugmentRecipe

DEFAULT_COMPILATION_CACHE_DIR = "~/.cache/rwl_jax/jax_compilation_cache"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.method = "rwl"  # rwl, simclr, byol, byol_gsg, simsiam, simsiam_gsg, vicreg, barlow
  config.temperature = 0.4  # rwl and simclr only
  config.seed = 0
  config.num_epochs = 100
  config.global_batch_size = 256

  config.model = ml_collections.ConfigDict()
  # resnet10/18/34/50 or vit_tiny/small/base (rwl_jax/models). width: a ResNet's base width, a
  # ViT's head dimension (64 = the published sizes; dim = heads * width).
  config.model.encoder = "resnet18"
  config.model.width = 64
  # ResNets: "cifar" (conv 3x3 stride 1, no max-pool) or "imagenet" (torchvision's conv 7x7
  # stride 2 + max-pool, for 224 px). Unused by ViTs.
  config.model.stem = "cifar"
  # ViTs: patch side in pixels, dividing data.image_size (4 for 32 px, 16 for 224). Unused by
  # ResNets.
  config.model.patch_size = 4
  config.model.projector_dims = (512, 512)  # encoder 512 -> 512 -> 512
  config.model.projector_batch_norm = False  # BatchNorm between the projector's layers
  # Prediction head of byol, simsiam and their GSG variants (hidden..., output), BatchNorm between
  # layers; the output size must equal projector_dims[-1]. Unused by the other methods.
  config.model.predictor_dims = (512, 512)
  config.model.dtype = "float32"  # compute dtype; parameters and the loss stay float32
  # ResNets' BatchNorm (rwl_jax/models/batchnorm.py): "flax" (nnx.BatchNorm), "fused" (BatchNorm +
  # residual + ReLU as one custom_vjp in jnp) or "pallas" (the same as Pallas kernels, one GPU).
  # The same variables and checkpoints whichever trains; the fused ones are unmeasured so far.
  config.model.batchnorm = "flax"

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # or "lars"
  config.optimizer.learning_rate = 0.1  # at global_batch_size; not rescaled automatically
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 5e-4  # on every parameter, as torch.optim.SGD does
  config.optimizer.warmup_epochs = 0  # the reference has no warm-up at batch 256
  config.optimizer.final_lr_fraction = 0.0  # cosine decays to learning_rate * this
  config.optimizer.trust_coefficient = 0.001  # LARS eta (optax's default); unused by sgd

  # BYOL's EMA target network (byol, byol_gsg): its momentum rises from base_momentum to 1 with a
  # cosine over the run, m(k) = 1 - (1 - base_momentum) (cos(pi k / K) + 1) / 2.
  config.ema = ml_collections.ConfigDict()
  config.ema.base_momentum = 0.99

  # VICReg loss: sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance, the paper's
  # (lambda, mu, nu) = (25, 25, 1); gamma is the target std, epsilon the one inside its sqrt.
  config.vicreg = ml_collections.ConfigDict()
  config.vicreg.sim_coeff = 25.0
  config.vicreg.std_coeff = 25.0
  config.vicreg.cov_coeff = 1.0
  config.vicreg.gamma = 1.0
  config.vicreg.epsilon = 1e-4

  # Barlow Twins loss: scale * (sum_k (1 - C_kk)^2 + lambd * sum_{k != l} C_kl^2); scale is
  # solo-learn's scale_loss (1.0 in the official code), epsilon BatchNorm's inside the sqrt.
  config.barlow = ml_collections.ConfigDict()
  config.barlow.lambd = 0.0051
  config.barlow.scale = 1.0
  config.barlow.epsilon = 1e-5

  config.data = ml_collections.ConfigDict()
  config.data.tfds_name = "cifar10"
  config.data.tfds_data_dir = ""  # "" = TFDS default (~/tensorflow_datasets)
  # Your own images, any size and mode, "" = use TFDS. Layouts (rwl_jax/data/image_folder.py):
  # PATH/train/CLASS/IMAGE [+ PATH/test/CLASS/IMAGE] labelled; PATH/IMAGE or PATH/train/IMAGE
  # unlabelled (trained on, not evaluated, unless eval_image_dir is given).
  config.data.image_dir = ""
  # A labelled folder (PATH/train/CLASS/IMAGE [+ PATH/test/CLASS/IMAGE]) for the kNN / linear
  # probe of a run on unlabelled images: its train split trains them, its test split scores them.
  config.data.eval_image_dir = ""
  config.data.train_split = "train"
  config.data.eval_split = "test"
  # The split whose features train the kNN bank and the linear probe; "" = train_split. STL-10
  # trains on "train+unlabelled" and evaluates with "train" (the unlabelled images have label -1).
  config.data.eval_train_split = ""
  # A labelled image folder without an eval_split folder: this fraction of each class of train
  # (seeded with holdout_seed, at least one image per class) is held out as the evaluation split.
  config.data.holdout_fraction = 0.1
  config.data.holdout_seed = 0
  # Image folders: every image becomes image_size x image_size (shorter side scaled, bicubic,
  # centre crop); TFDS images of another size likewise.
  config.data.image_size = 32
  config.data.cache_dir = ""  # decoded image-folder arrays; "" = ~/.cache/rwl_jax
  # Processes decoding an image folder (a process pool; small folders are decoded in-process).
  # 0 = one per core this process may use; 1 = no pool.
  config.data.decode_workers = 0
  config.data.max_train_examples = 0  # 0 = all; a prefix of the shuffled split, for quick runs
  config.data.max_eval_examples = 0
  # Each split is cut into num_shards contiguous shards; a process reads only its own, and every
  # global batch takes an equal part from each shard. 0 = one shard per process. The data order
  # depends on it: set it to reproduce an N-process run's batches on fewer processes.
  config.data.num_shards = 0
  config.data.prefetch_batches = 2
  # Where the two views are made: "host" (tf.data on the CPU, any dataset size) or "device" (the
  # uint8 split in accelerator memory, JAX augmentation inside the step; same recipe and laws).
  config.data.augment_on = "host"

  # The views (SimCLR's recipe, see data/recipe.py): the recipe's own defaults, stated once there.
  config.augment = ml_collections.ConfigDict(AugmentRecipe().as_config())

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 1024
  config.eval.knn_k = 200
  config.eval.knn_temperature = 0.1
  # kNN top-1/top-5 also at these k (knn_top1_k10, ...), from the same single neighbour search;
  # () = off. knn_top1 stays the figure at knn_k.
  config.eval.knn_k_sweep = (10, 20, 100, 200)
  config.eval.knn_every_epochs = 0  # 0 = only at the end
  config.eval.linear_every_epochs = 0  # 0 = only at the end (each probe trains from scratch)
  # Theory diagnostics (p_pos and its ceiling, effective ranks, alignment/uniformity, L_rw bands;
  # rwl_jax/diagnostics.py) on a fixed probe batch of this many training images at each log step;
  # 0 = off. Computed with `temperature` for every method, so the methods stay comparable.
  config.eval.probe_batch_size = 256
  config.eval.linear_epochs = 100
  config.eval.linear_batch_size = 1024
  config.eval.linear_learning_rate = 0.1
  config.eval.linear_weight_decay = 0.0
  # A softmax classifier trained inside the step on the encoder's stop-gradient features (as BYOL
  # and solo-learn report; rwl_jax/online_probe.py): logs online_probe_loss/top1 at each log step,
  # and online_top1/top5 on the test split at the end and every online_probe_every_epochs.
  config.eval.online_probe = False
  config.eval.online_probe_learning_rate = 0.1
  config.eval.online_probe_every_epochs = 0  # 0 = only at the end
  # Semi-supervised fine-tuning at the end of the run (rwl_jax/evaluate/finetune.py): for each
  # fraction, a class-balanced seeded subset of the labelled train split, the whole encoder and a
  # new linear head trained with cross-entropy (SimCLR's protocol: SGD Nesterov momentum 0.9, no
  # weight decay, cosine decay, crop and flip), then top-1/top-5 on the eval split
  # (finetune_1pct_top1, ...). () = off; (0.01, 0.1) is SimCLR's 1 % and 10 %.
  config.eval.finetune_fractions = ()
  config.eval.finetune_epochs = 60  # SimCLR: 60 epochs at 1 %, 30 at 10 %
  config.eval.finetune_batch_size = 256  # capped by the subset's size
  config.eval.finetune_learning_rate = 0.05  # SimCLR's 0.05 * batch / 256; not rescaled

  config.log_every_steps = 50
  # jax.profiler trace of num_steps steps from start_step (0 = off) into WORKDIR/profile.
  config.profile = ml_collections.ConfigDict()
  config.profile.start_step = 0
  config.profile.num_steps = 5
  config.checkpoint_every_epochs = 5
  config.keep_checkpoints = 3
  # JAX's persistent compilation cache (a local folder or gs://...), every program of a run
  # (steps, evaluation, init): a rerun of the same command loads them instead of compiling.
  # "" or "off" = no cache. This default gives way to the environment variable
  # JAX_COMPILATION_CACHE_DIR when that is set; any other value here wins over the variable.
  config.compilation_cache_dir = DEFAULT_COMPILATION_CACHE_DIR
  # Checkpoints written in the background while training goes on (False: the loop waits for each
  # save); a stop signal and the end of the run wait for the save either way.
  config.checkpoint_async = True
  return variant(config, arg)


def solo_learn_lars(config: ml_collections.ConfigDict, *, learning_rate: float,
                    weight_decay: float) -> None:
  """solo-learn's CIFAR optimiser for BYOL, VICReg and Barlow Twins: LARS (eta 0.02, no weight
  decay or trust ratio on biases and BatchNorm), 10 warm-up epochs, then cosine over 1000 epochs."""
  config.num_epochs = 1000
  config.optimizer.name = "lars"
  config.optimizer.learning_rate = learning_rate
  config.optimizer.weight_decay = weight_decay
  config.optimizer.trust_coefficient = 0.02
  config.optimizer.warmup_epochs = 10


def solo_learn_views(config: ml_collections.ConfigDict, *, crop_scale: tuple[float, float],
                     solarize_prob: tuple[float, float]) -> None:
  """solo-learn's CIFAR views (scripts/pretrain/cifar): colour jitter (0.4, 0.4, 0.2, 0.1) with
  p 0.8, grayscale 0.2, flip 0.5, no blur at 32 px; the crop scale and the per-view solarisation
  probabilities (first view, second view) are what its recipes differ in."""
  config.augment.crop_scale = crop_scale
  config.augment.brightness = 0.4
  config.augment.contrast = 0.4
  config.augment.saturation = 0.2
  config.augment.hue = 0.1
  config.augment.jitter_prob = 0.8
  config.augment.grayscale_prob = 0.2
  config.augment.flip_prob = 0.5
  config.augment.blur_prob = (0.0, 0.0)
  config.augment.solarize_prob = solarize_prob


def with_defaults(saved: dict) -> dict:
  """A config written earlier (config.json, as a dict) over today's defaults: settings added to
  the library since then take their default values; nested sections merge."""
  return _merged(get_config().to_dict(), saved)


def _merged(defaults: dict, saved: dict) -> dict:
  merged = dict(defaults)
  for name, value in saved.items():
    both_sections = isinstance(value, dict) and isinstance(defaults.get(name), dict)
    merged[name] = _merged(defaults[name], value) if both_sections else value
  return merged


VARIANTS = ("smoke",)


def variant(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies the variant named by get_config's `arg` (the text after ':' in --config=FILE:ARG).

  "smoke": the same method and recipe shrunk to minutes on a CPU (ResNet-18 at width 8, the first
  640 training and 1,000 test images, 2 epochs of batch 64, a 5-epoch linear probe), to check an
  install or a config end to end before a real run. Applied last, so it overrides the method's
  epochs and batch size.
  """
  if not arg:
    return config
  if arg != "smoke":
    raise ValueError(f"unknown config variant {arg!r}; known variants: {', '.join(VARIANTS)}")
  config.model.width = 8
  config.num_epochs = 2
  config.global_batch_size = 64
  config.optimizer.warmup_epochs = 0
  config.data.max_train_examples = 640
  config.data.max_eval_examples = 1000
  config.eval.linear_epochs = 5
  config.log_every_steps = 5
  config.checkpoint_every_epochs = 1
  return config
