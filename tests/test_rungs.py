"""Successive halving in a batch (agent.judging.rungs): the rule on constructed numbers, and
what `verify` does with a rung whose record disagrees with its own numbers."""

from __future__ import annotations

import math

import pytest

from agent.judging import rungs
from agent.recording import records
from agent.recording.audit import Inconsistency, _rung_holds

INCUMBENT = [0.80, 0.82, 0.81]


def _decide(scores, keep=0.5, margin=0.05, direction='max'):
  return rungs.decide(20, 60, {0: INCUMBENT, **scores}, 0, direction, keep, margin)


def test_rungs_sit_on_evaluation_steps_before_the_end():
  assert rungs.rung_steps([20, 40, 60], 60, (0.25, 0.5)) == (20, 40)
  assert rungs.rung_steps([20, 40, 60], 60, (0.25, 0.3)) == (20,)  # one step, not two
  assert rungs.rung_steps([60], 60, (0.25, 0.5)) == ()  # no evaluation before the end
  assert rungs.rung_steps([10, 20, 30], 30, (0.9,)) == ()  # the last step saves nothing


def test_the_leading_half_goes_on_ranked_by_paired_gain_over_the_incumbent():
  rung = _decide({1: [0.81, 0.83, 0.82], 2: [0.85, 0.86, 0.84], 3: [0.79, 0.82, 0.80],
                  4: [0.82, 0.84, 0.83]})
  assert rung.kept == (2, 4) and rung.stopped == (1, 3)
  assert rung.gains[2] == pytest.approx(0.04) and rung.gains[3] == pytest.approx(-0.02 / 3)
  assert 'ranked 4 of 4' in rung.reason(3) and 'only the top 2 train on' in rung.reason(3)


def test_minimisation_and_at_least_one_goes_on():
  rung = _decide({1: [0.7, 0.7, 0.7], 2: [0.9, 0.9, 0.9]}, keep=0.1, direction='min')
  assert rung.kept == (1,) and rung.stopped == (2,)  # lower is better here


def test_a_clear_loser_stops_even_when_it_ranks_first():
  rung = _decide({1: [0.60, 0.61, 0.62], 2: [0.50, 0.52, 0.51]}, margin=0.05)
  assert rung.kept == () and rung.stopped == (1, 2)
  assert 'trails the incumbent by more than 0.05' in rung.reason(1)


def test_a_non_finite_score_ranks_last_and_ties_keep_the_lower_index():
  rung = _decide({1: [math.nan, 0.9, 0.9], 2: [0.81, 0.82, 0.81], 3: [0.81, 0.82, 0.81]},
                 keep=0.3)
  assert rung.gains[1] == -math.inf
  assert rung.kept == (2,) and rung.stopped == (1, 3)


def test_the_incumbent_must_be_scored():
  with pytest.raises(ValueError, match='incumbent member 0 has no score'):
    rungs.decide(20, 60, {1: INCUMBENT}, 0, 'max', 0.5, 0.05)


def test_verify_redoes_a_rung_from_its_record_and_catches_an_edited_decision():
  rung = _decide({1: [0.81, 0.83, 0.82], 2: [0.85, 0.86, 0.84], 3: [math.nan, 0.8, 0.8]})
  recorded = records.RungDecided.of(rung, [7, 8, 9])
  assert recorded.kept == [7, 8] and recorded.stopped == [9] and recorded.gains['9'] == -math.inf
  stored = records.parse('rung', records.RungDecided.from_record(
      recorded.to_record()).to_record())
  _rung_holds(stored)
  forged = records.RungDecided(**{**stored.to_record(), 'kept': [8], 'stopped': [7, 9]})
  with pytest.raises(Inconsistency, match='kept'):
    _rung_holds(forged)


def test_the_benchmarks_in_process_batch_stops_members_at_rungs_as_the_judge_would(tmp_path):
  """benchmarks.trials.execute_batch applies the same rule in process: the incumbent (member
  0) and the leading candidate train on, the trailing one stops at step 10 of 30."""
  from agent.safety.executor import TrialSpec
  from benchmarks import trials
  experiment = 'experiments/digits_mlp.py'
  repo = trials.make_workspace(tmp_path / 'ws', experiment,
                               {'steps': 30, 'eval_every': 10, 'checkpoint_every': 30})
  members = ({}, {'optimizer.learning_rate': 1e-5}, {'optimizer.learning_rate': 3e-3})
  rule = rungs.Rule((10, 20), 30, 0, 'max', 0.5, 1.0)
  spec = TrialSpec(worktree=repo, experiment=experiment, workdir=tmp_path / 'batch', seeds=2,
                   first_seed=0, timeout_s=300, members=members, rungs=rule.steps)
  incumbent, slow, fast = trials.execute_batch(spec, rule=rule)
  first, second = fast.rungs
  assert first.step == 10 and first.kept == (2,) and first.stopped == (1,)
  assert second.step == 20 and second.kept == (2,)
  assert slow.status == 'pruned' and slow.pruned_at_step == 10 and 'ranked 2 of 2' in slow.reason
  assert incumbent.status == 'pruned' and incumbent.pruned_at_step == 20
  assert fast.status == 'ok' and fast.scorecard['steps_completed'] == 30
