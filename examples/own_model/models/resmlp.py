"""A residual MLP of the user's own (not one of the shipped families): an input projection
to `hidden` units, `blocks` pre-norm residual blocks (norm -> expand -> act -> dropout ->
project back), and a linear head."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS = {'relu': jax.nn.relu, 'gelu': jax.nn.gelu, 'silu': jax.nn.silu}


class Block(nnx.Module):
  """x + W2 act(W1 norm(x)): the width stays `hidden`, the inside is `expand` times wider."""

  def __init__(self, hidden: int, expand: int, act: str, drop_rate: float, use_norm: bool,
               rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(hidden, rngs=rngs) if use_norm else None
    self.up = nnx.Linear(hidden, hidden * expand, rngs=rngs)
    self.down = nnx.Linear(hidden * expand, hidden, rngs=rngs)
    self.act = ACTIVATIONS[act]
    self.drop = nnx.Dropout(drop_rate)

  def __call__(self, x: jax.Array, *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    y = self.norm(x) if self.norm is not None else x
    y = self.drop(self.act(self.up(y)), deterministic=not train, rngs=rngs)
    return x + self.down(y)


class ResidualMLP(nnx.Module):
  """Flatten, project to `hidden`, `blocks` residual blocks, linear head."""

  def __init__(self, hidden: int = 32, blocks: int = 1, expand: int = 2, act: str = 'relu',
               drop_rate: float = 0.0, use_norm: bool = False, *,
               input_shape: tuple[int, ...], num_outputs: int, rngs: nnx.Rngs):
    self.embed = nnx.Linear(math.prod(input_shape), hidden, rngs=rngs)
    self.layers = nnx.List([Block(hidden, expand, act, drop_rate, use_norm, rngs)
                            for _ in range(blocks)])
    self.head = nnx.Linear(hidden, num_outputs, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    x = self.embed(x.reshape(x.shape[0], -1))
    for block in self.layers:
      x = block(x, train=train, rngs=rngs)
    return self.head(x).astype(jnp.float32)
