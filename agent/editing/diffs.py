"""Unified diffs: what a candidate changes, in the form git and reviewers read.

changed_paths() is what the scope guard checks, so hunks are consumed by their line
counts rather than recognised by pattern: removing a line that reads `-- a/harness/x`
shows up in a diff as `--- a/harness/x`, which must not pass for a file header (nor hide
one). A diff that cannot be parsed this way raises DiffError rather than being guessed at.
"""

import codecs
import dataclasses
import difflib
import re


class DiffError(ValueError):
  """A diff whose structure cannot be trusted; one-line message."""


@dataclasses.dataclass(frozen=True)
class FilePatch:
  """One file's part of a diff; a path is None on the /dev/null side of a creation or
  deletion, and `paths` lists every name the part mentions, headers included."""
  old_path: str | None
  new_path: str | None
  paths: tuple[str, ...]
  added: int
  removed: int


def unified_diff(path: str, old: str | None, new: str | None) -> str:
  """A git-style diff of one file; None for old (new) means the file is created (deleted).

  Lines without a final newline get git's `\\ No newline at end of file` marker, so the
  result applies with `git apply`. Equal contents give the empty string.
  """
  if old == new:
    return ''
  head = [f'diff --git a/{path} b/{path}\n']
  if old is None:
    head.append('new file mode 100644\n')
  if new is None:
    head.append('deleted file mode 100644\n')
  body = difflib.unified_diff(
      _lines(old), _lines(new), f'a/{path}' if old is not None else '/dev/null',
      f'b/{path}' if new is not None else '/dev/null')
  return ''.join(head) + ''.join(
      line if line.endswith('\n') else line + '\n\\ No newline at end of file\n'
      for line in body)


def changed_paths(diff_text: str) -> list[str]:
  """Every repository path the diff touches (both names of a rename), in order of
  appearance, without duplicates; /dev/null is not a path."""
  seen: dict[str, None] = {}
  for patch in parse_diff(diff_text):
    seen.update(dict.fromkeys(patch.paths))
  return list(seen)


def diff_stats(diff_text: str) -> tuple[int, int, int]:
  """(files, added lines, removed lines); a rename counts as one file."""
  patches = parse_diff(diff_text)
  return len(patches), sum(p.added for p in patches), sum(p.removed for p in patches)


_HUNK = re.compile(r'^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@')


class _Builder:
  """Accumulates one file's part while its header lines and hunks are read."""

  def __init__(self, old: str | None = None, new: str | None = None):
    self.old, self.new = old, new
    self.paths = [p for p in (old, new) if p is not None]
    self.added = self.removed = 0
    self.has_file_header = self.has_hunks = False

  def name(self, old: str | None | bool = False, new: str | None | bool = False) -> None:
    """Records the old and/or new name; False leaves a side unchanged."""
    if old is not False:
      self.old = old
    if new is not False:
      self.new = new
    self.paths += [p for p in (old, new) if isinstance(p, str)]

  def build(self) -> FilePatch:
    return FilePatch(self.old, self.new, tuple(dict.fromkeys(self.paths)), self.added,
                     self.removed)


def parse_diff(diff_text: str) -> list[FilePatch]:
  """The file parts of a git or plain unified diff; raises DiffError when malformed."""
  lines = diff_text.split('\n')
  if lines and lines[-1] == '':
    lines.pop()
  builders: list[_Builder] = []
  i = 0
  while i < len(lines):
    line = lines[i]
    current = builders[-1] if builders else None
    if line.startswith('diff --git '):
      builders.append(_Builder(*_git_header_paths(line[len('diff --git '):])))
    elif line.startswith('--- ') and i + 1 < len(lines) and lines[i + 1].startswith('+++ '):
      if current is None or current.has_file_header or current.has_hunks:
        current = _Builder()
        builders.append(current)
      current.name(_header_path(line[4:], 'a/'), _header_path(lines[i + 1][4:], 'b/'))
      current.has_file_header = True
      i += 1
    elif line.startswith('@@'):
      if current is None or not current.has_file_header:
        raise DiffError(f'diff line {i + 1}: hunk without a ---/+++ file header')
      i = _consume_hunk(lines, i, current)
      continue
    elif current is not None:
      _extended_header(line, current)
    i += 1
  return [b.build() for b in builders]


