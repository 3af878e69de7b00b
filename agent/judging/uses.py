"""Which editable files each experiment runs, read statically from the worktree.

Why: a trial judges a change only through the experiment it runs. A change to a file that
experiment never executes (say, the causal mask of a transformer while the search runs an
MLP on digits) looks like a statistical tie, and deleting lines would pass as a
simplification. So the loop asks here which files the running experiment uses (a tie is
kept only when all changed code is among them) and which other shipped experiments use a
changed file (the change is also run there, paired with the incumbent, and must not break
or lose on any of them).

An experiment uses its own config file, `models/__init__.py`, the module that defines its
model family (`config.model.name` looked up in the `MODELS` table of `models/__init__.py`)
and every project module those import. Where the family cannot be resolved statically,
every module `models/__init__.py` reaches counts as used: judged in more places, never in
fewer.
"""

from __future__ import annotations

import ast
from pathlib import Path

from agent.editing import knobs

REGISTRY = 'models/__init__.py'


def experiments(worktree: Path) -> list[str]:
  """The experiment configs in the worktree, as paths relative to it."""
  return sorted(p.relative_to(worktree).as_posix()
                for p in (worktree / 'experiments').glob('*.py')
                if p.name != '__init__.py' and p.is_file() and not p.is_symlink())


def files_used(worktree: Path, experiment: str) -> set[str]:
  """The editable files a run of `experiment` executes (paths relative to the worktree)."""
  used = {experiment, REGISTRY}
  module = _family_module(worktree, experiment)
  roots = [module] if module else _imports(worktree, REGISTRY)
  todo = [r for r in roots if (worktree / r).is_file()]
  while todo:
    path = todo.pop()
    if path not in used:
      used.add(path)
      todo += [p for p in _imports(worktree, path) if (worktree / p).is_file()]
  return used


def experiments_using(worktree: Path, files: set[str], exclude: str = '') -> list[str]:
  """Experiments other than `exclude` that run any of `files`."""
  return [e for e in experiments(worktree)
          if e != exclude and files & files_used(worktree, e)]


def _family_module(worktree: Path, experiment: str) -> str | None:
  """The file defining the experiment's model class, or None if not statically clear."""
  try:
    name = next((k.value for k in knobs.inventory(worktree / experiment)
                 if k.path == 'model.name'), None)
    tree = ast.parse((worktree / REGISTRY).read_text(encoding='utf-8'))
  except (OSError, SyntaxError, ValueError):
    return None
  class_name = None
  for node in ast.walk(tree):
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
      for key, value in zip(node.value.keys, node.value.values):
        if (isinstance(key, ast.Constant) and key.value == name
            and isinstance(value, ast.Name)):
          class_name = value.id
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and any(
        (a.asname or a.name) == class_name for a in node.names):
      return _module_path(node, REGISTRY)
  return None


def _module_path(node: ast.ImportFrom, importer: str) -> str | None:
  package = importer.split('/')[:-1]
  base = package[:len(package) - node.level + 1] if node.level else []
  module = '.'.join(base + ([node.module] if node.module else []))
  return module.replace('.', '/') + '.py' if module else None


def _imports(worktree: Path, path: str) -> list[str]:
  """Project files a module imports (modules, and submodules named in from-imports)."""
  try:
    tree = ast.parse((worktree / path).read_text(encoding='utf-8'))
  except (OSError, SyntaxError, ValueError):
    return []
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [a.name.replace('.', '/') + '.py' for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      module = _module_path(node, path)
      if module:
        found.append(module)
        found += [module[:-3] + f'/{a.name}.py' for a in node.names]
  return [f for f in found if f.split('/')[0] in ('models', 'experiments')]
