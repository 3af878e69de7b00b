"""The executor against tiny fake trials (a fake `harness.main` in a temporary worktree), plus
one run of the real harness.

The fake is found because a trial runs `python -m harness.main` with cwd and PYTHONPATH set
to its worktree. Each test writes the fake's body; a shared prelude parses --workdir and
offers `point(step)` and `card(status)` helpers that write what the real harness writes.
"""

from __future__ import annotations

import _thread
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from agent import executor
from agent.executor import CurveReader, Sandbox, TrialSpec, import_check, run_trial, trial_env
from tests.conftest import ROOT

PRELUDE = '''\
import json, os, signal, subprocess, sys, time
from pathlib import Path
ARGS = dict(a[2:].split('=', 1) for a in sys.argv[1:] if '=' in a)
WORKDIR = Path(ARGS['workdir'])
WORKDIR.mkdir(parents=True, exist_ok=True)

def point(step):
  with (WORKDIR / 'curves.jsonl').open('a') as f:
    f.write(json.dumps({'step': step, 'train_loss': [1 / step], 'val_loss': [2 / step],
                        'val_metric': [1 - 1 / step]}) + '\\n')

def card(status, **extra):
  (WORKDIR / 'scorecard.json').write_text(json.dumps({'status': status, **extra}))
'''

@pytest.fixture
def fake(tmp_path: Path) -> Callable[..., TrialSpec]:
  """fake(body, **spec_fields) -> a TrialSpec whose trial runs PRELUDE + body."""
  def make(body: str, **fields) -> TrialSpec:
    worktree = tmp_path / 'wt'
    (worktree / 'harness').mkdir(parents=True, exist_ok=True)
    (worktree / 'harness' / '__init__.py').write_text('')
    (worktree / 'harness' / 'main.py').write_text(PRELUDE + textwrap.dedent(body))
    defaults = dict(worktree=worktree, experiment='experiments/fake.py',
                    workdir=tmp_path / 'out', seeds=1, first_seed=0, timeout_s=20)
    return TrialSpec(**{**defaults, **fields})
  return make


def _alive(pid: int) -> bool:
  """A zombie counts as gone: nothing may reap orphans in a container without an init."""
  try:
    return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
  except (FileNotFoundError, ProcessLookupError):
    return False


def _mentioning(marker: str) -> list[int]:
  """Live processes whose command line contains marker, seen from here: inside its PID
  namespace a trial has other pid numbers, so the trials mark their processes instead."""
  pids = []
  for entry in Path('/proc').iterdir():
    try:
      if entry.name.isdigit() and marker.encode() in (entry / 'cmdline').read_bytes():
        pids.append(int(entry.name))
    except OSError:
      continue
  return [pid for pid in pids if _alive(pid)]


def _all_gone(marker: str, wait_s: float = 2.0) -> bool:
  """Gives the kernel a moment to tear a killed group (or namespace) down."""
  deadline = time.monotonic() + wait_s
  while _mentioning(marker) and time.monotonic() < deadline:
    time.sleep(0.05)
  return not _mentioning(marker)


def test_command_is_the_harness_contract(tmp_path):
  spec = TrialSpec(tmp_path / 'wt', 'experiments/x.py', tmp_path / 'out', seeds=3,
                   first_seed=7, timeout_s=10, eval_test=True,
                   overrides=('--config.train.steps=5',))
  assert spec.command()[1:] == [
      '-m', 'harness.main', '--config=experiments/x.py', f'--workdir={tmp_path / "out"}',
      '--seeds=3', '--config.train.seed=7', '--config.train.steps=5', '--eval_test']


@pytest.mark.parametrize('fields', [
    {'experiment': '/abs/x.py'}, {'workdir': ('wt', 'runs', 'out')}, {'seeds': 0},
    {'overrides': ('--resume',)}, {'memory_mb': -1}])
def test_spec_rejects_the_callers_mistakes(tmp_path, fields):
  if 'workdir' in fields:
    fields = {'workdir': tmp_path.joinpath(*fields['workdir'])}  # inside the worktree
  base = dict(worktree=tmp_path / 'wt', experiment='e.py', workdir=tmp_path / 'out', seeds=1,
              first_seed=0, timeout_s=5)
  with pytest.raises(ValueError):
    TrialSpec(**{**base, **fields})


