"""End-to-end runs of each shipped experiment at tiny step counts, in process."""

import errno
import json
import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from tensorboardX import record_writer

from harness import scorecard as sc
from harness import scoring, train
from harness.tb_writer import MetricsWriter
from harness.train import ConfigError, train_and_evaluate
from tests.conftest import ROOT, load_experiment, tiny

SHIPPED = sorted(p.stem for p in (ROOT / 'experiments').glob('*.py') if p.stem != '__init__')
# Many runs here compile the same programs (mnist1d_tiny): compiled once per session.
pytestmark = pytest.mark.usefixtures('compile_cache')

SCORECARD_FIELDS = {
    'status', 'task', 'metric', 'seeds', 'val_metric', 'val_loss', 'train_loss', 'steps',
    'steps_completed', 'train_seconds', 'compile_seconds', 'step_latency_ms',
    'examples_per_second', 'memory', 'flops_per_step', 'flops_per_step_per_seed',
    'param_count', 'stability', 'curve', 'data', 'config', 'code', 'versions', 'device'}


def assert_every_field(on_disk: dict, steps: int, curve: list[int], seeds: int) -> None:
  """A finished run's scorecard holds every field, filled in, and no test-split number."""
  assert SCORECARD_FIELDS <= set(on_disk)
  assert on_disk['status'] == 'ok' and on_disk['steps_completed'] == steps
  assert len(on_disk['val_metric']['per_seed']) == seeds
  assert on_disk['param_count'] > 0 and on_disk['flops_per_step'] > 0
  assert on_disk['step_latency_ms']['p95'] >= on_disk['step_latency_ms']['p50'] > 0
  assert on_disk['memory']['max_rss_mb'] > 0
  assert set(on_disk['data']['fingerprints']) == {'train', 'val', 'test'}
  assert on_disk['stability']['nonfinite'] is False
  assert [p['step'] for p in on_disk['curve']] == curve
  assert on_disk['code']['commit'] is None or len(on_disk['code']['commit']) == 40
  assert 'test_metric' not in json.dumps(on_disk) and 'test_loss' not in json.dumps(on_disk)


# charlm_transformer's every field is checked on its run as shipped (below): its compile
# dominates, so it is paid once.
@pytest.mark.parametrize('name', ['mnist1d_mlp', 'digits_mlp'])
def test_each_experiment_runs_end_to_end_and_writes_every_field(tmp_path, name):
  config = tiny(load_experiment(name), steps=40, every=20, checkpoint_every=40)
  train_and_evaluate(config, tmp_path, num_seeds=2)
  assert_every_field(json.loads((tmp_path / sc.SCORECARD).read_text()), 40, [20, 40], 2)
  assert not (tmp_path / sc.TEST_SCORECARD).exists()


@pytest.mark.parametrize('name', SHIPPED)
def test_every_shipped_experiment_trains_as_shipped(tmp_path, name):
  """Only the step count is cut, to one chunk and one evaluation (the charlm config at its
  first checkpoint takes ~40 s on 2 cores); the harness checks eval_every against
  checkpoint_every on every run, so a config that cannot run as shipped fails here."""
  config = load_experiment(name)
  every = config.train.steps = config.train.eval_every
  card = train_and_evaluate(config, tmp_path, eval_test=True)
  assert card['status'] == 'ok' and card['steps_completed'] == every
  assert math.isfinite(card['val_metric']['mean']) and math.isfinite(card['val_loss']['mean'])
  test_card = json.loads((tmp_path / sc.TEST_SCORECARD).read_text())
  assert math.isfinite(test_card['test_metric']['mean'])
  if name == 'charlm_transformer':
    on_disk = json.loads((tmp_path / sc.SCORECARD).read_text())
    assert_every_field(on_disk, every, [every], 1)
    assert on_disk['metric'] == {'name': 'bits_per_byte', 'direction': 'min'}
    assert 0 < card['val_metric']['mean'] < 8.5


def test_seeds_differ_and_repeat(tmp_path, mnist1d_tiny):
  a = train_and_evaluate(mnist1d_tiny, tmp_path / 'a', num_seeds=3)
  b = train_and_evaluate(mnist1d_tiny, tmp_path / 'b', num_seeds=3)
  assert a['val_loss']['per_seed'] == b['val_loss']['per_seed']
  assert len(set(a['val_loss']['per_seed'])) == 3
  assert a['seeds'] == [0, 1, 2]


def _val_logits(workdir: Path) -> list[np.ndarray]:
  """Every evaluation's per-seed validation logits, in step order."""
  return [np.load(workdir / 'predictions' / scoring.val_file(step))
          for step in scoring.val_steps(workdir)]


