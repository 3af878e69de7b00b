"""The agent under kills and misuse: trials die with it, one agent per run, names checked
before anything is written, the minute budget survives kills."""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path

from agent import main as agent_main
from agent.journal import Journal
from agent.loop import RunState
from tests.agent_workspace import TINY_EXPERIMENT, git, make_workspace
from tests.test_agent_e2e import _start, _wait_for_trial, agent, verdict_trials


def _processes_mentioning(marker: str) -> list[int]:
  found = []
  for entry in Path('/proc').iterdir():
    try:
      if entry.name.isdigit() and marker.encode() in (entry / 'cmdline').read_bytes():
        state = (entry / 'stat').read_text().rsplit(')', 1)[1].split()[0]
        if state != 'Z':
          found.append(int(entry.name))
    except OSError:
      continue
  return found


def test_names_and_experiments_are_checked_before_anything_is_made(tmp_path):
  repo = make_workspace(tmp_path)
  for run_id in ('../../escaped', 'a b', '-flag', 'x/y', '.hidden', 'a' * 65):
    result = agent(repo, 'run', f'--experiment={TINY_EXPERIMENT}', f'--run_id={run_id}')
    assert result.returncode == 2 and result.stderr.startswith('error: --run_id'), result.stderr
  assert not (repo / 'runs').exists() and not (tmp_path / 'escaped').exists()

  experiment = repo / TINY_EXPERIMENT
  experiment.write_text(experiment.read_text() + '\ndef broken(:\n')
  git(repo, 'commit', '-qam', 'a syntax error')
  syntax = agent(repo, 'run', f'--experiment={TINY_EXPERIMENT}', '--run_id=s')
  assert syntax.returncode == 2 and 'syntax error' in syntax.stderr
  assert syntax.stderr.count('\n') == 1
  experiment.write_text(experiment.read_text().replace('\ndef broken(:\n', '\n') +
                        'raise RuntimeError("cannot build")\n')
  git(repo, 'commit', '-qam', 'a config that cannot build')
  build = agent(repo, 'run', f'--experiment={TINY_EXPERIMENT}', '--run_id=s')
  assert build.returncode == 2 and 'cannot build' in build.stderr
  assert not (repo / 'runs').exists()
  assert 'agent/s' not in git(repo, 'branch', '--list')
  assert git(repo, 'worktree', 'list').count('\n') == 0  # only the checkout itself


def test_a_second_agent_on_a_run_is_refused_and_writes_nothing(tmp_path):
  repo = make_workspace(tmp_path)
  run_dir = repo / 'runs' / 'busy'
  run_dir.mkdir(parents=True)
  Journal.open(run_dir / 'journal.sqlite').close()
  with open(run_dir / agent_main.LOCK, 'w') as held:  # the first agent, alive
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    before = sorted(p.name for p in run_dir.iterdir())
    for args in (('resume',), ('approve', '1'), ('reject', '1', '--why=no')):
      second = agent(repo, *args, '--run_id=busy')
      assert second.returncode == 2 and 'in use by another agent' in second.stderr
      assert second.stderr.count('\n') == 1
    assert sorted(p.name for p in run_dir.iterdir()) == before
  # the lock dies with its holder: then the run is free again (here it is empty, so resume
  # says what is wrong with it instead)
  free = agent(repo, 'resume', '--run_id=busy')
  assert free.returncode == 2 and 'cannot be resumed' in free.stderr


def test_a_trial_dies_with_its_agent_and_the_killed_sessions_time_is_kept(tmp_path):
  repo = make_workspace(tmp_path, steps=400)
  journal_path = repo / 'runs/k/journal.sqlite'
  started = time.time()
  proc = _start(repo, 'run', f'--experiment={TINY_EXPERIMENT}', '--budget_trials=2',
                '--seeds=2')
  _wait_for_trial(repo, proc, 1)
  time.sleep(2)  # the trial is running in its sandbox
  marker = str(repo / 'runs/k/trials/1/screen')
  assert _processes_mentioning(marker)
  os.kill(proc.pid, signal.SIGKILL)  # the agent's PID alone, not its process group
  proc.wait()
  killed_after = time.time() - started
  deadline = time.time() + 10
  while _processes_mentioning(marker) and time.time() < deadline:
    time.sleep(0.1)
  assert _processes_mentioning(marker) == []  # nothing of the run outlives its agent

  journal = Journal.open(journal_path)
  elapsed = RunState.replay(journal).elapsed_before
  journal.close()
  # start-up before the first record, and up to one heartbeat at the end, are not seen
  assert killed_after - 15 <= elapsed <= killed_after + 1, (elapsed, killed_after)

  resumed = agent(repo, 'resume', '--run_id=k', '--nofinal_eval')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert verdict_trials(journal_path) == [1, 2]
  assert list((repo / 'runs/k/trials').glob('1/screen.interrupted-*'))
  assert agent(repo, 'verify', '--run_id=k').returncode == 0
