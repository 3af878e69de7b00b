"""Successive halving inside a batch: rungs at fractions of the training steps where the
candidates trained together are ranked against the incumbent, trained alongside on the same
seeds, and only the leaders train on (ASHA's promotion rule, one bracket per batch).

Why: a batch of B candidates otherwise costs B full trainings though only the best one goes
on (agent.candidate's judge_batch). Ranking at a quarter and a half of the steps keeps the
top share alive and stops the rest, so a batch of 4 costs about 2.5 trainings with the
incumbent's partial run, and what is saved buys more candidates. A stop at a rung is not
evidence that a candidate is worse: it is recorded as 'pruned' (never kept, never counted as
a loss of its operator's idea beyond that), with the numbers the rule saw, so `verify` can
redo every rung from the journal.

Pure functions over numbers: the executor applies them to trusted scores of each member's
predictions, the benchmarks to in-process scores, the audit to the journal.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from agent.judging.decide import Direction


def rung_steps(eval_steps: Sequence[int], total_steps: int,
               fractions: Sequence[float]) -> tuple[int, ...]:
  """For each fraction, the first evaluation step at or past it (predictions exist only
  there), strictly before the last step; without repeats."""
  steps = set()
  for fraction in fractions:
    step = next((s for s in sorted(eval_steps) if s >= fraction * total_steps), None)
    if step is not None and 0 < step < total_steps:
      steps.add(step)
  return tuple(sorted(steps))


@dataclasses.dataclass(frozen=True)
class Rung:
  """One rung's decision over the members still training. Members are batch indices;
  `gains` the mean paired gain of each over the incumbent member at `step` (positive =
  better; -inf for a non-finite score), `kept` those promoted, `stopped` the rest."""
  step: int
  total_steps: int
  incumbent: int
  keep: float
  margin: float
  gains: dict[int, float]
  kept: tuple[int, ...]
  stopped: tuple[int, ...]

  def reason(self, member: int) -> str:
    """Why a stopped member stopped, in plain words."""
    rank = sorted(self.gains, key=lambda m: -self.gains[m]).index(member) + 1
    behind = (f'; it trails the incumbent by more than {self.margin:.3g}'
              if self.gains[member] < -self.margin else '')
    return (f'stopped at the rung at step {self.step} of {self.total_steps}: ranked {rank} of '
            f'{len(self.gains)} by paired gain over the incumbent ({self.gains[member]:+.3g}), '
            f'only the top {_promoted(len(self.gains), self.keep)} train on{behind}')

  def to_record(self) -> dict[str, Any]:
    return {'step': self.step, 'total_steps': self.total_steps, 'incumbent': self.incumbent,
            'keep': self.keep, 'margin': self.margin,
            'gains': {str(m): g for m, g in self.gains.items()},
            'kept': list(self.kept), 'stopped': list(self.stopped)}


@dataclasses.dataclass(frozen=True)
class Rule:
  """A batch's rungs as the judge applies them: where, against which member, how many on."""
  steps: tuple[int, ...]
  total_steps: int
  incumbent: int  # the batch index of the incumbent trained alongside
  direction: Direction
  keep: float
  margin: float

  def decide(self, step: int, scores: Mapping[int, Sequence[float]]) -> Rung:
    return decide(step, self.total_steps, scores, self.incumbent, self.direction, self.keep,
                  self.margin)

  def stop_training(self, rung: Rung) -> set[int]:
    """Who stops training after `rung`: those it stopped, and after the last rung the
    incumbent too (it trained alongside only to be ranked against)."""
    return set(rung.stopped) | ({self.incumbent} if rung.step == self.steps[-1] else set())

  def incumbent_reason(self, step: int) -> str:
    return f'the incumbent, trained alongside to rank the candidates until step {step}'


def _promoted(alive: int, keep: float) -> int:
  return max(1, math.ceil(alive * keep - 1e-9))


def _gain(incumbent: Sequence[float], member: Sequence[float], direction: Direction) -> float:
  pairs = list(zip(incumbent, member, strict=True))
  if not pairs or not all(math.isfinite(a) and math.isfinite(b) for a, b in pairs):
    return -math.inf
  mean = sum(b - a for a, b in pairs) / len(pairs)
  return mean if direction == 'max' else -mean


def decide(step: int, total_steps: int, scores: Mapping[int, Sequence[float]], incumbent: int,
           direction: Direction, keep: float, margin: float) -> Rung:
  """Ranks every member but the incumbent by mean paired gain over it at `step` (per-seed
  scores, same seeds); promotes the top `keep` share (at least one) of them, except any that
  trails the incumbent by more than `margin` (a clear loser goes even if it ranks first)."""
  if incumbent not in scores:
    raise ValueError(f'the incumbent member {incumbent} has no score at step {step}')
  gains = {m: _gain(scores[incumbent], s, direction) for m, s in scores.items() if m != incumbent}
  return _ranked(step, total_steps, incumbent, keep, margin, gains)


def redo(record: Mapping[str, Any]) -> Rung:
  """The rung a journal record describes, decided again from its own gains: what `verify`
  compares with what was recorded."""
  gains = {int(m): float(g) for m, g in record['gains'].items()}
  return _ranked(int(record['step']), int(record['total_steps']), int(record.get('incumbent', 0)),
                 float(record['keep']), float(record['margin']), gains)


def _ranked(step: int, total_steps: int, incumbent: int, keep: float, margin: float,
            gains: Mapping[int, float]) -> Rung:
  """Ties keep the lower index, so the decision is a function of the numbers alone."""
  ranked = sorted(gains, key=lambda m: (-gains[m], m))
  top = set(ranked[:_promoted(len(ranked), keep)]) if ranked else set()
  kept = tuple(m for m in sorted(gains) if m in top and gains[m] >= -margin)
  stopped = tuple(m for m in sorted(gains) if m not in kept)
  return Rung(step, total_steps, incumbent, keep, margin, dict(sorted(gains.items())), kept,
              stopped)
