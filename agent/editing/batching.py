"""Whether a candidate may train in a batch: the incumbent with only traced values changed.

A batch trains the incumbent's code once, with each candidate's values set by the harness
(`harness.main --members`), instead of each candidate's commit. That is the same run only
when the candidate's experiment file is the incumbent's with the literals of traced knobs
(agent.editing.space.TRACED) replaced, and nothing else in the file can read them: each
changed knob's name appears once in the file, in its own assignment. Anything else trains
alone. The check is static (libcst), so the agent never runs a candidate's code to make it.
"""

from __future__ import annotations

import math
from typing import Mapping

from agent.editing import config_edit, space
from agent.editing.config_edit import ConfigEdit, EditError


def traced_values(experiment: str, files: Mapping[str, str],
                  changes: Mapping[str, str | None]) -> dict[str, float] | None:
  """The candidate's new values of traced knobs ('optimizer.learning_rate': 3e-3, ...), or
  None when `changes` is more than that edit of `files[experiment]`."""
  if set(changes) != {experiment} or changes[experiment] is None or experiment not in files:
    return None
  before, after = files[experiment], changes[experiment]
  try:
    old, new = _literals(before), _literals(after)
  except EditError:
    return None
  changed = {path for path in old.keys() | new.keys() if old.get(path) != new.get(path)}
  if not changed or not changed <= set(space.TRACED) or not changed <= old.keys():
    return None
  values = {path: new[path] for path in sorted(changed)}
  if not all(_is_number(v) for v in values.values()):
    return None
  if any(text.count(path.rpartition('.')[2]) != 1 for path in values for text in (before, after)):
    return None  # the knob is read or written elsewhere in the file
  try:
    rebuilt = config_edit.apply_edits(before, [ConfigEdit(p, v) for p, v in values.items()])
  except EditError:
    return None
  return {path: float(v) for path, v in values.items()} if rebuilt == after else None


def _literals(text: str) -> dict[str, object]:
  module = config_edit.parse_module(text)
  return {path: config_edit.literal_value(stmt.body[0].value)
          for path, stmt in config_edit.config_assignments(module)}


def _is_number(value: object) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))
