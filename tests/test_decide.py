"""The acceptance rule on constructed numbers: real wins pass once the looks decide, noise and
costly wins do not, an undecided candidate asks for more seeds."""

import math

import numpy as np
import pytest
from scipy import stats

from agent.charter import Tradeoffs
from agent.judging.decide import (AcceptancePolicy, ArmResult, SeedResults, decide, noise_floor,
                                  paired_test, pool, should_prune)

INCUMBENT = (0.800, 0.810, 0.805)  # std 0.005 -> noise floor 2 * 0.005 * sqrt(2/3) = 0.00816
POLICY = AcceptancePolicy()  # false_accept 0.01, power 0.8, min_effect 0.02, 24 seeds in 3s


def results(candidate, incumbent=INCUMBENT, *, metric='accuracy', time=(100.0, 100.0),
            memory=(0.0, 0.0), latency=(0.0, 0.0), nonfinite=False) -> SeedResults:
  """incumbent / candidate costs given as (incumbent, candidate) pairs."""
  return SeedResults(
      ArmResult(incumbent, time[0], memory[0], latency[0]),
      ArmResult(candidate, time[1], memory[1], latency[1], nonfinite), metric)


def shifted(gains, base=INCUMBENT):
  return tuple(b + g for b, g in zip(base, gains))


def test_noise_floor_is_the_standard_error_of_a_difference_of_means():
  assert noise_floor(INCUMBENT, 2.0) == pytest.approx(2.0 * 0.005 * math.sqrt(2 / 3))
  assert noise_floor([1.0, 1.0, 1.0, 1.0], 2.0) == 0.0
  assert noise_floor([1.0, 1.0], 2.0, min_std=0.1) == pytest.approx(0.2)
  with pytest.raises(ValueError):
    noise_floor([1.0], 2.0)


def test_paired_test_matches_scipy_and_orients_gains():
  candidate = (0.83, 0.82, 0.81)
  test = paired_test(INCUMBENT, candidate, 'max')
  expected = stats.ttest_rel(candidate, INCUMBENT, alternative='greater')
  assert test.k == 3
  assert test.t == pytest.approx(expected.statistic)
  assert test.p_one_sided == pytest.approx(expected.pvalue)
  flipped = paired_test(INCUMBENT, candidate, 'min')
  assert flipped.mean_gain == pytest.approx(-test.mean_gain)
  assert flipped.p_one_sided == pytest.approx(1 - test.p_one_sided)


def test_paired_test_with_zero_variance():
  assert paired_test([1.0, 2.0], [1.5, 2.5], 'max').p_one_sided == 0.0
  assert paired_test([1.0, 2.0], [0.5, 1.5], 'max').p_one_sided == 1.0
  same = paired_test([1.0, 2.0], [1.0, 2.0], 'max')
  assert (same.mean_gain, same.std_gain, same.t, same.p_one_sided) == (0.0, 0.0, 0.0, 1.0)


def test_a_clear_win_needs_fresh_seeds_then_is_accepted():
  screen = results(shifted([0.030, 0.032, 0.028]), time=(100.0, 110.0), memory=(500, 600))
  first = decide(screen, 'max', POLICY)
  assert not first.accepted and first.undecided and first.reason_code == 'more_seeds'
  assert first.rationale.startswith('Undecided: mean gain +0.03 accuracy over 3 paired seeds '
                                    '(look 1 of 8): neither test decides')
  fresh_incumbent = (0.795, 0.812, 0.803)
  fresh = results(shifted([0.027, 0.031, 0.030], fresh_incumbent), fresh_incumbent,
                  time=(120.0, 130.0), memory=(500, 700))
  pooled = pool([screen, fresh])
  assert pooled.fresh_from == 3 and len(pooled.candidate.per_seed) == 6
  assert pooled.candidate.train_seconds == 120.0 and pooled.candidate.peak_memory_mb == 700
  verdict = decide(pooled, 'max', POLICY)
  assert verdict.accepted and verdict.reason_code == 'improved'
  gains = np.array([0.030, 0.032, 0.028, 0.027, 0.031, 0.030])
  assert verdict.gain == pytest.approx(gains.mean())
  assert verdict.noise_floor == pytest.approx(gains.std(ddof=1) / math.sqrt(6))
  assert verdict.p_value == pytest.approx(stats.ttest_1samp(gains, 0, alternative='greater').pvalue)
  assert verdict.p_value < verdict.checks['accept_share'] == pytest.approx(0.01 / 49)
  assert '6 paired seeds (look 2 of 8, 3 screen + 3 fresh) is better' in verdict.rationale
  assert verdict.checks['n'] == 6 and verdict.checks['outcome'] == 'accept'


