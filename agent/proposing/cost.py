"""What a candidate will cost, predicted before it is proposed, from the incumbent's costs.

A candidate's training time is the incumbent's measured `train_seconds` scaled by the
work the two configs ask for: steps x batch x multiply-accumulates per example, counted
from the model family's knobs (an MLP's width squared and depth, a convolution's channels
squared times its kernel and positions, a transformer's width squared and sequence
length), the output head from the scorecard's task. The count is analytic, so a candidate
nobody has compiled can be priced: no candidate code runs in the agent's process. Part of
each step is a fixed cost whatever the model (dispatch, the loop: FIXED_STEP_MS per seed,
at most the incumbent's whole step) that scales with steps only. The rest of a trial's
wall time (start-up, compilation, predictions) is taken as the incumbent's.

Measured on the 2-core CPU box, 3 seeds, against what this predicts: MNIST-1D MLP ->
1-D CNN (16 channels) 16-22 s predicted, 27 s taken (dispatch per step and a convolution
use the CPU worse than the MLP's scanned matmuls); digits MLP -> 2-D CNN (32 channels)
75 s predicted, 52 s taken. Expect errors up to about 2x either way.

What one trial may take now is the charter's per-trial timeout, or the run's budget left
when that is less. The heuristic proposer does not propose an edit that cannot finish
within it, and draws one that would take a large share of it less often.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

from agent.charter import Charter
from agent.editing.config_edit import ConfigEdit, Scalar
from agent.proposing.diagnosis import num_outputs

STARTUP_SECONDS = 5.0  # a trial process's start-up when the scorecard has no trusted wall time
FIXED_STEP_MS = 0.1  # per seed and step, whatever the model: dispatch and loop (CPU, measured)

# A family's constructor defaults for keys a config leaves out (operators.constructor).
Defaults = Callable[[str], Mapping[str, object]]


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A candidate's predicted costs."""
  train_seconds: float
  wall_seconds: float  # of its screen run, one process: start-up, compile, training, predict
  ratio: float  # training time, candidate / incumbent

  def describe(self, limit_seconds: float) -> str:
    return (f'predicted training {self.train_seconds:.3g} s ({self.ratio:.2g}x the '
            f"incumbent's), a trial of about {self.wall_seconds:.3g} s of the "
            f'{limit_seconds:.3g} s one may take now')


