"""Reads a language model's answer: four labelled sections and one edit.

The answer looks like

    DIAGNOSIS: what the incumbent's curves say
    HYPOTHESIS: the change and why it should help
    EXPECTED EFFECT: what should move, and by about how much
    OPERATOR: short_snake_name
    ```diff
    --- a/experiments/x.py
    +++ b/experiments/x.py
    @@ ... @@
    ...
    ```

with the edit either as unified diff(s) in a fenced block or as search/replace blocks
(a line with the path, then `<<<<<<< SEARCH`, the old lines, `=======`, the new lines,
`>>>>>>> REPLACE`). Hunks are placed by their context and removed lines, not by their
line numbers, which models often get wrong; a hunk that does not match, or matches in
more than one place, is an error naming the file and the hunk, so the model can be told
precisely what to fix. (`git apply` would place an ambiguous hunk silently, refuse `@@ ... @@`
headers and partial deletions, and name no hunk; search/replace blocks need this anyway.)

Paths are passed through as written (only the a/ and b/ prefixes are removed): a path the
model was not shown still becomes a change, built from the new side of its hunks, so that
the guard, not this parser, rejects it and the rejection is recorded under its name.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

SECTIONS = ('DIAGNOSIS', 'HYPOTHESIS', 'EXPECTED EFFECT', 'OPERATOR')
MAX_OPERATOR_CHARS = 40


class EditFormatError(ValueError):
  """An answer that cannot be used; the one-line message is what the model is told."""


@dataclasses.dataclass(frozen=True)
class Hunk:
  """Lines to find (`old`) and what replaces them (`new`); `start` is the 1-based line
  the diff header claims, used only to place a hunk that has no old lines."""
  old: tuple[str, ...]
  new: tuple[str, ...]
  label: str  # how errors name it: 'hunk 2', 'SEARCH/REPLACE block 1'
  start: int | None = None


@dataclasses.dataclass(frozen=True)
class FileEdit:
  """One file's part of the edit."""
  path: str
  hunks: tuple[Hunk, ...]
  create: bool = False
  delete: bool = False


@dataclasses.dataclass(frozen=True)
class Answer:
  """A parsed answer; `changes` maps each touched path to its new text (None: deleted).
  `unseen` lists the edited paths that were not in `files` (nor created by the answer):
  their text is only what the hunks' new lines make, fit for the guard and nothing else."""
  diagnosis: str
  hypothesis: str
  expected_effect: str
  operator: str
  changes: dict[str, str | None]
  unseen: tuple[str, ...] = ()


def parse_answer(text: str, files: Mapping[str, str]) -> Answer:
  """The sections and the edit applied to `files` (path -> current text)."""
  text = re.sub(r'<think>.*?</think>', '', text or '', flags=re.DOTALL)
  if not text.strip():
    raise EditFormatError('the answer is empty')
  lines = text.replace('\r\n', '\n').split('\n')
  prose, edits = _split_edits(lines)
  sections = _sections(prose)
  missing = [name for name in SECTIONS if not sections.get(name)]
  if missing:
    raise EditFormatError(f'missing section(s) {", ".join(missing)}: start lines with '
                          f'{", ".join(n + ":" for n in SECTIONS)}')
  if not edits:
    raise EditFormatError('no edit found: give it as a ```diff block of unified diffs or as '
                          'SEARCH/REPLACE blocks')
  created = {e.path for e in edits if e.create}
  unseen = tuple(dict.fromkeys(e.path for e in edits if not e.create and not e.delete
                               and e.path not in files and e.path not in created))
  diagnosis, hypothesis, effect = (' '.join(sections[name].split()) for name in SECTIONS[:3])
  return Answer(diagnosis, hypothesis, effect, _operator(sections['OPERATOR']),
                apply_edits(edits, files), unseen)


# ----------------------------------------------------------------------------- sections

_HEADER = re.compile(r'^\s{0,3}(?:#+\s*)?[*_]*\s*(DIAGNOSIS|HYPOTHESIS|EXPECTED[ _]EFFECT|'
                     r'OPERATOR|EDIT)\s*[*_]*\s*:\s*[*_]*\s*(.*)$', re.IGNORECASE)


