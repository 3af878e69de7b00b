"""The agent's command line on a temporary workspace with real (tiny) trials."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from agent.recording.journal import Journal
from tests.agent_workspace import TINY_EXPERIMENT, git, make_workspace


def agent(repo: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
  env = {**os.environ, 'PYTHONPATH': str(repo)}
  return subprocess.run([sys.executable, '-m', 'agent.main', *args, f'--workspace={repo}'],
                        cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)


def verdict_trials(journal_path: Path) -> list[int]:
  journal = Journal.open(journal_path)
  try:
    return [r.trial for r in journal.records() if r.kind in ('verdict', 'guard_rejected')]
  finally:
    journal.close()


# Starts the agent with SIGINT at its default, so Ctrl-C works even when the tests run as a
# background job of a shell without job control (which starts them with SIGINT ignored, and
# Python keeps an ignored SIGINT ignored).
_WITH_SIGINT = ('import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
                'os.execv(sys.executable, [sys.executable, *sys.argv[1:]])')


def _start(repo: Path, *args: str) -> subprocess.Popen:
  env = {**os.environ, 'PYTHONPATH': str(repo)}
  return subprocess.Popen([sys.executable, '-c', _WITH_SIGINT, '-m', 'agent.main', *args,
                           '--run_id=k', '--nofinal_eval', f'--workspace={repo}'],
                          cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True)


def _wait_for_trial(repo: Path, proc: subprocess.Popen, trial: int) -> None:
  """Until trial `trial` has started and its trial process is writing its log."""
  journal_path = repo / 'runs/k/journal.sqlite'
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
    if journal_path.exists() and (repo / f'runs/k/trials/{trial}/screen/trial.log').exists():
      with sqlite3.connect(journal_path) as db:
        if db.execute("SELECT count(*) FROM records WHERE kind='trial_started' AND trial=?",
                      (trial,)).fetchone()[0]:
          return
  raise AssertionError(f'trial {trial} did not start')


def one_look(repo: Path) -> None:
  """Each trial stops at its first look (max_seeds = seeds = 2): the signals land as a screen
  starts, and a trial's further looks (four more runs each) are not what is checked here."""
  charter = repo / 'WORKSPACE.md'
  assert 'max_seeds = 6' in charter.read_text()
  charter.write_text(charter.read_text().replace('max_seeds = 6', 'max_seeds = 2'))
  git(repo, 'commit', '-qam', 'one look per trial')


def test_ctrl_c_and_kill_9_during_trials_resume_without_losing_or_repeating_one(tmp_path):
  repo = make_workspace(tmp_path, steps=200)
  one_look(repo)
  journal_path = repo / 'runs/k/journal.sqlite'
  proc = _start(repo, 'run', f'--experiment={TINY_EXPERIMENT}', '--budget_trials=2',
                '--seeds=2')
  _wait_for_trial(repo, proc, 1)
  proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop that records itself
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 130 and 'resume --run_id=k' in stderr
  journal = Journal.open(journal_path)
  assert journal.last('session_ended').payload['reason'] == 'interrupted'
  journal.close()
  assert verdict_trials(journal_path) == []

  proc = _start(repo, 'resume')
  _wait_for_trial(repo, proc, 2)
  os.killpg(proc.pid, signal.SIGKILL)  # kill -9 of the agent and its running trial at once
  proc.wait()
  assert verdict_trials(journal_path) == [1]

  resumed = agent(repo, 'resume', '--run_id=k', '--nofinal_eval')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resuming the interrupted trial' in resumed.stdout
  assert verdict_trials(journal_path) == [1, 2]
  journal = Journal.open(journal_path)
  accepted = [r.payload['commit'] for r in journal.records('verdict') if r.payload['accepted']]
  baseline = journal.last('baseline').payload['arm']['commit']
  assert journal.verify() is None
  journal.close()
  worktree_head = git(repo / 'runs/k/worktree', 'rev-parse', 'HEAD')
  assert worktree_head == (accepted[-1] if accepted else baseline)
  assert git(repo / 'runs/k/worktree', 'status', '--porcelain') == ''
  assert list((repo / 'runs/k/trials').glob('1/screen.interrupted-*'))
  assert list((repo / 'runs/k/trials').glob('2/screen.interrupted-*'))


def test_bad_input_is_one_line_and_exit_2(tmp_path):
  repo = make_workspace(tmp_path)
  missing = agent(repo, 'run', '--experiment=experiments/nope.py')
  assert missing.returncode == 2 and missing.stderr.strip().startswith('error: experiment')
  protected = agent(repo, 'run', '--experiment=harness/train.py')
  assert protected.returncode == 2 and 'editable scope' in protected.stderr
  unknown = agent(repo, 'resume', '--run_id=none')
  assert unknown.returncode == 2 and "no run 'none'" in unknown.stderr
  bad_command = agent(repo, 'fly')
  assert bad_command.returncode == 2 and 'expected one command' in bad_command.stderr
  experiment = repo / TINY_EXPERIMENT
  experiment.write_text(experiment.read_text().replace("'adam'", "'adamm'"))
  git(repo, 'commit', '-qam', 'a committed experiment that cannot train')
  baseline = agent(repo, 'run', f'--experiment={TINY_EXPERIMENT}', '--run_id=b')
  assert baseline.returncode == 1 and 'Traceback' not in baseline.stderr
  assert baseline.stderr.strip().splitlines()[-1].startswith('error: the baseline did not run')
  charter = repo / 'WORKSPACE.md'
  charter.write_text(charter.read_text().replace('seeds = 3', 'seeds = "three"'))
  broken = agent(repo, 'run', f'--experiment={TINY_EXPERIMENT}')
  assert broken.returncode == 2 and 'WORKSPACE.md:' in broken.stderr
  assert len(broken.stderr.strip().splitlines()) == 1
