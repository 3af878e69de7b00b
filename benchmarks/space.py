"""The search space random search and Optuna TPE sample: the experiment's own knobs.

It is built from agent.editing.knobs.inventory of the starting experiment and the agent's
declared space (agent.editing.space), so the baselines search the knobs the agent's
proposer edits, in the categories it may tune, around the starting values (a Dim's `near`
or `sample`) inside the space's bounds. The model family is one more dimension (the MLP,
or the convolutional family the proposer switches to), with each family's capacity knobs
conditional on it; a family switch is rendered the way the proposer writes it (model keys
replaced by the target constructor's, one dispatch per step for a CNN).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from agent.editing import config_edit, knobs, space
from agent.editing.config_edit import ConfigEdit, Scalar
from agent.editing.space import Dim

FAMILY = 'model.name'
KERNELS = (3, 5, 7, 9)  # odd: 'SAME' padding is centred

LEFT_OUT = {
    'train.seed': 'held fixed: seeds are what every comparison pairs on',
    'train.eval_every': 'bookkeeping', 'train.checkpoint_every': 'bookkeeping',
    'train.scan_steps': 'efficiency only (set by the family: dispatch for a CNN on CPU)',
    'model.dtype': 'efficiency only', 'model.remat': 'efficiency only',
    'optimizer.name': 'the proposer never switches the optimiser',
    'optimizer.momentum': 'used by sgd only',
    'optimizer.warmup_steps': 'a stability remedy the proposer uses only on spikes or NaNs',
    'optimizer.grad_clip_norm': 'a stability remedy the proposer uses only on spikes or NaNs',
}


def _multiple(x: float, step: int) -> int:
  return max(step, int(round(x / step)) * step)


def _baseline(dim: Dim, start: Scalar, values: dict[str, Scalar],
              families: frozenset[str]) -> Dim | None:
  """The Dim as a baseline samples it: concrete bounds around `start`, for these families;
  None where it applies to neither."""
  applies = dim.families & families if dim.families else families
  if not applies:
    return None
  dim = dataclasses.replace(dim, families=frozenset() if applies == families else applies)
  if dim.kind == 'choice':
    return dim
  step = dim.step(values.get) if dim.kind == 'int' else 1
  if dim.near:
    snap = (lambda x: _multiple(x, step)) if dim.kind == 'int' else (lambda x: x)
    low, high = max(dim.low, snap(start / dim.near)), min(dim.high, snap(start * dim.near))
  elif dim.sample:
    low, high = dim.sample
  else:
    low, high = dim.bounds(values.get, start, step)
  return dataclasses.replace(dim, low=low, high=high, multiple=step, multiple_of='', per='',
                             near=0.0, sample=None)


def build(experiment: Path, conv_family: str) -> tuple[list[Dim], dict[str, str]]:
  """The searched dimensions and, for each tunable-looking knob left out, why."""
  inventory = knobs.inventory(experiment)
  values = {k.path: k.value for k in inventory}
  family = str(values[FAMILY])
  families = frozenset({family, conv_family})
  dims = [dataclasses.replace(space.BY_PATH[FAMILY], kind='choice',
                              choices=(family, conv_family))]
  left_out = {}
  for knob in inventory:
    if knob.path == FAMILY:
      continue
    declared = space.dim(knob.path)
    dim = (_baseline(declared, knob.value, values, families)
           if knob.path not in LEFT_OUT and declared and declared.searched else None)
    if dim is not None:
      dims.append(dim)
    else:
      left_out[knob.path] = LEFT_OUT.get(knob.path, 'held fixed: the data every method is '
                                         'judged on' if knob.category == 'data' else 'not tunable')
  conv = frozenset({conv_family})
  dims += [_baseline(space.BY_PATH['model.channels'], 0, values, families),
           dataclasses.replace(space.BY_PATH['model.kernel_size'], kind='choice',
                               choices=KERNELS, families=conv)]
  return dims, left_out


def _snap(dim: Dim, value: float) -> Scalar:
  if dim.kind == 'int':
    return int(min(dim.high, max(dim.low, round(value / dim.multiple) * dim.multiple)))
  return float(f'{value:.3g}')


def draw(dim: Dim, rng: np.random.Generator) -> Scalar:
  if dim.kind == 'choice':
    return dim.choices[int(rng.integers(len(dim.choices)))]
  if dim.kind == 'int' and dim.scale == 'linear':
    return int(rng.integers(dim.low, dim.high + 1))
  if dim.scale == 'log':
    return _snap(dim, math.exp(rng.uniform(math.log(dim.low), math.log(dim.high))))
  return _snap(dim, rng.uniform(dim.low, dim.high))


def suggest_one(dim: Dim, trial: Any) -> Scalar:
  """The same draw through an Optuna trial (define-by-run)."""
  if dim.kind == 'choice':
    return trial.suggest_categorical(dim.path, list(dim.choices))
  log = dim.scale == 'log'
  if dim.kind == 'int':
    return _snap(dim, trial.suggest_int(dim.path, int(dim.low), int(dim.high), log=log))
  return _snap(dim, trial.suggest_float(dim.path, dim.low, dim.high, log=log))


def sample(dims: list[Dim], rng: np.random.Generator) -> dict[str, Scalar]:
  family = draw(dims[0], rng)
  return {FAMILY: family, **{d.path: draw(d, rng) for d in dims[1:] if d.applies(family)}}


def suggest(dims: list[Dim], trial: Any) -> dict[str, Scalar]:
  family = suggest_one(dims[0], trial)
  return {FAMILY: family,
          **{d.path: suggest_one(d, trial) for d in dims[1:] if d.applies(family)}}


def _values(text: str) -> dict[str, Scalar]:
  module = config_edit.parse_module(text)
  return {path: config_edit.literal_value(stmt.body[0].value)
          for path, stmt in config_edit.config_assignments(module)}


def render(text: str, params: dict[str, Scalar]) -> str:
  """The experiment text with the sampled values written in (typed libcst edits)."""
  values = _values(text)
  family = params[FAMILY]
  edits: list[ConfigEdit] = []
  added: set[str] = set()
  if family != values[FAMILY]:
    target = knobs.model_signature(knobs.MODELS_DIR, str(family))
    present = [p.partition('.')[2] for p in values if p.startswith('model.')]
    edits.append(ConfigEdit(FAMILY, family))
    if values.get('train.scan_steps') is True:  # XLA:CPU runs a conv inside a scan ~10x slower
      edits.append(ConfigEdit('train.scan_steps', False))
    edits += [ConfigEdit(f'model.{k}', op='remove') for k in present
              if k != 'name' and k not in target]
    after = FAMILY
    for key, default in target.items():
      path = f'model.{key}'
      if key not in present and (path in params or isinstance(default, (bool, int, float, str))):
        edits.append(ConfigEdit(path, params.get(path, default), op='add', after=after))
        added.add(path)
      after = path if key in present or path in added else after
  edits += [ConfigEdit(path, value) for path, value in params.items()
            if path != FAMILY and path not in added]
  return config_edit.apply_edits(text, edits)
