"""Trials as Ray tasks on a local Ray cluster (2 CPUs, started once for the module): the fake
trials of tests/test_executor.py in a committed worktree, workers killed mid-trial, and the
agent's command line with `--executor=ray` on the real (tiny) harness."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import ray

from agent import start
from agent.charter import CharterError, Trial, parse_charter
from agent.recording.journal import Journal
from agent.safety import ray_executor
from agent.safety.executor import TrialSpec, run_trial
from agent.safety.ray_executor import Bundle, RayExecutor
from harness import scoring
from tests.agent_workspace import TINY_EXPERIMENT, git, make_workspace
from tests.conftest import ROOT
from tests.test_executor import PRELUDE, TARGETS, _all_gone, _inputs, _mentioning, bounds


@pytest.fixture(scope='module')
def cluster() -> Iterator[RayExecutor]:
  """A local cluster of 2 CPUs and an executor on it (which leaves the cluster up)."""
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
           object_store_memory=100 << 20)
  try:
    yield RayExecutor(bounds(), poll_s=0.05)
  finally:
    ray.shutdown()


@pytest.fixture
def fake(tmp_path: Path) -> Callable[..., TrialSpec]:
  """fake(body, **spec_fields) -> a TrialSpec whose trial runs PRELUDE + body, committed in a
  git worktree (a Ray trial ships a commit); the experiment's name marks its processes."""
  inputs = _inputs(tmp_path / 'inputs')
  count = iter(range(100))

  def make(body: str, **fields) -> TrialSpec:
    worktree = tmp_path / f'wt{next(count)}'
    (worktree / 'harness').mkdir(parents=True)
    (worktree / 'harness' / '__init__.py').write_text('')
    (worktree / 'harness' / 'main.py').write_text(PRELUDE + textwrap.dedent(body))
    git(worktree, 'init', '-q')
    git(worktree, 'add', '-A')
    git(worktree, 'commit', '-q', '-m', 'fake')
    defaults = dict(worktree=worktree, experiment=f'experiments/fake-{uuid.uuid4().hex}.py',
                    workdir=tmp_path / f'out{next(count)}', seeds=1, first_seed=0, timeout_s=30,
                    inputs=inputs, limits=bounds())
    return TrialSpec(**{**defaults, **fields})
  return make


def scorer(spec: TrialSpec) -> scoring.Scorer:
  return scoring.Scorer(TARGETS, spec.seeds)


def _ray_worker_of(pid: int) -> int | None:
  """The Ray worker process above pid (its proctitle starts with 'ray::')."""
  while pid > 1:
    if (Path(f'/proc/{pid}/cmdline').read_bytes()).startswith(b'ray::'):
      return pid
    status = Path(f'/proc/{pid}/status').read_text()
    pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith('PPid:')))
  return None


def _trainer(pid: int) -> bool:
  """True for the trial's Python process: bubblewrap has set up the sandbox by then (a worker
  killed while bwrap starts, before it asks to die with its parent, would leave it running
  to the trial's own time limit)."""
  return Path(f'/proc/{pid}/cmdline').read_bytes().startswith(sys.executable.encode())


def _kill_workers(marker: str, times: int, killed: list[int]) -> threading.Thread:
  """Kills (SIGKILL) the Ray worker running the trial marked `marker`, `times` times."""
  def kill() -> None:
    deadline = time.monotonic() + 60
    while len(killed) < times and time.monotonic() < deadline:
      running = [pid for pid in _mentioning(marker) if _trainer(pid)]
      workers = {w for pid in running if (w := _ray_worker_of(pid))} - set(killed)
      for worker in workers:
        os.kill(worker, signal.SIGKILL)
        killed.append(worker)
      time.sleep(0.05)
  thread = threading.Thread(target=kill, daemon=True)
  thread.start()
  return thread


# ---- trials on the cluster --------------------------------------------------------------------