def _sections(prose: Sequence[str | None]) -> dict[str, str]:
  """Each section's lines, joined; a section runs until the next header, fence or edit
  (None marks where an edit stood). The first occurrence of a name wins."""
  found: dict[str, list[str]] = {}
  current: list[str] | None = None
  for line in prose:
    if line is None or _FENCE.match(line):
      current = None
    elif m := _HEADER.match(line):
      name = m.group(1).upper().replace('_', ' ')
      current = None if name == 'EDIT' or name in found else found.setdefault(name, [])
      if current is not None:
        current.append(m.group(2))
    elif current is not None:
      current.append(line)
  return {name: '\n'.join(parts).strip() for name, parts in found.items()}


def _operator(text: str) -> str:
  """The OPERATOR section's first line as a snake name (`LR down` -> `lr_down`)."""
  name = re.sub(r'[^a-z0-9]+', '_', text.split('\n', 1)[0].lower()).strip('_')
  if not name or len(name) > MAX_OPERATOR_CHARS:
    raise EditFormatError(f'OPERATOR must be a short snake_case name (at most '
                          f'{MAX_OPERATOR_CHARS} characters), got {text[:60]!r}')
  return name


# ----------------------------------------------------------------------------- edit blocks

_FENCE = re.compile(r'^\s{0,3}(`{3,}|~{3,})\s*([\w+-]*)')
_SEARCH = re.compile(r'^\s*<{5,9}\s*SEARCH\s*$')
_DIVIDER = re.compile(r'^\s*={5,9}\s*$')
_REPLACE = re.compile(r'^\s*>{5,9}\s*REPLACE\s*$')


def _split_edits(lines: list[str]) -> tuple[list[str | None], list[FileEdit]]:
  """(prose lines with None where an edit stood, the edits in order of appearance).

  Fenced blocks marked diff/patch, or whose lines read as a unified diff, are diffs;
  search/replace blocks are recognised inside or outside fences, and their contents are
  never read as fences or sections. A fence that wraps search/replace blocks stays in the
  prose as its opening and closing lines, which the path lookup and the sections skip.
  """
  prose: list[str | None] = []
  edits: list[FileEdit] = []
  blocks = 0
  last_path: str | None = None
  wrapper: re.Pattern[str] | None = None  # closing line of an open wrapping fence
  i = 0
  while i < len(lines):
    line = lines[i]
    if _SEARCH.match(line):
      blocks += 1
      path = _block_path(prose, last_path, blocks)
      i, hunk = _search_replace(lines, i, blocks)
      edits.append(FileEdit(path, (hunk,), create=not hunk.old))
      last_path = path
      prose.append(None)
      continue
    if wrapper and wrapper.match(line):
      wrapper = None
    elif m := _FENCE.match(line):
      end, closing = _fence_end(lines, i, m.group(1))
      body = lines[i + 1:end]
      if any(_SEARCH.match(b) for b in body):
        wrapper = closing
      else:
        if m.group(2).lower() in ('diff', 'patch') or _looks_like_diff(body):
          edits.extend(parse_unified_diff(body))
        prose.append(None)
        i = end + 1
        continue
    prose.append(line)
    i += 1
  return prose, edits


def _fence_end(lines: list[str], start: int, fence: str) -> tuple[int, re.Pattern[str]]:
  """Index of the line closing the fence opened at `start` (len(lines) if unclosed), and
  the pattern of a closing line: indented no deeper than the opening, so that a diff's
  context line ' ```' does not end the diff."""
  indent = len(lines[start]) - len(lines[start].lstrip())
  closing = re.compile(rf'^\s{{0,{indent}}}{re.escape(fence[0])}{{{len(fence)},}}\s*$')
  for j in range(start + 1, len(lines)):
    if closing.match(lines[j]):
      return j, closing
  return len(lines), closing


def _looks_like_diff(body: list[str]) -> bool:
  return any(a.startswith('--- ') and b.startswith('+++ ') for a, b in zip(body, body[1:]))


