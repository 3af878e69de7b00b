"""Cost-aware proposals (issue 13): a candidate's training time predicted from the
incumbent's costs and the edit, what cannot finish in the time one trial may take is not
proposed (a family switch is narrowed until it fits), batches are capped, and a trial that
cost too much spends its operator.

The costs are those of real 3-seed runs on the 2-core CPU box (`python -m harness.main
--seeds=3`): the shipped digits MLP trained in 0.47 s, its switch to a 2-D CNN of 32
channels in 52.5 s; no training runs here.
"""

import dataclasses
from pathlib import Path

import pytest

from agent.charter import Charter
from agent.editing.config_edit import ConfigEdit
from agent.proposing import cost, heuristic as h, operators
from agent.proposing.heuristic import HeuristicProposer
from agent.recording.state import TrialSummary
from tests.test_diagnosis import LR_100X, observed
from tests.test_heuristic_proposer import card, load_config, observe

DIGITS = 'experiments/digits_mlp.py'
FAMILIES = operators.run_families({})


def defaults(family: str):
  return operators.constructor({}, FAMILIES, family)[1]


def timed(scorecard: dict, train_seconds: float, compile_seconds: float, p50_ms: float) -> dict:
  return scorecard | {'train_seconds': train_seconds, 'compile_seconds': compile_seconds,
                      'step_latency_ms': {'p50': p50_ms, 'p95': p50_ms}}


# The shipped digits MLP as measured: overfits; an image under an MLP.
DIGITS_CARD = timed(card([(100, 0.943, 0.37), (500, 0.056, 0.162), (1000, 0.016, 0.162)],
                         task='digits', val_metric=0.96), 0.47, 2.91, 0.387)
DIGITS_VALUES = {'model.name': 'mlp', 'model.width': 64, 'model.depth': 1,
                 'train.steps': 1000, 'train.batch_size': 64}


def to_cnn2d(channels: int) -> tuple[ConfigEdit, ...]:
  return (ConfigEdit('model.name', 'cnn2d'), ConfigEdit('model.width', op='remove'),
          ConfigEdit('model.channels', channels), ConfigEdit('model.depth', 3),
          ConfigEdit('model.kernel_size', 5), ConfigEdit('model.pooling', 'flatten'))


def test_multiply_accumulates_are_the_models_weights_per_position():
  """An MLP's count is its kernels' size (the MNIST-1D MLP: 15210 parameters, 210 of them
  biases); a convolution's, its kernels' times the positions they slide over."""
  mlp = {'width': 100, 'depth': 2}.get
  assert cost.macs_per_example('mlp', mlp, (40, 1), 10) == 15210 - 210
  conv = {'channels': 16, 'depth': 3, 'kernel_size': 5, 'pooling': 'flatten'}.get
  kernels = 5 * (1 * 16 + 2 * 16 * 16)
  assert cost.macs_per_example('cnn1d', conv, (40, 1), 10) == 40 * kernels + 40 * 16 * 10
  assert cost.macs_per_example('cnn2d', conv, (8, 8, 1), 10) == (
      64 * 5 * (1 * 16 + 2 * 16 * 16) * 5 + 64 * 16 * 10)
  assert cost.macs_per_example('unknown', mlp, (40, 1), 10) is None
  assert cost.macs_per_example('mlp', {'width': 100}.get, (40, 1), 10) is None


def test_a_forecast_scales_the_incumbents_time_by_the_work():
  forecast = cost.Forecast.of(DIGITS_CARD, DIGITS_VALUES, defaults, 600.0)
  assert forecast.overhead_seconds == pytest.approx(2.91 + cost.STARTUP_SECONDS)
  assert forecast.estimate().ratio == pytest.approx(1.0)  # a learning rate costs nothing
  longer = forecast.estimate((ConfigEdit('train.steps', 2000),))
  assert longer.ratio == pytest.approx(2.0) and longer.train_seconds == pytest.approx(0.94)
  wider = forecast.estimate((ConfigEdit('model.width', 128),)).ratio
  assert 1.2 < wider < 2.0  # the work doubles; the fixed part of a step does not
  cnn = forecast.estimate(to_cnn2d(32))
  assert 52.5 / 2 < cnn.train_seconds < 52.5 * 2  # measured: 52.5 s
  assert forecast.estimate(to_cnn2d(8)).train_seconds < cnn.train_seconds / 5
  assert cost.Forecast.of(card([]), DIGITS_VALUES, defaults, 600.0) is None  # no timings