def test_a_trial_runs_on_a_node_from_its_commit_and_is_scored_on_the_head(cluster, fake):
  spec = fake('''
      point(10, correct=2)
      point(20)
      note(cwd=os.getcwd(), inputs=sorted(os.listdir(INPUTS)))
      (WORKDIR / 'checkpoints').mkdir()
      (WORKDIR / 'checkpoints' / 'state').write_text('stays on the node')
      (WORKDIR / 'events.out.tfevents.1.fake').write_text('events')
      os.symlink('/etc/hostname', WORKDIR / 'link')
      os.mkfifo(WORKDIR / 'fifo')
      print('trained on the node')
      finish(train_seconds=1.0)
      ''', seeds=2, first_seed=3)
  outcome = cluster.run_trial(spec, scorer(spec))
  assert outcome.status == 'ok', outcome.reason + outcome.log_tail
  assert [p['step'] for p in outcome.curve] == [10, 20]
  card = outcome.scorecard
  assert card['seeds'] == [3, 4] and card['val_metric']['per_seed'] == [0.75, 0.75]
  assert card['code']['commit'] == git(spec.worktree, 'rev-parse', 'HEAD')  # the head's view
  assert (spec.workdir / 'scorecard.json').exists() and (spec.workdir / 'curves.jsonl').exists()
  assert 'trained on the node' in (spec.workdir / 'trial.log').read_text()
  # Its own folder on the node, never the head's worktree; the inputs, shipped whole.
  note = (spec.output / 'note.json').read_text()
  assert 'agent-ray-trial-' in note and str(spec.worktree) not in note
  assert all(p.name in note for p in spec.inputs.iterdir())
  # Returned: the output, its events; not checkpoints, links or FIFOs.
  assert (spec.output / 'events.out.tfevents.1.fake').read_text() == 'events'
  assert not any((spec.output / name).exists() or (spec.output / name).is_symlink()
                 for name in ('checkpoints', 'link', 'fifo'))
  # The same numbers as the same trial run locally.
  local = run_trial(TrialSpec(**{**spec.__dict__, 'workdir': spec.workdir.with_name('local')}),
                    scorer(spec), poll_s=0.05)
  assert local.scorecard['val_metric'] == card['val_metric']
  assert [p['val_metric'] for p in local.curve] == [p['val_metric'] for p in outcome.curve]


def test_a_batch_gives_one_scored_outcome_per_member(cluster, fake):
  spec = fake('''
      base = WORKDIR
      for i in range(2):
        WORKDIR = base / f'member-{i}'
        PREDICTIONS = WORKDIR / 'predictions'
        PREDICTIONS.mkdir(parents=True)
        rows = logits(2 + 2 * i)
        atomic('val-000000010.npy', npy(rows), PREDICTIONS)
        atomic('probe_batch.npy', npy([[seed[j] for j in PROBE] for seed in rows]), PREDICTIONS)
        atomic('report.json', json.dumps({'steps_completed': 10}).encode(), WORKDIR)
      ''', members=({'optimizer.learning_rate': 0.1}, {'optimizer.learning_rate': 0.2}))
  outcomes = cluster.run_batch(spec, scorer(spec))
  assert [o.status for o in outcomes] == ['ok', 'ok'], outcomes[0].reason
  assert [o.scorecard['val_metric']['mean'] for o in outcomes] == [0.5, 1.0]
  assert [o.scorecard['batch']['member'] for o in outcomes] == [0, 1]
  assert all((spec.workdir / f'member-{i}' / 'scorecard.json').exists() for i in range(2))


def test_a_failing_trial_is_classified_as_locally(cluster, fake):
  spec = fake('''
      point(10)
      print('error: no such knob', file=sys.stderr)
      sys.exit(2)
      ''')
  outcome = cluster.run_trial(spec, scorer(spec))
  assert (outcome.status, outcome.reason) == ('bad_input', 'error: no such knob')
  assert not (spec.workdir / 'scorecard.json').exists()


def test_a_trial_over_its_time_is_stopped_on_its_node(cluster, fake):
  spec = fake('point(10)\ntime.sleep(60)\n', timeout_s=1.5)
  outcome = cluster.run_trial(spec, scorer(spec))
  assert outcome.status == 'timeout' and outcome.reason == 'timed out after 1.5 s at step 10'
  assert _all_gone(spec.experiment)


