"""The executor against tiny fake trials (a fake `harness.main` in a temporary worktree), plus
one run of the real harness.

The fake is found because a trial runs `python -m harness.main` with cwd and PYTHONPATH set
to its worktree. Each test writes the fake's body; a shared prelude parses the flags and
offers `point(step)` and `finish(**report)`, which write what the real harness writes in a
trial: validation logits, the probe's logits and report.json, never a scorecard. The fake
knows the validation labels only so that it can aim at a known accuracy; the executor scores
its predictions with a `Scorer` over the tiny `Targets` below, as the agent does.

The fixture allows running without bubblewrap (namespaces only) so the suite passes where
bwrap cannot run; where it can, every trial here runs inside it, and the tests of the
filesystem boundary itself are skipped without it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import ml_collections
import numpy as np
import pytest

from agent.charter import Trial
from agent.safety import confine, installed, monitor, preflight
from agent.safety import sandbox as fs_sandbox
from agent.safety.executor import TrialOutcome, TrialSpec, run_trial, trial_env
from agent.safety.preflight import dataset_config, import_check
from harness import scoring, trial_inputs
from harness.splits import Split
from tests.conftest import ROOT, load_experiment

BWRAP = fs_sandbox.available() is None
needs_bwrap = pytest.mark.skipif(not BWRAP, reason=f'no bwrap sandbox here: '
                                                   f'{fs_sandbox.available()}')


def bounds(**fields) -> Trial:
  """The charter's [trial] bounds with every cap off and bubblewrap wherever it can run (here
  code may run without it where it cannot); `fields` set some."""
  return Trial(**{'memory_mb': 0, 'filesystem_sandbox': 'best_effort', **fields})


IMPORTS = bounds(memory_mb=preflight.IMPORT_MEMORY_MB)

LABELS = (0, 1, 1, 0)  # the validation labels: the scorer's, known to the fake only to aim
PROBE = (2, 0)  # probe_batch row j copies validation row PROBE[j]
TARGETS = trial_inputs.Targets(
    'fake', 'classification', (3,), 'signal', 2, 'accuracy', 'max', {'val': np.array(LABELS)},
    {'probe_batch': trial_inputs.Probe(np.array(PROBE))},
    {'train': 'f-train', 'val': 'f-val', 'test': 'f-test'})
# The loss of `logits(3)` below: three rows right by a margin of 1, one wrong by 1.
LOSS_3_OF_4 = (3 * math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 4

PRELUDE = f'LABELS, PROBE = {LABELS}, {PROBE}\n' + r'''
import json, os, signal, struct, subprocess, sys, time
from pathlib import Path
ARGS = dict(a[2:].split('=', 1) for a in sys.argv[1:] if '=' in a)
WORKDIR = Path(ARGS['workdir'])  # the trial's output folder
INPUTS = Path(ARGS['inputs'])
SEEDS = int(ARGS['seeds'])
PREDICTIONS = WORKDIR / 'predictions'
PREDICTIONS.mkdir(parents=True, exist_ok=True)
STATE = {'step': None, 'val': None}

def atomic(name, data, folder=PREDICTIONS):
  tmp = folder / f'.{name}.tmp'
  tmp.write_bytes(data)
  tmp.replace(folder / name)

def npy(rows):
  """(seeds, N, classes) nested lists as float32 .npy bytes, without numpy's import time."""
  shape = (len(rows), len(rows[0]), len(rows[0][0]))
  header = "{'descr': '<f4', 'fortran_order': False, 'shape': %r, }" % (shape,)
  header += ' ' * (-(len(header) + 11) % 64) + '\n'
  values = [v for seed in rows for row in seed for v in row]
  return (b'\x93NUMPY\x01\x00' + struct.pack('<H', len(header)) + header.encode() +
          struct.pack(f'<{len(values)}f', *values))

def logits(correct):
  """Rows below `correct` predict their label by a margin of 1, the others the other class."""
  rows = []
  for i, label in enumerate(LABELS):
    row = [0.0, 0.0]
    row[label] = 1.0 if i < correct else -1.0
    rows.append(row)
  return [rows] * SEEDS

def point(step, correct=3, nan=False):
  rows = logits(correct)
  if nan:
    rows = [[[float('nan'), 0.0]] + seed[1:] for seed in rows]
  atomic(f'val-{step:09d}.npy', npy(rows))
  STATE.update(step=step, val=rows)

def finish(probe='consistent', **report):
  """The probe's logits (copies of the last validation rows, or not) and report.json."""
  rows = [[seed[j] for j in PROBE] for seed in STATE['val']]
  if probe == 'broken':
    rows = [[row[::-1] for row in seed] for seed in rows]
  atomic('probe_batch.npy', npy(rows))
  atomic('report.json', json.dumps({'steps_completed': STATE['step'], **report}).encode(),
         WORKDIR)

def note(**values):
  """What the trial saw, for the test to read back (the scorecard no longer carries it)."""
  (WORKDIR / 'note.json').write_text(json.dumps(values))