@dataclasses.dataclass(frozen=True)
class Forecast:
  """Prices candidates of one incumbent against what one trial may take now."""
  values: Mapping[str, Scalar]  # the incumbent's knobs
  defaults: Defaults
  input_shape: tuple[int, ...]
  outputs: int
  train_seconds: float
  fixed: float  # the part of the incumbent's training time that scales with steps only
  overhead_seconds: float
  limit_seconds: float

  @classmethod
  def of(cls, card: Mapping[str, Any], values: Mapping[str, Scalar], defaults: Defaults,
         limit_seconds: float) -> Forecast | None:
    """None when the scorecard lacks what a prediction needs (timings, shapes, outputs)."""
    train = _float(card.get('train_seconds'))
    shape = card.get('input_shape')
    outputs = num_outputs(card)
    if not (train > 0 and isinstance(shape, list) and outputs
            and all(isinstance(n, int) and n > 0 for n in shape)):
      return None
    wall = _float((card.get('trusted') or {}).get('wall_seconds'))
    overhead = (wall - train if wall > train
                else _float(card.get('compile_seconds') or 0.0) + STARTUP_SECONDS)
    step_ms = _float((card.get('step_latency_ms') or {}).get('p50'))
    seeds = len(card.get('seeds') or []) or 1
    fixed = min(1.0, FIXED_STEP_MS * seeds / step_ms) if step_ms > 0 else 0.0
    forecast = cls(values, defaults, tuple(shape), outputs, train, fixed, overhead,
                   limit_seconds)
    return forecast if forecast.work(values) else None

  def estimate(self, edits: tuple[ConfigEdit, ...] = (), members: int = 1) -> Estimate | None:
    """The candidate the edits make of the incumbent (`members` trained in one process);
    None when its work cannot be counted."""
    after = dict(self.values)
    for edit in edits:
      if edit.op == 'remove':
        after.pop(edit.path, None)
      else:
        after[edit.path] = edit.value
    work, base = self.work(after), self.work(self.values)
    if not (work and base):
      return None
    steps = float(after['train.steps']) / float(self.values['train.steps'])
    ratio = self.fixed * steps + (1.0 - self.fixed) * work / base
    train = self.train_seconds * ratio
    return Estimate(train, self.overhead_seconds + members * train, ratio)

  def fits(self, estimate: Estimate | None) -> bool:
    """Whether it finishes within what one trial may take now (unknown costs pass)."""
    return estimate is None or estimate.wall_seconds <= self.limit_seconds

  def share(self, estimate: Estimate | None) -> float:
    """The part of what one trial may take that it would use, in [0, 1]."""
    if estimate is None:
      return 0.0
    return min(1.0, estimate.wall_seconds / self.limit_seconds)

  def members(self, estimate: Estimate) -> int:
    """How many candidates of this cost one process can train within the limit (>= 1)."""
    return max(1, int((self.limit_seconds - self.overhead_seconds) / estimate.train_seconds))

  def work(self, values: Mapping[str, Scalar]) -> float | None:
    """steps x batch x multiply-accumulates per example; None if any is unknown."""
    steps, batch = values.get('train.steps'), values.get('train.batch_size')
    family = str(values.get('model.name', ''))
    defaults = self.defaults(family)

    def knob(key: str) -> Any:
      value = values.get(f'model.{key}', defaults.get(key))
      return value if _is_number(value) or isinstance(value, str) else None
    macs = macs_per_example(family, knob, self.input_shape, self.outputs)
    if not (_is_number(steps) and _is_number(batch) and macs):
      return None
    return float(steps) * float(batch) * macs


def trial_limit(charter: Charter, budget_left_seconds: float | None) -> float:
  """Seconds one trial may take now: the per-trial timeout, or the budget left if less."""
  limit = charter.trial.timeout_minutes * 60.0
  if budget_left_seconds is None:
    return limit
  return max(0.0, min(limit, budget_left_seconds))


def macs_per_example(family: str, knob: Callable[[str], Any], input_shape: tuple[int, ...],
                     outputs: int) -> float | None:
  """Multiply-accumulates of one example's forward pass (the backward pass is about twice
  that, alike for all); None for a family or knob value it does not know."""
  try:
    if family == 'mlp':
      width, depth, inputs = int(knob('width')), int(knob('depth')), math.prod(input_shape)
      if depth == 0:
        return float(inputs * outputs)
      return float(inputs * width + (depth - 1) * width**2 + width * outputs)
    if family in ('cnn1d', 'cnn2d'):
      dims = 1 if family == 'cnn1d' else 2
      channels, depth, kernel = int(knob('channels')), int(knob('depth')), int(knob('kernel_size'))
      positions = math.prod(input_shape[:dims])
      first = input_shape[dims] if len(input_shape) > dims else 1
      convs = positions * kernel**dims * (first * channels + (depth - 1) * channels**2)
      head = (positions if knob('pooling') == 'flatten' else 1) * channels * outputs
      return float(convs + head)
    if family == 'transformer':
      width, depth, ratio = int(knob('width')), int(knob('depth')), float(knob('mlp_ratio'))
      tokens = input_shape[0]
      layer = (4 + 2 * ratio) * width**2 + 2 * tokens * width  # projections, MLP, attention
      return float(tokens * (depth * layer + width * outputs))
  except (TypeError, ValueError):
    return None
  return None


def _float(value: Any) -> float:
  return float(value) if _is_number(value) else math.nan


def _is_number(value: object) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)
