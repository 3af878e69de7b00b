"""`agent.main init DIR` and `run --workspace=DIR` on a repository of the user's own: a
residual MLP (examples/own_model) in a fresh git repo with no harness/ or agent/ of its own,
run against the installed harness, by the offline proposer and by an LLM (a replay server).
The two runs share one workspace (each its own run id), so the second loads the programs the
first compiled from the workspace's compilation cache instead of compiling them again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent import workspace
from agent.charter import CharterError
from agent.recording.journal import Journal
from tests.agent_workspace import git
from tests.conftest import ROOT
from tests.llm_replay_server import Reply, ReplayServer

EXAMPLE = ROOT / 'examples' / 'own_model'
EXPERIMENT = 'experiments/digits_resmlp.py'
MODEL = 'models/resmlp.py'


def agent(repo: Path, *args: str, timeout: float = 400,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  """The installed agent (this checkout), started from the user's repo (`env`: added to
  this process's environment)."""
  env = {**os.environ, **(env or {}), 'PYTHONPATH': str(ROOT)}
  return subprocess.run([sys.executable, '-m', 'agent.main', *args], cwd=repo, env=env,
                        capture_output=True, text=True, timeout=timeout)


def own_repo(tmp_path: Path) -> Path:
  """The example's models and experiments in a fresh git repository, nothing else."""
  repo = tmp_path / 'mine'
  shutil.copytree(EXAMPLE, repo, ignore=shutil.ignore_patterns('__pycache__'))
  git(repo, 'init', '--quiet', '-b', 'main')
  return repo


def own_workspace(tmp_path: Path) -> Path:
  """`own_repo` made a workspace by `init`, shrunk to a tiny run (30 steps, one look of 2
  seeds), and committed."""
  repo = own_repo(tmp_path)
  result = agent(repo, 'init', str(repo))
  assert result.returncode == 0, result.stderr
  charter = repo / 'WORKSPACE.md'
  text = charter.read_text()
  for old, new in (('seeds = 3 ', 'seeds = 2 '), ('max_seeds = 24', 'max_seeds = 2')):
    assert old in text, old
    text = text.replace(old, new)
  charter.write_text(text)
  experiment = repo / EXPERIMENT
  text = experiment.read_text()
  for old, new in (('steps = 300', 'steps = 30'), ('eval_every = 50', 'eval_every = 10'),
                   ('checkpoint_every = 300', 'checkpoint_every = 30')):
    assert old in text, old
    text = text.replace(old, new)
  experiment.write_text(text)
  git(repo, 'add', '-A')
  git(repo, 'commit', '--quiet', '-m', 'my model')
  return repo


def answer(path: str, old: str, new: str) -> str:
  """An LLM reply that replaces `old` by `new` in `path`."""
  return (f'DIAGNOSIS: d\nHYPOTHESIS: h\nEXPECTED EFFECT: e\nOPERATOR: o\n\n{path}\n'
          f'<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n')


@pytest.fixture(scope='module')
def repo(tmp_path_factory) -> Path:
  """One `own_workspace` for the module's agent runs."""
  return own_workspace(tmp_path_factory.mktemp('own'))


def test_init_makes_a_workspace_once_and_overwrites_nothing(tmp_path):
  repo = tmp_path / 'empty'
  repo.mkdir()
  git(repo, 'init', '--quiet')
  said = workspace.init(repo)
  assert said[0].startswith('created WORKSPACE.md')
  assert (repo / 'WORKSPACE.md').read_text() == workspace.TEMPLATE.read_text()
  assert 'build_model' in (repo / 'models' / '__init__.py').read_text()
  assert (repo / 'experiments' / '__init__.py').exists()
  assert git(repo, 'status', '--porcelain', '--untracked-files=all').count('\n') == 2
  (repo / 'runs').mkdir()
  (repo / 'runs' / 'x').write_text('')
  assert 'runs' not in git(repo, 'status', '--porcelain')  # ignored, and no tracked file changed

  before = {p: p.read_bytes() for p in repo.rglob('*') if p.is_file() and '.git' not in p.parts}
  again = workspace.init(repo)
  assert [line.split()[0] for line in again[:4]] == ['kept', 'kept', 'kept', 'kept:']
  assert {p: p.read_bytes() for p in before} == before
  assert (repo / '.git' / 'info' / 'exclude').read_text().count('/runs/') == 1


