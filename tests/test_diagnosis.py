"""The defects of training the diagnosis names, read off scorecards of real runs, and the
remedy the offline proposer tries first for each (issue 13).

The curves are the mean train and val losses per evaluation of MNIST-1D MLP runs on 3
seeds (`python -m harness.main --config=experiments/mnist1d_mlp.py --seeds=3` with the
override named), with their max gradient norms; no training runs here.
"""

import math
from pathlib import Path

import pytest

from agent.editing import config_edit
from agent.editing.config_edit import ConfigEdit
from agent.proposing import diagnosis as d
from agent.proposing.heuristic import HeuristicProposer
from tests.test_heuristic_proposer import MNIST1D, card, files_with, load_config, observe, \
    rejected


def measured(points, grad_norms, learning_rate, **extra):
  """A scorecard of a real run: its curve, max gradient norms and learning rate."""
  scorecard = card(points, **extra)
  scorecard['stability']['max_grad_norm'] = {'per_seed': grad_norms}
  scorecard['config'] = {'model': {'name': 'mlp'}, 'optimizer': {'learning_rate': learning_rate}}
  return scorecard


# --config.optimizer.learning_rate=1.0: 100x too high, no NaN, 10% val accuracy.
LR_100X = measured([(250, 69.652, 2.327), (500, 2.347, 2.345), (750, 2.351, 2.347),
                    (1000, 2.353, 2.349), (1500, 2.358, 2.398), (2000, 2.355, 2.347),
                    (2500, 2.359, 2.351), (3000, 2.358, 2.331)],
                   [1419.9, 1411.7, 1633.0], 1.0, val_metric=0.103)
# --config.optimizer.learning_rate=0.1: 10x too high; 15% val accuracy, no violent gradients.
LR_10X = measured([(250, 2.249, 2.161), (500, 2.124, 2.204), (750, 2.145, 2.144),
                   (1000, 2.134, 2.162), (1500, 2.125, 2.161), (2000, 2.152, 2.192),
                   (2500, 2.112, 2.177), (3000, 2.124, 2.179)],
                  [20.7, 9.9, 16.5], 0.1, val_metric=0.148)
# --config.optimizer.learning_rate=1e-5: 1000x too low; 24% val accuracy.
LR_TINY = measured([(250, 2.412, 2.373), (500, 2.335, 2.309), (750, 2.277, 2.259),
                    (1000, 2.228, 2.216), (1500, 2.149, 2.142), (2000, 2.079, 2.076),
                    (2500, 2.016, 2.016), (3000, 1.96, 1.962)],
                   [1.2, 1.3, 1.8], 1e-5, val_metric=0.242)
# --config.train.steps=250 (and eval_every, checkpoint_every): one evaluation, 58% accuracy.
SHORT = measured([(250, 1.17, 1.14)], [1.8, 1.9, 1.9], 1e-2, val_metric=0.583)
# The shipped config: train loss collapses, val loss climbs from step 250 on.
SHIPPED = measured([(250, 1.17, 1.14), (500, 0.47, 1.322), (1000, 0.144, 2.269),
                    (2000, 0.001, 2.682), (3000, 0.0003, 2.868)], [2.5, 2.9, 2.5], 1e-2)
# Both losses high and close, well below chance, flat at the end: a capacity limit.
NARROW = measured([(250, 1.4, 1.5), (500, 1.2, 1.3), (750, 1.19, 1.29)], [3.0, 2.8, 3.1], 1e-2)

DEFECTS = {'step_too_large', 'step_too_small', 'undertrained', 'underfitting', 'overfitting'}


def observed(scorecard, tmp_path: Path, **kwargs):
  """The shipped MNIST-1D experiment at the run's learning rate, with its scorecard."""
  text = config_edit.apply_edits(files_with(MNIST1D)[MNIST1D], [ConfigEdit(
      'optimizer.learning_rate', scorecard['config']['optimizer']['learning_rate'])])
  return observe(scorecard, files=files_with(MNIST1D, text), tmp_path=tmp_path, **kwargs)


def defects(scorecard) -> set[str]:
  return set(d.diagnose(scorecard, dataset='mnist1d', family='mlp')) & DEFECTS


def test_chance_is_the_log_of_the_task_outputs():
  assert d.chance_loss(card([], task='digits')) == pytest.approx(math.log(10))
  assert d.chance_loss(card([], task='charlm')) == pytest.approx(math.log(256))
  assert d.chance_loss(card([]) | {'num_outputs': 3}) == pytest.approx(math.log(3))
  assert math.isnan(d.chance_loss(card([]) | {'task': 'unknown'}))


def test_the_table_of_outputs_is_the_harness_tasks():
  from harness import datasets
  from experiments import charlm_transformer, digits_mlp
  for config in (digits_mlp.get_config(), charlm_transformer.get_config()):
    task = datasets.LOADERS[config.dataset.name](config.dataset)
    assert d.NUM_OUTPUTS[task.name] == task.num_outputs


@pytest.mark.parametrize('scorecard, named', [
    (LR_100X, {'step_too_large'}), (LR_10X, {'step_too_large'}),
    (LR_TINY, {'step_too_small'}), (SHORT, {'undertrained', 'underfitting'}),
    (SHIPPED, {'overfitting'}), (NARROW, {'underfitting'})])
def test_each_run_is_named_by_its_defect(scorecard, named):
  assert defects(scorecard) == named


