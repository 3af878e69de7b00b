"""Convolutional classifiers for sequences (CNN1D) and images (CNN2D).

Convolutions use 'SAME' padding and stride 1, so a layer keeps its input's
spatial size unless `downsample` > 1 max-pools after each block (window and
stride `downsample`: half the positions per block at 2, a wider receptive field
and less compute for the next); `pooling` decides how the final feature map
becomes the vector that the linear head sees.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from models import layers

POOLINGS: tuple[str, ...] = ('mean', 'max', 'flatten')


class ConvBlock(nnx.Module):
  """Conv -> normalization -> activation -> dropout, plus an optional skip.

  Normalization is over channels only (the last axis). The skip is only added
  when input and output channels match, so the first layer never has one.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    kernel_size: tuple[int, ...],
    activation: str,
    normalization: str,
    dropout: float,
    residual: bool,
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
  ):
    self.conv = nnx.Conv(
      in_features, out_features, kernel_size, padding='SAME', dtype=dtype, rngs=rngs
    )
    self.norm = layers.make_norm(normalization, out_features, dtype=dtype, rngs=rngs)
    self.activation = layers.get_activation(activation)
    self.dropout = nnx.Dropout(dropout)
    self.residual = residual and in_features == out_features

  def __call__(
    self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    y = self.conv(x)
    if self.norm is not None:
      y = self.norm(y)
    y = self.activation(y)
    y = self.dropout(y, deterministic=not train, rngs=rngs)
    if self.residual:
      y = x + y
    return y


class ConvNet(nnx.Module):
  """`depth` ConvBlocks of `channels`, pooling, then a linear head.

  Subclasses fix `spatial_dims`. The input is (B, *spatial, C); a missing
  channel axis (input_shape of length spatial_dims) is treated as C=1.
  """

  spatial_dims: int = 0

  def __init__(
    self,
    channels: int = 32,
    depth: int = 3,
    kernel_size: int = 5,
    activation: str = 'relu',
    normalization: str = 'none',
    dropout: float = 0.0,
    residual: bool = False,
    dtype: str = 'float32',
    remat: bool = False,
    pooling: str = 'flatten',
    downsample: int = 1,
    *,
    input_shape: tuple[int, ...],
    num_outputs: int,
    rngs: nnx.Rngs,
  ):
    if len(input_shape) not in (self.spatial_dims, self.spatial_dims + 1):
      raise ValueError(
        f'{type(self).__name__} expects input_shape of {self.spatial_dims} spatial '
        f'dims plus an optional channel dim, got {input_shape}.'
      )
    if pooling not in POOLINGS:
      raise ValueError(f'Unknown pooling {pooling!r}; known: {list(POOLINGS)}.')
    if not (isinstance(downsample, int) and downsample >= 1):
      raise ValueError(f'downsample must be an integer >= 1, got {downsample!r}.')
    self.dtype = layers.get_dtype(dtype)
    self.remat = remat
    self.pooling = pooling
    self.downsample = downsample
    spatial_shape = tuple(input_shape[: self.spatial_dims])
    self.add_channel_axis = len(input_shape) == self.spatial_dims
    in_features = 1 if self.add_channel_axis else input_shape[-1]
    blocks = []
    for _ in range(depth):
      blocks.append(
        ConvBlock(
          in_features,
          channels,
          kernel_size=(kernel_size,) * self.spatial_dims,
          activation=activation,
          normalization=normalization,
          dropout=dropout,
          residual=residual,
          dtype=self.dtype,
          rngs=rngs,
        )
      )
      in_features = channels
      if downsample > 1:  # 'SAME' pooling: ceil(size / downsample) positions remain
        spatial_shape = tuple(-(-n // downsample) for n in spatial_shape)
    self.blocks = nnx.List(blocks)
    if pooling == 'flatten':
      head_features = math.prod(spatial_shape) * in_features
    else:
      head_features = in_features
    self.head = nnx.Linear(head_features, num_outputs, dtype=self.dtype, rngs=rngs)

  def __call__(
    self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    """Maps (B, *input_shape) to float32 logits (B, num_outputs)."""
    x = x.astype(self.dtype)
    if self.add_channel_axis:
      x = x[..., None]
    window = (self.downsample,) * self.spatial_dims
    for block in self.blocks:
      x = layers.call_block(block, x, train=train, rngs=rngs, remat=self.remat)
      if self.downsample > 1:
        x = nnx.max_pool(x, window, strides=window, padding='SAME')
    spatial_axes = tuple(range(1, 1 + self.spatial_dims))
    if self.pooling == 'mean':
      x = x.mean(axis=spatial_axes)
    elif self.pooling == 'max':
      x = x.max(axis=spatial_axes)
    else:
      x = x.reshape(x.shape[0], -1)
    return self.head(x).astype(jnp.float32)


class CNN1D(ConvNet):
  """Convolutions over sequences: input (B, L, C), e.g. MNIST-1D's (40, 1)."""

  spatial_dims = 1


class CNN2D(ConvNet):
  """Convolutions over images: input (B, H, W, C), e.g. digits' (8, 8, 1)."""

  spatial_dims = 2