def test_a_worker_killed_mid_trial_runs_it_once_more(cluster, fake):
  """Killed once: the trial runs again on a fresh worker; its one outcome says so."""
  spec = fake('point(10)\ntime.sleep(1.0)\npoint(20)\nfinish()\n')
  killed: list[int] = []
  thread = _kill_workers(spec.experiment, 1, killed)
  outcome = cluster.run_trial(spec, scorer(spec))
  thread.join()
  assert len(killed) == 1
  assert outcome.status == 'ok' and [p['step'] for p in outcome.curve] == [10, 20]
  assert outcome.reason.startswith('finished: ok (run again after its Ray worker died: '
                                   'WorkerCrashedError: ')
  assert sorted(p.name for p in spec.workdir.iterdir()
                if not p.name.startswith('events.')) == [
      'curves.jsonl', 'output', 'scorecard.json', 'trial.log']
  assert _all_gone(spec.experiment)


def test_a_trial_whose_worker_dies_twice_fails_with_the_reason(cluster, fake):
  spec = fake('point(10)\ntime.sleep(60)\n')
  killed: list[int] = []
  thread = _kill_workers(spec.experiment, 2, killed)
  outcome = cluster.run_trial(spec, scorer(spec))
  thread.join()
  assert len(killed) == 2
  assert outcome.status == 'failed' and outcome.scorecard is None
  assert outcome.reason.startswith('the Ray worker running the trial died 2 times; last: '
                                   'WorkerCrashedError')
  assert (spec.workdir / 'trial.log').read_text().startswith('the Ray worker running')
  assert not (spec.workdir / 'scorecard.json').exists()
  assert _all_gone(spec.experiment)  # the sandboxed trials died with their workers


def test_the_callers_mistakes_raise_before_anything_runs(cluster, fake, tmp_path):
  spec = fake('finish()')
  (spec.worktree / 'harness' / 'main.py').write_text('uncommitted')
  with pytest.raises(ValueError, match='uncommitted changes'):
    cluster.run_trial(spec, scorer(spec))
  with pytest.raises(ValueError, match='inputs'):
    cluster.run_trial(fake('finish()', inputs=None), scorer(spec))
  with pytest.raises(ValueError, match='run_batch'):
    cluster.run_trial(fake('finish()', members=({'a.b': 1.0},)), scorer(spec))
  with pytest.raises(ValueError, match=r"no node of the Ray cluster offers .*gpus=1.*CPU=2"):
    cluster.check(Bundle.of(Trial(gpus=1)))


# ---- the bundle, the charter, the archives ----------------------------------------------------

def test_the_bundle_is_the_charters_trial_resources():
  bundle = Bundle.of(Trial(cpus=0.5, gpus=2, tpus=4, memory_mb=1024))
  assert bundle.options() == {'num_cpus': 0.5, 'num_gpus': 2, 'memory': 1 << 30,
                              'resources': {'TPU': 4}}
  assert bundle.fits({'CPU': 1, 'GPU': 2, 'TPU': 4, 'memory': 2 << 30})
  assert not bundle.fits({'CPU': 8, 'GPU': 1, 'TPU': 4, 'memory': 2 << 30})
  assert Bundle.of(Trial(memory_mb=0)).options()['memory'] == 0
  assert Bundle.of(Trial()).fits({'CPU': 1, 'memory': 9 << 30})


def test_trials_at_once_are_what_the_scarcest_resource_allows(cluster):
  node = {'CPU': 16, 'GPU': 8, 'memory': 128 << 30}
  assert Bundle.of(Trial(cpus=1, gpus=1, memory_mb=8192)).times(node) == 8  # the GPUs
  assert Bundle.of(Trial(cpus=4, memory_mb=8192)).times(node) == 4  # the CPUs
  assert Bundle.of(Trial(cpus=0.5, gpus=0.5, memory_mb=0)).times(node) == 16
  assert Bundle.of(Trial(cpus=1, gpus=1)).times({'CPU': 16}) == 0
  assert cluster.capacity() == 2  # the module's cluster: 2 CPUs, a trial asks 1, no memory cap


@pytest.mark.parametrize('line, message', [
    ('cpus = 1.5', "'trial.cpus' must be a fraction in [0, 1] or a whole number, got 1.5"),
    ('gpus = -1', "'trial.gpus' must be a fraction in [0, 1] or a whole number, got -1"),
    ('tpus = "all"', "'trial.tpus' must be a finite number, got 'all'")])
