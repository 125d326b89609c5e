"""The reference recipe of the RWL paper's own code (CLRW), shared by every CIFAR-10 config.

CIFAR ResNet-18 (3x3 stem, no max-pool), MLP head 512-512-512, batch 256, SGD momentum 0.9,
weight decay 5e-4, cosine schedule, lr 0.1, temperature 0.4, 100 epochs (the CLRW README's run;
the code's defaults are 800 epochs at lr 0.06). Views: RandomResizedCrop(32, scale 0.2-1), flip,
colour jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2, CIFAR mean/std. Evaluation: kNN
(k=200, cosine, temperature-weighted votes) and a linear probe on the frozen 512-d features.

Method configs (cifar10_<method>.py) change only what differs from this.
"""

import ml_collections

from rwl_jax.data.recipe import CIFAR10_MEAN, CIFAR10_STD


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.method = "rwl"
  config.temperature = 0.4
  config.seed = 0
  config.num_epochs = 100
  config.global_batch_size = 256

  config.model = ml_collections.ConfigDict()
  config.model.encoder = "resnet18"
  config.model.width = 64
  config.model.projector_dims = (512, 512)  # encoder 512 -> 512 -> 512
  config.model.projector_batch_norm = False
  config.model.dtype = "float32"  # compute dtype; parameters and the loss stay float32

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # or "lars"
  config.optimizer.learning_rate = 0.1  # at global_batch_size; not rescaled automatically
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 5e-4  # on every parameter, as torch.optim.SGD does
  config.optimizer.warmup_epochs = 0  # the reference has no warm-up at batch 256
  config.optimizer.final_lr_fraction = 0.0  # cosine decays to learning_rate * this

  config.data = ml_collections.ConfigDict()
  config.data.tfds_name = "cifar10"
  config.data.tfds_data_dir = ""  # "" = TFDS default (~/tensorflow_datasets)
  config.data.image_dir = ""  # PATH/{train,test}/CLASS/*.png|jpg; "" = use TFDS
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.image_size = 32
  config.data.cache_dir = ""  # decoded image-folder arrays; "" = ~/.cache/rwl_jax
  config.data.max_train_examples = 0  # 0 = all; a prefix of the shuffled split, for quick runs
  config.data.max_eval_examples = 0
  config.data.prefetch_batches = 2

  config.augment = ml_collections.ConfigDict()
  config.augment.crop_scale = (0.2, 1.0)
  config.augment.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
  config.augment.flip_prob = 0.5
  config.augment.brightness = 0.4
  config.augment.contrast = 0.4
  config.augment.saturation = 0.4
  config.augment.hue = 0.1
  config.augment.jitter_prob = 0.8
  config.augment.grayscale_prob = 0.2
  config.augment.mean = CIFAR10_MEAN
  config.augment.std = CIFAR10_STD

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 1024
  config.eval.knn_k = 200
  config.eval.knn_temperature = 0.1
  config.eval.knn_every_epochs = 0  # 0 = only at the end
  config.eval.linear_epochs = 100
  config.eval.linear_batch_size = 1024
  config.eval.linear_learning_rate = 0.1
  config.eval.linear_weight_decay = 0.0

  config.log_every_steps = 50
  config.checkpoint_every_epochs = 5
  config.keep_checkpoints = 3
  return config