def test_pool_takes_single_looks_on_one_metric():
  screen = results(shifted([0.030, 0.032, 0.028]))
  with pytest.raises(ValueError):
    pool([pool([screen, screen]), screen])
  with pytest.raises(ValueError):
    pool([screen, results(INCUMBENT, metric='loss')])


def test_a_noise_sized_win_is_futile_at_the_screen():
  verdict = decide(results(shifted([0.005, 0.005, 0.004])), 'max', POLICY)
  assert not verdict.accepted and verdict.reason_code == 'futile'
  assert verdict.rationale.startswith('Rejected: mean gain +0.00467 accuracy over 3 paired seeds '
                                      '(look 1 of 8) is credibly below the smallest gain worth '
                                      'keeping')
  assert 'below min_effect 0.02: p = ' in verdict.rationale


def test_identical_candidate_is_rejected():
  verdict = decide(results(INCUMBENT), 'max', POLICY)
  assert not verdict.accepted and verdict.reason_code == 'futile'
  assert verdict.gain == 0.0 and verdict.p_value == 1.0


def test_a_consistent_small_loss_is_worse_and_not_a_tie_even_when_it_deletes_code():
  verdict = decide(results(shifted([-0.004, -0.0041, -0.0039])), 'max', POLICY, diff_lines=-50)
  assert not verdict.accepted and verdict.reason_code == 'worse'


def test_neither_decided_at_the_cap_is_rejected_as_undecided():
  gains = np.tile([0.06, -0.04, 0.01, 0.05, -0.03, 0.01], 4)  # mean 0.01, 24 seeds
  incumbent = np.full(24, 0.8)
  verdict = decide(results(tuple(incumbent + gains), tuple(incumbent)), 'max', POLICY)
  assert not verdict.accepted and verdict.reason_code == 'undecided'
  assert 'still undecided at the cap of 24 seeds' in verdict.rationale
  before_cap = results(tuple(incumbent[:21] + gains[:21]), tuple(incumbent[:21]))
  assert decide(before_cap, 'max', POLICY).undecided


@pytest.mark.parametrize('seeds', [4, 27])
def test_seeds_that_are_not_a_look_of_the_design_are_refused(seeds):
  with pytest.raises(ValueError, match='is not a look of this design'):
    decide(results((0.9,) * seeds, (0.8,) * seeds), 'max', POLICY)


WIN6 = (0.030, 0.032, 0.028, 0.027, 0.031, 0.030)
SMALL6 = (0.009, 0.0095, 0.0085, 0.009, 0.0092, 0.0088)
INCUMBENT6 = INCUMBENT * 2


def test_small_win_that_doubles_train_time_is_rejected_and_a_large_one_passes():
  small = decide(results(shifted(SMALL6, INCUMBENT6), INCUMBENT6, time=(100.0, 200.0)), 'max',
                 POLICY)
  assert not small.accepted and small.reason_code == 'train_time'
  assert 'training takes 2.00x as long' in small.rationale and 'at least 0.01' in small.rationale
  large = decide(results(shifted(WIN6, INCUMBENT6), INCUMBENT6, time=(100.0, 200.0)), 'max',
                 POLICY)
  assert large.accepted and large.reason_code == 'improved'
  assert 'train time 2.00x' in large.rationale


