"""Does a kept change hold on the charter's transfer experiments? The per-dataset rule.

Why: a change that wins on one dataset may win only there (a convolution's locality prior
on MNIST-1D is worthless once its time steps are shuffled). The charter names other
experiments; a winner is run on each, paired with the incumbent on the same seeds, and on
each it gained, held or lost: a mean paired gain beyond the noise floor either way, or
within it. A loss rejects the change unless the charter's `mode` is 'report'.

Pure: the loop runs the arms and `verify` recomputes every outcome and every word here from
the arms the journal holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from agent.editing import config_edit
from agent.judging import decide as decide_lib

NOISE_MULTIPLIER = 2.0  # a gain or loss must exceed this many standard errors to count
GAINED, HELD, LOST, FAILED = 'gained', 'held', 'lost', 'failed'
REASON = 'transfer_loss'  # the reason code of a change rejected for a transfer loss
# Never carried: the data is pinned per experiment, and the seed is the executor's to set.
NOT_CARRIED = ('dataset.', 'train.seed')


@dataclasses.dataclass(frozen=True)
class Outcome:
  """One transfer experiment's result: what happened, by how much, against what floor."""
  outcome: str  # GAINED | HELD | LOST | FAILED
  gain: float  # mean paired gain, positive is better; NaN when an arm failed
  noise_floor: float

  @property
  def lost(self) -> bool:
    return self.outcome in (LOST, FAILED)


def judge(incumbent: Sequence[float], candidate: Sequence[float], direction: str) -> Outcome:
  """The paired outcome on one transfer experiment.

  The floor is NOISE_MULTIPLIER standard errors of a difference of means, from the larger of
  the incumbent's seed-to-seed spread and the paired gains' (a paired gain's spread is
  sqrt(2) per-arm spreads): as conservative as the check on other experiments that run the
  changed code. A seed with a non-finite value is a failure, never a tie.
  """
  if len(incumbent) != len(candidate) or len(incumbent) < 2:
    raise ValueError(f'a paired transfer check needs two arms of the same seeds (>= 2), got '
                     f'{len(incumbent)} and {len(candidate)}')
  values = np.asarray([list(incumbent), list(candidate)], dtype=float)
  if not np.isfinite(values).all():
    return Outcome(FAILED, math.nan, math.nan)
  sign = 1.0 if direction == 'max' else -1.0
  gains = sign * (values[1] - values[0])
  floor = decide_lib.noise_floor(values[0], NOISE_MULTIPLIER,
                                 min_std=float(np.std(gains, ddof=1)) / math.sqrt(2))
  gain = float(gains.mean())
  outcome = GAINED if gain > floor else LOST if gain < -floor else HELD
  return Outcome(outcome, gain, floor)


def failed() -> Outcome:
  """An experiment where an arm did not finish: counted as a loss."""
  return Outcome(FAILED, math.nan, math.nan)


def words(experiment: str, outcome: Outcome, metric: str, reason: str = '') -> str:
  """One experiment's result in a phrase, the same in the verdict and in `verify`."""
  if outcome.outcome == FAILED:
    return f'{experiment} failed ({reason or "a seed was not finite"})'
  return (f'{experiment} {outcome.outcome} ({metric} {outcome.gain:+.3g}, noise floor '
          f'{outcome.noise_floor:.3g})')


def summary(outcomes: Mapping[str, Outcome], metrics: Mapping[str, str], mode: str,
            reasons: Mapping[str, str] | None = None) -> tuple[bool, str]:
  """(whether the change is rejected, the sentence the verdict's rationale gains): rejected
  when any experiment lost or failed and `mode` is 'reject'."""
  said = '; '.join(words(e, o, metrics.get(e, 'metric'), (reasons or {}).get(e, ''))
                   for e, o in outcomes.items())
  losses = [e for e, o in outcomes.items() if o.lost]
  if losses and mode == 'reject':
    return True, (f'Rejected: it does not transfer: {said}. A loss beyond the noise floor on '
                  f'any transfer experiment rejects ([transfer] mode = "reject").')
  if losses:
    return False, f'Transfer (report only): {said}.'
  return False, f'Transfer: {said}.'


def overrides(start: str, arm: str, transfer: str) -> list[str]:
  """The settings an arm carries to a transfer experiment, as `--config.a.b=v`: each knob of
  the run's own config (source `arm`) whose value differs from the start commit's (`start`)
  and which the transfer experiment's config (`transfer`) has, with a value of the same
  type, and holds at another value. Both arms are run so, so the pair differs by exactly the
  candidate's change: its code, and the settings it changed. A section the arm reshaped
  (keys added or removed: a switch of model family) does not carry: overrides cannot remove
  the old family's keys, and half of a switch would only crash there."""
  before, after, there = _knobs(start), _knobs(arm), _knobs(transfer)
  reshaped = {_section(p) for p in set(before) ^ set(after)}
  carried = []
  for path, value in after.items():
    if (path.startswith(NOT_CARRIED) or _section(path) in reshaped
        or before.get(path, _ABSENT) == value
        or path not in there or there[path] == value or not _same_type(there[path], value)):
      continue
    carried.append(f'--config.{path}={value}')
  return carried


_ABSENT = object()


def _section(path: str) -> str:
  return path.rsplit('.', 1)[0]


def _knobs(source: str) -> dict[str, object]:
  """A config file's scalar-literal settings by key path (as agent.editing.knobs reads them)."""
  module = config_edit.parse_module(source)
  found = {}
  for path, stmt in config_edit.config_assignments(module):
    value = config_edit.literal_value(stmt.body[0].value)
    if '.' in path and type(value) in (bool, int, float, str):
      found[path] = value
  return found


def _same_type(old: object, new: object) -> bool:
  """An int may stand for a float; nothing else changes type."""
  return type(old) is type(new) or (type(old) is float and type(new) is int)