@pytest.mark.parametrize('status', ['ok', 'diverged'])
def test_a_finished_trial_reports_its_scorecard_and_curve(fake, status):
  spec = fake(f'''
      print('training')
      point(10); point(20)
      card({status!r}, val_metric={{'mean': 0.5}})
      ''')
  outcome = run_trial(spec, poll_s=0.05)
  assert outcome.status == status and outcome.returncode == 0
  assert outcome.scorecard['val_metric'] == {'mean': 0.5}
  assert [p['step'] for p in outcome.curve] == [10, 20]
  assert 'training' in outcome.log_path.read_text() and 'training' in outcome.log_tail
  assert outcome.pruned_at_step is None


def test_a_non_empty_workdir_is_refused(fake):
  spec = fake('card("ok")')
  spec.workdir.mkdir()
  (spec.workdir / 'scorecard.json').write_text('{"status": "ok"}')
  with pytest.raises(ValueError, match='not empty'):
    run_trial(spec)


def test_bad_input_gives_the_harness_error_line_as_the_reason(fake):
  spec = fake('''
      print('some stdout noise')
      print('a warning\\nerror: unknown config key train.stpes', file=sys.stderr)
      print('stdout after', flush=True)
      sys.exit(2)
      ''')
  outcome = run_trial(spec, poll_s=0.05)
  assert outcome.status == 'bad_input' and outcome.returncode == 2
  assert outcome.reason == 'error: unknown config key train.stpes'
  assert outcome.scorecard is None


def test_a_failed_run_takes_its_reason_from_the_scorecard(fake):
  spec = fake('''
      card('failed', error='shapes (3,) and (4,) do not match')
      print('error: training failed', file=sys.stderr)
      sys.exit(1)
      ''')
  outcome = run_trial(spec, poll_s=0.05)
  assert (outcome.status, outcome.reason) == ('failed', 'shapes (3,) and (4,) do not match')


def test_a_hanging_trial_and_its_grandchild_are_killed_at_the_timeout(fake, monkeypatch):
  monkeypatch.setattr(executor, 'KILL_GRACE_S', 0.5)
  spec = fake('''
      subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', str(WORKDIR)])
      signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL will do
      point(5)
      time.sleep(600)
      ''', timeout_s=1.5)
  seen = []
  outcome = run_trial(spec, on_curve=lambda _: seen.extend(_mentioning(str(spec.workdir))),
                      poll_s=0.05)
  assert outcome.status == 'timeout' and outcome.returncode == -signal.SIGKILL
  assert outcome.reason == 'timed out after 1.5 s at step 5'
  assert outcome.wall_seconds >= 1.5  # never killed before its timeout
  assert len(seen) >= 2 and _all_gone(str(spec.workdir))  # the trial and its child


def test_on_curve_prunes_a_loser_early(fake):
  spec = fake('''
      for step in range(1, 200):
        point(step)
        time.sleep(0.02)
      card('ok')
      ''')
  seen = []

  def judge(curve):
    seen.append(len(curve))
    return 'worse than the incumbent at the same step' if curve[-1]['step'] >= 20 else None

  outcome = run_trial(spec, on_curve=judge, poll_s=0.05)
  assert outcome.status == 'pruned'
  assert outcome.reason == 'worse than the incumbent at the same step'
  assert 20 <= outcome.pruned_at_step < 199
  assert seen == sorted(seen) and seen[-1] == outcome.pruned_at_step  # whole curve each time
  assert outcome.scorecard is None


def test_an_exception_in_on_curve_kills_the_trial_and_propagates(fake):
  spec = fake('''
      point(1)
      time.sleep(600)
      ''')

  def broken(curve):
    assert _mentioning(str(spec.workdir))
    raise RuntimeError('bug in the caller')

  with pytest.raises(RuntimeError, match='bug in the caller'):
    run_trial(spec, on_curve=broken, poll_s=0.05)
  assert _all_gone(str(spec.workdir))