'''


def _inputs(folder: Path) -> Path:
  """A minimal inputs folder matching TARGETS (the fake never reads it; it is mounted)."""
  x = np.zeros((len(LABELS), 3), np.float32)
  trial_inputs.write(folder, trial_inputs.Inputs(
      'fake', 'classification', (3,), 2, 'accuracy', 'max',
      Split(np.zeros((8, 3), np.float32), np.zeros(8, np.int32)),
      {'val': trial_inputs.PredictSet(x, 512),
       'probe_batch': trial_inputs.PredictSet(x[list(PROBE)], 7)}, {'name': 'fake'}))
  return folder


@pytest.fixture
def fake(tmp_path: Path) -> Callable[..., TrialSpec]:
  """fake(body, **spec_fields) -> a TrialSpec whose trial runs PRELUDE + body."""
  inputs = _inputs(tmp_path / 'inputs')

  def make(body: str, **fields) -> TrialSpec:
    worktree = tmp_path / 'wt'
    (worktree / 'harness').mkdir(parents=True, exist_ok=True)
    (worktree / 'harness' / '__init__.py').write_text('')
    (worktree / 'harness' / 'main.py').write_text(PRELUDE + textwrap.dedent(body))
    defaults = dict(worktree=worktree, experiment='experiments/fake.py',
                    workdir=tmp_path / 'out', seeds=1, first_seed=0, timeout_s=20,
                    inputs=inputs, limits=bounds())
    return TrialSpec(**{**defaults, **fields})
  return make


def run(spec: TrialSpec, **kwargs) -> TrialOutcome:
  """run_trial scored against TARGETS, polling fast."""
  return run_trial(spec, scoring.Scorer(TARGETS, spec.seeds), **{'poll_s': 0.05, **kwargs})


def _note(spec: TrialSpec) -> dict[str, Any]:
  return json.loads((spec.output / 'note.json').read_text())


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


def _tree(folder: Path) -> dict[str, bytes]:
  """Every file under folder with its bytes: to show that a trial changed nothing there."""
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*'))
          if p.is_file()}


# ---- the spec -------------------------------------------------------------------------------

def test_command_is_the_harness_contract(tmp_path):
  spec = TrialSpec(tmp_path / 'wt', 'experiments/x.py', tmp_path / 'out', seeds=3,
                   first_seed=7, timeout_s=10, eval_test=True,
                   overrides=('--config.train.steps=5',), inputs=tmp_path / 'in')
  assert spec.command()[1:] == [
      '-m', 'harness.main', '--config=experiments/x.py',
      f'--workdir={tmp_path / "out" / "output"}', '--seeds=3', '--config.train.seed=7',
      f'--inputs={tmp_path / "in"}', '--config.train.steps=5', '--eval_test']
  mounts = spec.mounts()
  assert mounts.read_only == (tmp_path / 'wt', tmp_path / 'in', *installed.read_only())
  assert mounts.writable == (tmp_path / 'out' / 'output',)  # not the workdir: the scorecard
  assert mounts.chdir == tmp_path / 'wt'


@pytest.mark.parametrize('fields', [
    {'experiment': '/abs/x.py'}, {'workdir': ('wt', 'runs', 'out')}, {'seeds': 0},
    {'overrides': ('--resume',)}, {'limits': Trial(memory_mb=-1)}])
def test_spec_rejects_the_callers_mistakes(tmp_path, fields):
  if 'workdir' in fields:
    fields = {'workdir': tmp_path.joinpath(*fields['workdir'])}  # inside the worktree
  base = dict(worktree=tmp_path / 'wt', experiment='e.py', workdir=tmp_path / 'out', seeds=1,
              first_seed=0, timeout_s=5)
  with pytest.raises(ValueError):
    TrialSpec(**{**base, **fields})


def test_run_trial_refuses_a_spec_without_inputs_or_a_bad_poll(fake):
  with pytest.raises(ValueError, match='inputs'):
    run(fake('point(1)', inputs=None))
  with pytest.raises(ValueError, match='poll_s'):
    run(fake('point(1)'), poll_s=0)


def test_a_non_empty_workdir_is_refused(fake):
  spec = fake('finish()')
  spec.workdir.mkdir()
  (spec.workdir / 'scorecard.json').write_text('{"status": "ok"}')
  with pytest.raises(ValueError, match='not empty'):
    run(spec)


def test_without_bwrap_a_required_filesystem_sandbox_refuses_to_start(fake, monkeypatch):
  monkeypatch.setattr(fs_sandbox, 'available', lambda: 'bwrap is not installed')
  spec = fake('point(1)', limits=bounds(filesystem_sandbox='required'))
  with pytest.raises(confine.SandboxUnavailable, match='bwrap is not installed'):
    run(spec)
  assert not list(spec.output.iterdir())  # nothing ran


# ---- the trusted scorecard ------------------------------------------------------------------

@pytest.mark.parametrize('status', ['ok', 'diverged'])
def test_a_finished_trial_is_scored_from_its_predictions(fake, status):
  spec = fake(f'''
      print('training')
      point(10, correct=2)
      point(20, nan={status == 'diverged'})
      finish(train_seconds=1.5, curve=[{{'step': 10, 'train_loss': [0.7, 0.6]}}])
      ''', seeds=2, first_seed=4)
  outcome = run(spec)
  assert outcome.status == status and outcome.returncode == 0, outcome.log_tail
  card = outcome.scorecard
  assert card['seeds'] == [4, 5] and card['steps_completed'] == 20
  assert [p['step'] for p in outcome.curve] == [10, 20]
  assert outcome.curve[0]['val_metric'] == [0.5, 0.5]
  assert outcome.curve[0]['train_loss'] == [0.7, 0.6]  # as reported, beside the judged ones
  if status == 'ok':
    assert card['val_metric']['per_seed'] == [0.75, 0.75]
    assert card['val_loss']['mean'] == pytest.approx(LOSS_3_OF_4, rel=1e-6)
    assert outcome.reason == 'finished: ok'
  else:
    assert card['stability']['nonfinite'] and math.isnan(card['val_metric']['mean'])
  assert card['train_seconds'] == 1.5 and card['trusted'] == outcome.trusted
  written = json.loads((spec.workdir / 'scorecard.json').read_text())
  assert written['status'] == status and written['curve'][0]['val_metric'] == [0.5, 0.5]
  curves = [json.loads(line) for line in (spec.workdir / 'curves.jsonl').read_text().splitlines()]
  assert [p['step'] for p in curves] == [10, 20]
  assert 'training' in outcome.log_path.read_text() and 'training' in outcome.log_tail
  assert outcome.pruned_at_step is None


def test_a_scorecard_the_trial_writes_itself_changes_nothing(fake):
  forged = {'status': 'ok', 'val_metric': {'mean': 1.0, 'std': 0.0, 'per_seed': [1.0]},
            'curve': [{'step': 10, 'val_metric': [1.0]}]}
  spec = fake(f'''
      point(10, correct=2)
      finish()
      (WORKDIR / 'scorecard.json').write_text(json.dumps({forged!r}))
      (WORKDIR / 'curves.jsonl').write_text(json.dumps({forged['curve'][0]!r}) + '\\n')
      for name in ('scorecard.json', 'curves.jsonl'):  # beside its folder: the trusted files
        try:
          (WORKDIR.parent / name).write_text(json.dumps({forged!r}))
        except OSError:
          pass
      ''')
  outcome = run(spec)
  assert outcome.status == 'ok', outcome.log_tail
  assert outcome.scorecard['val_metric']['mean'] == 0.5
  assert json.loads((spec.workdir / 'scorecard.json').read_text())['val_metric']['mean'] == 0.5
  if BWRAP:  # without it the trial can write beside its folder, and curves.jsonl is appended
    curves = (spec.workdir / 'curves.jsonl').read_text().splitlines()
    assert [json.loads(line)['val_metric'] for line in curves] == [[0.5]]
  assert json.loads((spec.output / 'scorecard.json').read_text()) == forged  # left, unread


def test_predictions_that_break_the_probe_are_invalid(fake):
  spec = fake('''
      point(10)
      finish(probe='broken')
      ''')
  outcome = run(spec)
  assert outcome.status == 'invalid' and outcome.returncode == 0
  assert 'invariant' in outcome.reason and 'probe_batch' in outcome.reason
  assert outcome.scorecard is None and not (spec.workdir / 'scorecard.json').exists()
  assert [p['step'] for p in outcome.curve] == [10]  # what was seen while it ran


@pytest.mark.parametrize('body, reason', [
    ('pass', 'trial reports (None)'),  # exit 0, nothing written
    ('point(10)', 'trial reports (None)'),  # no report.json
    ('point(10); finish(steps_completed=20)', 'trial reports (20)'),
    ('point(10); (PREDICTIONS / "probe_batch.npy").unlink(missing_ok=True); '
     "atomic('report.json', b'{\"steps_completed\": 10}', WORKDIR)",
     'probe_batch.npy is missing'),
])
def test_a_trial_that_exits_0_without_scorable_predictions_fails(fake, body, reason):
  outcome = run(fake(body))
  assert outcome.returncode == 0 and outcome.status == 'failed'
  assert reason in outcome.reason and outcome.scorecard is None


class _Plant:
  """Unpickling this creates a folder: proof that a loader unpickled what a trial wrote."""

  def __init__(self, path: Path):
    self.path = str(path)

  def __reduce__(self):
    return os.mkdir, (self.path,)


def _bad_npy(kind: str, marker: Path) -> bytes:
  buffer = io.BytesIO()
  if kind == 'wrong shape':
    np.save(buffer, np.zeros((1, len(LABELS), 3), np.float32))
  elif kind == 'int dtype':
    np.save(buffer, np.zeros((1, len(LABELS), 2), np.int32))
  elif kind == 'object dtype':
    array = np.empty((1, len(LABELS), 2), dtype=object)
    array[0, 0, 0] = _Plant(marker)
    np.save(buffer, array, allow_pickle=True)
  elif kind == 'pickle':
    pickle.dump(_Plant(marker), buffer)
  elif kind == 'truncated':
    np.save(buffer, np.zeros((1, len(LABELS), 2), np.float32))
    return buffer.getvalue()[:-5]
  return buffer.getvalue()


@pytest.mark.parametrize('kind', ['wrong shape', 'int dtype', 'object dtype', 'pickle',
                                  'truncated'])
def test_malformed_predictions_fail_with_a_reason_and_are_never_unpickled(fake, tmp_path, kind):
  marker = tmp_path / 'unpickled'
  spec = fake(f'''
      point(10)
      finish()
      atomic('val-000000010.npy', bytes.fromhex({_bad_npy(kind, marker).hex()!r}))
      ''')
  outcome = run(spec)
  assert outcome.returncode == 0 and outcome.status == 'failed', outcome.reason
  assert outcome.reason.startswith('val-000000010.npy ')
  assert outcome.scorecard is None and not marker.exists()


@pytest.mark.parametrize('planted', ['val', 'report', 'fifo'])
def test_a_symlink_or_fifo_planted_in_the_output_is_refused_not_followed(fake, tmp_path, planted):
  outside = tmp_path / 'planted'  # what the links point at: perfect predictions, a good report
  outside.mkdir()
  np.save(outside / 'val.npy', np.array([[[1.0, 0.0] if y == 0 else [0.0, 1.0]
                                           for y in LABELS]], np.float32))
  (outside / 'report.json').write_text(json.dumps({'steps_completed': 10}))
  name = 'predictions/val-000000010.npy' if planted != 'report' else 'report.json'
  spec = fake(f'''
      point(10, correct=1)
      finish()
      path = WORKDIR / {name!r}
      path.unlink()
      if {planted!r} == 'fifo':
        os.mkfifo(path)
      else:
        os.symlink({str(outside / Path(name).name.replace('val-000000010', 'val'))!r}, path)
      ''')
  outcome = run(spec)
  assert outcome.returncode == 0 and outcome.status == 'failed', outcome.reason
  assert outcome.scorecard is None
  if planted == 'val':
    assert 'cannot be opened' in outcome.reason  # O_NOFOLLOW: ELOOP, not the planted file
  elif planted == 'fifo':
    assert 'not a regular file' in outcome.reason
  else:
    assert 'trial reports (None)' in outcome.reason  # the planted report went unread


def test_a_symlinked_predictions_folder_is_refused_not_followed(fake, tmp_path):
  """E.g. a trial pointing its predictions at the incumbent's, whose path it can guess, to
  claim the incumbent's quality at the cost of a trial that trains nothing."""
  outside = tmp_path / 'elsewhere' / 'predictions'  # perfect predictions it cannot reach
  outside.mkdir(parents=True)
  perfect = lambda rows: np.array([[[1.0, 0.0] if LABELS[i] == 0 else [0.0, 1.0]
                                    for i in rows]], np.float32)
  np.save(outside / 'val-000000010.npy', perfect(range(len(LABELS))))
  np.save(outside / 'probe_batch.npy', perfect(PROBE))
  spec = fake(f'''
      import shutil
      point(10, correct=1)
      finish()
      shutil.rmtree(PREDICTIONS)
      os.symlink({str(outside)!r}, PREDICTIONS)
      ''')
  outcome = run(spec)
  assert outcome.status == 'failed' and outcome.scorecard is None, outcome.scorecard


# ---- how trials end -------------------------------------------------------------------------

def test_bad_input_gives_the_harness_error_line_as_the_reason(fake):
  spec = fake('''
      print('some stdout noise')
      print('a warning\\nerror: unknown config key train.stpes', file=sys.stderr)
      print('stdout after', flush=True)
      sys.exit(2)
      ''')
  outcome = run(spec)
  assert outcome.status == 'bad_input' and outcome.returncode == 2
  assert outcome.reason == 'error: unknown config key train.stpes'
  assert outcome.scorecard is None


def test_a_failed_run_takes_its_reason_from_its_error_line_not_from_its_files(fake):
  spec = fake('''
      point(10)
      finish()
      (WORKDIR / 'scorecard.json').write_text(json.dumps({'status': 'ok'}))
      print('error: training failed: shapes (3,) and (4,) do not match', file=sys.stderr)
      print('a last line of noise')
      sys.exit(1)
      ''')
  outcome = run(spec)
  assert outcome.status == 'failed' and outcome.scorecard is None
  assert outcome.reason == 'error: training failed: shapes (3,) and (4,) do not match'
  assert not (spec.workdir / 'scorecard.json').exists()


def test_a_hanging_trial_and_its_grandchild_are_killed_at_the_timeout(fake, monkeypatch):
  monkeypatch.setattr(confine, 'KILL_GRACE_S', 0.5)
  spec = fake('''
      subprocess.Popen([sys.executable, '-S', '-c', 'import time; time.sleep(600)',
                        str(WORKDIR)])
      signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL will do
      point(5)
      time.sleep(600)
      ''', timeout_s=1.5)
  seen = []
  outcome = run(spec, on_curve=lambda _: seen.extend(_mentioning(str(spec.output))))
  assert outcome.status == 'timeout' and outcome.scorecard is None
  # bwrap dies of the SIGTERM (its sandbox with it); a bare trial ignores it until SIGKILL.
  assert outcome.returncode in (-signal.SIGTERM, -signal.SIGKILL)
  assert outcome.reason == 'timed out after 1.5 s at step 5'
  assert [p['step'] for p in outcome.curve] == [5]
  assert outcome.wall_seconds >= 1.5  # never killed before its timeout
  assert len(seen) >= 2 and _all_gone(str(spec.workdir))  # the trial and its child


def test_a_finished_trial_is_scored_when_it_exits_not_a_poll_interval_later(fake):
  spec = fake('''
      point(1)
      finish()
      ''')
  outcome = run(spec, poll_s=60)
  assert outcome.status == 'ok' and outcome.wall_seconds < 30, outcome.wall_seconds


def test_on_curve_prunes_a_loser_early_on_the_trusted_curve(fake):
  spec = fake('''
      for step in range(1, 200):
        point(step, correct=1 + step % 4)
        time.sleep(0.02)
      finish()
      ''')
  seen = []

  def judge(curve):
    seen.append(len(curve))
    assert all(p['val_metric'] == [(1 + p['step'] % 4) / 4] for p in curve)
    return 'worse than the incumbent at the same step' if curve[-1]['step'] >= 20 else None

  outcome = run(spec, on_curve=judge)
  assert outcome.status == 'pruned'
  assert outcome.reason == 'worse than the incumbent at the same step'
  assert 20 <= outcome.pruned_at_step < 199
  assert seen == sorted(seen) and seen[-1] == outcome.pruned_at_step  # whole curve each time
  assert outcome.scorecard is None and not (spec.workdir / 'scorecard.json').exists()


def test_an_exception_in_on_curve_kills_the_trial_and_propagates(fake):
  spec = fake('''
      point(1)
      time.sleep(600)
      ''')

  def broken(curve):
    assert _mentioning(str(spec.output))
    raise RuntimeError('bug in the caller')

  with pytest.raises(RuntimeError, match='bug in the caller'):
    run(spec, on_curve=broken)
  assert _all_gone(str(spec.workdir))


def test_ctrl_c_in_the_parent_kills_the_trials_whole_group_and_propagates(fake):
  spec = fake('''
      subprocess.Popen([sys.executable, '-S', '-c', 'import time; time.sleep(600)',
                        str(WORKDIR)])
      (WORKDIR / 'started').write_text('')
      time.sleep(600)
      ''')
  # Python ignores SIGINT when it starts with it ignored (a background job of a shell
  # without job control: a CI runner may be one); a Ctrl-C test needs the usual handler.
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))  # a real Ctrl-C
  timer.start()
  try:
    with pytest.raises(KeyboardInterrupt):
      run(spec)
  finally:
    timer.join()
    signal.signal(signal.SIGINT, previous)
  assert (spec.output / 'started').exists() and _all_gone(str(spec.workdir))


def test_an_output_flood_is_capped_but_its_end_is_kept(fake):
  spec = fake('''
      for i in range(50_000):
        print('x' * 99)
      print('the real error is here', file=sys.stderr)
      point(1)
      finish()
      ''', max_output_bytes=50_000)
  outcome = run(spec)
  assert outcome.status == 'ok'
  size = outcome.log_path.stat().st_size
  assert 50_000 <= size < 50_000 + 3 * monitor.TAIL_CHARS
  text = outcome.log_path.read_text()
  assert '[output truncated at 50000 bytes]' in text and 'bytes dropped' in text
  assert 'the real error is here' in outcome.log_tail
  assert len(outcome.log_tail) <= monitor.TAIL_CHARS


# ---- bounds: environment, limits, costs -----------------------------------------------------

def test_the_trial_sees_only_the_allow_listed_environment_and_its_limits(fake, monkeypatch):
  for name in ('FAKE_API_KEY', 'GITHUB_TOKEN', 'AWS_SECRET_ACCESS_KEY', 'HTTPS_PROXY',
               'http_proxy', 'PYTHONSTARTUP'):
    monkeypatch.setenv(name, 'secret')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('TPU_VISIBLE_CHIPS', '2,3')  # a Ray node's share of a TPU host
  spec = fake('''
      import resource
      limits = {n: resource.getrlimit(getattr(resource, n))
                for n in ('RLIMIT_CPU', 'RLIMIT_DATA', 'RLIMIT_NPROC')}
      note(env=dict(os.environ), limits=limits)
      point(1)
      finish()
      ''', limits=bounds(cpu_minutes=0.5, memory_mb=512, max_processes=4000))
  outcome = run(spec)
  assert outcome.status == 'ok', outcome.log_tail
  seen = _note(spec)
  env = seen['env']
  # Python may set LC_CTYPE itself; bwrap sets PWD to the folder it starts the trial in.
  assert set(env) - {'LC_CTYPE', 'PWD'} <= {*confine.PASSTHROUGH_ENV, *confine.FIXED_ENV,
                                            'PYTHONPATH'}
  assert env.get('PWD', str(spec.worktree)) == str(spec.worktree)
  assert not {'FAKE_API_KEY', 'GITHUB_TOKEN', 'AWS_SECRET_ACCESS_KEY', 'HTTPS_PROXY',
              'http_proxy', 'PYTHONSTARTUP'} & set(env)
  assert env['PYTHONPATH'] == installed.pythonpath(spec.worktree)
  assert env['PYTHONPATH'].split(os.pathsep)[0] == str(spec.worktree)
  assert env['PYTHONHASHSEED'] == '0'
  assert env['JAX_PLATFORMS'] == 'cpu'
  assert env['TPU_VISIBLE_CHIPS'] == '2,3'
  assert seen['limits']['RLIMIT_CPU'][0] == 30
  assert seen['limits']['RLIMIT_DATA'] == [512 << 20, 512 << 20]
  assert seen['limits']['RLIMIT_NPROC'] == [4000, 4000]


def test_trial_env_is_an_allow_list(tmp_path):
  spec = TrialSpec(tmp_path / 'wt', 'e.py', tmp_path / 'out', 1, 0, 5)
  parent = {'PATH': '/bin', 'OPENAI_API_KEY': 'k', 'no_proxy': '*', 'XLA_FLAGS': '--x',
            'PYTHONPATH': '/elsewhere'}
  assert trial_env(spec, parent) == {
      'PATH': '/bin', 'XLA_FLAGS': '--x', 'PYTHONPATH': installed.pythonpath(spec.worktree),
      'PYTHONHASHSEED': '0', 'PYTHONUNBUFFERED': '1', 'TF_CPP_MIN_LOG_LEVEL': '1'}


def test_an_over_allocating_trial_is_killed_by_the_memory_limit(fake):
  spec = fake('''
      hog = bytearray(600 << 20)
      point(1)
      finish()
      ''', limits=bounds(memory_mb=200))
  outcome = run(spec)
  assert outcome.status == 'killed'
  assert outcome.reason.startswith('memory limit') and 'MemoryError' in outcome.reason
  assert outcome.scorecard is None


def test_a_busy_loop_is_killed_by_the_cpu_limit(fake):
  spec = fake('''
      while True:
        pass
      ''', limits=bounds(cpu_minutes=1 / 60))
  outcome = run(spec)
  assert outcome.status == 'killed' and outcome.returncode == -signal.SIGXCPU
  assert outcome.reason.startswith('cpu time limit')


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='TreeUsage reads /proc')
def test_trusted_costs_are_measured_by_the_parent_whatever_the_trial_reports(fake):
  spec = fake('''
      hog = b'x' * (120 << 20)  # written, so resident
      start = time.process_time()
      while time.process_time() - start < 0.4:
        pass
      time.sleep(0.3)  # a few polls after the work, so the parent samples all of it
      point(1)
      finish(train_seconds=0.001, memory={'max_rss_mb': 1.0})
      ''')
  outcome = run(spec)
  assert outcome.status == 'ok', outcome.log_tail
  trusted = outcome.trusted
  assert trusted['wall_seconds'] >= 0.7 and trusted['wall_seconds'] == outcome.wall_seconds
  assert trusted['max_rss_mb'] >= 120
  assert trusted['cpu_seconds'] >= 0.35
  card = outcome.scorecard
  assert card['trusted'] == trusted  # the claims are kept, labelled as reported, beside it
  assert card['train_seconds'] == 0.001 and card['memory']['max_rss_mb'] == 1.0


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='TreeUsage reads /proc')
def test_the_cpu_of_a_child_the_trial_waited_for_is_counted_once(fake):
  spec = fake('''
      busy = 'import time\\ns = time.process_time()\\nwhile time.process_time() - s < 0.6: pass'
      subprocess.run([sys.executable, '-S', '-c', busy], check=True)
      time.sleep(0.3)
      point(1)
      finish()
      ''')
  outcome = run(spec)
  assert outcome.status == 'ok', outcome.log_tail
  assert 0.5 <= outcome.trusted['cpu_seconds'] < 0.95, outcome.trusted


# ---- isolation: the filesystem sandbox, namespaces where the OS allows them -----------------

@needs_bwrap
def test_a_trial_writes_only_its_output_and_reads_nothing_beside_its_worktree(fake, tmp_path):
  secret = tmp_path / 'secret.txt'  # next to the worktree: e.g. the run's labels
  secret.write_text('the-test-labels')
  spec = fake(f'''
      import errno
      def attempt(action):
        try:
          action()
          return 'ok'
        except OSError as e:
          return errno.errorcode.get(e.errno, str(e.errno))
      def append(path):
        with open(path, 'a') as f:
          f.write('# planted by the trial')
      note(append_own_code=attempt(lambda: append(__file__)),
           create_in_worktree=attempt(lambda: Path('planted.py').write_text('x = 1')),
           overwrite_inputs=attempt(lambda: (INPUTS / 'task.json').write_text('{{}}')),
           create_in_inputs=attempt(lambda: (INPUTS / 'val_labels.npy').write_text('')),
           read_secret=attempt(lambda: print(Path({str(secret)!r}).read_text())),
           cwd=os.getcwd())
      point(1)
      finish()
      ''')
  worktree, inputs = _tree(spec.worktree), _tree(spec.inputs)
  outcome = run(spec)
  assert outcome.status == 'ok', outcome.log_tail
  seen = _note(spec)
  assert seen['cwd'] == str(spec.worktree)
  for attempt in ('append_own_code', 'create_in_worktree', 'overwrite_inputs',
                  'create_in_inputs'):
    assert seen[attempt] == 'EROFS', attempt
  assert seen['read_secret'] == 'ENOENT'
  assert 'the-test-labels' not in outcome.log_path.read_text()
  assert _tree(spec.worktree) == worktree and _tree(spec.inputs) == inputs


CACHE_PROBE = '''
import errno
cache = os.environ.get('JAX_COMPILATION_CACHE_DIR')
cache = cache and Path(cache)
def attempt(action):
  try:
    action()
    return 'ok'
  except OSError as e:
    return errno.errorcode.get(e.errno, str(e.errno))
