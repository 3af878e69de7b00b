"""The research charter: WORKSPACE.md's prose plus exactly one ```toml block of settings.

The charter is the contract a person signs: what the agent may touch, what it optimises
and how a candidate must win. It is parsed strictly (unknown keys, wrong types and
out-of-range values are errors that name the Markdown line) because a typo that silently
fell back to a default would change the rules of the search without anyone noticing.
"""

import dataclasses
import functools
import math
import re
import tomllib
from pathlib import Path
from typing import Any, Callable

import pathspec

# Paths no charter can open up: the trusted half of the design, enforced in code.
ALWAYS_PROTECTED = ('WORKSPACE.md', 'agent/**', 'harness/**', 'tests/**', '.git/**')


class CharterError(ValueError):
  """A charter that cannot be trusted; the message reads `file:line: what is wrong`."""

  def __init__(self, path: str, line: int | None, message: str):
    self.path, self.line = path, line
    super().__init__(f'{path}:{line}: {message}' if line else f'{path}: {message}')


@dataclasses.dataclass(frozen=True)
class Objective:
  """What the search optimises."""
  metric: str = 'val_metric'
  direction: str = 'auto'

  def resolve_direction(self, scorecard_direction: str) -> str:
    """'max' or 'min': the charter's choice, or the scorecard's when the charter says auto."""
    direction = scorecard_direction if self.direction == 'auto' else self.direction
    if direction not in ('max', 'min'):
      raise ValueError(f"metric direction must be 'max' or 'min', got {direction!r}")
    return direction


@dataclasses.dataclass(frozen=True)
class Scope:
  """Globs of repository paths the agent may edit, and those it never may."""
  editable: tuple[str, ...] = ('models/**', 'experiments/**')
  protected: tuple[str, ...] = (
      'harness/**', 'agent/**', 'tests/**', 'WORKSPACE.md', 'pyproject.toml', 'Makefile',
      '.ci/**', '.git/**', 'benchmarks/**')


@dataclasses.dataclass(frozen=True)
class Trial:
  """How one candidate is run."""
  seeds: int = 3
  timeout_minutes: float = 10.0
  memory_mb: int = 8192  # cap on the trial's private memory (RLIMIT_DATA); 0 = none
  cpu_minutes: float = 0.0  # CPU time of the trial, all threads summed; 0 = none
  max_processes: int = 0  # RLIMIT_NPROC for the trial's user; 0 = none (root ignores it)
  network: bool = False  # False: the trial runs without network where the OS allows it
  # 'required': no trial runs without the filesystem sandbox (bubblewrap); 'best_effort':
  # where bwrap cannot run, trials run with namespaces and limits only, and say so
  filesystem_sandbox: str = 'required'
  # candidates that differ from the incumbent only in the optimiser's traced values
  # (learning rate, weight decay, clipping norm) train together, this many per process
  batch: int = 4
  # what one trial asks of a machine: `--executor=ray` places it on a node with these free
  # (memory_mb above is both its cap and its share); a fraction of a CPU, GPU or TPU chip
  # lets several trials share one
  cpus: float = 1.0
  gpus: float = 0.0
  tpus: float = 0.0


@dataclasses.dataclass(frozen=True)
class Budget:
  """Limits of a whole run; 0 means unlimited for compute_seconds and tokens."""
  trials: int = 12
  minutes: float = 10.0
  compute_seconds: float = 0.0
  tokens: int = 0


@dataclasses.dataclass(frozen=True)
class Stop:
  """Early end of a run: this many consecutive trials without an accepted change."""
  patience: int = 6


@dataclasses.dataclass(frozen=True)
class Acceptance:
  """The error rates of the paired, group-sequential test a candidate must pass
  (agent.judging.sequential): the chance of keeping a candidate that is not better, the
  chance of keeping one that gains min_effect (metric units), and the most paired seeds it
  may take to decide."""
  false_accept: float = 0.01
  power: float = 0.8
  min_effect: float = 0.02
  max_seeds: int = 24
  # min_effect shrinks to this share of the incumbent's remaining error when that is smaller
  # (1 - accuracy; a loss itself): +1 point matters at 97%, not at 60%. 0: min_effect alone.
  min_effect_of_error: float = 0.25


