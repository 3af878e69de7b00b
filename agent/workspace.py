"""`agent.main init DIR`: makes the user's own git repository a workspace.

A workspace holds only what the agent searches and its records: the charter
(`WORKSPACE.md`), the editable code (`models/`, `experiments/`) and `runs/`. The harness and
the agent are the installed ones (`agent.safety.installed`), never copied in, so a repo
stays the user's code. Nothing that exists is overwritten: an existing charter is checked
and kept, existing folders are kept as they are, and running init again changes nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from agent.charter import load_charter
from agent.recording import vcs

CHARTER = 'WORKSPACE.md'
# The shipped charter is the template: its prose and every setting with its default.
TEMPLATE = Path(__file__).resolve().parent.parent / CHARTER
RUNS_IGNORED = 'runs/'  # the runs' journals and worktrees: never part of the user's history

MODELS_INIT = '''\
"""The models experiments can name, and `build_model`, which the harness calls.

Register each Flax NNX module in MODELS under the name a config's `model.name` gives it,
imported as `from models.<file> import <Class>` (the agent reads that line to find the
class's source). Every key of `config.model` but `name` is passed to the constructor, with
`input_shape`, `num_outputs` and `rngs`; the model is called as
`model(x, *, train=False, rngs=None)` and returns float32 logits.
"""

from collections.abc import Mapping
from typing import Any

from flax import nnx

MODELS: dict[str, type[nnx.Module]] = {}


def build_model(model_config: Mapping[str, Any], *, input_shape: tuple[int, ...],
                num_outputs: int, rngs: nnx.Rngs) -> nnx.Module:
  kwargs = dict(model_config.items())
  name = kwargs.pop('name', None)
  if name not in MODELS:
    raise ValueError(f'Unknown model name {name!r}; known: {sorted(MODELS)}.')
  return MODELS[name](**kwargs, input_shape=tuple(input_shape), num_outputs=num_outputs,
                      rngs=rngs)
'''
EXPERIMENTS_INIT = '''\
"""Experiment configs: each file's `get_config()` returns an ml_collections.ConfigDict with
`dataset`, `model`, `optimizer` and `train` sections; the agent edits its literal values."""
'''


class InitError(ValueError):
  """DIR cannot be made a workspace; one line says why."""


def init(folder: Path) -> list[str]:
  """Makes the repository at `folder` a workspace; returns what was done, a line per item."""
  folder = Path(folder).absolute()
  if not folder.is_dir():
    raise InitError(f'{folder} is not a folder')
  try:
    repo = vcs.repo_root(folder)
  except vcs.VcsError:
    raise InitError(f'{folder} is not a git repository: run `git init` there first') from None
  done = [_charter(repo),
          _package(repo, 'models', MODELS_INIT),
          _package(repo, 'experiments', EXPERIMENTS_INIT),
          _ignore_runs(repo)]
  return done + [f'next: commit the workspace, then `python -m agent.main run '
                 f'--workspace={repo} --experiment=experiments/<yours>.py`']


def _charter(repo: Path) -> str:
  """Writes the shipped charter, or checks and keeps the one there (CharterError if bad)."""
  path = repo / CHARTER
  if path.exists():
    load_charter(path)
    return f'kept {CHARTER} (a valid charter)'
  path.write_text(TEMPLATE.read_text(encoding='utf-8'), encoding='utf-8')
  return f'created {CHARTER}: the charter (what the agent may edit, its budget and rules)'


def _package(repo: Path, name: str, init_text: str) -> str:
  folder = repo / name
  if folder.exists():
    return f'kept {name}/'
  folder.mkdir()
  (folder / '__init__.py').write_text(init_text, encoding='utf-8')
  return f'created {name}/__init__.py'


def _ignore_runs(repo: Path) -> str:
  """Keeps runs/ out of `git status` through the repository's own exclude file (a file git
  never commits), so no tracked file of the user's changes."""
  env = vcs.git_environment(repo)
  git = lambda *args: subprocess.run(['git', *args], cwd=repo, env=env, capture_output=True,
                                     text=True)
  if git('check-ignore', '-q', f'{RUNS_IGNORED}x').returncode == 0:
    return f'kept: {RUNS_IGNORED} is ignored by git'
  exclude = Path(git('rev-parse', '--git-path', 'info/exclude').stdout.strip())
  exclude = exclude if exclude.is_absolute() else repo / exclude
  exclude.parent.mkdir(parents=True, exist_ok=True)
  text = exclude.read_text() if exclude.exists() else ''
  exclude.write_text(text + ('' if not text or text.endswith('\n') else '\n')
                     + f'/{RUNS_IGNORED}\n')
  return f'added /{RUNS_IGNORED} to {exclude.relative_to(repo)}'
