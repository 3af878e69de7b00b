"""Decoder-only causal transformer for character-level language modelling."""

import jax
import jax.numpy as jnp
from flax import nnx

from models import layers


class TransformerBlock(nnx.Module):
  """Pre-norm block: x + attention(norm(x)), then x + mlp(norm(x)).

  Dropout is applied to each branch's output before it joins the residual
  stream; attention weights are not dropped (one dropout knob in the config).
  """

  def __init__(
    self,
    width: int,
    *,
    num_heads: int,
    mlp_ratio: float,
    activation: str,
    normalization: str,
    dropout: float,
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
  ):
    hidden = int(mlp_ratio * width)
    self.attention_norm = layers.make_norm(normalization, width, dtype=dtype, rngs=rngs)
    # keep_rngs=False: the module must not store RNG state (training is
    # functional over nnx.Param only); decode=False: no autoregressive cache.
    self.attention = nnx.MultiHeadAttention(
      num_heads=num_heads,
      in_features=width,
      dtype=dtype,
      decode=False,
      keep_rngs=False,
      rngs=rngs,
    )
    self.mlp_norm = layers.make_norm(normalization, width, dtype=dtype, rngs=rngs)
    self.mlp_in = nnx.Linear(width, hidden, dtype=dtype, rngs=rngs)
    self.activation = layers.get_activation(activation)
    self.mlp_out = nnx.Linear(hidden, width, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(
    self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    length = x.shape[-2]
    # True where a query position may attend to a key position; broadcasts
    # over the batch and head axes.
    causal_mask = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))

    y = x
    if self.attention_norm is not None:
      y = self.attention_norm(y)
    y = self.attention(y, mask=causal_mask, decode=False)
    x = x + self.dropout(y, deterministic=not train, rngs=rngs)

    y = x
    if self.mlp_norm is not None:
      y = self.mlp_norm(y)
    y = self.mlp_out(self.activation(self.mlp_in(y)))
    x = x + self.dropout(y, deterministic=not train, rngs=rngs)
    return x


class Transformer(nnx.Module):
  """Causal character LM: (B, T) int tokens -> (B, T, num_outputs) float32 logits.

  num_outputs is the vocabulary size (input and output); input_shape[0] is the
  longest sequence, i.e. the size of the learned positional embedding.
  Sequences shorter than that are fine.
  """

  def __init__(
    self,
    width: int = 64,
    depth: int = 2,
    num_heads: int = 4,
    mlp_ratio: float = 4,
    activation: str = 'gelu',
    normalization: str = 'layernorm',
    dropout: float = 0.0,
    dtype: str = 'float32',
    remat: bool = False,
    *,
    input_shape: tuple[int, ...],
    num_outputs: int,
    rngs: nnx.Rngs,
  ):
    if len(input_shape) != 1:
      raise ValueError(f'Transformer expects input_shape (seq_len,), got {input_shape}.')
    self.dtype = layers.get_dtype(dtype)
    self.remat = remat
    self.max_length = input_shape[0]
    self.token_embed = nnx.Embed(num_outputs, width, dtype=self.dtype, rngs=rngs)
    self.position_embed = nnx.Embed(input_shape[0], width, dtype=self.dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    blocks = []
    for _ in range(depth):
      blocks.append(
        TransformerBlock(
          width,
          num_heads=num_heads,
          mlp_ratio=mlp_ratio,
          activation=activation,
          normalization=normalization,
          dropout=dropout,
          dtype=self.dtype,
          rngs=rngs,
        )
      )
    self.blocks = nnx.List(blocks)
    self.final_norm = layers.make_norm(normalization, width, dtype=self.dtype, rngs=rngs)
    self.head = nnx.Linear(width, num_outputs, dtype=self.dtype, rngs=rngs)

  def __call__(
    self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
  ) -> jax.Array:
    if x.shape[-1] > self.max_length:
      raise ValueError(f'Sequence length {x.shape[-1]} exceeds max_length {self.max_length}.')
    positions = jnp.arange(x.shape[-1])
    h = self.token_embed(x) + self.position_embed(positions)
    h = self.dropout(h, deterministic=not train, rngs=rngs)
    for block in self.blocks:
      h = layers.call_block(block, h, train=train, rngs=rngs, remat=self.remat)
    if self.final_norm is not None:
      h = self.final_norm(h)
    return self.head(h).astype(jnp.float32)
