"""optax optimisers and learning-rate schedules chosen by name from the config."""

from __future__ import annotations

import ml_collections
import optax

SCHEDULES = ('constant', 'cosine', 'linear')
OPTIMIZERS = ('adam', 'adamw', 'sgd', 'lion', 'rmsprop')


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to config.learning_rate, then the named decay to zero (or none)."""
  if config.schedule not in SCHEDULES:
    raise ValueError(f'unknown optimizer.schedule {config.schedule!r}; known: {SCHEDULES}')
  if config.learning_rate <= 0:
    raise ValueError(f'optimizer.learning_rate must be > 0, got {config.learning_rate}')
  warmup = int(config.warmup_steps)
  if not 0 <= warmup < total_steps:
    raise ValueError(f'optimizer.warmup_steps must be in [0, train.steps), got {warmup}')
  peak = config.learning_rate
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total_steps)
  decay_steps = total_steps - warmup
  tail = (optax.constant_schedule(peak) if config.schedule == 'constant'
          else optax.linear_schedule(peak, 0.0, decay_steps))
  if warmup == 0:
    return tail
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), tail], [warmup])


def make_optimizer(config: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """Builds the optimiser named by config.name, with optional global-norm clipping."""
  lr = make_schedule(config, total_steps)
  wd = config.weight_decay
  if config.name == 'adam':
    tx = optax.adam(lr) if wd == 0 else optax.chain(optax.add_decayed_weights(wd),
                                                     optax.adam(lr))
  elif config.name == 'adamw':
    tx = optax.adamw(lr, weight_decay=wd)
  elif config.name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=config.momentum))
  elif config.name == 'lion':
    tx = optax.lion(lr, weight_decay=wd)
  elif config.name == 'rmsprop':
    tx = optax.chain(optax.add_decayed_weights(wd), optax.rmsprop(lr))
  else:
    raise ValueError(f'unknown optimizer.name {config.name!r}; known: {OPTIMIZERS}')
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx
