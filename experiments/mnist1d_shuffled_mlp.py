"""Shuffled MNIST-1D (one fixed permutation of the 40 time steps) with the paper's plain MLP.

Greydanus (2020) reports test accuracy 68% for this MLP and 56% for a CNN: with the order
gone, the convolution's advantage vanishes. A transfer experiment for changes found on
MNIST-1D (WORKSPACE.md, [transfer]).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the experiment's config; every key can be overridden as --config.a.b=v."""
  config = ml_collections.ConfigDict()

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'mnist1d_shuffled'
  config.dataset.val_fraction = 0.1  # carved out of the 4000 training examples
  config.dataset.split_seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = 'mlp'
  config.model.width = 100
  config.model.depth = 2
  config.model.activation = 'relu'
  config.model.normalization = 'none'
  config.model.dropout = 0.0
  config.model.residual = False
  config.model.dtype = 'float32'
  config.model.remat = False

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-2
  config.optimizer.schedule = 'constant'
  config.optimizer.warmup_steps = 0
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip_norm = 0.0  # 0 disables clipping
  config.optimizer.momentum = 0.9  # used by sgd only

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 100
  config.train.steps = 3000
  config.train.eval_every = 250
  config.train.checkpoint_every = 1000
  config.train.seed = 0
  # Extras the harness applies (harness/regimen.py); 0 turns each off.
  config.train.label_smoothing = 0.0  # weight of the uniform distribution in the targets
  config.train.ema_decay = 0.0  # evaluate an EMA of the weights with this decay
  config.train.augment_shift = 0  # shift training examples by up to this many positions
  config.train.augment_noise = 0.0  # std of Gaussian noise added to training inputs
  # True: each chunk of eval_every steps is one lax.scan. False: one dispatch per step;
  # faster for convolutions on CPU, where XLA runs a conv inside a loop ~10x slower.
  config.train.scan_steps = True

  return config
