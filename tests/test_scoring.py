"""The trusted scorer: metrics from logits, probes of the task's invariants, and what crosses
into a trial (inputs, never labels)."""

import json
import math

import numpy as np
import pytest

from harness import scoring, trial_inputs
from harness.datasets import Split, Task, load_task
from tests.conftest import load_experiment


def _task(kind: str) -> Task:
  rng = np.random.default_rng(0)
  if kind == 'classification':
    split = lambda n: Split(rng.normal(size=(n, 4)).astype(np.float32),
                            rng.integers(0, 3, n).astype(np.int32))
    return Task('toy', kind, split(40), split(20), split(10), (4,), 'signal', 3,
                'accuracy', 'max')
  stream = lambda n: Split(rng.integers(0, 256, n).astype(np.int32), None)
  return Task('toy_lm', kind, stream(500), stream(8 * 16 + 1), stream(4 * 16 + 1), (16,), 'text',
              256, 'bits_per_byte', 'min')


def test_accuracy_and_loss_come_from_normalised_logits_and_stay_in_range():
  labels = np.array([0, 1, 2, 1])
  logits = np.full((2, 4, 3), -5.0)
  logits[0, np.arange(4), labels] = 5.0  # seed 0: all right
  logits[1, np.arange(4), (labels + 1) % 3] = 1e6  # seed 1: all wrong, absurdly confident
  loss, metric = scoring.score('classification', logits, labels)
  assert metric.tolist() == [1.0, 0.0]
  assert 0 < loss[0] < 1e-3 and loss[1] > 1e5
  shifted_loss, shifted = scoring.score('classification', logits + 1e3, labels)
  np.testing.assert_allclose(shifted_loss, loss, rtol=1e-9)  # logits are normalised here


def test_bits_per_byte_of_a_uniform_model_is_eight():
  labels = np.zeros((3, 5), np.int64)
  loss, metric = scoring.score('language_model', np.zeros((2, 3, 5, 256)), labels)
  np.testing.assert_allclose(metric, [8.0, 8.0])
  np.testing.assert_allclose(loss, [math.log(256)] * 2)


def test_non_finite_logits_score_nan_for_that_seed_only():
  logits = np.zeros((2, 2, 3))
  logits[1, 0, 0] = np.nan
  _, metric = scoring.score('classification', logits, np.array([0, 1]))
  assert metric[0] == 0.5 and math.isnan(metric[1])


@pytest.mark.parametrize('kind', ['classification', 'language_model'])
def test_inputs_never_hold_a_label_and_round_trip_through_a_folder(tmp_path, kind):
  task = _task(kind)
  inputs, targets = trial_inputs.build(task, {'name': 'toy'}, with_test=False)
  assert set(inputs.predict) == {'val', 'probe_batch'} | (
      {'probe_causal'} if kind == 'language_model' else set())
  assert 'test' not in targets.labels and 'test' not in inputs.predict
  trial_inputs.write(tmp_path, inputs)
  names = {p.name for p in tmp_path.iterdir()}
  expected = {'task.json', 'train_x.npy', 'predict_val.npy', 'predict_probe_batch.npy'}
  expected |= {'train_y.npy'} if kind == 'classification' else {'predict_probe_causal.npy'}
  assert names == expected  # no file of labels for anything the trial predicts
  back = trial_inputs.read(tmp_path)
  np.testing.assert_array_equal(back.predict['val'].x, inputs.predict['val'].x)
  np.testing.assert_array_equal(back.train.x, task.train.x)
  assert json.loads((tmp_path / trial_inputs.META).read_text())['predict']['val'] == (
      trial_inputs.PREDICT_BATCH)


def test_test_inputs_exist_only_when_asked():
  inputs, targets = trial_inputs.build(_task('classification'), {}, with_test=True)
  assert inputs.predict['test'].x.shape == (10, 4) and targets.labels['test'].shape == (10,)


def _lm_probe_logits(targets, val_logits, *, reads_ahead: bool):
  """Predictions for the causal probe: equal to the validation rows they copy at every
  position up to the cut, or (reads_ahead) different there too."""
  probe = targets.probes['probe_causal']
  logits = val_logits[:, probe.val_index].copy()
  for row, keep in enumerate(probe.keep):
    logits[:, row, keep:] += 3.0  # after the cut anything goes
    if reads_ahead:
      logits[:, row, keep - 1, 0] += 9.0
  return logits


