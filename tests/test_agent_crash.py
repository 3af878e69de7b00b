"""The agent under kills and misuse: trials die with it, one agent per run, names checked
before anything is written, the minute budget survives kills."""

from __future__ import annotations

import fcntl
import random
import os
import signal
import sqlite3
import time
from pathlib import Path

from agent import start
from agent.recording.journal import Journal
from agent.recording.state import RunState
from tests.agent_workspace import TINY_EXPERIMENT, git, make_workspace
from tests.test_agent_e2e import _start, agent, verdict_trials


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
  with open(run_dir / start.LOCK, 'w') as held:  # the first agent, alive
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


def _sessions_recorded(journal_path: Path) -> int:
  """session_started records so far, read without writing (the agent may be writing)."""
  if not journal_path.exists():
    return 0
  try:
    with sqlite3.connect(f'file:{journal_path}?mode=ro', uri=True, timeout=5) as db:
      return db.execute("SELECT count(*) FROM records WHERE kind = 'session_started'").fetchone()[0]
  except sqlite3.Error:
    return 0


def test_ten_kills_at_random_moments_lose_nothing_and_count_nothing_twice(tmp_path):
  """kill -9 of the agent's PID alone, `resume` started at once, ten times; then two
  concurrent resumes; then a resume to the end. Nothing of the run outlives its agent, and
  the minute budget keeps the time of the killed sessions. The first kills land anywhere,
  maybe before the run is recorded; the later ones after their session is (a slow machine's
  start-up would otherwise outlast every kill)."""
  repo = make_workspace(tmp_path, max_seeds=4)  # two looks: kills land in screens and looks
  journal_path = repo / 'runs/k/journal.sqlite'
  rng = random.Random(7)
  started = time.time()
  proc = _start(repo, 'run', f'--experiment={TINY_EXPERIMENT}', '--budget_trials=2',
                '--seeds=2')
  sessions = 0
  for kill in range(10):
    if kill >= 2:
      deadline = time.time() + 120
      while _sessions_recorded(journal_path) <= sessions and time.time() < deadline:
        time.sleep(0.05)
      assert _sessions_recorded(journal_path) > sessions, 'the agent never recorded its session'
    time.sleep(rng.uniform(0.3, 2.5))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    sessions = _sessions_recorded(journal_path)
    deadline = time.time() + 10
    while _processes_mentioning(str(repo / 'runs/k/trials')) and time.time() < deadline:
      time.sleep(0.1)
    assert _processes_mentioning(str(repo / 'runs/k/trials')) == []
    if not journal_path.exists():  # killed before the run was recorded: start it again
      proc = _start(repo, 'run', f'--experiment={TINY_EXPERIMENT}', '--budget_trials=2',
                    '--seeds=2')
      continue
    proc = _start(repo, 'resume')
  killed_for = time.time() - started
  journal = Journal.open(journal_path)
  elapsed = RunState.replay(journal).elapsed_before
  journal.close()
  # a killed session counts up to its last record or heartbeat (exactly: test_session_clock)
  assert 0 < elapsed <= killed_for + 1, (elapsed, killed_for)

  rival = _start(repo, 'resume')  # two agents on one run: exactly one may go on
  _, rival_err = rival.communicate(timeout=120)
  if rival.returncode == 2:
    assert 'in use by another agent' in rival_err
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]  # exactly one of the two goes on, to the end
  else:  # the rival won the lock: then the other one was refused
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and 'in use by another agent' in err
    assert rival.returncode == 0, rival_err[-2000:]
  final = agent(repo, 'resume', '--run_id=k', '--nofinal_eval')
  assert final.returncode == 0, final.stderr[-2000:]

  trials = verdict_trials(journal_path)
  assert trials == sorted(set(trials)) == [1, 2]  # none lost, none counted twice
  journal = Journal.open(journal_path)
  finished = [r.payload['status'] for r in journal.records('trial_finished')]
  journal.close()
  assert all(s in ('ok', 'diverged', 'pruned') for s in finished), finished  # no damaged re-run
  assert 'trials: 2/2' in agent(repo, 'status', '--run_id=k').stdout
  assert agent(repo, 'verify', '--run_id=k').returncode == 0