def test_a_malformed_resource_is_a_one_line_error_naming_its_line(line, message):
  text = (ROOT / 'WORKSPACE.md').read_text()
  key = line.split(' =')[0]
  lines = [f'{line}  # bad' if row.startswith(f'{key} =') else row for row in text.splitlines()]
  number = next(i for i, row in enumerate(lines, 1) if row.startswith(f'{line}  # bad'))
  with pytest.raises(CharterError) as error:
    parse_charter('\n'.join(lines))
  assert str(error.value) == f'WORKSPACE.md:{number}: {message}'
  assert parse_charter(text).trial.cpus == 1.0  # the shipped charter's values


def test_a_returned_archive_cannot_reach_outside_its_folder(tmp_path):
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w') as archive:
    for name, kind in (('../escape', tarfile.REGTYPE), ('/abs', tarfile.REGTYPE),
                       ('link', tarfile.SYMTYPE), ('dev', tarfile.CHRTYPE),
                       ('output/ok', tarfile.REGTYPE)):
      info = tarfile.TarInfo(name)
      info.type, info.size = kind, 2 if kind == tarfile.REGTYPE else 0
      info.linkname = '/etc/hostname' if kind == tarfile.SYMTYPE else ''
      archive.addfile(info, io.BytesIO(b'ok') if kind == tarfile.REGTYPE else None)
  ray_executor._unpack(buffer.getvalue(), tmp_path / 'dest')
  assert [str(p.relative_to(tmp_path)) for p in sorted(tmp_path.rglob('*'))] == [
      'dest', 'dest/abs', 'dest/output', 'dest/output/ok']  # '/abs' lands inside, stripped
  assert ray_executor._pack(tmp_path / 'dest', limit=1).startswith('its output (0 MB) is over')


# ---- the command line -------------------------------------------------------------------------

def test_agent_run_with_executor_ray_works_end_to_end_and_verifies(cluster, tmp_path):
  """Two real tiny trials besides the baseline, on the module's cluster (--ray_address),
  side by side: the cluster's two CPUs hold two trials, so --workers defaults to 2."""
  repo = make_workspace(tmp_path, steps=20)
  charter = repo / 'WORKSPACE.md'  # one look: the screen decides
  charter.write_text(charter.read_text().replace('max_seeds = 6', 'max_seeds = 2'))
  git(repo, 'commit', '-q', '-am', 'one look')
  env = {**os.environ, 'PYTHONPATH': str(repo)}
  agent = lambda *args: subprocess.run(
      [sys.executable, '-m', 'agent.main', *args, f'--workspace={repo}'], cwd=repo, env=env,
      capture_output=True, text=True, timeout=300)
  address = ray.get_runtime_context().gcs_address
  result = agent('run', f'--experiment={TINY_EXPERIMENT}', '--budget_trials=2', '--seeds=2',
                 '--run_id=ray', '--nofinal_eval', '--executor=ray', f'--ray_address={address}')
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert '[workers] up to 2 trials in flight' in result.stdout
  assert '[baseline] accuracy' in result.stdout and 'trials: 2/2' in result.stdout
  verify = agent('verify', '--run_id=ray')
  assert verify.returncode == 0, verify.stdout
  with Journal.open(repo / 'runs/ray/journal.sqlite') as journal:
    assert sorted(r.trial for r in journal.records('verdict')) == [1, 2]
  resumed = agent('resume', '--run_id=ray', '--executor=ray', f'--ray_address={address}')
  assert resumed.returncode == 0 and 'trials: 2/2' in resumed.stdout, resumed.stderr[-2000:]


def test_a_bundle_no_node_offers_is_a_usage_error(cluster):
  text = (ROOT / 'WORKSPACE.md').read_text().replace('gpus = 0 ', 'gpus = 1 ')
  with pytest.raises(start.UsageError, match=r'^--executor=ray: no node of the Ray cluster '
                     r'offers a trial\'s \[trial\] bundle \(cpus=1, gpus=1'):
    with start.engine('ray', parse_charter(text)):
      pass
  with pytest.raises(start.UsageError, match='--ray_address needs --executor=ray'):
    with start.engine('local', parse_charter(text), 'auto'):
      pass