def _consume_hunk(lines: list[str], i: int, patch: _Builder) -> int:
  """Reads the hunk starting at line i by its counts; returns the index after it."""
  m = _HUNK.match(lines[i])
  if not m:
    raise DiffError(f'diff line {i + 1}: malformed hunk header {lines[i]!r}')
  old_left = 1 if m.group(1) is None else int(m.group(1))
  new_left = 1 if m.group(2) is None else int(m.group(2))
  patch.has_hunks = True
  j = i + 1
  while old_left > 0 or new_left > 0:
    if j >= len(lines):
      raise DiffError(f'diff line {i + 1}: hunk ends before its line counts are reached')
    line = lines[j]
    tag = line[:1]
    if tag in (' ', ''):
      old_left, new_left = old_left - 1, new_left - 1
    elif tag == '-':
      old_left, patch.removed = old_left - 1, patch.removed + 1
    elif tag == '+':
      new_left, patch.added = new_left - 1, patch.added + 1
    elif tag != '\\':
      raise DiffError(f'diff line {j + 1}: unexpected line in hunk {line!r}')
    if old_left < 0 or new_left < 0:
      raise DiffError(f'diff line {i + 1}: hunk has more lines than its header says')
    j += 1
  while j < len(lines) and lines[j].startswith('\\'):
    j += 1
  return j


def _extended_header(line: str, patch: _Builder) -> None:
  """git's lines between `diff --git` and the hunks: renames, copies, creations, binaries."""
  for prefix, side in (('rename from ', 'old'), ('copy from ', 'old'),
                       ('rename to ', 'new'), ('copy to ', 'new')):
    if line.startswith(prefix):
      patch.name(**{side: _unquote(line[len(prefix):])})
      return
  if line.startswith('new file mode'):
    patch.name(old=None)
  elif line.startswith('deleted file mode'):
    patch.name(new=None)
  elif m := re.match(r'^Binary files (.+) and (.+) differ$', line):
    patch.name(_header_path(m.group(1), 'a/'), _header_path(m.group(2), 'b/'))


def _git_header_paths(rest: str) -> tuple[str | None, str | None]:
  """(old, new) from `a/P b/Q`; the usual P == Q case is split exactly in the middle."""
  if rest.startswith('"'):
    m = re.match(r'^("(?:[^"\\]|\\.)*")\s+(.+)$', rest)
    if not m:
      raise DiffError(f'malformed diff --git header {rest!r}')
    return _header_path(m.group(1), 'a/'), _header_path(m.group(2), 'b/')
  half = (len(rest) - 1) // 2
  if len(rest) % 2 == 1 and rest[half] == ' ' and rest[2:half] == rest[half + 3:]:
    return _header_path(rest[:half], 'a/'), _header_path(rest[half + 1:], 'b/')
  old, sep, new = rest.partition(' b/')
  if not sep:
    raise DiffError(f'malformed diff --git header {rest!r}')
  return _header_path(old, 'a/'), new


def _header_path(text: str, prefix: str) -> str | None:
  """The repository path of a ---/+++ name: timestamp dropped, unquoted, prefix removed."""
  name = text.split('\t', 1)[0].rstrip('\r')
  name = _unquote(name)
  if name == '/dev/null':
    return None
  return name[len(prefix):] if name.startswith(prefix) else name


def _unquote(name: str) -> str:
  """git C-quotes names with unusual bytes: "a/caf\\303\\251.py"."""
  if len(name) >= 2 and name[0] == name[-1] == '"':
    raw = codecs.escape_decode(name[1:-1].encode('utf-8'))[0]
    return raw.decode('utf-8', 'surrogateescape')
  return name


def _lines(text: str | None) -> list[str]:
  """Lines split at '\n' only: str.splitlines would also split at form feeds, which
  Python sources contain, and git would not."""
  if not text:
    return []
  parts = text.split('\n')
  return [p + '\n' for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
