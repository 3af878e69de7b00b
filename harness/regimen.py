"""What training does beyond the model and the optimiser, read from `config.train`.

Label smoothing of the training loss, an exponential moving average (EMA) of the weights,
and augmentation of training batches (random shifts, additive Gaussian noise). They are
the harness's, applied from config values by trusted code: a candidate chooses numbers,
never code that sees the data. Augmentation touches the batches training samples and
nothing else: every prediction (validation, test) is of the inputs as given. With EMA on,
predictions are made with the averaged weights, and those are what a checkpoint resumes.

Every key is optional; its default (the field's) is off and leaves the compiled program
exactly what it was without the key, so earlier results replay bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

EMA_WARMUP = 10  # the average's decay at step t is min(ema_decay, (1 + t) / (EMA_WARMUP + t))
# Augmentation draws from this stream of the seed's data key: permutations fold in epoch
# numbers, which never reach it, so the two never share a key.
AUGMENT_STREAM = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Regimen:
  """config.train's training extras, checked; the defaults turn each off."""
  label_smoothing: float = 0.0  # weight of the uniform distribution in the training targets
  ema_decay: float = 0.0  # 0: no average; else evaluate an EMA of the weights with this decay
  augment_shift: int = 0  # each training example moved by up to this many positions per axis
  augment_noise: float = 0.0  # std of Gaussian noise added to each training input

  @classmethod
  def from_config(cls, train: Mapping[str, Any], kind: str,
                  input_shape: tuple[int, ...]) -> Regimen:
    """The regimen config.train asks for; ValueError naming the key when a value is bad."""
    values = {f.name: train.get(f.name, f.default) for f in dataclasses.fields(cls)}
    for name, value in values.items():
      if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f'train.{name} must be a finite number, got {value!r}')
    if not 0 <= values['label_smoothing'] < 1:
      raise ValueError(f'train.label_smoothing must be in [0, 1), got {values["label_smoothing"]}')
    if not 0 <= values['ema_decay'] < 1:
      raise ValueError(f'train.ema_decay must be in [0, 1), got {values["ema_decay"]}')
    if values['augment_noise'] < 0:
      raise ValueError(f'train.augment_noise must be >= 0, got {values["augment_noise"]}')
    shift = values['augment_shift']
    longest = max(input_shape[:-1], default=0)
    if not (isinstance(shift, int) and 0 <= shift < max(longest, 1)):
      raise ValueError(f'train.augment_shift must be an integer in [0, {max(longest, 1)}) '
                       f'for inputs of shape {input_shape}, got {shift!r}')
    regimen = cls(**values)
    if regimen.augments and kind != 'classification':
      raise ValueError(f'train.augment_shift and train.augment_noise apply to signals and '
                       f'images only, not to a {kind} task')
    return regimen

  @property
  def augments(self) -> bool:
    return bool(self.augment_shift or self.augment_noise)

  def augment(self, x: jax.Array, data_key: jax.Array, step: jax.Array) -> jax.Array:
    """A training batch (B, *spatial, channels), each example shifted along every spatial
    axis by its own draw in [-augment_shift, augment_shift] (zeros fill in), then noised."""
    key = jax.random.fold_in(jax.random.fold_in(data_key, AUGMENT_STREAM), step)
    axes = range(1, x.ndim - 1)
    shift_key, noise_key = jax.random.split(key)
    if self.augment_shift:
      for axis, axis_key in zip(axes, jax.random.split(shift_key, len(axes))):
        offsets = jax.random.randint(axis_key, (x.shape[0],), -self.augment_shift,
                                     self.augment_shift + 1)
        x = jax.vmap(lambda row, s, a=axis - 1: _translate(row, s, a))(x, offsets)
    if self.augment_noise:
      x = x + self.augment_noise * jax.random.normal(noise_key, x.shape, x.dtype)
    return x

  def smoothed_loss(self, logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy against targets smoothed towards uniform (what is minimised)."""
    labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]),
                                 self.label_smoothing)
    return optax.softmax_cross_entropy(logits, labels).mean()

  def average(self, ema: Any, params: Any, step: jax.Array) -> Any:
    """The EMA after the update of `step` (0-based); its decay ramps up over the first
    steps, so a short run's average is not anchored to the initial weights."""
    t = step.astype(jnp.float32)
    decay = jnp.minimum(self.ema_decay, (1.0 + t) / (EMA_WARMUP + t))
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def _translate(row: jax.Array, shift: jax.Array, axis: int) -> jax.Array:
  """`row` moved by `shift` positions along `axis`, zeros where nothing moved in."""
  n = row.shape[axis]
  source = jnp.arange(n) - shift
  inside = ((source >= 0) & (source < n)).reshape([n if a == axis else 1
                                                   for a in range(row.ndim)])
  return jnp.where(inside, jnp.roll(row, shift, axis=axis), 0).astype(row.dtype)


def _is_number(value: object) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)