def test_ctrl_c_in_the_parent_kills_the_trials_whole_group_and_propagates(fake):
  spec = fake('''
      subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', str(WORKDIR)])
      (WORKDIR / 'started').write_text('')
      time.sleep(600)
      ''')
  timer = threading.Timer(1.0, _thread.interrupt_main)
  timer.start()
  with pytest.raises(KeyboardInterrupt):
    run_trial(spec, poll_s=0.05)
  timer.join()
  assert (spec.workdir / 'started').exists() and _all_gone(str(spec.workdir))


def test_curve_reader_tolerates_a_partial_last_line_and_a_rewrite(tmp_path):
  path = tmp_path / 'curves.jsonl'
  reader = CurveReader(path)
  assert not reader.poll()
  path.write_text('{"step": 1}\n{"step": 2, "val_lo')
  assert reader.poll() and [p['step'] for p in reader.points] == [1]
  with path.open('a') as f:
    f.write('ss": [1]}\nnot json\n')
  assert reader.poll() and [p['step'] for p in reader.points] == [1, 2]
  assert not reader.poll()
  path.unlink()
  path.write_text('{"step": 1}\n')  # a resumed run rewrites the file from its checkpoint
  assert reader.poll() and [p['step'] for p in reader.points] == [1]


def test_an_output_flood_is_capped_but_its_end_is_kept(fake):
  spec = fake('''
      for i in range(50_000):
        print('x' * 99)
      print('the real error is here', file=sys.stderr)
      card('ok')
      ''', max_output_bytes=50_000)
  outcome = run_trial(spec, poll_s=0.05)
  assert outcome.status == 'ok'
  size = outcome.log_path.stat().st_size
  assert 50_000 <= size < 50_000 + 3 * executor.TAIL_CHARS
  text = outcome.log_path.read_text()
  assert '[output truncated at 50000 bytes]' in text and 'bytes dropped' in text
  assert 'the real error is here' in outcome.log_tail
  assert len(outcome.log_tail) <= executor.TAIL_CHARS


def test_the_trial_sees_only_the_allow_listed_environment_and_its_limits(fake, monkeypatch):
  for name in ('FAKE_API_KEY', 'GITHUB_TOKEN', 'AWS_SECRET_ACCESS_KEY', 'HTTPS_PROXY',
               'http_proxy', 'PYTHONSTARTUP'):
    monkeypatch.setenv(name, 'secret')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  spec = fake('''
      import resource
      limits = {n: resource.getrlimit(getattr(resource, n))
                for n in ('RLIMIT_CPU', 'RLIMIT_DATA', 'RLIMIT_NPROC')}
      (WORKDIR / 'env.json').write_text(json.dumps({'env': dict(os.environ), 'limits': limits}))
      card('ok')
      ''', cpu_seconds=30, memory_mb=512, max_processes=4000)
  outcome = run_trial(spec, poll_s=0.05)
  assert outcome.status == 'ok', outcome.log_tail
  seen = json.loads((spec.workdir / 'env.json').read_text())
  env = seen['env']
  assert set(env) - {'LC_CTYPE'} <= {*executor.PASSTHROUGH_ENV, *executor.FIXED_ENV,
                                     'PYTHONPATH'}  # Python may set LC_CTYPE itself
  assert not {'FAKE_API_KEY', 'GITHUB_TOKEN', 'AWS_SECRET_ACCESS_KEY', 'HTTPS_PROXY',
              'http_proxy', 'PYTHONSTARTUP'} & set(env)
  assert env['PYTHONPATH'] == str(spec.worktree) and env['PYTHONHASHSEED'] == '0'
  assert env['JAX_PLATFORMS'] == 'cpu'
  assert seen['limits']['RLIMIT_CPU'][0] == 30
  assert seen['limits']['RLIMIT_DATA'] == [512 << 20, 512 << 20]
  assert seen['limits']['RLIMIT_NPROC'] == [4000, 4000]


def test_trial_env_is_an_allow_list(tmp_path):
  spec = TrialSpec(tmp_path / 'wt', 'e.py', tmp_path / 'out', 1, 0, 5)
  parent = {'PATH': '/bin', 'OPENAI_API_KEY': 'k', 'no_proxy': '*', 'XLA_FLAGS': '--x',
            'PYTHONPATH': '/elsewhere'}
  assert trial_env(spec, parent) == {
      'PATH': '/bin', 'XLA_FLAGS': '--x', 'PYTHONPATH': str(spec.worktree),
      'PYTHONHASHSEED': '0', 'PYTHONUNBUFFERED': '1', 'TF_CPP_MIN_LOG_LEVEL': '1'}