def test_the_words_carry_the_evidence():
  text = d.diagnose_step_too_large(LR_100X)
  assert text.startswith('train loss 2.36 is still near chance level (2.3) after 3000 steps')
  assert 'gradient norms up to 1.63e+03' in text and "mean train loss of 69.7" in text
  assert text.endswith('the step size is too large (learning rate 1)')
  assert 'the loss rising and falling between evaluations' in d.diagnose_step_too_large(LR_10X)
  text = d.diagnose_step_too_small(LR_TINY)
  assert '2.41 at step 250 to 1.96 at step 3000 (85% of chance 2.3' in text
  assert text.endswith('the step size is too small (learning rate 1e-05)')
  assert d.diagnose_undertrained(SHORT).startswith('a single evaluation, at step 250: train '
                                                   'loss 1.17 is down from chance 2.3')
  assert '(52% of chance 2.3): the MLP underfits' in d.diagnose_underfitting(NARROW)


def test_a_run_at_chance_is_not_called_underfit_and_a_slow_one_is_not_fast():
  """The old rules said 'the MLP underfits' of a learning rate 100x too high."""
  assert d.diagnose_underfitting(LR_100X) is None
  assert d.diagnose_underfitting(LR_TINY) is not None  # high and close: silenced by diagnose
  calm = measured([(250, 2.31, 2.30), (500, 2.30, 2.30), (750, 2.30, 2.30)], [1.0] * 3, 1e-2)
  assert d.diagnose_step_too_large(calm) is None  # flat at chance, but nothing violent
  steep = measured([(250, 2.2, 2.2), (500, 1.0, 1.1), (750, 0.5, 0.6)], [2.0] * 3, 1e-3)
  assert d.diagnose_step_too_small(steep) is None  # fell fast: not a tiny step
  fitted = measured([(250, 0.2, 0.3)], [2.0] * 3, 1e-2)
  assert d.diagnose_undertrained(fitted) is None  # one point, but well below chance


@pytest.mark.parametrize('scorecard, remedy', [
    (LR_100X, 'lr_cut'), (LR_10X, 'lr_cut'), (LR_TINY, 'lr_boost'), (SHORT, 'steps_up')])
def test_the_named_remedy_comes_first_whatever_the_seed(scorecard, remedy, tmp_path: Path):
  for seed in range(5):
    proposal = HeuristicProposer(None, seed).propose(observed(scorecard, tmp_path))
    assert proposal.operator == remedy
    config = load_config(proposal.changes[MNIST1D], tmp_path)
    learning_rate = scorecard['config']['optimizer']['learning_rate']
    if remedy == 'lr_cut':
      assert learning_rate / 100 <= config.optimizer.learning_rate <= learning_rate / 10
    elif remedy == 'lr_boost':
      assert learning_rate * 10 <= config.optimizer.learning_rate <= learning_rate * 100
    else:
      assert config.train.steps > 250 and config.optimizer.learning_rate == learning_rate
    assert scorecard is not LR_100X or 'the step size is too large' in proposal.diagnosis


def test_after_one_try_the_remedy_competes_in_the_bandit(tmp_path: Path):
  first = HeuristicProposer(None, 0).propose(observed(LR_100X, tmp_path))
  later = [HeuristicProposer(None, seed).propose(observed(
      LR_100X, tmp_path, history=[rejected(first, 1)], trial=2)).operator for seed in range(12)]
  assert set(later) <= {'lr_cut', 'lr_down', 'clip', 'warmup', 'normalization_layernorm',
                        'to_cnn1d'}, later
  assert 'lr_cut' in later and len(set(later)) > 1, later


# --config.model.dropout=0.9: every hidden unit dropped nine times in ten; train loss stays
# high and close to val loss (constructed from the shape of such a run).
HEAVY_DROPOUT = measured([(250, 1.9, 1.7), (500, 1.8, 1.6), (750, 1.8, 1.6)], [2.0] * 3, 1e-2)
HEAVY_DROPOUT['config']['model']['dropout'] = 0.9


def test_far_too_strong_regularisation_is_named_and_cut_first(tmp_path: Path):
  assert d.diagnose_over_regularised(HEAVY_DROPOUT).endswith(
      'under dropout 0.9: the regularisation is far too strong (over-regularised)')
  assert d.diagnose_over_regularised(NARROW) is None  # high loss, no strong regulariser
  text = config_edit.apply_edits(files_with(MNIST1D)[MNIST1D],
                                 [ConfigEdit('model.dropout', 0.9)])
  for seed in range(3):
    proposal = HeuristicProposer(None, seed).propose(
        observe(HEAVY_DROPOUT, files=files_with(MNIST1D, text), tmp_path=tmp_path))
    assert proposal.operator == 'dropout_cut'
    assert 0.1 <= load_config(proposal.changes[MNIST1D], tmp_path).model.dropout <= 0.3
  # At chance with a bouncing loss the step size is suspect too; the config names dropout.
  at_chance = measured([(250, 2.33, 2.31), (500, 2.30, 2.30), (750, 2.32, 2.30)], [5.0] * 3,
                       1e-2)
  at_chance['config']['model']['dropout'] = 0.9
  assert {'step_too_large', 'over_regularised'} <= set(
      d.diagnose(at_chance, dataset='mnist1d', family='mlp'))
  proposal = HeuristicProposer(None, 0).propose(
      observe(at_chance, files=files_with(MNIST1D, text), tmp_path=tmp_path))
  assert proposal.operator == 'dropout_cut'
