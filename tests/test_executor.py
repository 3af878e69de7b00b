"""The executor against tiny fake trials (a fake `harness.main` in a temporary worktree), plus
one run of the real harness.

The fake is found because a trial runs `python -m harness.main` with cwd and PYTHONPATH set
to its worktree. Each test writes the fake's body; a shared prelude parses --workdir and
offers `point(step)` and `card(status)` helpers that write what the real harness writes.
"""

from __future__ import annotations

import _thread
import json
import signal
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from agent import executor
from agent.executor import CurveReader, TrialSpec, run_trial, trial_env
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


def _all_gone(pids: list[int], wait_s: float = 2.0) -> bool:
  """Gives the kernel a moment to tear a killed group down."""
  deadline = time.monotonic() + wait_s
  while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
    time.sleep(0.05)
  return not any(_alive(pid) for pid in pids)


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
      child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
      (WORKDIR / 'pids').write_text(f'{os.getpid()} {child.pid}')
      signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL will do
      point(5)
      time.sleep(600)
      ''', timeout_s=1.5)
  outcome = run_trial(spec, poll_s=0.05)
  assert outcome.status == 'timeout' and outcome.returncode == -signal.SIGKILL
  assert outcome.reason == 'timed out after 1.5 s at step 5'
  assert outcome.wall_seconds >= 1.5  # never killed before its timeout
  pids = [int(p) for p in (spec.workdir / 'pids').read_text().split()]
  assert _all_gone(pids)


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
      (WORKDIR / 'pid').write_text(str(os.getpid()))
      point(1)
      time.sleep(600)
      ''')

  def broken(curve):
    raise RuntimeError('bug in the caller')

  with pytest.raises(RuntimeError, match='bug in the caller'):
    run_trial(spec, on_curve=broken, poll_s=0.05)
  assert _all_gone([int((spec.workdir / 'pid').read_text())])


def test_ctrl_c_in_the_parent_kills_the_trials_whole_group_and_propagates(fake):
  spec = fake('''
      child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
      (WORKDIR / 'pids').write_text(f'{os.getpid()} {child.pid}')
      time.sleep(600)
      ''')
  timer = threading.Timer(1.0, _thread.interrupt_main)
  timer.start()
  with pytest.raises(KeyboardInterrupt):
    run_trial(spec, poll_s=0.05)
  timer.join()
  pids = [int(p) for p in (spec.workdir / 'pids').read_text().split()]
  assert _all_gone(pids)


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
                   first_seed=0, timeout_s=240, memory_mb=4096,
                   overrides=('--config.train.steps=40', '--config.train.eval_every=20',
                              '--config.train.checkpoint_every=40'))
  outcome = run_trial(spec)
  assert outcome.status == 'ok', outcome.log_tail
  assert outcome.scorecard['status'] == 'ok' and outcome.scorecard['seeds'] == [0, 1]
  assert [p['step'] for p in outcome.curve] == [20, 40]
  assert all(len(p['val_metric']) == 2 for p in outcome.curve)
  assert 'status=ok' in outcome.log_tail