def test_memory_cap_and_latency_ratio():
  win, small = shifted(WIN6, INCUMBENT6), shifted(SMALL6, INCUMBENT6)
  capped = AcceptancePolicy(tradeoffs=Tradeoffs(max_memory_mb=1000))
  assert decide(results(win, INCUMBENT6, memory=(800, 1500)), 'max', capped).reason_code == 'memory'
  assert decide(results(win, INCUMBENT6, memory=(800, 900)), 'max', capped).accepted
  slow = decide(results(small, INCUMBENT6, latency=(10.0, 30.0)), 'max', POLICY)
  assert slow.reason_code == 'latency' and '3.00x' in slow.rationale
  assert decide(results(win, INCUMBENT6, latency=(10.0, 30.0)), 'max', POLICY).accepted


def test_an_undecided_candidate_is_not_judged_on_its_costs_yet():
  verdict = decide(results(shifted([0.030, 0.032, 0.028]), time=(100.0, 300.0)), 'max', POLICY)
  assert verdict.undecided


def test_non_finite_rejects():
  nan = decide(results((0.9, math.nan, 0.9)), 'max', POLICY)
  assert not nan.accepted and nan.reason_code == 'nonfinite'
  flagged = decide(results(shifted(WIN6, INCUMBENT6), INCUMBENT6, nonfinite=True), 'max', POLICY)
  assert flagged.reason_code == 'nonfinite'
  tolerant = AcceptancePolicy(tradeoffs=Tradeoffs(reject_nonfinite=False))
  assert decide(results(shifted(WIN6, INCUMBENT6), INCUMBENT6, nonfinite=True), 'max',
                tolerant).accepted
  with pytest.raises(ValueError):
    decide(results(INCUMBENT, incumbent=(0.8, math.inf, 0.8)), 'max', POLICY)


def test_tie_that_deletes_code_is_a_simplification():
  tie = shifted([0.001, -0.002, 0.0005])
  verdict = decide(results(tie), 'max', POLICY, diff_lines=-12)
  assert verdict.accepted and verdict.reason_code == 'simplification'
  assert 'removes 12 more lines than it adds' in verdict.rationale
  assert 'is a statistical tie (within +/-0.02' in verdict.rationale
  against_start = decide(results(tie), 'max', POLICY, diff_lines=30, incumbent_diff_lines=40)
  assert against_start.reason_code == 'simplification'
  assert decide(results(tie), 'max', POLICY, diff_lines=5).reason_code == 'futile'
  slower = decide(results(tie, time=(100.0, 200.0)), 'max', POLICY, diff_lines=-12)
  assert slower.reason_code == 'train_time'


def test_tie_that_trains_much_faster_is_an_efficiency_win():
  verdict = decide(results(shifted([0.001, -0.002, 0.0005]), time=(100.0, 70.0)), 'max', POLICY)
  assert verdict.accepted and verdict.reason_code == 'efficiency'
  assert '0.70x' in verdict.rationale


def test_min_direction_bits_per_byte():
  incumbent = (1.500, 1.510, 1.505) * 2
  better = decide(results((1.470, 1.478, 1.476, 1.471, 1.479, 1.475), incumbent,
                          metric='val_bpb'), 'min', POLICY)
  assert better.accepted and better.gain == pytest.approx(0.0302, abs=1e-4)
  assert 'mean gain +0.0302 val_bpb (lower is better)' in better.rationale
  worse = decide(results((1.530, 1.541, 1.534), incumbent[:3], metric='val_bpb'), 'min', POLICY)
  assert not worse.accepted and worse.reason_code == 'worse'


def test_a_batch_member_is_tested_at_its_share_of_the_rate():
  batch = POLICY.batch(4)
  assert batch.acceptance.false_accept == pytest.approx(0.0025)
  assert batch.design.shares(2)[0] == pytest.approx(POLICY.design.shares(2)[0] / 4)
  assert batch.design.shares(2)[1] == POLICY.design.shares(2)[1]  # futility is not selection


def test_the_policy_takes_the_charters_seeds_per_look():
  from agent.charter import Charter, Trial
  assert AcceptancePolicy.of(Charter(trial=Trial(seeds=4))).design.group == 4


def _curve(values, start=100, every=100):
  return [(start + i * every, v) for i, v in enumerate(values)]


