"""Checks every proposal must pass before anything runs, whichever proposer made it.

In order, cheapest first, the first failure is the reason: the paths (inside the worktree,
editable under the charter, never packaging, data, hidden or cache files, no symlinks or
special files on the way), the sizes (files, bytes, changed lines), then the Python (it must
parse and pass `code_policy`), then deletions (nothing left behind may import a deleted
module). A rejection names its reason in one line; the loop records it and goes on.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import os
import stat
import unicodedata
from pathlib import Path, PurePosixPath
from typing import Collection, Iterator, Mapping

from agent.charter import Charter
from agent.editing import diffs
from agent.safety import allow_list, code_policy

MAX_CHANGED_LINES = 400
MAX_FILE_BYTES = 200_000  # per file: checked before diffing, so a flood never reaches difflib
MAX_FILES = 20
# Path lengths in UTF-8 bytes: a segment as the file system allows (NAME_MAX), the whole
# relative path far below PATH_MAX even under a deep worktree.
MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 1024
# Text kinds an edit may write; data (npz, pkl, csv, json, ...), binaries, native libraries
# and path hooks (.pth) are never editable, whatever the charter's globs say.
EDITABLE_SUFFIXES = ('.py', '.md', '.rst', '.txt')
# Packaging and start-up hooks, in any folder: they change what gets installed or what runs
# before the harness does (pytest's conftest, site's sitecustomize).
NEVER_EDITABLE = ('pyproject.toml', 'setup.py', 'setup.cfg', 'requirements*.txt',
                  'constraints*.txt', 'makefile', 'manifest.in', 'tox.ini', 'noxfile.py',
                  'conftest.py', 'sitecustomize.py', 'usercustomize.py', '__pycache__')


@dataclasses.dataclass(frozen=True)
class GuardResult:
  ok: bool
  reason: str
  diff: str


def check(charter: Charter, current: Mapping[str, str | None],
          changes: Mapping[str, str | None], worktree: Path | None = None,
          keep: Collection[str] = ()) -> GuardResult:
  """`current` holds the incumbent's text of each changed path (None: it does not exist).

  With `worktree`, the paths are also checked on disk (symlinks, special files) and a
  deletion must leave no importer behind; `keep` names files that must not be deleted
  (the experiment being run).
  """
  reason = _paths_reason(charter, changes, worktree, keep)
  if reason:
    return GuardResult(False, reason, '')
  diff = ''.join(diffs.unified_diff(path, current.get(path), new)
                 for path, new in sorted(changes.items()))
  if not diff:
    return GuardResult(False, 'the proposal changes nothing', diff)
  _, added, removed = diffs.diff_stats(diff)
  if added + removed > MAX_CHANGED_LINES:
    return GuardResult(False, f'diff of {added + removed} lines exceeds {MAX_CHANGED_LINES}',
                       diff)
  reason = _python_reason(charter, changes) or (
      _deletion_reason(worktree, changes) if worktree is not None else None)
  return GuardResult(reason is None, reason or 'passed', diff)


def read_current(worktree: Path, paths: Collection[str]) -> dict[str, str | None]:
  """The incumbent's text of each path, read only where that is safe: a regular file inside
  the worktree reached without symlinks. Anything else reads as None (the guard rejects
  those paths anyway), so reading can never follow a proposal out of the worktree, block
  on a FIFO or /dev/zero, or fail on a folder, an unreadable file or a name the file
  system refuses (the guard names the reason)."""
  texts: dict[str, str | None] = {}
  for path in paths:
    texts[path] = None
    if not isinstance(path, str) or _syntax_reason(path) or _disk_reason(worktree, path):
      continue
    target = Path(worktree, *PurePosixPath(path).parts)
    try:
      if target.is_file():
        texts[path] = target.read_text(encoding='utf-8', errors='replace')
    except OSError:
      continue
  return texts


# ---- paths ----------------------------------------------------------------------------
def _paths_reason(charter: Charter, changes: Mapping[str, str | None],
                  worktree: Path | None, keep: Collection[str]) -> str | None:
  if len(changes) > MAX_FILES:
    return f'the proposal changes {len(changes)} files; at most {MAX_FILES} are allowed'
  for path, text in sorted(changes.items(), key=lambda item: str(item[0])):
    if not isinstance(path, str) or not (text is None or isinstance(text, str)):
      return f'{path!r}: paths and texts must be strings (None deletes a file)'
    why = _syntax_reason(path) or _kind_reason(path) or _scope_reason(charter, path)
    if why:
      return f"{path} is outside the charter's editable scope ({why})"
    if worktree is not None and (why := _disk_reason(worktree, path)):
      return why
    if text is None and path in keep:
      return f'{path} is the experiment being run; it cannot be deleted'
    if text is not None and (why := _text_reason(text)):
      return f'{path}: {why}'
  return None


def _syntax_reason(path: str) -> str | None:
  """Why a path could leave the worktree or name something odd; None if it is plain.

  Decided on the text alone, before anything touches the disk: a name the file system
  would refuse (too long, not encodable) or one that would show as something else in a
  terminal or a prompt (control, format or separator characters) is refused here.
  """
  if not path or '\0' in path:
    return 'empty path or NUL byte'
  try:
    size = len(path.encode('utf-8'))
  except UnicodeEncodeError:
    return 'the path is not valid UTF-8 (lone surrogates from a bad decode)'
  if size > MAX_PATH_BYTES:
    return f'the path is {size} bytes long; at most {MAX_PATH_BYTES} are allowed'
  odd = next((c for c in path if c != ' ' and unicodedata.category(c)[0] in 'CZ'), None)
  if odd is not None:
    return f'the path holds the invisible or control character U+{ord(odd):04X}'
  if '\\' in path:
    return 'backslash in path'
  if path.startswith('/') or PurePosixPath(path).is_absolute():
    return 'absolute path'
  parts = path.split('/')
  if '..' in parts:
    return "'..' leaves the worktree"
  if any(p in ('', '.') for p in parts):
    return 'empty or "." path segment'
  if any(len(p.encode('utf-8')) > MAX_SEGMENT_BYTES for p in parts):
    return f'a path segment is longer than {MAX_SEGMENT_BYTES} bytes'
  if any(p.startswith('.') for p in parts):
    return 'hidden files and folders (.git, .github, ...) are never editable'
  return None


def _kind_reason(path: str) -> str | None:
  """Packaging, hooks and non-text files are refused regardless of the charter."""
  parts = [p.lower() for p in path.split('/')]
  for part in parts:
    if any(fnmatch.fnmatchcase(part, pattern) for pattern in NEVER_EDITABLE):
      return f"'{part}' is packaging, a start-up hook or a cache, never editable"
  if not parts[-1].endswith(EDITABLE_SUFFIXES):
    return f"only {', '.join(EDITABLE_SUFFIXES)} files are editable, not data or binaries"
  return None


def _scope_reason(charter: Charter, path: str) -> str | None:
  if charter.is_editable(path):
    return None
  anywhere = dataclasses.replace(charter, scope=dataclasses.replace(charter.scope,
                                                                     editable=('**',)))
  return 'not under an editable glob' if anywhere.is_editable(path) else 'protected'


def _disk_reason(worktree: Path, path: str) -> str | None:
  """What is on disk along the path: no symlink anywhere, folders then a regular file the
  agent may read and write. Any other error of the file system (a name too long, a loop,
  no permission) refuses the path rather than stopping the run."""
  current = Path(worktree)
  parts = path.split('/')
  for i, part in enumerate(parts):
    current = current / part
    last = i == len(parts) - 1
    shown = path if last else f"{path}: {'/'.join(parts[:i + 1])}"
    try:
      info = current.lstat()
    except FileNotFoundError:  # the rest will be created fresh, in the last folder found
      if os.access(current.parent, os.W_OK | os.X_OK):
        return None
      return f'{shown}: its folder is not writable in the worktree'
    except OSError as e:
      return f'{shown} cannot be checked in the worktree ({e.strerror or e})'
    if stat.S_ISLNK(info.st_mode):
      return f'{shown} is a symlink in the worktree; edits never follow symlinks'
    if not last and not stat.S_ISDIR(info.st_mode):
      return f'{shown} is a file, not a folder'
    if last and not stat.S_ISREG(info.st_mode):
      return f'{path} is not a regular file in the worktree'
    if last and info.st_nlink > 1:
      return f'{path} is hard-linked; an edit would change the other links too'
    if last and not os.access(current, os.R_OK | os.W_OK, follow_symlinks=False):
      return f'{path} is not readable and writable in the worktree'
  return None


def _text_reason(text: str) -> str | None:
  try:
    size = len(text.encode('utf-8'))
  except UnicodeEncodeError:
    return 'the text is not valid UTF-8 (lone surrogates)'
  if size > MAX_FILE_BYTES:
    return f'{size} bytes exceed the limit of {MAX_FILE_BYTES} per file'
  return None


# ---- Python ---------------------------------------------------------------------------
def _python_reason(charter: Charter, changes: Mapping[str, str | None]) -> str | None:
  project = sorted(set(allow_list.PROJECT_PACKAGES) | _editable_packages(charter))
  for path, text in sorted(changes.items()):
    if text is not None and '\0' in text:
      return f'{path}: contains NUL bytes; only text is editable'
    if text is None or not path.endswith('.py'):
      continue
    try:
      compile(text, path, 'exec', dont_inherit=True)
    except SyntaxError as e:
      return f'{path}:{e.lineno or 1}: syntax error: {e.msg}'
    problems = code_policy.check_source(path, text, project)
    if problems:
      more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
      return problems[0] + more
  return None


def _editable_packages(charter: Charter) -> set[str]:
  """Top-level folders the charter makes editable ('models/**' -> 'models')."""
  tops = {glob.split('/')[0] for glob in charter.scope.editable}
  return {t for t in tops if t and not any(c in t for c in '*?[')
          and charter.is_editable(f'{t}/__init__.py')}


# ---- deletions ------------------------------------------------------------------------
def _deletion_reason(worktree: Path, changes: Mapping[str, str | None]) -> str | None:
  """A deleted module must not be imported by any Python file that remains."""
  deleted = {_module_name(p): p for p, text in changes.items()
             if text is None and p.endswith('.py')}
  if not deleted:
    return None
  for path, text in _python_files(worktree, changes):
    if text is None:
      return f'deleting is refused: {path} cannot be read to check its imports'
    for line, name in _imports(path, text):
      if name in deleted:
        return f'deleting {deleted[name]} would break {path}:{line}, which imports {name}'
  return None


def _module_name(path: str) -> str:
  parts = path[:-3].split('/')
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _python_files(worktree: Path, changes: Mapping[str, str | None]) -> Iterator[
    tuple[str, str | None]]:
  """(path, text) of every Python file the candidate would have, the proposal's texts
  replacing the worktree's; hidden folders, caches, symlinks and special files are
  skipped. A file or folder the file system will not let us read comes as (path, None):
  what it imports is unknown, so the caller must not assume it imports nothing."""
  seen = set()
  for path, text in sorted(changes.items()):
    seen.add(path)
    if text is not None and path.endswith('.py'):
      yield path, text
  unreadable: list[OSError] = []
  for folder, subfolders, files in os.walk(worktree, onerror=unreadable.append):
    subfolders[:] = sorted(d for d in subfolders if not d.startswith('.') and d != '__pycache__')
    for name in sorted(files):
      full = Path(folder, name)
      path = full.relative_to(worktree).as_posix()
      if not name.endswith('.py') or path in seen:
        continue
      try:
        if not stat.S_ISREG(full.lstat().st_mode):  # a symlink, FIFO or device
          continue
        text = full.read_text(encoding='utf-8', errors='replace')
      except OSError:
        text = None
      yield path, text
  for error in unreadable:
    yield os.path.relpath(error.filename or worktree, worktree), None


def _imports(path: str, text: str) -> Iterator[tuple[int, str]]:
  """(line, module) for each module an import statement needs: `from a import b` needs `a`
  and, when b is a submodule, `a.b`."""
  try:
    tree = ast.parse(text, path)
  except (SyntaxError, ValueError):
    return
  package = path[:-3].split('/')[:-1]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      base = package[:len(package) - node.level + 1] if node.level else []
      module = '.'.join(base + ([node.module] if node.module else []))
      yield node.lineno, module
      for alias in node.names:
        yield node.lineno, f'{module}.{alias.name}'
