"""Rungs of a batch (harness.main --members): at some evaluation steps the training loop asks
whom to stop, and stops training them, so a batch spends its compute on the members that
lead. The trial never decides: the judge outside it scores each member's predictions and
answers (agent.judging.rungs); the trial only obeys, to save the compute. A trial that does
not obey wins nothing: a member the judge stopped is judged stopped whatever it trains.

The answer travels as a file: `<dir>/rung-<step>.json` holding {"stop": [member indices]},
written by the judge when it has scored the rung, read by the trial, which waits for it at
most `wait_s` (then trains everyone on: a missing judge costs compute, never a result).
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Protocol

WAIT_S = 60.0  # the judge scores a rung in well under a second; this is for a stalled one
READY = 'rung-{step}.ready'  # in the trial's output: the members that reached the rung


class Rungs(Protocol):
  """Who decides at the rungs of a batch."""
  steps: Collection[int]

  def stopped(self, step: int, training: Sequence[int]) -> Collection[int]:
    """The members (batch indices, of `training`) to stop after `step`."""


def rung_file(folder: Path, step: int) -> Path:
  return folder / f'rung-{step}.json'


class FileRungs:
  """The judge outside the trial, reached through files (see the module docstring)."""

  def __init__(self, folder: Path, steps: Collection[int], output: Path,
               wait_s: float = WAIT_S, poll_s: float = 0.02):
    self.folder, self.steps, self.output = folder, frozenset(steps), output
    self.wait_s, self.poll_s = wait_s, poll_s

  def stopped(self, step: int, training: Sequence[int]) -> Collection[int]:
    """Says who reached the rung (the judge waits for exactly those), then waits for the
    answer."""
    ready = self.output / READY.format(step=step)
    ready.with_suffix('.tmp').write_text(json.dumps(list(training)))
    ready.with_suffix('.tmp').replace(ready)
    answer = rung_file(self.folder, step)
    deadline = time.monotonic() + self.wait_s
    while time.monotonic() < deadline:
      try:
        stop = json.loads(answer.read_text())['stop']
        return {int(m) for m in stop if int(m) in training}
      except (OSError, ValueError, KeyError, TypeError):
        time.sleep(self.poll_s)  # not written yet (the judge writes it atomically)
    return set()


def parse_steps(text: str) -> tuple[int, ...]:
  """--rungs: comma-separated positive steps."""
  try:
    steps = tuple(sorted({int(s) for s in text.split(',') if s.strip()}))
  except ValueError as e:
    raise ValueError(f'--rungs must be comma-separated steps, got {text!r}') from e
  if any(s <= 0 for s in steps):
    raise ValueError(f'--rungs must be positive steps, got {text!r}')
  return steps
