"""Checks every proposal must pass before anything runs, whichever proposer made it.

A rejection names its reason in one line; the loop records it and goes on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

from agent import diffs
from agent.charter import Charter

MAX_CHANGED_LINES = 400


@dataclasses.dataclass(frozen=True)
class GuardResult:
  ok: bool
  reason: str
  diff: str


def check(charter: Charter, current: Mapping[str, str | None],
          changes: Mapping[str, str | None], worktree: Path | None = None) -> GuardResult:
  """`current` holds the incumbent's text of each changed path (None: it does not exist)."""
  diff = ''.join(diffs.unified_diff(path, current.get(path), new)
                 for path, new in sorted(changes.items()))
  for path in sorted(changes):
    if not charter.is_editable(path):
      return GuardResult(False, f'{path} is outside the charter\'s editable scope', diff)
  if not diff:
    return GuardResult(False, 'the proposal changes nothing', diff)
  _, added, removed = diffs.diff_stats(diff)
  if added + removed > MAX_CHANGED_LINES:
    return GuardResult(False, f'diff of {added + removed} lines exceeds {MAX_CHANGED_LINES}',
                       diff)
  for path, text in sorted(changes.items()):
    if text is not None and path.endswith('.py'):
      try:
        compile(text, path, 'exec')
      except SyntaxError as e:
        return GuardResult(False, f'{path}:{e.lineno}: syntax error: {e.msg}', diff)
  return GuardResult(True, 'passed', diff)