if cache:
  note(cache=str(cache), entries=sorted(os.listdir(cache)), beside=sorted(os.listdir(cache.parent)),
       write_beside=attempt(lambda: (cache.parent / 'planted').mkdir()),
       write_own=attempt(lambda: (cache / f'entry-{CODE}').write_text('compiled')))
else:
  note(cache=None)
point(1)
finish()
'''


def _commit(worktree: Path, code: str) -> str:
  """Commits the worktree as the code named `code` (the fake plants entries named after it)
  and returns its tree."""
  main = worktree / 'harness' / 'main.py'
  main.write_text(main.read_text().split('\nCODE = ')[0] + f'\nCODE = {code!r}\n' + CACHE_PROBE)
  git = lambda *args: subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args],
                                     cwd=worktree, check=True, capture_output=True, text=True)
  if not (worktree / '.git').exists():
    git('init', '-q')
  git('add', '-A')
  git('commit', '-q', '--allow-empty', '-m', code)
  return git('rev-parse', 'HEAD^{tree}').stdout.strip()


@needs_bwrap
def test_a_trial_sees_only_its_own_codes_compile_cache(fake, tmp_path):
  """An entry one code's trial wrote (a compiled program JAX would run) is seen by later
  trials of that same code only: other code's cannot list it, and nothing a trial writes
  beside its own folder reaches the cache."""
  cache_root = tmp_path / 'cache'
  spec = fake('', compile_cache=cache_root)
  runs = iter(range(100))

  def trial(code: str) -> tuple[str, dict[str, Any]]:
    tree = _commit(spec.worktree, code)
    this = dataclasses.replace(spec, workdir=tmp_path / f'out-{next(runs)}')
    assert run(this).status == 'ok'
    return tree, _note(this)

  tree_a, seen = trial('a')
  assert seen == {'cache': str(cache_root / tree_a), 'entries': [], 'beside': [tree_a],
                  'write_beside': seen['write_beside'], 'write_own': 'ok'}
  tree_b, seen = trial('b')  # other code: its own, empty folder, and no sight of a's
  assert seen['cache'] == str(cache_root / tree_b)
  assert seen['entries'] == [] and seen['beside'] == [tree_b]
  assert trial('a') == (tree_a, {**seen, 'cache': str(cache_root / tree_a),
                                 'entries': ['entry-a'], 'beside': [tree_a]})
  assert sorted(os.listdir(cache_root)) == sorted([tree_a, tree_b])  # nothing planted beside
  (spec.worktree / 'untracked.py').write_text('')  # code that no tree names: no cache
  this = dataclasses.replace(spec, workdir=tmp_path / 'out-dirty')
  assert run(this).status == 'ok' and _note(this) == {'cache': None}


def test_a_compile_cache_inside_the_worktree_is_refused(tmp_path):
  with pytest.raises(ValueError, match='inside the worktree'):
    TrialSpec(tmp_path, 'experiments/x.py', tmp_path.parent / 'out', seeds=1, first_seed=0,
              timeout_s=1, compile_cache=tmp_path / 'cache')


BWRAP_OR_PID_NAMESPACE = BWRAP or confine.isolation(False).pid_namespace
NETWORK_ISOLATED = BWRAP or confine.isolation(True).network_isolated
needs_pid_namespace = pytest.mark.skipif(not BWRAP_OR_PID_NAMESPACE,
                                         reason='no PID namespace here')
needs_network_namespace = pytest.mark.skipif(not NETWORK_ISOLATED,
                                             reason='no network namespace here')

SPAWNER = '''
for detach in (False, False, True, True):  # bounded: four sleepers, two of them setsid()
  subprocess.Popen([sys.executable, '-S', '-c', 'import time; time.sleep(600)',
                    f'{WORKDIR}/sleeper'], start_new_session=detach)
