"""The compiled program: one seed's batch sampling, loss, train step, and chunks of steps.

Everything runs on device. A chunk of steps is one `lax.scan`, so the host syncs once per
chunk, not once per step. The functions here train one seed; harness.runners runs them for
K seeds (vmapped on accelerators, once per seed on CPU), always from one compile.
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

from harness.optimizers import with_hyperparams
from harness.regimen import Regimen
from harness.splits import Split

# (params, opt_state), and the weights' EMA when the regimen keeps one, of one seed (a
# leading seed axis when vmapped).
Carry = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class SeedKeys:
  """Independent randomness per seed: initialisation, data order, dropout."""
  init: jax.Array
  data: jax.Array
  dropout: jax.Array

  @classmethod
  def for_seeds(cls, seeds: list[int], stream: int = 0) -> 'SeedKeys':
    """`stream` (train.stream) other than 0 draws another data order and dropout for each
    seed, its initialisation kept: a change with no expected effect whose computation still
    differs (benchmark 4's real null). 0 is the seed's own stream, bit for bit."""
    keys = jnp.stack([jax.random.split(jax.random.key(s), 3) for s in seeds])
    if stream:
      fold = jax.vmap(lambda key: jax.random.fold_in(key, stream))
      return cls(keys[:, 0], fold(keys[:, 1]), fold(keys[:, 2]))
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
  """One seed's pure functions; harness.runners compiles them and runs them for K seeds
  (and for several sets of traced hyperparameters, which `init` puts in the carry)."""
  init: Callable[[jax.Array, dict[str, jax.Array]], Carry]
  steps_per_epoch: int
  epoch_state: Callable[[jax.Array, jax.Array], jax.Array]
  step: Callable[..., tuple]
  chunk: Callable[..., tuple]
  predict: Callable[..., jax.Array]
  weights: Callable[[Carry], Any]  # the carry's weights that predict: the EMA's, if kept


def build_program(kind: str, input_shape: tuple[int, ...], train: Split, graphdef: nnx.GraphDef, make_params: Callable[[jax.Array], Any],
                  tx: optax.GradientTransformation, batch_size: int,
                  place_batch: Callable[[jax.Array], jax.Array] = lambda x: x,
                  regimen: Regimen = Regimen()) -> Program:
  """Wires the model, optimiser (harness.optimizers.make_optimizer's) and data into one
  seed's functions; `place_batch` lays a sampled batch out over devices (harness.mesh);
  `regimen` adds label smoothing, a weight EMA and augmentation (each off by default, and
  then absent from the program)."""
  train_x = jnp.asarray(train.x)
  train_y = None if train.y is None else jnp.asarray(train.y)
  sampler = make_sampler(kind, input_shape, train_x, train_y, batch_size)
  ema = bool(regimen.ema_decay)

  def init(init_key: jax.Array, hyperparams: dict[str, jax.Array]) -> Carry:
    params = make_params(init_key)
    carry = params, with_hyperparams(tx.init(params), hyperparams)
    return carry + (jax.tree.map(jnp.copy, params),) if ema else carry

  def step(carry: Carry, keys: SeedKeys, step_index: jax.Array, epoch_state: jax.Array):
    params, opt_state = carry[:2]
    x, y = map(place_batch, sampler.batch(keys.data, epoch_state, step_index))
    if regimen.augments:
      x = regimen.augment(x, keys.data, step_index)
    dropout_key = jax.random.fold_in(keys.dropout, step_index)

    def logits_of(p):
      # Rngs are made inside the differentiated function: NNX forbids mutating their
      # counters from another trace level.
      return nnx.merge(graphdef, p)(x, train=True, rngs=nnx.Rngs(dropout=dropout_key))

    if regimen.label_smoothing:  # minimise the smoothed loss, report the plain one
      def smoothed_fn(p):
        logits = logits_of(p)
        return regimen.smoothed_loss(logits, y), train_loss(logits, y)
      (_, loss), grads = jax.value_and_grad(smoothed_fn, has_aux=True)(params)
    else:
      loss, grads = jax.value_and_grad(lambda p: train_loss(logits_of(p), y))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    carry = (params, opt_state) + ((regimen.average(carry[2], params, step_index),) if ema
                                   else ())
    return carry, (loss, optax.tree.norm(grads))

  def chunk(carry: Carry, keys: SeedKeys, start: jax.Array, length: int):
    """`length` steps in one lax.scan (one dispatch; see harness/runners.py for when)."""
    def body(state, step_index):
      carry_, epoch_state = state
      epoch_state = jax.lax.cond(step_index % sampler.steps_per_epoch == 0,
                                 lambda: sampler.epoch_state(keys.data, step_index),
                                 lambda: epoch_state)
      carry_, metrics = step(carry_, keys, step_index, epoch_state)
      return (carry_, epoch_state), metrics
    (carry, _), metrics = jax.lax.scan(body, (carry, sampler.epoch_state(keys.data, start)),
                                       start + jnp.arange(length))
    return carry, metrics

  def predict(params, x: jax.Array) -> jax.Array:
    """Logits for fixed-size batches of inputs on a leading axis: (batches, B, ...).

    Only logits leave the program: every metric is computed from them by the trusted scorer.
    """
    model = nnx.merge(graphdef, params)
    return jax.lax.map(lambda batch: model(batch, train=False).astype(jnp.float32), x)

  return Program(init=init, steps_per_epoch=sampler.steps_per_epoch,
                 epoch_state=sampler.epoch_state, step=step, chunk=chunk, predict=predict,
                 weights=lambda carry: carry[2] if ema else carry[0])


def predict_batches(x: np.ndarray, batch_size: int) -> tuple[jax.Array, int]:
  """Inputs cut into fixed-size batches, the last padded with zero rows (one compile); the
  number of real rows comes back so the padding can be dropped from the logits."""
  n = x.shape[0]
  batch_size = max(1, min(batch_size, n))
  n_batches = -(-n // batch_size)
  padded = np.concatenate([x, np.zeros((n_batches * batch_size - n,) + x.shape[1:], x.dtype)])
  return jnp.asarray(padded.reshape((n_batches, batch_size) + x.shape[1:])), n

