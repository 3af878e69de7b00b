"""Character-level language model on the Python documentation's topic texts (pydoc_data).

Metric: validation bits per byte (lower is better).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the experiment's config; every key can be overridden as --config.a.b=v."""
  config = ml_collections.ConfigDict()

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'charlm'
  config.dataset.seq_len = 64
  config.dataset.val_fraction = 0.02  # small: every evaluation ships all its logits
  config.dataset.test_fraction = 0.02

  config.model = ml_collections.ConfigDict()
  config.model.name = 'transformer'
  config.model.width = 64
  config.model.depth = 2
  config.model.num_heads = 4
  config.model.mlp_ratio = 4
  config.model.activation = 'gelu'
  config.model.normalization = 'layernorm'
  config.model.dropout = 0.0
  config.model.dtype = 'float32'
  config.model.remat = False

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = 3e-3
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_steps = 50
  config.optimizer.weight_decay = 1e-4
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.momentum = 0.9  # used by sgd only

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32
  config.train.steps = 500
  config.train.eval_every = 100
  config.train.checkpoint_every = 500
  config.train.seed = 0
  # True: each chunk of eval_every steps is one lax.scan. False: one dispatch per step;
  # faster for convolutions on CPU, where XLA runs a conv inside a loop ~10x slower.
  config.train.scan_steps = False

  return config