point(1)
time.sleep(0.5)
'''


@needs_pid_namespace
@pytest.mark.parametrize('ending', ['finish()', 'time.sleep(600)'])
def test_a_spawners_children_die_with_it_even_those_that_left_its_process_group(fake, ending,
                                                                                 monkeypatch):
  monkeypatch.setattr(confine, 'KILL_GRACE_S', 0.5)
  spec = fake(SPAWNER + ending, timeout_s=2)
  sleepers = f'{spec.output}/sleeper'
  seen: set[int] = set()

  def count_sleepers(curve) -> None:
    seen.update(_mentioning(sleepers))

  outcome = run(spec, on_curve=count_sleepers)
  assert outcome.status == ('ok' if 'finish' in ending else 'timeout'), outcome.log_tail
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
        note(network=result)
        point(1)
        finish()
        ''', limits=bounds(network=not isolate))
    outcome = run(spec)
  assert outcome.status == 'ok', outcome.log_tail
  assert (_note(spec)['network'] == 'connected') is not isolate
  words = 'no network' if BWRAP else 'network namespaces'
  assert (words in outcome.sandbox) is isolate


@needs_pid_namespace
def test_a_trial_cannot_read_the_agents_environment_through_proc(fake):
  secret = f'sekrit-{os.getpid()}-{time.time()}'
  agent_like = subprocess.Popen([sys.executable, '-S', '-c', 'import time; time.sleep(60)'],
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
        note(found=found)
        point(1)
        finish()
        ''')
    outcome = run(spec)
  finally:
    agent_like.kill()
    agent_like.wait()
  assert outcome.status == 'ok', outcome.log_tail
  assert _note(spec)['found'] == []


def test_a_trial_killed_by_a_signal_reports_that_signal_through_the_sandbox(fake):
  spec = fake('''
      os.kill(os.getpid(), signal.SIGSEGV)
      ''')
  outcome = run(spec)
  assert outcome.returncode == -signal.SIGSEGV and outcome.status == 'killed'
  assert outcome.reason.startswith('died by SIGSEGV')


@pytest.mark.parametrize('unshare', ['absent', 'refused'])
def test_where_namespaces_are_unavailable_trials_still_run_and_say_so(fake, tmp_path, monkeypatch,
                                                                       caplog, unshare):
  refusing = tmp_path / 'unshare'
  refusing.write_text('#!/bin/sh\necho "unshare: unshare failed: Operation not permitted" >&2\n'
                      'exit 1\n')
  refusing.chmod(0o755)
  monkeypatch.setattr(fs_sandbox, 'available', lambda: 'bwrap is not installed')
  real_which = confine.shutil.which
  monkeypatch.setattr(confine.shutil, 'which', lambda name: real_which(name) if name != 'unshare'
                      else None if unshare == 'absent' else str(refusing))
  confine.isolation.cache_clear()
  try:
    outcome = run(fake('point(1); finish()'))
  finally:
    confine.isolation.cache_clear()
  assert outcome.status == 'ok', outcome.log_tail
  why = ('unshare is not available' if unshare == 'absent' else
         'unshare failed: Operation not permitted')
  assert outcome.sandbox.startswith('process group only, network NOT isolated (')
  assert why in outcome.sandbox
  assert outcome.sandbox.endswith('; NO filesystem sandbox (bwrap is not installed)')
  assert f'weaker isolation: {outcome.sandbox.split("; NO filesystem")[0]}' in caplog.text


# ---- import checks and the dataset config: the same sandbox, run by agent.safety.preflight --

def _module(tmp_path: Path, body: str) -> Path:
  worktree = tmp_path / 'wt'
  (worktree / 'models').mkdir(parents=True)
  (worktree / 'models' / '__init__.py').write_text('')
  (worktree / 'models' / 'm.py').write_text(textwrap.dedent(body))
  return worktree


def test_import_check_passes_a_module_that_loads(tmp_path):
  worktree = _module(tmp_path, 'import math\nX = math.pi\n')
  assert import_check(worktree, ['models/m.py'], limits=IMPORTS) is None


def test_import_check_gives_the_error_line_and_a_scrubbed_environment(tmp_path, monkeypatch):
  monkeypatch.setenv('FAKE_API_KEY', 'secret')
  worktree = _module(tmp_path, '''
      import os
      raise RuntimeError('env: ' + ' '.join(sorted(os.environ)))
      ''')
  reason = import_check(worktree, ['models/m.py'], limits=IMPORTS)
  assert reason.startswith('RuntimeError: env: ') and 'FAKE_API_KEY' not in reason
  assert 'PYTHONPATH' in reason


@needs_pid_namespace
def test_import_check_kills_a_hanging_import_and_everything_it_started(tmp_path):
  worktree = _module(tmp_path, f'''
      import subprocess, sys, time
      for detach in (False, True):
        subprocess.Popen([sys.executable, '-S', '-c', 'import time; time.sleep(600)',
                          '{tmp_path}/sleeper'], start_new_session=detach)
      time.sleep(600)
      ''')
  reason = import_check(worktree, ['models/m.py'], timeout_s=1.5, limits=IMPORTS)
  assert reason == 'importing the edited modules took more than 1.5 s'
  assert _all_gone(f'{tmp_path}/sleeper')


def test_import_check_has_a_memory_limit(tmp_path):
  worktree = _module(tmp_path, 'hog = bytearray(600 << 20)\n')
  assert import_check(worktree, ['models/m.py'], limits=bounds(memory_mb=200)) == 'MemoryError'


@needs_network_namespace
def test_import_check_has_no_network(tmp_path):
  with socket.create_server(('127.0.0.1', 0)) as server:
    worktree = _module(tmp_path, f'''
        import socket
        socket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=5)
        ''')
    reason = import_check(worktree, ['models/m.py'], limits=IMPORTS)
  # bwrap's namespace has its own loopback, up: refused; unshare's is down: unreachable.
  assert reason is not None and ('refused' in reason or 'unreachable' in reason), reason


@needs_bwrap
def test_import_check_cannot_write_into_the_worktree(tmp_path):
  worktree = _module(tmp_path, '''
      from pathlib import Path
      with open(__file__, 'a') as f:
        f.write('# planted on import')
      ''')
  before = _tree(worktree)
  reason = import_check(worktree, ['models/m.py'], limits=IMPORTS)
  assert reason is not None and 'Read-only file system' in reason
  assert _tree(worktree) == before


FAKE_CONFIG = '''
class Dataset(dict):
  def to_dict(self):
    return dict(self)