def test_a_seed_trains_bit_identically_alone_and_in_a_group(tmp_path, mnist1d_tiny):
  """On CPU a seed is a seed: its logits at every evaluation do not depend on how many seeds
  train beside it or on its place among them (paired comparisons and confirmations rely on
  it: seed k must mean the same run in a screen of 1 and a confirmation of 3)."""
  runs = {}
  for first, k in ((1, 1), (0, 3)):  # seed 1 alone, then at position 1 of 3
    mnist1d_tiny.train.seed = first
    train_and_evaluate(mnist1d_tiny, tmp_path / f'{first}-{k}', num_seeds=k)
    runs[first, k] = [logits[1 - first] for logits in _val_logits(tmp_path / f'{first}-{k}')]
  alone = runs[1, 1]
  assert len(alone) == 3
  for logits in runs.values():
    assert all(np.array_equal(a, b) for a, b in zip(alone, logits, strict=True))


def test_vmapped_seeds_as_on_accelerators_train_the_same_seeds(tmp_path, mnist1d_tiny,
                                                               monkeypatch):
  """The accelerators' layout (one vmapped program) is kept working on CPU: same seeds, same
  results within float tolerance (XLA picks other kernels for the batched shapes). One
  dispatch per step here, so the CPU's per-seed dispatch loop is checked too."""
  mnist1d_tiny.train.scan_steps = False
  per_seed = train_and_evaluate(mnist1d_tiny, tmp_path / 'per_seed', num_seeds=2)
  monkeypatch.setattr(train, 'vmap_seeds', lambda: True)
  vmapped = train_and_evaluate(mnist1d_tiny, tmp_path / 'vmapped', num_seeds=2)
  np.testing.assert_allclose(vmapped['val_loss']['per_seed'], per_seed['val_loss']['per_seed'],
                             rtol=1e-4)
  assert vmapped['flops_per_step'] == pytest.approx(per_seed['flops_per_step'], rel=0.05)


# Dropout sits after the embeddings and in every block at any size: a one-block, narrow
# transformer on short windows checks it at a fraction of the shipped size's compile,
# training and prediction time.
SMALL = {'mnist1d_mlp': {},
         'charlm_transformer': {'model': {'width': 32, 'depth': 1, 'num_heads': 2},
                                'dataset': {'seq_len': 32}, 'train': {'batch_size': 8}}}


@pytest.mark.parametrize('name', ['mnist1d_mlp', 'charlm_transformer'])
def test_dropout_trains_and_changes_the_result(tmp_path, name):
  config = tiny(load_experiment(name), steps=20, every=20, checkpoint_every=20)
  for section, values in SMALL[name].items():
    config[section].update(values)
  plain = train_and_evaluate(config, tmp_path / 'plain', num_seeds=2)
  config.model.dropout = 0.3
  dropped = train_and_evaluate(config, tmp_path / 'dropout', num_seeds=2)
  assert dropped['status'] == 'ok'
  assert dropped['train_loss']['per_seed'] != plain['train_loss']['per_seed']


def test_divergence_ends_with_a_readable_diverged_scorecard(tmp_path, mnist1d_tiny):
  mnist1d_tiny.optimizer.name = 'sgd'
  mnist1d_tiny.optimizer.learning_rate = 1e4
  card = train_and_evaluate(mnist1d_tiny, tmp_path, num_seeds=2)
  on_disk = json.loads((tmp_path / sc.SCORECARD).read_text())
  assert card['status'] == on_disk['status'] == 'diverged'
  assert on_disk['stability']['nonfinite'] is True
  assert on_disk['stability']['nonfinite_step'] <= mnist1d_tiny.train.eval_every
  assert on_disk['steps_completed'] < mnist1d_tiny.train.steps


def test_eval_test_writes_only_the_separate_file(tmp_path, mnist1d_tiny):
  card = train_and_evaluate(mnist1d_tiny, tmp_path, num_seeds=2, eval_test=True)
  test_card = json.loads((tmp_path / sc.TEST_SCORECARD).read_text())
  assert 0.0 <= test_card['test_metric']['mean'] <= 1.0
  assert 'test_metric' not in card
  assert test_card['data']['fingerprints'] == card['data']['fingerprints']


def test_existing_checkpoints_are_never_overwritten_without_resume(tmp_path, mnist1d_tiny):
  train_and_evaluate(mnist1d_tiny, tmp_path, num_seeds=1)
  with pytest.raises(ConfigError, match='--resume'):
    train_and_evaluate(mnist1d_tiny, tmp_path, num_seeds=1)


