"""optax optimisers and learning-rate schedules chosen by name from the config.

The numeric hyperparameters in `TRACED` (the peak learning rate, weight decay, clipping
norm) are not baked into the compiled program: `optax.inject_hyperparams` keeps them in the
optimiser state, so one compiled program trains any of their values. That is what lets
candidates that differ only in them train together (harness.train's members), each with
its own values in its own state; a run alone uses the same program with one set of values.
The optimiser's structure is therefore the same whatever the values: weight decay is
always applied (0 adds nothing) and clipping always runs (0 means an infinite bound).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ('constant', 'cosine', 'linear')
OPTIMIZERS = ('adam', 'adamw', 'sgd', 'lion', 'rmsprop')
TRACED = ('learning_rate', 'weight_decay', 'grad_clip_norm')  # keys under config.optimizer


def make_schedule(config: ml_collections.ConfigDict, total_steps: int,
                  peak: float | None = None) -> optax.Schedule:
  """Linear warmup to the peak (config.learning_rate unless given), then the named decay to
  zero (or none)."""
  if config.schedule not in SCHEDULES:
    raise ValueError(f'unknown optimizer.schedule {config.schedule!r}; known: {SCHEDULES}')
  warmup = int(config.warmup_steps)
  if not 0 <= warmup < total_steps:
    raise ValueError(f'optimizer.warmup_steps must be in [0, train.steps), got {warmup}')
  peak = config.learning_rate if peak is None else peak
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total_steps)
  decay_steps = total_steps - warmup
  tail = (optax.constant_schedule(peak) if config.schedule == 'constant'
          else optax.linear_schedule(peak, 0.0, decay_steps))
  if warmup == 0:
    return tail
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), tail], [warmup])


def hyperparams(config: ml_collections.ConfigDict) -> dict[str, float]:
  """The traced values of an optimizer config, checked."""
  values = {key: float(config[key]) for key in TRACED}
  check_hyperparams(values)
  return values


def check_hyperparams(values: Mapping[str, float]) -> None:
  unknown = sorted(set(values) - set(TRACED))
  if unknown:
    raise ValueError(f'optimizer.{unknown[0]} is not a traced hyperparameter; traced: {TRACED}')
  if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
             for v in values.values()):
    raise ValueError(f'optimizer hyperparameters must be finite numbers, got {dict(values)}')
  if values.get('learning_rate', 1.0) <= 0:
    raise ValueError(f'optimizer.learning_rate must be > 0, got {values["learning_rate"]}')
  negative = [k for k in ('weight_decay', 'grad_clip_norm') if values.get(k, 0.0) < 0]
  if negative:
    raise ValueError(f'optimizer.{negative[0]} must be >= 0, got {values[negative[0]]}')


def make_optimizer(config: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """Builds the optimiser named by config.name, global-norm clipping first; its traced
  hyperparameters start at the config's values (`with_hyperparams` sets others)."""
  if config.name not in OPTIMIZERS:
    raise ValueError(f'unknown optimizer.name {config.name!r}; known: {OPTIMIZERS}')
  make_schedule(config, total_steps)  # a bad schedule fails here, with its own message

  def factory(learning_rate, weight_decay, grad_clip_norm) -> optax.GradientTransformation:
    shape = make_schedule(config, total_steps, peak=1.0)  # optax's need a concrete peak
    lr = lambda count: learning_rate * shape(count)
    if config.name == 'adamw':
      tx = optax.adamw(lr, weight_decay=weight_decay)
    elif config.name == 'lion':
      tx = optax.lion(lr, weight_decay=weight_decay)
    else:
      base = {'adam': lambda: optax.adam(lr),
              'sgd': lambda: optax.sgd(lr, momentum=config.momentum),
              'rmsprop': lambda: optax.rmsprop(lr)}[config.name]()
      tx = optax.chain(optax.add_decayed_weights(weight_decay), base)
    bound = jnp.where(grad_clip_norm > 0, grad_clip_norm, jnp.inf)
    return optax.chain(optax.clip_by_global_norm(bound), tx)

  return optax.inject_hyperparams(factory)(**hyperparams(config))


def with_hyperparams(opt_state: Any, values: Mapping[str, Any]) -> Any:
  """The state of `make_optimizer`'s optimiser with its traced hyperparameters replaced."""
  current = opt_state.hyperparams
  return opt_state._replace(hyperparams={
      **current, **{k: jnp.asarray(v, current[k].dtype) for k, v in values.items()}})
