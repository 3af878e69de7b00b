"""The search space random search and Optuna TPE sample: the experiment's own knobs.

It is built from agent.editing.knobs.inventory of the starting experiment, so the baselines search
the knobs the agent's proposer edits, in the categories it may tune, with ranges around the
starting values inside the proposer's hard bounds. The model family is one more dimension
(the MLP, or the convolutional family the proposer switches to), with each family's
capacity knobs conditional on it; a family switch is rendered the way the proposer writes
it (model keys replaced by the target constructor's, one dispatch per step for a CNN).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from agent.editing import config_edit, knobs
from agent.editing.config_edit import ConfigEdit, Scalar
from agent.proposing import heuristic as h

MODELS_DIR = Path(__file__).resolve().parent.parent / 'models'
FAMILY = 'model.name'

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


@dataclasses.dataclass(frozen=True)
class Dim:
  """One searched knob; ints are multiples of `step`; `family` limits it to one model family."""
  path: str
  kind: str  # 'log' | 'int_log' | 'int' | 'uniform' | 'choice'
  low: float = 0.0
  high: float = 0.0
  choices: tuple[Scalar, ...] = ()
  step: int = 1
  family: str | None = None

  def describe(self) -> str:
    where = f' ({self.family} only)' if self.family else ''
    if self.kind == 'choice':
      return ', '.join(config_edit.literal_code(c) for c in self.choices) + where
    scale = ' log' if 'log' in self.kind else ''
    step = f', step {self.step}' if self.step > 1 else ''
    return f'[{self.low:g}, {self.high:g}]{scale}{step}{where}'

  def snap(self, value: float) -> Scalar:
    if self.kind in ('int', 'int_log'):
      return int(min(self.high, max(self.low, round(value / self.step) * self.step)))
    return float(f'{value:.3g}')

  def draw(self, rng: np.random.Generator) -> Scalar:
    if self.kind == 'choice':
      return self.choices[int(rng.integers(len(self.choices)))]
    if self.kind == 'int':
      return int(rng.integers(self.low, self.high + 1))
    if 'log' in self.kind:
      return self.snap(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
    return self.snap(rng.uniform(self.low, self.high))

  def suggest(self, trial: Any) -> Scalar:
    """The same draw through an Optuna trial (define-by-run)."""
    if self.kind == 'choice':
      return trial.suggest_categorical(self.path, list(self.choices))
    if self.kind in ('int', 'int_log'):
      return self.snap(trial.suggest_int(self.path, int(self.low), int(self.high),
                                         log=self.kind == 'int_log'))
    return self.snap(trial.suggest_float(self.path, self.low, self.high, log=self.kind == 'log'))


def _multiple(x: float, step: int) -> int:
  return max(step, int(round(x / step)) * step)


def _range(knob: knobs.Knob, values: dict[str, Scalar]) -> Dim | None:
  """The range for one knob, or None when it is not searched."""
  v, path, key = knob.value, knob.path, knob.key
  if key == 'learning_rate':
    return Dim(path, 'log', max(h.LR_MIN, v / 10), min(h.LR_MAX, v * 10))
  if key == 'weight_decay':
    return Dim(path, 'log', 1e-6, h.MAX_WEIGHT_DECAY)
  if key == 'dropout':
    return Dim(path, 'uniform', 0.0, h.MAX_DROPOUT)
  if key == 'schedule':
    return Dim(path, 'choice', choices=('constant', 'cosine'))
  if key == 'width':
    return Dim(path, 'int_log', _multiple(v / 4, 8), min(h.MAX_WIDTH, _multiple(v * 4, 8)),
               step=8, family='mlp')
  if key == 'depth':
    return Dim(path, 'int', 1, 4)
  if key == 'batch_size':
    return Dim(path, 'int_log', max(h.MIN_BATCH, _multiple(v / 4, 8)),
               min(h.MAX_BATCH, _multiple(v * 4, 8)), step=8)
  if key == 'steps':
    every = int(values.get('train.eval_every', 1))
    return Dim(path, 'int_log', v, h.MAX_STEPS_FACTOR * v, step=every)
  if key == 'activation':
    return Dim(path, 'choice', choices=('relu', 'gelu'))
  if key == 'normalization':
    return Dim(path, 'choice', choices=('none', 'layernorm'))
  if key == 'residual':
    return Dim(path, 'choice', choices=(False, True))
  return None


def build(experiment: Path, conv_family: str) -> tuple[list[Dim], dict[str, str]]:
  """The searched dimensions and, for each tunable-looking knob left out, why."""
  inventory = knobs.inventory(experiment)
  values = {k.path: k.value for k in inventory}
  family = str(values[FAMILY])
  dims = [Dim(FAMILY, 'choice', choices=(family, conv_family))]
  left_out = {}
  for knob in inventory:
    if knob.path == FAMILY:
      continue
    dim = _range(knob, values)
    if dim is not None:
      dims.append(dim)
    else:
      left_out[knob.path] = LEFT_OUT.get(knob.path, 'held fixed: the data every method is '
                                         'judged on' if knob.category == 'data' else 'not tunable')
  dims += [Dim('model.channels', 'int_log', 8, 64, step=8, family=conv_family),
           Dim('model.kernel_size', 'choice', choices=(3, 5, 7, 9), family=conv_family)]
  return dims, left_out


def _applies(dim: Dim, family: str) -> bool:
  return dim.family is None or dim.family == family


def sample(dims: list[Dim], rng: np.random.Generator) -> dict[str, Scalar]:
  family = dims[0].draw(rng)
  return {FAMILY: family, **{d.path: d.draw(rng) for d in dims[1:] if _applies(d, family)}}


def suggest(dims: list[Dim], trial: Any) -> dict[str, Scalar]:
  family = dims[0].suggest(trial)
  return {FAMILY: family, **{d.path: d.suggest(trial) for d in dims[1:] if _applies(d, family)}}


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
    target = knobs.model_signature(MODELS_DIR, str(family))
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