def test_an_over_allocating_trial_is_killed_by_the_memory_limit(fake):
  spec = fake('''
      hog = bytearray(600 << 20)
      card('ok')
      ''', memory_mb=200)
  outcome = run_trial(spec, poll_s=0.05)
  assert outcome.status == 'killed'
  assert outcome.reason.startswith('memory limit') and 'MemoryError' in outcome.reason
  assert outcome.scorecard is None


def test_a_busy_loop_is_killed_by_the_cpu_limit(fake):
  spec = fake('''
      while True:
        pass
      ''', cpu_seconds=1)
  outcome = run_trial(spec, poll_s=0.05)
  assert outcome.status == 'killed' and outcome.returncode == -signal.SIGXCPU
  assert outcome.reason.startswith('cpu time limit')


def test_the_real_harness_runs_under_the_executor(tmp_path):
  spec = TrialSpec(ROOT, 'experiments/mnist1d_mlp.py', tmp_path / 'out', seeds=2,
                   first_seed=0, timeout_s=240, memory_mb=4096, isolate_network=True,
                   overrides=('--config.train.steps=40', '--config.train.eval_every=20',
                              '--config.train.checkpoint_every=40'))
  outcome = run_trial(spec)
  assert outcome.status == 'ok', outcome.log_tail
  assert outcome.sandbox == executor.isolation(True).description
  assert outcome.scorecard['status'] == 'ok' and outcome.scorecard['seeds'] == [0, 1]
  assert [p['step'] for p in outcome.curve] == [20, 40]
  assert all(len(p['val_metric']) == 2 for p in outcome.curve)
  assert 'status=ok' in outcome.log_tail


# ---- the sandbox: namespaces where the OS allows them --------------------------------------

PID_NAMESPACE = executor.isolation(False).pid_namespace
NETWORK_ISOLATED = executor.isolation(True).network_isolated
needs_pid_namespace = pytest.mark.skipif(not PID_NAMESPACE, reason='no PID namespace here')
needs_network_namespace = pytest.mark.skipif(not NETWORK_ISOLATED,
                                             reason='no network namespace here')

SPAWNER = '''
for detach in (False, False, True, True):  # bounded: four sleepers, two of them setsid()
  subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', f'{WORKDIR}/sleeper'],
                   start_new_session=detach)
point(1)
time.sleep(0.5)
'''


@needs_pid_namespace
@pytest.mark.parametrize('ending', ["card('ok')", 'time.sleep(600)'])
def test_a_spawners_children_die_with_it_even_those_that_left_its_process_group(fake, ending,
                                                                                 monkeypatch):
  monkeypatch.setattr(executor, 'KILL_GRACE_S', 0.5)
  spec = fake(SPAWNER + ending, timeout_s=3)
  sleepers = f'{spec.workdir}/sleeper'
  seen: set[int] = set()

  def count_sleepers(curve) -> None:
    seen.update(_mentioning(sleepers))

  outcome = run_trial(spec, on_curve=count_sleepers, poll_s=0.05)
  assert outcome.status == ('ok' if 'card' in ending else 'timeout'), outcome.log_tail
  assert len(seen) == 4  # all four were running while the trial ran
  assert _all_gone(str(spec.workdir))


@needs_network_namespace
@pytest.mark.parametrize('isolate', [True, False])
def test_without_network_a_trial_cannot_connect_even_to_this_machine(fake, isolate):
  with socket.create_server(('127.0.0.1', 0)) as server:
    spec = fake(f'''
        import socket
        try:
          socket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=5).close()
          result = 'connected'
        except OSError as e:
          result = str(e)
        card('ok', network=result)
        ''', isolate_network=isolate)
    outcome = run_trial(spec, poll_s=0.05)
  assert outcome.status == 'ok', outcome.log_tail
  assert (outcome.scorecard['network'] == 'connected') is not isolate
  assert ('network namespaces' in outcome.sandbox) is isolate


