"""Thompson sampling over edit operators, with priors from the proposer's rules.

The rules say what a researcher would try first (a convolution for a 1-D signal under an
MLP); the bandit lets experience overrule them: an operator that keeps being rejected on a
task loses its pull there. Success is Bernoulli (the trial was accepted), so each operator's
chance is a Beta posterior: the rule's prior plus the counts seen. Counts are kept per
context ('mnist1d/mlp') so that what failed on one task does not count against it on
another; where a context has never tried an operator, the counts pooled over all contexts
stand in at half weight, so experience transfers without dominating.

The counts persist across runs in one small JSON file per workspace, written atomically; a
missing or unreadable file only costs the memory, never the run. Workspaces share nothing
unless the user opts in (`agent.main run --share_stats=PATH`): then `SharedBandit` also
adds each verdict to the statistics file at PATH, under a lock so that runs at once lose
none, and draws on what the others added there. Only these counts are shared (contexts
are '<dataset>/<model family>' names), never code, configs or results.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from absl import logging

Prior = tuple[float, float]
UNIFORM: Prior = (1.0, 1.0)
POOLED_WEIGHT = 0.5  # weight of other contexts' counts where this context has none
_VERSION = 1


class Bandit:
  """Beta-Bernoulli counts of (context, operator) outcomes."""

  def __init__(self) -> None:
    self.counts: dict[str, dict[str, list[float]]] = {}  # context -> op -> [wins, losses]

  def posterior(self, operator: str, context: str, prior: Prior = UNIFORM) -> Prior:
    """(alpha, beta): the prior plus this context's counts, or the discounted pooled ones."""
    wins, losses = self.counts.get(context, {}).get(operator, (0.0, 0.0))
    if wins + losses == 0:
      wins, losses = (POOLED_WEIGHT * x for x in self.pooled(operator))
    return prior[0] + wins, prior[1] + losses

  def pooled(self, operator: str) -> tuple[float, float]:
    """(successes, failures) of the operator summed over every context."""
    per_context = [ops[operator] for ops in self.counts.values() if operator in ops]
    return (sum(c[0] for c in per_context), sum(c[1] for c in per_context))

  def choose(self, candidates: list[str], rng: np.random.Generator, *, context: str = '',
             priors: Mapping[str, Prior] | None = None,
             scale: Mapping[str, float] | None = None) -> str:
    """One Thompson draw per candidate from its posterior, times its `scale` (1 if absent:
    say, the share of the budget its cost leaves); the highest wins."""
    if not candidates:
      raise ValueError('no candidate operators to choose from')
    priors, scale = priors or {}, scale or {}
    draws = [rng.beta(*self.posterior(op, context, priors.get(op, UNIFORM))) * scale.get(op, 1.0)
             for op in candidates]
    return candidates[int(np.argmax(draws))]

  def update(self, operator: str, success: bool, *, context: str = '') -> None:
    """Counts one verdict: success means the trial was accepted."""
    cell = self.counts.setdefault(context, {}).setdefault(operator, [0.0, 0.0])
    cell[0 if success else 1] += 1

  def to_json(self) -> dict[str, Any]:
    return {'version': _VERSION,
            'contexts': {ctx: {op: {'successes': c[0], 'failures': c[1]}
                               for op, c in sorted(ops.items())}
                         for ctx, ops in sorted(self.counts.items())}}

  @classmethod
  def from_json(cls, data: Any) -> Bandit:
    """Parses to_json's form; anything else (wrong version, negative counts) is ValueError."""
    if not isinstance(data, dict) or data.get('version') != _VERSION:
      raise ValueError(f'not a version-{_VERSION} bandit record')
    contexts = data.get('contexts')
    if not isinstance(contexts, dict):
      raise ValueError("'contexts' must be an object")
    bandit = cls()
    for ctx, ops in contexts.items():
      if not isinstance(ops, dict):
        raise ValueError(f'context {ctx!r} must map operators to counts')
      for op, cell in ops.items():
        counts = [cell.get(k) if isinstance(cell, dict) else None
                  for k in ('successes', 'failures')]
        if not all(_is_count(c) for c in counts):
          raise ValueError(f'bad counts for {ctx!r}/{op!r}: {cell!r}')
        bandit.counts.setdefault(ctx, {})[op] = [float(c) for c in counts]
    return bandit

  @classmethod
  def load(cls, path: str | Path) -> Bandit:
    """The stats saved at path; a missing or corrupt file starts fresh with a warning."""
    path = Path(path)
    try:
      return cls.from_json(json.loads(path.read_text(encoding='utf-8')))
    except FileNotFoundError:
      logging.warning('No proposer stats at %s; starting fresh.', path)
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
      logging.warning('Proposer stats at %s unreadable (%s); starting fresh.', path,
                      ' '.join(str(e).split()))
    return cls()

  def save(self, path: str | Path) -> None:
    """Writes atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
      with os.fdopen(fd, 'w', encoding='utf-8') as f:
        json.dump(self.to_json(), f, indent=1, sort_keys=True)
        f.write('\n')
      os.replace(tmp, path)
    except BaseException:
      Path(tmp).unlink(missing_ok=True)
      raise


class SharedBandit(Bandit):
  """A workspace's bandit that also learns from, and adds to, a statistics file other
  workspaces opted into (`shared`).

  The counts it draws on are the shared file's (every opted-in verdict of every workspace,
  its own included) plus its own verdicts that never reached it (from before it opted in):
  each verdict counted once. Its own file (`own`) stays what it would be without sharing;
  beside it, `<own>.shared.json` keeps what this workspace added to the shared file, to
  tell the two apart. `update` adds the verdict to the shared file as one read-add-write
  under an exclusive lock on `<shared>.lock`, so runs at once lose none, and takes in what
  the others added meanwhile. A shared file that is unreadable is left as it is (never
  overwritten with less), and the workspace's own counts alone are used.
  """

  def __init__(self, own: str | Path, shared: str | Path):
    super().__init__()
    self.own_path, self.shared = Path(own), Path(shared)
    self.own = Bandit.load(self.own_path)
    self.added_path = self.own_path.with_name(f'{self.own_path.stem}.shared.json')
    try:
      self.added = _read(self.added_path) or Bandit()
    except ValueError as e:  # then own verdicts already shared may count twice: said
      logging.warning('Proposer stats at %s unreadable (%s); starting fresh.', self.added_path, e)
      self.added = Bandit()
    self._view(self._locked())

  def update(self, operator: str, success: bool, *, context: str = '') -> None:
    self.own.update(operator, success, context=context)
    self._view(self._locked((operator, success, context)))

  def save(self, path: str | Path) -> None:
    """The workspace's own counts only (the shared file is written as each verdict comes)."""
    self.own.save(path)

  def _view(self, shared: Bandit | None) -> None:
    """The counts drawn on: the shared file's plus the own verdicts it does not hold."""
    if shared is None:
      self.counts = {ctx: {op: list(c) for op, c in ops.items()}
                     for ctx, ops in self.own.counts.items()}
      return
    counts = {ctx: {op: list(c) for op, c in ops.items()} for ctx, ops in shared.counts.items()}
    for ctx, ops in self.own.counts.items():
      for op, cell in ops.items():
        added = self.added.counts.get(ctx, {}).get(op, (0.0, 0.0))
        mine = [max(0.0, c - a) for c, a in zip(cell, added)]
        total = counts.setdefault(ctx, {}).setdefault(op, [0.0, 0.0])
        total[0], total[1] = total[0] + mine[0], total[1] + mine[1]
    self.counts = counts

  def _locked(self, verdict: tuple[str, bool, str] | None = None) -> Bandit | None:
    """The shared counts, read under the lock, with `verdict` (operator, success, context)
    added and written back (and to what this workspace added) before the lock is let go;
    None where the shared file is unreadable."""
    try:
      self.shared.parent.mkdir(parents=True, exist_ok=True)
      with open(self.shared.with_name(self.shared.name + '.lock'), 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # let go when the file closes
        bandit = _read(self.shared) or Bandit()
        if verdict is not None:
          operator, success, context = verdict
          bandit.update(operator, success, context=context)
          bandit.save(self.shared)
          self.added.update(operator, success, context=context)
          self.added.save(self.added_path)
        return bandit
    except (OSError, ValueError) as e:  # lost sharing is not worth a lost run
      logging.warning('Shared proposer stats at %s not usable (%s); this workspace\'s own '
                      'counts are used.', self.shared, getattr(e, 'strerror', None) or e)
      return None


def _read(path: Path) -> Bandit | None:
  """The counts in the file at path, None where there is none; ValueError (one line) where
  it does not hold counts."""
  try:
    text = path.read_text(encoding='utf-8')
  except FileNotFoundError:
    return None
  except OSError as e:
    raise ValueError(e.strerror or str(e)) from None
  try:
    return Bandit.from_json(json.loads(text))
  except ValueError as e:  # JSONDecodeError is a ValueError
    raise ValueError(' '.join(str(e).split())) from None


def _is_count(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value >= 0)