def test_init_keeps_the_users_own_files_and_checks_their_charter(tmp_path):
  repo = own_repo(tmp_path)
  registry = (repo / 'models' / '__init__.py').read_bytes()
  said = workspace.init(repo)
  assert said[1:3] == ['kept models/', 'kept experiments/']
  assert (repo / 'models' / '__init__.py').read_bytes() == registry
  (repo / 'WORKSPACE.md').write_text('# mine\n\n```toml\n[trial]\nseeds = 1\n```\n')
  with pytest.raises(CharterError, match='seeds'):
    workspace.init(repo)
  assert (repo / 'WORKSPACE.md').read_text().startswith('# mine')  # never overwritten


def test_init_refuses_what_is_not_a_git_repository(tmp_path):
  with pytest.raises(workspace.InitError, match='is not a folder'):
    workspace.init(tmp_path / 'missing')
  folder = tmp_path / 'plain'
  folder.mkdir()
  result = agent(tmp_path, 'init', str(folder))
  assert result.returncode == 2
  assert result.stderr == f'error: {folder} is not a git repository: run `git init` there first\n'
  assert not any(folder.iterdir())


def test_a_run_on_ones_own_repo_uses_the_installed_harness(repo):
  assert not (repo / 'harness').exists() and not (repo / 'agent').exists()
  result = agent(repo, 'run', f'--workspace={repo}', f'--experiment={EXPERIMENT}',
                 '--budget_trials=2', '--run_id=mine', '--nofinal_eval')
  assert result.returncode == 0, result.stderr[-3000:]
  journal = Journal.open(repo / 'runs' / 'mine' / 'journal.sqlite')
  verdicts = [r.trial for r in journal.records() if r.kind in ('verdict', 'guard_rejected')]
  assert verdicts == [1, 2]
  edited = {path for r in journal.records('proposal') for path in r.payload['changes']}
  assert edited <= {EXPERIMENT, 'models/resmlp.py'}
  assert (repo / 'runs' / 'proposer_stats.json').exists()  # the workspace's own statistics
  assert git(repo, 'status', '--porcelain') == ''
  assert agent(repo, 'verify', '--run_id=mine', f'--workspace={repo}').returncode == 0


def test_an_llm_run_on_ones_own_repo_edits_the_model_source(repo):
  files = (EXPERIMENT, 'models/__init__.py', MODEL)
  line = next(ln for ln in (EXAMPLE / MODEL).read_text().splitlines() if 'expand: int = 2' in ln)
  wider = answer(MODEL, line, line.replace('expand: int = 2', 'expand: int = 4'))
  with ReplayServer() as server:
    server.queue(Reply(wider, input_tokens=1000, output_tokens=80))
    result = agent(repo, 'run', f'--workspace={repo}', f'--experiment={EXPERIMENT}',
                   '--budget_trials=1', '--run_id=llm', '--nofinal_eval', '--proposer=llm',
                   f'--llm_base_url={server.url}/v1', '--llm_model=replay',
                   '--llm_api_key_env=OWN_LLM_KEY', env={'OWN_LLM_KEY': 'sk-own'})
  assert result.returncode == 0, result.stderr[-3000:]
  prompt = server.requests[0].text()
  assert all(f'### {path}' in prompt for path in files)
  journal = Journal.open(repo / 'runs' / 'llm' / 'journal.sqlite')
  assert set(journal.last('proposal', trial=1).payload['changes']) == {MODEL}
  assert journal.last('trial_finished', trial=1).payload['wall_seconds'] > 0  # it really ran