def test_the_causality_probe_passes_a_causal_model_and_catches_one_that_reads_ahead():
  inputs, targets = trial_inputs.build(_task('language_model'), {})
  val = np.random.default_rng(1).normal(size=(2, *targets.labels['val'].shape, 256))
  probe = targets.probes['probe_causal']
  assert (probe.keep >= 2).all() and (probe.keep <= 15).all()
  # the probe rows really differ after the cut, and only there
  original = inputs.predict['val'].x[probe.val_index]
  changed = inputs.predict['probe_causal'].x
  for row, keep in enumerate(probe.keep):
    assert (changed[row, :keep] == original[row, :keep]).all()
    assert (changed[row, keep:] != original[row, keep:]).any()
  causal = _lm_probe_logits(targets, val, reads_ahead=False)
  assert scoring.probe_violation('probe_causal', probe, causal, val) is None
  cheat = _lm_probe_logits(targets, val, reads_ahead=True)
  assert 'reads ahead' in scoring.probe_violation('probe_causal', probe, cheat, val)


def test_the_batch_probe_catches_predictions_that_depend_on_batch_mates():
  _, targets = trial_inputs.build(_task('classification'), {})
  probe = targets.probes['probe_batch']
  val = np.random.default_rng(2).normal(size=(2, 20, 3))
  same = val[:, probe.val_index] + 1e-7
  assert scoring.probe_violation('probe_batch', probe, same, val) is None
  other = same.copy()
  other[1, 0] = other[1, 0][::-1] * 4
  assert 'other rows' in scoring.probe_violation('probe_batch', probe, other, val)


def test_a_hostile_report_cannot_crash_the_scorecard_or_change_a_judged_number(tmp_path):
  _, targets = trial_inputs.build(_task('classification'), {})
  scorer = scoring.Scorer(targets, 2)
  folder = tmp_path / 'out'
  (folder / scoring.PREDICTIONS).mkdir(parents=True)
  labels = targets.labels['val']
  logits = np.zeros((2, labels.size, 3), np.float32)
  logits[:, np.arange(labels.size), labels] = 1.0
  np.save(folder / scoring.PREDICTIONS / scoring.val_file(20), logits)
  np.save(folder / scoring.PREDICTIONS / 'probe_batch.npy', logits[:, targets.probes[
      'probe_batch'].val_index])
  report = {'steps_completed': 20, 'steps': 20, 'val_metric': {'mean': 1.5},
            'train_seconds': 'fast', 'memory': [1], 'step_latency_ms': {'p50': None},
            'stability': {'max_grad_norm': 'x', 'loss_spikes': 3}, 'nonfinite': False,
            'curve': 'nope', 'task': 'imagenet', 'input_shape': [224, 224, 3],
            'input_kind': 'image'}
  (folder / scoring.REPORT).write_text(json.dumps(report))
  card = scoring.scorecard(scorer, folder, seeds=[0, 1], trusted={'wall_seconds': 1.0},
                           code={})
  assert card['val_metric']['per_seed'] == [1.0, 1.0] and card['task'] == 'toy'
  assert card['input_shape'] == [4] and card['input_kind'] == 'signal'  # the data's, not the report's
  assert math.isnan(card['train_seconds']) and math.isnan(card['memory']['max_rss_mb'])
  assert card['status'] == 'ok' and card['trusted'] == {'wall_seconds': 1.0}


@pytest.mark.parametrize('experiment, kind', [('digits_mlp', 'image'), ('mnist1d_mlp', 'signal'),
                                              ('charlm_transformer', 'text')])
def test_the_scorer_knows_one_examples_shape_and_kind_as_the_dataset_declares_them(experiment,
                                                                                  kind):
  """The scorecard's input_shape and input_kind (what proposers read to pick a model family)
  come from the trusted data: the shape of what the trial is asked to predict."""
  config = load_experiment(experiment).dataset
  inputs, targets = trial_inputs.build(load_task(config), config.to_dict())
  assert targets.input_kind == kind
  assert targets.input_shape == inputs.predict['val'].x.shape[1:]
