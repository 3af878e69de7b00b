"""The compiled program: per-seed batch sampling, loss, train step, and chunks of steps.

Everything runs on device. A chunk of steps is one `lax.scan`, so the host syncs once per
chunk, not once per step. K seeds are one `jax.vmap` over the leading axis of the
parameters, optimiser state and keys, so K seeds cost one compile and one program.
Batches are drawn on device from the step number, which makes a resumed run replay the
same data order as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from harness.splits import Split

Carry = tuple[Any, Any]  # (params, opt_state), each with a leading seed axis


@dataclasses.dataclass(frozen=True)
class SeedKeys:
  """Independent randomness per seed: initialisation, data order, dropout."""
  init: jax.Array
  data: jax.Array
  dropout: jax.Array

  @classmethod
  def for_seeds(cls, seeds: list[int]) -> 'SeedKeys':
    keys = jnp.stack([jax.random.split(jax.random.key(s), 3) for s in seeds])
    return cls(keys[:, 0], keys[:, 1], keys[:, 2])


jax.tree_util.register_dataclass(SeedKeys, data_fields=['init', 'data', 'dropout'],
                                 meta_fields=[])


@dataclasses.dataclass(frozen=True)
class Sampler:
  """Draws one seed's batches on device from (data_key, step, epoch state).

  Classification samples without replacement: the epoch's permutation is the epoch state,
  recomputed only when an epoch starts (a sort per step would dominate small models).
  The language model draws random windows of seq_len + 1 bytes; it has no epoch state.
  """
  epoch_state: Callable[[jax.Array, jax.Array], jax.Array]
  batch: Callable[[jax.Array, jax.Array, jax.Array], tuple]
  steps_per_epoch: int


def make_sampler(kind: str, input_shape: tuple[int, ...], train_x: jax.Array, train_y: jax.Array | None,
                 batch_size: int) -> Sampler:
  if kind == 'language_model':
    seq_len = input_shape[0]
    max_start = train_x.shape[0] - seq_len - 1
    offsets = jnp.arange(seq_len + 1)

    def lm_batch(key: jax.Array, _: jax.Array, step: jax.Array) -> tuple:
      starts = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, max_start)
      windows = train_x[starts[:, None] + offsets]
      return windows[:, :-1], windows[:, 1:]
    return Sampler(lambda key, step: jnp.zeros((), jnp.int32), lm_batch, 1)

  n = train_x.shape[0]
  steps_per_epoch = n // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'train.batch_size {batch_size} exceeds the {n} training examples')

  def permutation(key: jax.Array, step: jax.Array) -> jax.Array:
    return jax.random.permutation(jax.random.fold_in(key, step // steps_per_epoch), n)

  def classification_batch(key: jax.Array, perm: jax.Array, step: jax.Array) -> tuple:
    idx = jax.lax.dynamic_slice(perm, ((step % steps_per_epoch) * batch_size,), (batch_size,))
    return train_x[idx], train_y[idx]
  return Sampler(permutation, classification_batch, steps_per_epoch)


def train_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean cross-entropy (nats) over the batch (and positions, for the LM): what training
  minimises; it is never the judged metric, which the trusted scorer computes."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@dataclasses.dataclass(frozen=True)
class Program:
  """The pure functions the training loop compiles."""
  init: Callable[[jax.Array], Any]
  steps_per_epoch: int
  epoch_states: Callable[[jax.Array, jax.Array], jax.Array]
  step: Callable[..., tuple]
  chunk: Callable[..., tuple]
  predict: Callable[..., jax.Array]


def build_program(kind: str, input_shape: tuple[int, ...], train: Split, graphdef: nnx.GraphDef, make_params: Callable[[jax.Array], Any],
                  tx: optax.GradientTransformation, batch_size: int) -> Program:
  """Wires the model, optimiser and data into per-seed functions vmapped over seeds."""
  train_x = jnp.asarray(train.x)
  train_y = None if train.y is None else jnp.asarray(train.y)
  sampler = make_sampler(kind, input_shape, train_x, train_y, batch_size)
  epoch_states = jax.vmap(sampler.epoch_state, in_axes=(0, None))

  def init(init_key: jax.Array) -> Carry:
    params = make_params(init_key)
    return params, tx.init(params)

  def seed_step(params, opt_state, keys: SeedKeys, epoch_state: jax.Array, step: jax.Array):
    x, y = sampler.batch(keys.data, epoch_state, step)
    dropout_key = jax.random.fold_in(keys.dropout, step)

    def loss_fn(p):
      # Rngs are made inside the differentiated function: NNX forbids mutating their
      # counters from another trace level.
      logits = nnx.merge(graphdef, p)(x, train=True, rngs=nnx.Rngs(dropout=dropout_key))
      return train_loss(logits, y)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

  def step(carry: Carry, keys: SeedKeys, step_index: jax.Array, epoch_state: jax.Array):
    params, opt_state, loss, grad_norm = jax.vmap(seed_step, in_axes=(0, 0, 0, 0, None))(
        *carry, keys, epoch_state, step_index)
    return (params, opt_state), (loss, grad_norm)

  def chunk(carry: Carry, keys: SeedKeys, start: jax.Array, length: int):
    """`length` steps in one lax.scan (one dispatch; see harness/runners.py for when)."""
    def body(state, step_index):
      carry_, epoch_state = state
      epoch_state = jax.lax.cond(step_index % sampler.steps_per_epoch == 0,
                                 lambda: epoch_states(keys.data, step_index),
                                 lambda: epoch_state)
      carry_, metrics = step(carry_, keys, step_index, epoch_state)
      return (carry_, epoch_state), metrics
    (carry, _), metrics = jax.lax.scan(body, (carry, epoch_states(keys.data, start)),
                                       start + jnp.arange(length))
    return carry, metrics

  def predict(params, x: jax.Array) -> jax.Array:
    """Logits for fixed-size batches of inputs on a leading axis, per seed: (K, batches, B, ...).

    Only logits leave the program: every metric is computed from them by the trusted scorer.
    """
    def seed_predict(p):
      model = nnx.merge(graphdef, p)
      return jax.lax.map(lambda batch: model(batch, train=False).astype(jnp.float32), x)
    return jax.vmap(seed_predict)(params)

  return Program(init=jax.vmap(init), steps_per_epoch=sampler.steps_per_epoch,
                 epoch_states=epoch_states, step=step, chunk=chunk,
                 predict=jax.jit(predict))


def predict_batches(x: np.ndarray, batch_size: int) -> tuple[jax.Array, int]:
  """Inputs cut into fixed-size batches, the last padded with zero rows (one compile); the
  number of real rows comes back so the padding can be dropped from the logits."""
  n = x.shape[0]
  batch_size = max(1, min(batch_size, n))
  n_batches = -(-n // batch_size)
  padded = np.concatenate([x, np.zeros((n_batches * batch_size - n,) + x.shape[1:], x.dtype)])
  return jnp.asarray(padded.reshape((n_batches, batch_size) + x.shape[1:])), n


def predict(program: 'Program', params, x: np.ndarray, batch_size: int) -> np.ndarray:
  """Host copy of the per-seed logits for every row of x: (K, N, ...)."""
  batches, n = predict_batches(x, batch_size)
  logits = np.asarray(program.predict(params, batches))
  return logits.reshape((logits.shape[0], -1) + logits.shape[3:])[:, :n]
