"""Candidates that differ only in the optimiser's traced values train in one program
(harness.train's members) and each gets exactly what a run alone would have written."""

import json
from pathlib import Path

import numpy as np
import pytest

from harness import scorecard as sc
from harness import scoring, train
from harness.train import ConfigError, member_configs, train_and_evaluate
from tests.conftest import run_binary

# Each candidate's run alone and the batches compile the same programs again: once per session.
pytestmark = pytest.mark.usefixtures('compile_cache')

MEMBERS = [{'optimizer.learning_rate': 3e-3},
           {'optimizer.learning_rate': 1e-2, 'optimizer.weight_decay': 1e-3,
            'optimizer.grad_clip_norm': 0.5}]


def _logits(folder: Path) -> list[np.ndarray]:
  return [np.load(folder / scoring.PREDICTIONS / scoring.val_file(step))
          for step in scoring.val_steps(folder)]


def _alone(config, workdir: Path, values: dict) -> dict:
  for path, value in values.items():
    config.optimizer[path.partition('.')[2]] = value
  return train_and_evaluate(config, workdir, num_seeds=2, eval_test=True)


@pytest.fixture(scope='module')
def batch(tmp_path_factory):
  """One batched run of MEMBERS on 2 seeds, by hand (scored in process)."""
  from tests.conftest import load_experiment, tiny
  workdir = tmp_path_factory.mktemp('batch')
  result = train_and_evaluate(tiny(load_experiment('mnist1d_mlp')), workdir, num_seeds=2,
                              members=MEMBERS, eval_test=True)
  return workdir, result


@pytest.mark.parametrize('index', [0, 1])
def test_each_member_matches_its_run_alone_bit_for_bit_on_cpu(tmp_path, mnist1d_tiny, batch,
                                                              index):
  workdir, result = batch
  alone = _alone(mnist1d_tiny, tmp_path, MEMBERS[index])
  folder = workdir / f'member-{index}'
  member = json.loads((folder / sc.SCORECARD).read_text())
  assert result['members'][index]['val_metric'] == member['val_metric']
  assert member['val_metric']['per_seed'] == alone['val_metric']['per_seed']
  assert member['val_loss']['per_seed'] == alone['val_loss']['per_seed']
  assert member['curve'] == alone['curve']
  assert all(np.array_equal(a, b) for a, b in
             zip(_logits(tmp_path), _logits(folder), strict=True))
  assert member['config']['optimizer'] == alone['config']['optimizer']
  assert (json.loads((folder / sc.TEST_SCORECARD).read_text())['test_metric'] ==
          json.loads((tmp_path / sc.TEST_SCORECARD).read_text())['test_metric'])


def test_members_share_seeds_but_train_differently(batch):
  workdir, result = batch
  first, second = result['members']
  assert first['seeds'] == second['seeds'] == [0, 1]
  assert first['val_loss']['per_seed'] != second['val_loss']['per_seed']
  for i in (0, 1):  # each member's folder holds what a run alone writes
    folder = workdir / f'member-{i}'
    assert {sc.SCORECARD, sc.TEST_SCORECARD, sc.CURVES, scoring.REPORT, scoring.PROGRESS,
            scoring.PREDICTIONS} <= {p.name for p in folder.iterdir()}
    assert any(p.name.startswith('events.out.tfevents.') for p in folder.iterdir())
  # FLOPs are each member's share; times are the group's (they train together)
  assert first['flops_per_step'] == pytest.approx(second['flops_per_step'])
  assert first['train_seconds'] == second['train_seconds']


def test_vmapped_members_as_on_accelerators_match_within_tolerance(tmp_path, mnist1d_tiny,
                                                                   batch, monkeypatch):
  """XLA picks other kernels for the batched shapes, and 60 steps of training amplify the
  last-bit differences: agreement to 0.5% of the loss, not bit for bit."""
  workdir, result = batch
  monkeypatch.setattr(train, 'vmap_seeds', lambda: True)
  vmapped = train_and_evaluate(mnist1d_tiny, tmp_path, num_seeds=2, members=MEMBERS)
  for ours, theirs in zip(vmapped['members'], result['members'], strict=True):
    np.testing.assert_allclose(ours['val_loss']['per_seed'], theirs['val_loss']['per_seed'],
                               rtol=5e-3)


