"""MNIST-1D with the 1-D CNN the agent's to_cnn1d proposal writes (channels 32, depth 3,
kernel 5, flatten pooling, one dispatch per step): the model the agent ends up training."""

import ml_collections

from experiments import mnist1d_mlp


def get_config() -> ml_collections.ConfigDict:
  config = mnist1d_mlp.get_config()
  config.model = ml_collections.ConfigDict({
      'name': 'cnn1d', 'channels': 32, 'depth': 3, 'kernel_size': 5, 'activation': 'relu',
      'normalization': 'none', 'dropout': 0.0, 'residual': False, 'dtype': 'float32',
      'remat': False, 'pooling': 'flatten'})
  config.train.scan_steps = False  # XLA:CPU runs a conv inside a scan ~10x slower
  return config