@needs_pid_namespace
def test_a_trial_cannot_read_the_agents_environment_through_proc(fake):
  secret = f'sekrit-{os.getpid()}-{time.time()}'
  agent_like = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],
                                env={**os.environ, 'FAKE_API_KEY': secret})
  try:
    spec = fake(f'''
        found = []
        for entry in Path('/proc').iterdir():
          try:
            if entry.name.isdigit() and {secret!r}.encode() in (entry / 'environ').read_bytes():
              found.append(entry.name)
          except OSError:
            pass
        card('ok', found=found)
        ''')
    outcome = run_trial(spec, poll_s=0.05)
  finally:
    agent_like.kill()
    agent_like.wait()
  assert outcome.status == 'ok', outcome.log_tail
  assert outcome.scorecard['found'] == []


def test_a_trial_killed_by_a_signal_reports_that_signal_through_the_sandbox(fake):
  spec = fake('''
      os.kill(os.getpid(), signal.SIGSEGV)
      ''')
  outcome = run_trial(spec, poll_s=0.05)
  assert outcome.returncode == -signal.SIGSEGV and outcome.status == 'killed'
  assert outcome.reason.startswith('died by SIGSEGV')


def _module(tmp_path: Path, body: str) -> Path:
  worktree = tmp_path / 'wt'
  (worktree / 'models').mkdir(parents=True)
  (worktree / 'models' / '__init__.py').write_text('')
  (worktree / 'models' / 'm.py').write_text(textwrap.dedent(body))
  return worktree


def test_import_check_passes_a_module_that_loads(tmp_path):
  assert import_check(_module(tmp_path, 'import math\nX = math.pi\n'), ['models/m.py']) is None


def test_import_check_gives_the_error_line_and_a_scrubbed_environment(tmp_path, monkeypatch):
  monkeypatch.setenv('FAKE_API_KEY', 'secret')
  worktree = _module(tmp_path, '''
      import os
      raise RuntimeError('env: ' + ' '.join(sorted(os.environ)))
      ''')
  reason = import_check(worktree, ['models/m.py'])
  assert reason.startswith('RuntimeError: env: ') and 'FAKE_API_KEY' not in reason
  assert 'PYTHONPATH' in reason


@needs_pid_namespace
def test_import_check_kills_a_hanging_import_and_everything_it_started(tmp_path):
  worktree = _module(tmp_path, f'''
      import subprocess, sys, time
      for detach in (False, True):
        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)',
                          '{tmp_path}/sleeper'], start_new_session=detach)
      time.sleep(600)
      ''')
  reason = import_check(worktree, ['models/m.py'], timeout_s=1.5)
  assert reason == 'importing the edited modules took more than 1.5 s'
  assert _all_gone(f'{tmp_path}/sleeper')


def test_import_check_has_a_memory_limit(tmp_path):
  worktree = _module(tmp_path, 'hog = bytearray(600 << 20)\n')
  assert import_check(worktree, ['models/m.py'], sandbox=Sandbox(memory_mb=200)) == 'MemoryError'


@needs_network_namespace
def test_import_check_has_no_network(tmp_path):
  with socket.create_server(('127.0.0.1', 0)) as server:
    worktree = _module(tmp_path, f'''
        import socket
        socket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=5)
        ''')
    reason = import_check(worktree, ['models/m.py'])
  assert reason is not None and 'unreachable' in reason


@pytest.mark.parametrize('unshare', ['absent', 'refused'])
def test_where_namespaces_are_unavailable_trials_still_run_and_say_so(fake, tmp_path, monkeypatch,
                                                                       caplog, unshare):
  refusing = tmp_path / 'unshare'
  refusing.write_text('#!/bin/sh\necho "unshare: unshare failed: Operation not permitted" >&2\n'
                      'exit 1\n')
  refusing.chmod(0o755)
  monkeypatch.setattr(executor.shutil, 'which',
                      lambda name: None if unshare == 'absent' else str(refusing))
  executor.isolation.cache_clear()
  try:
    outcome = run_trial(fake("card('ok')"), poll_s=0.05)
  finally:
    executor.isolation.cache_clear()
  assert outcome.status == 'ok', outcome.log_tail
  why = ('unshare is not available' if unshare == 'absent' else
         'unshare failed: Operation not permitted')
  assert outcome.sandbox.startswith('process group only, network NOT isolated (')
  assert why in outcome.sandbox
  assert f'weaker isolation: {outcome.sandbox}' in caplog.text