def _block_path(prose: list[str | None], last_path: str | None, number: int) -> str:
  """The path line before a SEARCH marker (blank and fence lines skipped), taken out of
  the prose; right after another block the path may be left out, and that block's holds."""
  for k in range(len(prose) - 1, -1, -1):
    line = prose[k]
    if line is None:
      if last_path is not None:
        return last_path
      break
    if not line.strip() or _FENCE.match(line):
      continue
    path = line.strip().strip('`*').strip().removesuffix(':').strip('`*')
    if not path or any(c.isspace() for c in path):
      raise EditFormatError(f'SEARCH/REPLACE block {number}: the line before <<<<<<< SEARCH '
                            f'must be the file\'s path alone, got {line.strip()[:80]!r}')
    del prose[k]
    return path
  raise EditFormatError(f'SEARCH/REPLACE block {number}: no file path on the line before '
                        '<<<<<<< SEARCH')


def _search_replace(lines: list[str], i: int, number: int) -> tuple[int, Hunk]:
  """Reads the block whose SEARCH marker is line i; returns the index after it."""
  label = f'SEARCH/REPLACE block {number}'
  old: list[str] = []
  new: list[str] = []
  target = old
  for j in range(i + 1, len(lines)):
    line = lines[j]
    if _DIVIDER.match(line) and target is old:
      target = new
    elif _REPLACE.match(line):
      if target is old:
        break
      return j + 1, Hunk(tuple(old), tuple(new), label)
    elif _SEARCH.match(line):
      break
    else:
      target.append(line)
  raise EditFormatError(f'{label}: expected <<<<<<< SEARCH, the old lines, =======, the new '
                        'lines, then >>>>>>> REPLACE')


# ----------------------------------------------------------------------------- unified diffs

_HUNK_HEADER = re.compile(r'^@@\s*(?:-(\d+)(?:,\d+)?\s+\+\d+(?:,\d+)?\s*)?@@')


def parse_unified_diff(lines: Sequence[str]) -> list[FileEdit]:
  """The file parts of a unified diff, hunks delimited by headers rather than counted
  (models miscount); lines before the first `---`/`+++` pair (git's `diff --git`,
  `index`) are skipped."""
  edits: list[FileEdit] = []
  i = 0
  while i < len(lines):
    if lines[i].startswith('--- ') and i + 1 < len(lines) and lines[i + 1].startswith('+++ '):
      i, edit = _file_part(lines, i)
      edits.append(edit)
    elif lines[i].startswith('@@'):
      raise EditFormatError(f'diff line {i + 1}: hunk without a ---/+++ file header')
    else:
      i += 1
  if not edits and lines:
    raise EditFormatError('the diff block has no ---/+++ file header')
  return edits


def _file_part(lines: Sequence[str], i: int) -> tuple[int, FileEdit]:
  old_path, new_path = _header_path(lines[i][4:]), _header_path(lines[i + 1][4:])
  if old_path is None and new_path is None:
    raise EditFormatError(f'diff line {i + 1}: both sides are /dev/null')
  if old_path is not None and new_path is not None and old_path != new_path:
    raise EditFormatError(f'diff line {i + 1}: renames are not supported ({old_path} -> '
                          f'{new_path}); edit files in place')
  path = new_path if new_path is not None else old_path
  hunks: list[Hunk] = []
  i += 2
  while i < len(lines) and not _starts_file(lines, i):
    if not lines[i].startswith('@@'):
      if lines[i].strip():
        raise EditFormatError(f'diff for {path}: line {i + 1} {lines[i][:60]!r} is outside '
                              'any @@ hunk')
      i += 1
      continue
    i, hunk = _hunk(lines, i, path, len(hunks) + 1)
    hunks.append(hunk)
  if not hunks and new_path is not None:
    raise EditFormatError(f'diff for {path} has no @@ hunk')
  return i, FileEdit(path, tuple(hunks), create=old_path is None, delete=new_path is None)


def _starts_file(lines: Sequence[str], i: int) -> bool:
  return lines[i].startswith('diff --git ') or (
      lines[i].startswith('--- ') and i + 1 < len(lines) and lines[i + 1].startswith('+++ '))


