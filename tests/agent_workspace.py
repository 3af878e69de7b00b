"""A throwaway copy of this workspace as its own git repository, for agent tests.

The agent is never run on the developer's own checkout: each test gets a fresh copy with
a tiny experiment so that real trials take seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from harness.scorecard import summarize
from tests.conftest import ROOT

COPIED = ('harness', 'models', 'agent', 'experiments', 'WORKSPACE.md', 'pyproject.toml')
TINY_EXPERIMENT = 'experiments/digits_mlp.py'


def git(repo: Path, *args: str) -> str:
  return subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=repo,
                        check=True, capture_output=True, text=True).stdout.strip()


def make_workspace(tmp_path: Path, steps: int = 60, max_seeds: int = 6) -> Path:
  """Copies the trusted and editable code, shrinks the digits experiment, commits;
  `max_seeds` 4 with --seeds=2 is two looks (the screen and one more), 6 is three."""
  repo = tmp_path / 'workspace'
  repo.mkdir()
  for name in COPIED:
    source = ROOT / name
    if source.is_dir():
      shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns('__pycache__'))
    else:
      shutil.copy(source, repo / name)
  charter = repo / 'WORKSPACE.md'  # few looks: a real trial's extra looks are slow
  assert 'max_seeds = 24' in charter.read_text()
  charter.write_text(charter.read_text().replace('max_seeds = 24', f'max_seeds = {max_seeds}'))
  experiment = repo / TINY_EXPERIMENT
  text = experiment.read_text()
  for old, new in (('config.train.steps = 1000', f'config.train.steps = {steps}'),
                   ('config.train.eval_every = 100', 'config.train.eval_every = 20'),
                   ('config.train.checkpoint_every = 500', 'config.train.checkpoint_every = 60')):
    assert old in text, old
    text = text.replace(old, new)
  experiment.write_text(text)
  (repo / '.gitignore').write_text('runs/\n__pycache__/\n')
  git(repo, 'init', '--quiet', '-b', 'main')
  git(repo, 'add', '-A')
  git(repo, 'commit', '--quiet', '-m', 'workspace')
  return repo


def fake_scorecard(per_seed: list[float], *, steps: int = 60, train_seconds: float = 1.0,
                   fingerprints: dict[str, str] | None = None,
                   nonfinite: bool = False) -> dict:
  """The fields the agent reads from a harness scorecard."""
  return {
      'status': 'diverged' if nonfinite else 'ok', 'task': 'digits',
      'metric': {'name': 'accuracy', 'direction': 'max'},
      'seeds': list(range(len(per_seed))), 'steps': steps, 'steps_completed': steps,
      'val_metric': summarize(per_seed),
      'val_loss': {'per_seed': [1.0] * len(per_seed), 'mean': 1.0, 'std': 0.0},
      'train_loss': {'per_seed': [0.5] * len(per_seed), 'mean': 0.5, 'std': 0.0},
      'train_seconds': train_seconds, 'step_latency_ms': {'p50': 1.0, 'p95': 1.0},
      'memory': {'max_rss_mb': 100.0, 'compiled_bytes': None, 'device_peak_bytes': None},
      'stability': {'nonfinite': nonfinite, 'nonfinite_step': None,
                    'max_grad_norm': {'per_seed': [1.0] * len(per_seed)},
                    'loss_spikes': {'per_seed': [0] * len(per_seed), 'total': 0}},
      'curve': [{'step': steps, 'train_loss': [0.5] * len(per_seed),
                 'val_loss': [1.0] * len(per_seed), 'val_metric': per_seed}],
      'data': {'fingerprints': fingerprints or {'train': 'a', 'val': 'b', 'test': 'c'}},
      'config': {'model': {'name': 'mlp'}, 'dataset': {'name': 'digits'}},
  }


def write_scorecard(workdir: Path, card: dict) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'scorecard.json').write_text(json.dumps(card))
