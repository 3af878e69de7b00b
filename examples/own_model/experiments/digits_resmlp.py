"""scikit-learn's 8x8 digits with a residual MLP of one's own (models/resmlp.py): the model
keys are its constructor's own names (`hidden`, `blocks`); `drop_rate` and `use_norm` stay
at the constructor's defaults."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'digits'
  config.dataset.val_fraction = 0.15
  config.dataset.test_fraction = 0.2
  config.dataset.split_seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = 'resmlp'
  config.model.hidden = 32
  config.model.blocks = 1
  config.model.act = 'relu'

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 3e-3
  config.optimizer.schedule = 'constant'
  config.optimizer.warmup_steps = 0
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip_norm = 0.0

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 64
  config.train.steps = 300
  config.train.eval_every = 50
  config.train.checkpoint_every = 300
  config.train.seed = 0
  config.train.scan_steps = True  # chunks of eval_every steps as one lax.scan

  return config