def _hunk(lines: Sequence[str], i: int, path: str, number: int) -> tuple[int, Hunk]:
  m = _HUNK_HEADER.match(lines[i])
  if not m:
    raise EditFormatError(f'diff for {path}, hunk {number}: malformed header {lines[i][:60]!r}')
  old: list[str] = []
  new: list[str] = []
  j = i + 1
  while j < len(lines) and not lines[j].startswith('@@') and not _starts_file(lines, j):
    line = lines[j]
    tag, body = line[:1], line[1:]
    if tag in (' ', ''):  # an empty line is a blank context line whose space was stripped
      old.append(body)
      new.append(body)
    elif tag == '-':
      old.append(body)
    elif tag == '+':
      new.append(body)
    elif tag != '\\':  # `\ No newline at end of file`
      raise EditFormatError(f'diff for {path}, hunk {number}: line {line[:60]!r} starts '
                            'with none of " ", "-", "+"')
    j += 1
  while old and new and old[-1] == new[-1] == '' and not lines[j - 1].startswith(' '):
    old.pop()  # blank lines before a closing fence are layout, not context
    new.pop()
    j -= 1
  start = int(m.group(1)) if m.group(1) else None
  return j, Hunk(tuple(old), tuple(new), f'hunk {number}', start)


def _header_path(text: str) -> str | None:
  """The path of a ---/+++ line: timestamp dropped, a/ or b/ removed, nothing normalised."""
  name = text.split('\t', 1)[0].strip()
  if name == '/dev/null':
    return None
  return name[2:] if name.startswith(('a/', 'b/')) else name


# ----------------------------------------------------------------------------- applying


def apply_edits(edits: Sequence[FileEdit], files: Mapping[str, str]) -> dict[str, str | None]:
  """New text of every touched path, edits applied in order to `files`.

  A path not in `files` that is not created here (say harness/train.py, ../x) gets the
  text its hunks' new lines make: it cannot be applied, but it must reach the guard.
  """
  texts: dict[str, str | None] = {}
  for edit in edits:
    current = texts[edit.path] if edit.path in texts else files.get(edit.path)
    if edit.path in texts and current is None:
      raise EditFormatError(f'{edit.path} is edited after it was deleted')
    if edit.delete:
      texts[edit.path] = None
    elif edit.create:
      if current is not None:
        raise EditFormatError(f'{edit.path} already exists: edit it with context lines '
                              'instead of creating it')
      texts[edit.path] = _join([line for h in edit.hunks for line in h.new], True)
    elif current is None:
      texts[edit.path] = _join([line for h in edit.hunks for line in h.new], True)
    else:
      texts[edit.path] = _apply_hunks(edit.path, current, edit.hunks)
  return texts


def _apply_hunks(path: str, text: str, hunks: Sequence[Hunk]) -> str:
  lines, newline = _split(text)
  floor = 0  # hunks come in file order: an ambiguous one is looked for after the last
  for hunk in hunks:
    at = _locate(path, lines, hunk, floor)
    lines[at:at + len(hunk.old)] = hunk.new
    floor = at + len(hunk.new)
  return _join(lines, newline)


def _locate(path: str, lines: list[str], hunk: Hunk, floor: int) -> int:
  """Index where the hunk's old lines stand, matched exactly, else ignoring trailing
  whitespace; never by line number unless the hunk has no old lines."""
  where = f'{path}, {hunk.label}'
  if not hunk.old:
    if hunk.start is None:
      raise EditFormatError(f'{where}: no context or removed lines to place it by')
    return min(max(hunk.start, floor), len(lines))
  for same in (lambda a, b: a == b, lambda a, b: a.rstrip() == b.rstrip()):
    found = [i for i in range(len(lines) - len(hunk.old) + 1)
             if all(same(a, b) for a, b in zip(lines[i:i + len(hunk.old)], hunk.old))]
    if len(found) > 1:
      found = [i for i in found if i >= floor] or found
    if len(found) == 1:
      return found[0]
    if found:
      at = ', '.join(str(i + 1) for i in found[:5])
      raise EditFormatError(f'{where}: its context and removed lines match at lines {at}; '
                            'add context lines so that it matches once')
  raise EditFormatError(f'{where}: its context and removed lines do not match the file '
                        f'(first line {hunk.old[0][:80]!r}); copy them exactly from the source')


def _split(text: str) -> tuple[list[str], bool]:
  """Lines without their '\\n', and whether the text ended with one."""
  if not text:
    return [], True
  lines = text.split('\n')
  if lines[-1] == '':
    return lines[:-1], True
  return lines, False


def _join(lines: Sequence[str], newline: bool) -> str:
  return '\n'.join(lines) + ('\n' if newline and lines else '')