def test_what_one_trial_may_take():
  charter = Charter()
  timeout = charter.trial.timeout_minutes * 60
  assert cost.trial_limit(charter, None) == timeout
  assert cost.trial_limit(charter, 25.0) == 25.0 and cost.trial_limit(charter, 1e9) == timeout
  assert cost.trial_limit(charter, -3.0) == 0.0
  forecast = cost.Forecast.of(DIGITS_CARD, DIGITS_VALUES, defaults, 25.0)
  assert forecast.fits(forecast.estimate()) and not forecast.fits(forecast.estimate(to_cnn2d(32)))
  assert forecast.share(forecast.estimate(to_cnn2d(32))) == 1.0
  assert forecast.members(forecast.estimate()) == int((25.0 - 2.91 - 5.0) / 0.47)


def digits_proposals(tmp_path: Path, budget_left: float | None, seeds=range(12)):
  return [HeuristicProposer(None, seed).propose(observe(
      DIGITS_CARD, experiment=DIGITS, tmp_path=tmp_path, trial=1,
      budget_left=budget_left)) for seed in seeds]


def test_a_family_switch_that_cannot_finish_is_narrowed_or_not_proposed(tmp_path: Path):
  """The digits budget was spent on 2-D CNN timeouts: now a switch comes at the channels
  that fit in the time left, or not at all."""
  def channels(proposals):
    return [load_config(p.changes[DIGITS], tmp_path).model.channels for p in proposals
            if p.operator == 'to_cnn2d']
  roomy = channels(digits_proposals(tmp_path, None))
  assert roomy and set(roomy) <= {16, 32}
  tight = digits_proposals(tmp_path, 20.0)
  assert channels(tight) and set(channels(tight)) == {8}
  assert all('of the 20 s one may take now' in p.expected_effect for p in tight)
  assert 'to_cnn2d' not in {p.operator for p in digits_proposals(tmp_path, 10.0)}
  with pytest.raises(h.NoProposal, match='does not fit in 5 s'):
    digits_proposals(tmp_path, 5.0, seeds=[0])


def test_a_trial_that_cost_too_much_spends_its_operator(tmp_path: Path):
  first = digits_proposals(tmp_path, None, seeds=[0])[0]
  assert first.operator == 'to_cnn2d'

  def summary(code: str, accepted: bool = False) -> TrialSummary:
    return TrialSummary(1, 'to_cnn2d', first.hypothesis, accepted, code, None,
                        dict(first.changes))
  for code in ('timeout', 'killed', 'train_time', 'latency', 'memory'):
    assert h._uses_on_incumbent([summary(code)])['to_cnn2d'] == h.TRIES_PER_INCUMBENT
  assert h._uses_on_incumbent([summary('no_gain')])['to_cnn2d'] == 1
  after = [HeuristicProposer(None, seed).propose(observe(
      DIGITS_CARD, experiment=DIGITS, tmp_path=tmp_path, trial=2,
      history=[summary('timeout')])).operator for seed in range(8)]
  assert 'to_cnn2d' not in after
  # On a later incumbent it is back, with the failure counted against it for the run.
  history = [summary('timeout'), dataclasses.replace(summary('accepted', True),
                                                     operator='wd_up')]
  assert h._cost_failures(history) == {'to_cnn2d': 1}
  assert h.prior(0.9, 1)[1] == h.prior(0.9)[1] + h.COST_FAILURE_WEIGHT


def test_a_batch_holds_only_the_members_that_fit(tmp_path: Path):
  scorecard = timed(LR_100X, 100.0, 2.0, 1.0)
  proposer = HeuristicProposer(None, 0)
  assert len(proposer.propose_batch(observed(scorecard, tmp_path), 4)) == 4
  batch = proposer.propose_batch(observed(scorecard, tmp_path, budget_left=220.0), 4)
  assert [p.operator for p in batch] == ['lr_cut', 'lr_cut']  # (220 - 7) // 100 members