INCUMBENT_CURVE = _curve([0.30, 0.50, 0.60, 0.66, 0.70, 0.73, 0.75, 0.77, 0.78, 0.79])


def test_prune_a_clearly_losing_curve():
  losing = _curve([0.25, 0.40, 0.48, 0.52, 0.55])
  decision = should_prune(INCUMBENT_CURVE, losing, 1000, 'max', noise=0.01)
  assert decision.prune and decision.at_step == 500
  assert 'trails the incumbent by 0.14 and 0.15 at steps 400 and 500' in decision.reason


def test_do_not_prune_a_close_curve_or_one_bad_step():
  close = _curve([0.29, 0.49, 0.59, 0.645, 0.69])
  assert not should_prune(INCUMBENT_CURVE, close, 1000, 'max', noise=0.01).prune
  one_dip = _curve([0.30, 0.50, 0.60, 0.50, 0.70])
  assert not should_prune(INCUMBENT_CURVE, one_dip, 1000, 'max', noise=0.01).prune


def test_do_not_prune_before_min_fraction():
  early = _curve([0.10, 0.10, 0.10])  # steps 100-300: only step 300 is past 30%
  decision = should_prune(INCUMBENT_CURVE, early, 1000, 'max', noise=0.01)
  assert not decision.prune and decision.at_step is None
  assert 'fewer than two' in decision.reason


def test_prune_in_min_direction_and_on_non_finite():
  incumbent = _curve([3.0, 2.5, 2.2, 2.0, 1.9])
  assert should_prune(incumbent, _curve([3.2, 2.9, 2.8, 2.7, 2.6]), 500, 'min', 0.02).prune
  assert not should_prune(incumbent, _curve([2.9, 2.4, 2.1, 1.9, 1.8]), 500, 'min', 0.02).prune
  diverged = _curve([3.0, 2.5, math.nan, math.inf, math.nan])
  assert should_prune(incumbent, diverged, 500, 'min', 0.02).prune


def test_exact_ties_survive_zero_noise():
  assert not should_prune(INCUMBENT_CURVE, INCUMBENT_CURVE, 1000, 'max', noise=0.0).prune


def test_the_looks_are_groups_of_the_runs_seeds_not_the_charters():
  """`--seeds=2` overrides the charter's [trial] seeds: each look adds two seeds."""
  from agent.charter import Charter
  assert AcceptancePolicy.of(Charter(), 2).design.group == 2
  assert AcceptancePolicy.of(Charter()).design.group == Charter().trial.seeds


def test_near_the_top_min_effect_shrinks_to_a_share_of_the_remaining_error():
  """At 97% a gain of a point is a third of what is left: futile against the absolute 0.02,
  worth more seeds (then kept) against a quarter of the error; at 80% nothing changes."""
  import dataclasses
  from agent.charter import Acceptance
  top = (0.970, 0.972, 0.968)
  screen = results(shifted([0.010, 0.011, 0.009], top), top)
  assert POLICY.acceptance.min_effect_of_error == 0.25  # the charter's default
  absolute = dataclasses.replace(POLICY, acceptance=Acceptance(min_effect_of_error=0.0))
  assert decide(screen, 'max', absolute).reason_code == 'futile'
  relative = POLICY
  assert relative.at(screen, 'max').acceptance.min_effect == pytest.approx(0.25 * 0.03)
  first = decide(screen, 'max', relative)
  assert first.undecided and 'below min_effect 0.0075' in first.rationale
  fresh_top = (0.969, 0.971, 0.990)
  pooled = pool([screen, results(shifted([0.011, 0.010, 0.010], fresh_top), fresh_top),
                 results(shifted([0.010, 0.011, 0.009], top), top)])
  assert relative.at(pooled, 'max').acceptance.min_effect == pytest.approx(0.0075)  # the screen's
  assert decide(pooled, 'max', relative).accepted
  low = results(shifted([0.005, 0.005, 0.004]))  # at 80%: a quarter of 20 points is above 0.02
  assert relative.at(low, 'max') is relative
  assert decide(low, 'max', relative).reason_code == 'futile'
