"""Pieces shared by every model family: name lookups, normalization, remat.

Every structural choice arrives as a string in the config, so the lookups here
turn names into functions, dtypes and modules, and fail loudly on a typo.
"""

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  'relu': jax.nn.relu,
  'gelu': jax.nn.gelu,
  'silu': jax.nn.silu,
  'tanh': jnp.tanh,
  'elu': jax.nn.elu,
}

NORMALIZATIONS: tuple[str, ...] = ('none', 'layernorm', 'rmsnorm')

DTYPES: dict[str, jnp.dtype] = {
  'float32': jnp.float32,
  'bfloat16': jnp.bfloat16,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation function called `name`."""
  if name not in ACTIVATIONS:
    raise ValueError(f'Unknown activation {name!r}; known: {sorted(ACTIVATIONS)}.')
  return ACTIVATIONS[name]


def get_dtype(name: str) -> jnp.dtype:
  """Returns the compute dtype called `name`; parameters always stay float32."""
  if name not in DTYPES:
    raise ValueError(f'Unknown dtype {name!r}; known: {sorted(DTYPES)}.')
  return DTYPES[name]


def make_norm(
  name: str, num_features: int, *, dtype: jnp.dtype, rngs: nnx.Rngs
) -> nnx.Module | None:
  """Returns a normalization over the last axis, or None for 'none'.

  There is no BatchNorm on purpose: training is functional over parameters
  only, so a model must not carry mutable batch statistics.
  """
  if name == 'none':
    return None
  if name == 'layernorm':
    return nnx.LayerNorm(num_features, dtype=dtype, rngs=rngs)
  if name == 'rmsnorm':
    return nnx.RMSNorm(num_features, dtype=dtype, rngs=rngs)
  raise ValueError(f'Unknown normalization {name!r}; known: {list(NORMALIZATIONS)}.')


def _call_block(
  block: nnx.Module, x: jax.Array, train: bool, rngs: nnx.Rngs | None
) -> jax.Array:
  return block(x, train=train, rngs=rngs)


# `train` is a Python bool that decides whether dropout runs, so it is static.
# graph_updates=False: with the default (True) a rematted block fails when the
# model was created outside the trace that calls it (closures under jax.jit,
# and nnx.jit); parameters are not changed inside a block, so nothing is lost.
_remat_call_block = nnx.remat(_call_block, static_argnums=(2,), graph_updates=False)


def call_block(
  block: nnx.Module,
  x: jax.Array,
  *,
  train: bool,
  rngs: nnx.Rngs | None,
  remat: bool,
) -> jax.Array:
  """Applies `block`, with gradient checkpointing if `remat` (same numbers)."""
  if remat:
    return _remat_call_block(block, x, train, rngs)
  return _call_block(block, x, train, rngs)