def test_a_diverging_member_stops_where_it_would_alone_and_the_others_go_on(tmp_path,
                                                                            mnist1d_tiny):
  mnist1d_tiny.optimizer.name = 'sgd'
  members = [{'optimizer.learning_rate': 1e4}, {'optimizer.learning_rate': 0.05}]
  result = train_and_evaluate(mnist1d_tiny, tmp_path / 'batch', num_seeds=1, members=members)
  diverged, fine = result['members']
  mnist1d_tiny.optimizer.learning_rate = members[0]['optimizer.learning_rate']
  alone = train_and_evaluate(mnist1d_tiny, tmp_path / 'alone', num_seeds=1)
  assert diverged['status'] == alone['status'] == 'diverged'
  assert diverged['steps_completed'] == alone['steps_completed'] < mnist1d_tiny.train.steps
  assert diverged['stability']['nonfinite_step'] == alone['stability']['nonfinite_step']
  assert fine['status'] == 'ok' and fine['steps_completed'] == mnist1d_tiny.train.steps


@pytest.mark.parametrize('members, match', [
    ([{'model.width': 64}], 'not a traced hyperparameter'),
    ([{'optimizer.schedule': 'cosine'}], 'not a traced hyperparameter'),
    ([{'optimizer.learning_rate': -1.0}], 'learning_rate must be > 0'),
    ([{'optimizer.weight_decay': 'lots'}], 'finite numbers'),
    ([['optimizer.learning_rate', 0.1]], 'mapping'),
    ([], 'no member'),
])
def test_members_other_than_traced_values_are_refused(mnist1d_tiny, members, match):
  with pytest.raises(ConfigError, match=match):
    member_configs(mnist1d_tiny, members)


def test_the_binary_takes_members_as_json_and_refuses_bad_ones_in_one_line(tmp_path):
  bad = run_binary('--config=experiments/mnist1d_mlp.py', f'--workdir={tmp_path / "w"}',
                   '--members=[{"model.depth": 3}]')
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith('error: member key')
  assert not (tmp_path / 'w').exists() or not any((tmp_path / 'w').iterdir())
  not_json = run_binary('--config=experiments/mnist1d_mlp.py', f'--workdir={tmp_path / "v"}',
                        '--members={lr: 1}')
  assert not_json.returncode == 2 and 'not JSON' in not_json.stderr.splitlines()[-1]


class _StopAtFirstRung:
  """The judge's answer, in process: member 1 stops at step 20 (a rung of the tiny run)."""
  steps = (20,)

  def __init__(self):
    self.asked: list[tuple[int, list[int]]] = []

  def stopped(self, step, training):
    self.asked.append((step, list(training)))
    return {1}


def test_a_member_stopped_at_a_rung_trains_no_further_and_the_others_are_untouched(
    tmp_path, mnist1d_tiny, batch):
  workdir, result = batch
  rungs = _StopAtFirstRung()
  stopped = train_and_evaluate(mnist1d_tiny, tmp_path, num_seeds=2, members=MEMBERS,
                               eval_test=True, rungs=rungs)['members']
  assert rungs.asked == [(20, [0, 1])]
  assert stopped[1] == {'stopped_at': 20}
  folder = tmp_path / 'member-1'
  assert scoring.val_steps(folder) == [20]  # what it wrote before the rung stays
  assert not (folder / sc.SCORECARD).exists() and not (folder / scoring.REPORT).exists()
  assert not (folder / scoring.PREDICTIONS / 'test.npy').exists()
  # the member that went on is exactly what it was without a rung
  assert stopped[0]['val_metric'] == result['members'][0]['val_metric']
  assert all(np.array_equal(a, b) for a, b in
             zip(_logits(tmp_path / 'member-0'), _logits(workdir / 'member-0'), strict=True))


def test_the_binary_refuses_bad_rungs_in_one_line_before_touching_the_workdir(tmp_path):
  for args, says in ((['--rungs=10'], 'go together'),
                     (['--rungs=a', f'--rung_dir={tmp_path}', '--members=[{}, {}]'],
                      'comma-separated steps')):
    bad = run_binary('--config=experiments/mnist1d_mlp.py', f'--workdir={tmp_path / "w"}', *args)
    assert bad.returncode == 2 and says in bad.stderr.strip().splitlines()[-1]
    assert not (tmp_path / 'w').exists()