@dataclasses.dataclass(frozen=True)
class Tradeoffs:
  """Costs a gain must not exceed; 0 for max_memory_mb means no cap."""
  max_time_ratio: float = 1.5
  time_ratio_min_gain: float = 0.01
  max_memory_mb: float = 0.0
  max_latency_ratio: float = 2.0
  reject_nonfinite: bool = True


@dataclasses.dataclass(frozen=True)
class Pruning:
  """Stopping a clear loser early, once min_fraction of its steps have run."""
  enabled: bool = True
  min_fraction: float = 0.3
  margin_multiplier: float = 3.0
  # a batch's successive halving (agent.judging.rungs): fractions of the training steps where
  # its candidates are ranked against the incumbent trained alongside; () = none
  rungs: tuple[float, ...] = (0.25, 0.5)
  rung_keep: float = 0.5  # the share of a rung's candidates that train on (at least one)


@dataclasses.dataclass(frozen=True)
class Transfer:
  """Other experiments a kept change must not lose on (agent.judging.transfer): a winner is
  also run there, paired with the incumbent on the same seeds. mode 'reject': a loss beyond
  the noise floor on any of them rejects it; 'report': the losses are only reported."""
  experiments: tuple[str, ...] = ()
  mode: str = 'reject'


_SECTIONS: dict[str, type] = {
    'objective': Objective, 'scope': Scope, 'trial': Trial, 'budget': Budget, 'stop': Stop,
    'acceptance': Acceptance, 'tradeoffs': Tradeoffs, 'pruning': Pruning,
    'transfer': Transfer}


@dataclasses.dataclass(frozen=True)
class Charter:
  """The parsed charter; `prose` is the Markdown outside the settings block."""
  objective: Objective = dataclasses.field(default_factory=Objective)
  scope: Scope = dataclasses.field(default_factory=Scope)
  trial: Trial = dataclasses.field(default_factory=Trial)
  budget: Budget = dataclasses.field(default_factory=Budget)
  stop: Stop = dataclasses.field(default_factory=Stop)
  acceptance: Acceptance = dataclasses.field(default_factory=Acceptance)
  tradeoffs: Tradeoffs = dataclasses.field(default_factory=Tradeoffs)
  pruning: Pruning = dataclasses.field(default_factory=Pruning)
  transfer: Transfer = dataclasses.field(default_factory=Transfer)
  path: str = 'WORKSPACE.md'
  prose: str = ''

  def is_editable(self, relpath: str) -> bool:
    """True for a relative POSIX path inside an editable glob and outside every protected one.

    Globs are gitignore patterns. Protected ones match case-insensitively so that a
    case-insensitive file system cannot be used to reach, say, Harness/ as harness/, and
    ALWAYS_PROTECTED is a spec of its own so that no `!` pattern in the charter reopens it.
    """
    parts = _path_parts(relpath)
    if parts is None:
      return False
    path = '/'.join(parts)
    return (_spec(self.scope.editable).match_file(path)
            and not any(_spec(tuple(g.lower() for g in globs)).match_file(path.lower())
                        for globs in (self.scope.protected, ALWAYS_PROTECTED)))


def _path_parts(relpath: str) -> list[str] | None:
  """The path's segments, or None for anything that could escape the repository."""
  if not relpath or relpath.startswith('/') or '\\' in relpath or '\0' in relpath:
    return None
  parts = [p for p in relpath.split('/') if p not in ('', '.')]
  return None if not parts or '..' in parts else parts


@functools.cache
def _spec(globs: tuple[str, ...]) -> pathspec.PathSpec:
  """gitignore semantics: `dir/**` is what is inside dir, not dir itself; a glob without a
  slash matches at any depth; the last matching glob wins, so `!glob` excludes."""
  return pathspec.PathSpec.from_lines('gitignore', globs)


def _valid_globs(globs: tuple[str, ...]) -> bool:
  if not all(g and not g.startswith('/') for g in globs):
    return False
  try:
    _spec(globs)
  except ValueError:  # pathspec's GitIgnorePatternError, e.g. for a trailing backslash
    return False
  return True


def _valid_experiments(paths: tuple[str, ...]) -> bool:
  """Distinct config files inside the workspace: relative POSIX paths ending in .py."""
  return len(set(paths)) == len(paths) and all(
      _path_parts(p) is not None and p.endswith('.py') for p in paths)


