"""The judge of a batch's rungs (agent.judging.rungs), outside the trial.

Twice, from the same numbers: while the batch runs (`RungWatch`), so that the members it
stops stop training (harness.rungs: answers as files in a folder the trial may only read);
and after it ended (`decide_rungs`), from the member predictions then on disk, which is what
the verdicts use. The trial cannot bend either: every score comes from its predictions and
the labels it never sees, and a member that trains past its stop gains nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from agent.judging import rungs
from harness import scoring
from harness import rungs as trial_rungs

RUNGS = 'rungs'  # in the trial's workdir, beside output/: the judge's answers
READY_BYTES = 65536  # a list of member indices


class _Curves(Protocol):
  points: list

  def poll(self) -> bool: ...


def _scores(scorer: scoring.Scorer, folder: Path, step: int) -> list[float] | None:
  """A member's per-seed validation metric at `step`, None while it is not there (or not
  readable: a member that diverged or was stopped writes nothing more)."""
  try:
    return [float(v) for v in scorer.point(folder, step)['val_metric']]
  except (OSError, scoring.ScoringError, ValueError):
    return None


def decide_rungs(rule: rungs.Rule, member_folder: Callable[[int], Path], members: int,
                 scorer: scoring.Scorer) -> list[rungs.Rung]:
  """The rungs of a finished batch, in order: at each, the members still in (those not
  stopped before, with predictions at that step) ranked by `rule`; a member without a
  score at a rung was out already (it diverged or failed) and is judged on its own outputs."""
  alive = set(range(members))
  decided = []
  for step in rule.steps:
    scores = {m: s for m in sorted(alive)
              if (s := _scores(scorer, member_folder(m), step)) is not None}
    if rule.incumbent not in scores:
      break  # without the incumbent's numbers there is nothing to rank against
    rung = rule.decide(step, scores)
    decided.append(rung)
    alive -= set(rung.stopped)
  return decided


class RungWatch:
  """Polled by the executor while the batch runs: when the trial says who reached a rung
  (harness.rungs.READY) and their predictions are there, decides the rung and writes the
  answer; after the last rung the incumbent member stops too (it was there to be ranked
  against). `curves` (member 0's) is polled as ever, for the caller's progress."""

  def __init__(self, curves: _Curves, rule: rungs.Rule, output: Path, answers: Path,
               member_folder: Callable[[int], Path], scorer: scoring.Scorer):
    self.curves, self.rule, self.output, self.answers = curves, rule, output, answers
    self.member_folder, self.scorer = member_folder, scorer
    self.pending = list(rule.steps)

  @property
  def points(self) -> list:
    return self.curves.points

  def poll(self) -> bool:
    grew = self.curves.poll()
    while self.pending and self._answer(self.pending[0]):
      self.pending.pop(0)
    return grew

  def _answer(self, step: int) -> bool:
    """True once the rung at `step` is answered."""
    training = self._reached(step)
    if training is None:
      return False
    scores = {m: _scores(self.scorer, self.member_folder(m), step) for m in training}
    if any(s is None for s in scores.values()):
      return False  # its predictions are still being written
    stop: Sequence[int] = ()
    if self.rule.incumbent in scores:
      stop = sorted(self.rule.stop_training(self.rule.decide(step, scores)))
    self._write(step, stop)
    return True

  def _reached(self, step: int) -> list[int] | None:
    """The members the trial says reached the rung: its file, read as the scorer reads
    predictions (a plain file, no link, bounded), since the trial wrote it."""
    try:
      with scoring.open_regular(self.output / trial_rungs.READY.format(step=step),
                                 READY_BYTES) as f:
        reached = json.loads(f.read())
      return sorted({int(m) for m in reached})
    except (scoring.ScoringError, OSError, ValueError, TypeError):
      return None

  def _write(self, step: int, stop: Sequence[int]) -> None:
    answer = trial_rungs.rung_file(self.answers, step)
    tmp = answer.with_suffix('.tmp')
    tmp.write_text(json.dumps({'stop': sorted(stop)}))
    os.replace(tmp, answer)
