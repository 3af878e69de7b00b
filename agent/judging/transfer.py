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

import libcst as cst
import numpy as np

from agent.editing import config_edit
from agent.judging import decide as decide_lib

NOISE_MULTIPLIER = 2.0  # a gain or loss must exceed this many standard errors to count
GAINED, HELD, LOST, FAILED = 'gained', 'held', 'lost', 'failed'
UNDECIDED = 'undecided'  # an arm the run's minute budget cut: no evidence either way
REASON = 'transfer_loss'  # the reason code of a change rejected for a transfer loss
BUDGET = 'budget'  # the reason code of an undecided verdict (agent.candidate.BUDGET)
# Never carried: the data is pinned per experiment, and the seed is the executor's to set.
NOT_CARRIED = ('dataset.', 'train.seed')


@dataclasses.dataclass(frozen=True)
class Outcome:
  """One transfer experiment's result: what happened, by how much, against what floor."""
  outcome: str  # GAINED | HELD | LOST | FAILED | UNDECIDED
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
  if outcome.outcome == UNDECIDED:
    return f'{experiment} undecided ({reason or "the minute budget ran out"})'
  return (f'{experiment} {outcome.outcome} ({metric} {outcome.gain:+.3g}, noise floor '
          f'{outcome.noise_floor:.3g})')


def summary(outcomes: Mapping[str, Outcome], metrics: Mapping[str, str], mode: str,
            reasons: Mapping[str, str] | None = None) -> tuple[bool, str]:
  """(whether the change is rejected, the sentence the verdict's rationale gains): rejected
  when any experiment lost or failed and `mode` is 'reject'. Experiments in name order (the
  journal keeps a verdict's by name, and `verify` says the same sentence)."""
  said = '; '.join(words(e, o, metrics.get(e, 'metric'), (reasons or {}).get(e, ''))
                   for e, o in sorted(outcomes.items()))
  losses = [e for e, o in outcomes.items() if o.lost]
  if losses and mode == 'reject':
    return True, (f'Rejected: it does not transfer: {said}. A loss beyond the noise floor on '
                  f'any transfer experiment, or a run that fails there, rejects ([transfer] '
                  f'mode = "reject").')
  if losses:
    return False, f'Transfer (report only): {said}.'
  return False, f'Transfer: {said}.'


def overrides(start: str, arm: str, transfer: str) -> list[str]:
  """The settings an arm carries to a transfer experiment, as `--config.a.b=v`: each knob of
  the run's own config (source `arm`) whose value differs from the start commit's (`start`)
  and which the transfer experiment's config (`transfer`) has, with a value of the same
  type, and holds at another value. Both arms are run so, so the pair differs by exactly the
  candidate's change: its code, and the settings it changed. A section the arm reshaped
  (keys added or removed: a switch of model family) is not carried here but by `derived`:
  overrides cannot remove the old family's keys."""
  before, after, there = _knobs(start), _knobs(arm), _knobs(transfer)
  reshaped = reshaped_sections(start, arm)
  carried = []
  for path, value in after.items():
    if (path.startswith(NOT_CARRIED) or _section(path) in reshaped
        or before.get(path, _ABSENT) == value
        or path not in there or there[path] == value or not _same_type(there[path], value)):
      continue
    carried.append(f'--config.{path}={value}')
  return carried


def reshaped_sections(start: str, arm: str) -> list[str]:
  """The config sections (`model`) whose keys the arm added or removed since the start
  commit, `dataset.*` aside (the data is pinned per experiment)."""
  before, after = _knobs(start), _knobs(arm)
  return sorted({_section(p) for p in set(before) ^ set(after)
                 if not (p + '.').startswith(NOT_CARRIED)})


def derived(start: str, arm: str, transfer: str) -> str:
  """The config an arm runs on a transfer experiment when it reshaped a section: the
  transfer experiment's file (`transfer`) with each reshaped section's settings replaced by
  the arm's own (a switch to a CNN is tried there as that CNN), its dataset and everything
  else kept; '' when nothing was reshaped (the transfer experiment's file runs as named).
  Settings `NOT_CARRIED` keep the transfer experiment's lines. Raises
  config_edit.EditError (one line) where the transfer experiment has no such section."""
  sections = reshaped_sections(start, arm)
  if not sections:
    return ''
  ours, theirs = config_edit.parse_module(arm), config_edit.parse_module(transfer)
  for section in sections:
    theirs = _replace_section(theirs, ours, section)
  return config_edit.checked_code(theirs)


def _replace_section(there: cst.Module, arm: cst.Module, section: str) -> cst.Module:
  """`there` with its scalar settings directly in `section` replaced by `arm`'s, in place
  of its first one (else after the line that makes the section)."""
  def settings(module: cst.Module) -> list[tuple[str, cst.SimpleStatementLine]]:
    return [(p, s) for p, s in config_edit.config_assignments(module)
            if _section(p) == section and not p.startswith(NOT_CARRIED)
            and type(config_edit.literal_value(s.body[0].value)) in (bool, int, float, str)]
  old, new = settings(there), [s for _, s in settings(arm)]
  block = config_edit.get_config(there).body
  body = list(block.body)
  if old:
    at = body.index(old[0][1])
  else:
    made = [s for p, s in config_edit.config_assignments(there) if p == section]
    if not made:
      raise config_edit.EditError(f'the transfer experiment has no section {section!r} to '
                                  f'carry the reshaped settings into')
    at = body.index(made[0]) + 1
  gone = {id(s) for _, s in old}
  body = [s for s in body[:at] if id(s) not in gone] + new + [
      s for s in body[at:] if id(s) not in gone]
  return there.deep_replace(block, block.with_changes(body=body))


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
