"""digits with the 2-D CNN the agent's to_cnn2d proposal writes (channels 32, depth 3,
kernel 5, flatten pooling, one dispatch per step)."""

import ml_collections

from experiments import digits_mlp


def get_config() -> ml_collections.ConfigDict:
  config = digits_mlp.get_config()
  config.model = ml_collections.ConfigDict({
      'name': 'cnn2d', 'channels': 32, 'depth': 3, 'kernel_size': 5, 'activation': 'relu',
      'normalization': 'none', 'dropout': 0.0, 'residual': False, 'dtype': 'float32',
      'remat': False, 'pooling': 'flatten'})
  config.train.scan_steps = False  # XLA:CPU runs a conv inside a scan ~10x slower
  return config