def test_resume_of_a_finished_run_reproduces_its_metrics(tmp_path, mnist1d_tiny):
  first = train_and_evaluate(mnist1d_tiny, tmp_path, num_seeds=2)
  again = train_and_evaluate(mnist1d_tiny, tmp_path, num_seeds=2, resume=True)
  assert again['val_metric'] == first['val_metric']
  assert again['curve'] == first['curve']


@pytest.mark.parametrize('section, key, value, match', [
    ('model', 'name', 'resnet', 'Unknown model name'),
    ('optimizer', 'schedule', 'sawtooth', 'optimizer.schedule'),
    ('train', 'checkpoint_every', 30, 'multiple'),
    ('train', 'batch_size', 100000, 'batch_size'),
])
def test_bad_config_values_raise_config_error_before_training(tmp_path, mnist1d_tiny, section,
                                                              key, value, match):
  mnist1d_tiny[section][key] = value
  with pytest.raises(ConfigError, match=match):
    train_and_evaluate(mnist1d_tiny, tmp_path, num_seeds=1)
  assert not (tmp_path / sc.SCORECARD).exists()


def test_unknown_model_argument_is_a_config_error(tmp_path, mnist1d_tiny):
  with mnist1d_tiny.unlocked():
    mnist1d_tiny.model.num_heads = 4
  with pytest.raises(ConfigError, match='num_heads'):
    train_and_evaluate(mnist1d_tiny, tmp_path, num_seeds=1)


def test_summaries_use_the_sample_standard_deviation():
  summary = sc.summarize([1.0, 2.0, 3.0])
  assert summary['mean'] == 2.0 and math.isclose(summary['std'], 1.0)
  assert sc.summarize([5.0])['std'] == 0.0


# ---- a full disk ------------------------------------------------------------------------
def temporary_files(folder: Path) -> list[str]:
  """Ours (`.name.tmp`) and Orbax's (`step.orbax-checkpoint-tmp`), left by a failed write."""
  return [str(p) for p in folder.rglob('*') if p.name.endswith('.tmp') or '-tmp' in p.name]


def _fsync_fails_for(monkeypatch, *names: str) -> None:
  """A disk that fills while `names` are written: their fsync reports ENOSPC, as a real
  filesystem may (ext4, NFS) when the data reaches it."""
  real = os.fsync
  def fsync(fd: int) -> None:
    if os.readlink(f'/proc/self/fd/{fd}').endswith(tuple(f'.{n}.tmp' for n in names)):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real(fd)
  monkeypatch.setattr(os, 'fsync', fsync)


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
  path = tmp_path / sc.SCORECARD
  sc.write_json(path, {'status': 'ok'})
  _fsync_fails_for(monkeypatch, sc.SCORECARD)
  with pytest.raises(OSError, match='No space left') as raised:
    sc.write_json(path, {'status': 'failed'})
  assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
  assert json.loads(path.read_text()) == {'status': 'ok'}
  assert temporary_files(tmp_path) == []


def test_a_full_disk_at_the_scorecard_leaves_no_stale_scorecard(tmp_path, mnist1d_tiny,
                                                               monkeypatch):
  train_and_evaluate(mnist1d_tiny, tmp_path, eval_test=True)
  assert json.loads((tmp_path / sc.SCORECARD).read_text())['status'] == 'ok'
  _fsync_fails_for(monkeypatch, sc.SCORECARD)
  with pytest.raises(OSError, match='No space left'):
    train_and_evaluate(mnist1d_tiny, tmp_path, eval_test=True, resume=True)
  # The earlier attempt's results are gone, not left to pass for this one's.
  assert not (tmp_path / sc.SCORECARD).exists() and not (tmp_path / sc.TEST_SCORECARD).exists()
  assert temporary_files(tmp_path) == []


def test_an_event_file_that_cannot_be_written_fails_the_run_instead_of_hanging_it(
    tmp_path, monkeypatch):
  writer = MetricsWriter(tmp_path)
  def full(self, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(record_writer.RecordWriter, 'write', full)  # in tensorboardX's thread
  raised = []
  def log_forever():
    try:
      for step in range(10**6):  # tensorboardX's queue holds 10 events
        writer.scalars(step, {'train/loss': 1.0})
    except OSError as e:
      raised.append(e)
  thread = threading.Thread(target=log_forever, daemon=True)
  thread.start()
  thread.join(timeout=60)
  assert not thread.is_alive(), 'logging blocked on the dead writer thread'
  assert raised[0].errno == errno.ENOSPC and 'events.out.tfevents' in raised[0].filename
