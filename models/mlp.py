"""Multi-layer perceptron: flatten, `depth` hidden layers of `width`, linear head."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from models import layers


class DenseBlock(nnx.Module):
  """Linear -> normalization -> activation -> dropout, plus an optional skip.

  The skip is only added when input and output widths match, so the first
  hidden layer (input size -> width) never has one.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    activation: str,
    normalization: str,
    dropout: float,
    residual: bool,
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
  ):
    self.linear = nnx.Linear(in_features, out_features, dtype=dtype, rngs=rngs)
    self.norm = layers.make_norm(normalization, out_features, dtype=dtype, rngs=rngs)
    self.activation = layers.get_activation(activation)
    self.dropout = nnx.Dropout(dropout)
    self.residual = residual and in_features == out_features

  def __call__(
    self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    y = self.linear(x)
    if self.norm is not None:
      y = self.norm(y)
    y = self.activation(y)
    y = self.dropout(y, deterministic=not train, rngs=rngs)
    if self.residual:
      y = x + y
    return y


class MLP(nnx.Module):
  """Flattens each example, applies `depth` DenseBlocks of `width`, then a linear head.

  depth=0 is logistic regression on the flattened input.
  """

  def __init__(
    self,
    width: int = 100,
    depth: int = 2,
    activation: str = 'relu',
    normalization: str = 'none',
    dropout: float = 0.0,
    residual: bool = False,
    dtype: str = 'float32',
    remat: bool = False,
    *,
    input_shape: tuple[int, ...],
    num_outputs: int,
    rngs: nnx.Rngs,
  ):
    self.dtype = layers.get_dtype(dtype)
    self.remat = remat
    in_features = math.prod(input_shape)
    blocks = []
    for _ in range(depth):
      blocks.append(
        DenseBlock(
          in_features,
          width,
          activation=activation,
          normalization=normalization,
          dropout=dropout,
          residual=residual,
          dtype=self.dtype,
          rngs=rngs,
        )
      )
      in_features = width
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(in_features, num_outputs, dtype=self.dtype, rngs=rngs)

  def __call__(
    self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    """Maps (B, *input_shape) to float32 logits (B, num_outputs)."""
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    for block in self.blocks:
      x = layers.call_block(block, x, train=train, rngs=rngs, remat=self.remat)
    return self.head(x).astype(jnp.float32)
