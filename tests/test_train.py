"""End-to-end runs of each shipped experiment at tiny step counts, in process."""

import json
import math

import numpy as np
import pytest

from harness import scorecard as sc
from harness.train import ConfigError, train_and_evaluate
from tests.conftest import load_experiment, tiny

SCORECARD_FIELDS = {
    'status', 'task', 'metric', 'seeds', 'val_metric', 'val_loss', 'train_loss', 'steps',
    'steps_completed', 'train_seconds', 'compile_seconds', 'step_latency_ms',
    'examples_per_second', 'memory', 'flops_per_step', 'flops_per_step_per_seed',
    'param_count', 'stability', 'curve', 'data', 'config', 'code', 'versions', 'device'}


@pytest.mark.parametrize('name', ['mnist1d_mlp', 'digits_mlp', 'charlm_transformer'])
def test_each_experiment_runs_end_to_end_and_writes_every_field(tmp_path, name):
  config = tiny(load_experiment(name), steps=40, every=20, checkpoint_every=40)
  card = train_and_evaluate(config, tmp_path, num_seeds=2)
  on_disk = json.loads((tmp_path / sc.SCORECARD).read_text())
  assert SCORECARD_FIELDS <= set(on_disk)
  assert on_disk['status'] == 'ok' and on_disk['steps_completed'] == 40
  assert len(on_disk['val_metric']['per_seed']) == 2
  assert on_disk['param_count'] > 0 and on_disk['flops_per_step'] > 0
  assert on_disk['step_latency_ms']['p95'] >= on_disk['step_latency_ms']['p50'] > 0
  assert on_disk['memory']['max_rss_mb'] > 0
  assert set(on_disk['data']['fingerprints']) == {'train', 'val', 'test'}
  assert on_disk['stability']['nonfinite'] is False
  assert [p['step'] for p in on_disk['curve']] == [20, 40]
  assert on_disk['code']['commit'] is None or len(on_disk['code']['commit']) == 40
  assert not (tmp_path / sc.TEST_SCORECARD).exists()
  assert 'test_metric' not in json.dumps(on_disk) and 'test_loss' not in json.dumps(on_disk)
  if name == 'charlm_transformer':
    assert on_disk['metric'] == {'name': 'bits_per_byte', 'direction': 'min'}
    assert 0 < card['val_metric']['mean'] < 8.5


def test_seeds_differ_and_repeat(tmp_path, mnist1d_tiny):
  a = train_and_evaluate(mnist1d_tiny, tmp_path / 'a', num_seeds=3)
  b = train_and_evaluate(mnist1d_tiny, tmp_path / 'b', num_seeds=3)
  assert a['val_loss']['per_seed'] == b['val_loss']['per_seed']
  assert len(set(a['val_loss']['per_seed'])) == 3
  assert a['seeds'] == [0, 1, 2]


def test_a_seed_trained_alone_matches_the_same_seed_in_a_vmapped_group(tmp_path, mnist1d_tiny):
  group = train_and_evaluate(mnist1d_tiny, tmp_path / 'group', num_seeds=3)
  mnist1d_tiny.train.seed = 1
  alone = train_and_evaluate(mnist1d_tiny, tmp_path / 'alone', num_seeds=1)
  np.testing.assert_allclose(alone['val_loss']['per_seed'][0], group['val_loss']['per_seed'][1],
                             rtol=1e-4)


@pytest.mark.parametrize('name', ['mnist1d_mlp', 'charlm_transformer'])
def test_dropout_trains_and_changes_the_result(tmp_path, name):
  config = tiny(load_experiment(name), steps=20, every=20, checkpoint_every=20)
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