class Config:
  dataset = Dataset(name='digits', split_seed=3, val_fraction=0.25)

def get_config():
  {body}
'''


@pytest.mark.parametrize('body, expected', [
    ('return Config()', {'name': 'digits', 'split_seed': 3, 'val_fraction': 0.25}),
    ("raise ValueError('no dataset here')", 'ValueError: no dataset here'),
    ('print(\'DATASET={"name": "forged"}\'); return Config()',  # the last line counts
     {'name': 'digits', 'split_seed': 3, 'val_fraction': 0.25}),
    ("Config.dataset = type('L', (list,), {'to_dict': list})([1]); return Config()",
     'config.dataset of experiments/fake.py is not a mapping'),
])
def test_dataset_config_is_read_inside_the_sandbox(tmp_path, body, expected):
  worktree = tmp_path / 'wt'
  (worktree / 'experiments').mkdir(parents=True)
  (worktree / 'experiments' / 'fake.py').write_text(FAKE_CONFIG.format(body=body))
  sandbox = bounds()
  if isinstance(expected, dict):
    assert dataset_config(worktree, 'experiments/fake.py', sandbox) == expected
  else:
    with pytest.raises(ValueError, match=expected):
      dataset_config(worktree, 'experiments/fake.py', sandbox)


# ---- the real harness -----------------------------------------------------------------------

def _committed_copy(folder: Path) -> Path:
  """The trial's code of this checkout (harness, models, experiments) as one commit."""
  for package in ('harness', 'models', 'experiments'):
    shutil.copytree(ROOT / package, folder / package,
                    ignore=shutil.ignore_patterns('__pycache__'))
  git = lambda *args: subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args],
                                     cwd=folder, check=True, capture_output=True)
  git('init', '-q')
  git('add', '-A')
  git('commit', '-q', '-m', 'the code under test')
  return folder


def test_the_real_harness_runs_under_the_executor(tmp_path):
  """And the compilation cache changes no result: the second run of the same code loads its
  programs from the first one's entries and gets the same per-seed numbers."""
  dataset = load_experiment('digits_mlp').dataset.to_dict()
  from harness.datasets import load_task
  inputs, targets = trial_inputs.build(load_task(ml_collections.ConfigDict(dataset)), dataset)
  trial_inputs.write(tmp_path / 'inputs', inputs)
  spec = TrialSpec(_committed_copy(tmp_path / 'wt'), 'experiments/digits_mlp.py',
                   tmp_path / 'out', seeds=2, first_seed=0, timeout_s=240,
                   limits=bounds(memory_mb=4096), inputs=tmp_path / 'inputs',
                   compile_cache=tmp_path / 'cache',
                   overrides=('--config.train.steps=20', '--config.train.eval_every=10',
                              '--config.train.checkpoint_every=20'))
  outcome = run_trial(spec, scoring.Scorer(targets, spec.seeds))
  assert outcome.status == 'ok', outcome.log_tail
  assert outcome.sandbox.startswith('bubblewrap: ' if BWRAP else
                                    confine.isolation(True).description)
  card = outcome.scorecard
  assert card['status'] == 'ok' and card['seeds'] == [0, 1] and card['task'] == 'digits'
  assert card['input_shape'] == [8, 8, 1] and card['input_kind'] == 'image'
  assert all(0 <= v <= 1 for v in card['val_metric']['per_seed'])
  assert [p['step'] for p in outcome.curve] == [10, 20]
  assert all(len(p['val_metric']) == 2 for p in outcome.curve)
  assert card['trusted']['wall_seconds'] > 0 and card['trusted']['max_rss_mb'] > 0
  assert card['data']['fingerprints'] == targets.fingerprints
  assert (spec.workdir / 'scorecard.json').exists()
  assert not (spec.output / 'scorecard.json').exists()  # a trial writes predictions only
  assert 'trained 20 steps' in outcome.log_tail
  if not BWRAP:
    return  # no compilation cache without the filesystem sandbox
  entries = list((tmp_path / 'cache').rglob('*'))
  assert entries
  again = run_trial(dataclasses.replace(spec, workdir=tmp_path / 'again'),
                    scoring.Scorer(targets, spec.seeds))
  assert sorted((tmp_path / 'cache').rglob('*')) == sorted(entries)  # all found, none added
  for key in ('val_metric', 'val_loss', 'train_loss'):
    assert again.scorecard[key]['per_seed'] == card[key]['per_seed'], key


def test_inside_its_sandbox_a_trial_is_bounded_by_its_own_time_limit(tmp_path):
  """Even with no agent left to enforce it (kill -9), coreutils' timeout ends the trial,
  a little after the executor's own limit would have."""
  argv = confine.bounded([sys.executable, '-c', 'pass'], timeout_s=5)
  if confine.shutil.which('timeout') is None:
    pytest.skip('coreutils timeout is not installed')
  assert argv[1:3] == ['--signal=KILL', str(5 + int(confine.KILL_GRACE_S) + 30)]
  assert argv[3:] == [sys.executable, '-c', 'pass']