# Range checks: (predicate, what the value must be).
_Rule = tuple[Callable[[Any], bool], str]
_NONNEG: _Rule = (lambda v: v >= 0, '>= 0')
_POSITIVE: _Rule = (lambda v: v > 0, '> 0')
_GLOBS: _Rule = (_valid_globs, 'a list of non-empty relative gitignore globs')
# Ray's rule for a resource: a share of one unit, or whole units
_SHARE: _Rule = (lambda v: 0 <= v <= 1 or (v > 1 and v == int(v)),
                 'a fraction in [0, 1] or a whole number')
_RULES: dict[str, _Rule] = {
    'objective.metric': (lambda v: bool(v), 'a non-empty string'),
    'objective.direction': (lambda v: v in ('auto', 'max', 'min'), "'auto', 'max' or 'min'"),
    'scope.editable': _GLOBS,
    'scope.protected': _GLOBS,
    'trial.seeds': (lambda v: v >= 2, '>= 2 (a paired test needs two seeds)'),
    'trial.timeout_minutes': _POSITIVE,
    'trial.memory_mb': _NONNEG,
    'trial.cpu_minutes': _NONNEG,
    'trial.max_processes': _NONNEG,
    'trial.filesystem_sandbox': (lambda v: v in ('required', 'best_effort'),
                                 "'required' or 'best_effort'"),
    'trial.batch': (lambda v: v >= 1, '>= 1 (1: every candidate trains alone)'),
    'trial.cpus': _SHARE,
    'trial.gpus': _SHARE,
    'trial.tpus': _SHARE,
    'budget.trials': (lambda v: v >= 1, '>= 1'),
    'budget.minutes': _POSITIVE,
    'budget.compute_seconds': _NONNEG,
    'budget.tokens': _NONNEG,
    'stop.patience': (lambda v: v >= 1, '>= 1'),
    'acceptance.false_accept': (lambda v: 0 < v < 0.5, 'in (0, 0.5)'),
    'acceptance.power': (lambda v: 0.5 <= v < 1, 'in [0.5, 1)'),
    'acceptance.min_effect': _POSITIVE,
    'acceptance.max_seeds': (lambda v: v >= 2, '>= 2 (a paired test needs two seeds)'),
    'acceptance.min_effect_of_error': (lambda v: 0 <= v <= 1, 'in [0, 1]'),
    'tradeoffs.max_time_ratio': _POSITIVE,
    'tradeoffs.time_ratio_min_gain': _NONNEG,
    'tradeoffs.max_memory_mb': _NONNEG,
    'tradeoffs.max_latency_ratio': _POSITIVE,
    'pruning.min_fraction': (lambda v: 0 < v <= 1, 'in (0, 1]'),
    'pruning.margin_multiplier': _NONNEG,
    'pruning.rungs': (lambda v: all(0 < f < 1 for f in v), 'a list of fractions in (0, 1)'),
    'pruning.rung_keep': (lambda v: 0 < v <= 1, 'in (0, 1]'),
    'transfer.experiments': (_valid_experiments, 'a list of distinct experiment config files '
                             'relative to the workspace, e.g. ["experiments/digits_mlp.py"]'),
    'transfer.mode': (lambda v: v in ('reject', 'report'), "'reject' or 'report'"),
}


def load_charter(path: str | Path) -> Charter:
  """Reads and validates a charter file; raises CharterError naming the offending line."""
  path = Path(path)
  try:
    text = path.read_text(encoding='utf-8')
  except OSError as e:
    raise CharterError(str(path), None, f'cannot read charter: {e.strerror}') from e
  return parse_charter(text, str(path))


def parse_charter(text: str, name: str = 'WORKSPACE.md') -> Charter:
  """Parses charter Markdown; `name` is what error messages call the file."""
  lines = text.splitlines()
  start, end = _settings_block(lines, name)
  block = lines[start:end]
  try:
    data = tomllib.loads('\n'.join(block))
  except tomllib.TOMLDecodeError as e:
    raise CharterError(name, _decode_error_line(str(e), start, end), _POSITION.sub('', str(e)))
  positions = _key_lines(block, start + 1)
  sections = _sections(data, positions, name, start)
  prose = '\n'.join(lines[:start - 1] + lines[end + 1:])
  return Charter(**sections, path=name, prose=prose)


_OPEN = re.compile(r'^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)')
_CLOSE = re.compile(r'^ {0,3}(`{3,}|~{3,})\s*$')


def _settings_block(lines: list[str], name: str) -> tuple[int, int]:
  """0-based [start, end) of the one ```toml block's contents; other fences are skipped."""
  blocks: list[tuple[int, int]] = []
  fence, info, opened = '', '', 0
  for i, line in enumerate(lines):
    if not fence:
      if m := _OPEN.match(line):
        fence, info, opened = m.group(1), m.group(2).lower(), i
    elif (m := _CLOSE.match(line)) and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
      if info == 'toml':
        blocks.append((opened + 1, i))
      fence = ''
  if fence and info == 'toml':
    raise CharterError(name, opened + 1, 'unterminated ```toml block')
  if not blocks:
    raise CharterError(name, None, 'no ```toml block of settings found')
  if len(blocks) > 1:
    raise CharterError(name, blocks[1][0], 'more than one ```toml block; keep all settings in one')
  return blocks[0]


_POSITION = re.compile(r'\s*\((at line (\d+), column \d+|at end of document)\)\s*$')


def _decode_error_line(message: str, start: int, end: int) -> int:
  """tomllib counts lines from the block's start; translate into a file line number."""
  m = _POSITION.search(message)
  if m and m.group(2):
    return start + int(m.group(2))
  return max(end, start + 1)


_KEY_PART = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_TABLE = re.compile(rf'^\s*\[\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*\]\s*(#.*)?$')
_KEY = re.compile(rf'^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=')


def _split_key(dotted: str) -> tuple[str, ...]:
  return tuple(p.strip('"\'') for p in re.findall(_KEY_PART, dotted))


def _key_lines(block: list[str], first_line: int) -> dict[tuple[str, ...], int]:
  """File line of each table header and key, so later errors can point at them.

  tomllib reports no positions for valid documents, so headers and `key =` lines are
  found by a line scan; array continuation lines never match because they lack `key =`.
  """
  found: dict[tuple[str, ...], int] = {}
  table: tuple[str, ...] = ()
  for offset, line in enumerate(block):
    if m := _TABLE.match(line):
      table = _split_key(m.group(1))
      found.setdefault(table, first_line + offset)
    elif m := _KEY.match(line):
      found.setdefault(table + _split_key(m.group(1)), first_line + offset)
  return found


def _sections(data: dict[str, Any], positions: dict[tuple[str, ...], int], name: str,
              start: int) -> dict[str, Any]:
  """Validated section dataclasses for every table present; absent ones take defaults."""
  def fail(keys: tuple[str, ...], message: str) -> CharterError:
    line = positions.get(keys) or positions.get(keys[:1]) or start + 1
    return CharterError(name, line, message)

  sections: dict[str, Any] = {}
  for section, table in data.items():
    cls = _SECTIONS.get(section)
    if cls is None:
      kind = 'section' if isinstance(table, dict) else 'key'
      raise fail((section,), f"unknown {kind} '{section}'")
    if not isinstance(table, dict):
      raise fail((section,), f"'{section}' must be a [{section}] table")
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
      dotted = f'{section}.{key}'
      if key not in types:
        raise fail((section, key), f"unknown key '{dotted}'")
      values[key] = _checked(dotted, types[key], value, lambda m: fail((section, key), m))
    sections[section] = cls(**values)
  return sections


def _checked(dotted: str, expected: Any, value: Any,
             fail: Callable[[str], CharterError]) -> Any:
  """The value converted to the field's type, or an error saying what was expected."""
  converted, description = _convert(expected, value)
  if converted is None:
    raise fail(f"'{dotted}' must be {description}, got {value!r}")
  rule = _RULES.get(dotted)
  if rule and not rule[0](converted):
    raise fail(f"'{dotted}' must be {rule[1]}, got {value!r}")
  return converted


def _convert(expected: Any, value: Any) -> tuple[Any, str]:
  """(converted value or None, description of the type); ints are fine where floats are."""
  if expected is bool:
    return (value if isinstance(value, bool) else None), 'true or false'
  if expected is int:
    return (value if isinstance(value, int) and not isinstance(value, bool) else None), 'an integer'
  if expected is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return (float(value) if ok else None), 'a finite number'
  if expected is str:
    return (value if isinstance(value, str) else None), 'a string'
  if expected == tuple[float, ...]:
    ok = isinstance(value, list) and all(_convert(float, v)[0] is not None for v in value)
    return (tuple(float(v) for v in value) if ok else None), 'a list of numbers'
  ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
  return (tuple(value) if ok else None), 'a list of strings'
