"""The run's pooled seed noise: a floor under a look's spread that stops seeds agreeing by chance
(or exactly, in steps of one validation example) from passing a tiny gain, and never raises
false acceptance."""

import math

import numpy as np
import pytest

from agent.charter import Acceptance
from agent.judging import sequential
from agent.judging.decide import AcceptancePolicy, ArmResult, SeedResults, decide
from agent.judging.noise import RunNoise
from agent.judging.sequential import Design

# Accuracy on 400 validation examples moves in steps of 0.0025: three seeds at
# 0.9600/0.9625/0.9625 (issue 13), then three more like them.
INCUMBENT = (0.9600, 0.9625, 0.9625, 0.9600, 0.9625, 0.9625)
CANDIDATE = tuple(v + g for v, g in zip(INCUMBENT, (0.0025,) * 5 + (0.0,)))  # mean +0.0021
CONSTANT = tuple(v + 0.0025 for v in INCUMBENT)
# two looks of 3 seeds; the second spends all of false_accept 0.01
POLICY = AcceptancePolicy(Acceptance(false_accept=0.01, power=0.8, min_effect=0.001,
                                     max_seeds=6), group=3)
# paired gains of earlier candidates in this run, spread ~0.01 (MNIST-1D's seed noise)
EARLIER = RunNoise().seen([((0.95, 0.96, 0.94), (0.955, 0.945, 0.962))]).seen(
    [((0.95, 0.96, 0.94), (0.97, 0.952, 0.949)), ((0.93, 0.95, 0.96), (0.94, 0.95, 0.94))])


def _decide(candidate, pooled=0.0):
  return decide(SeedResults(ArmResult(INCUMBENT), ArmResult(candidate)), 'max', POLICY,
                pooled_variance=pooled)


@pytest.mark.parametrize('candidate', [CANDIDATE, CONSTANT])
def test_seeds_that_agree_by_chance_do_not_pass_a_tiny_gain_against_the_runs_noise(candidate):
  alone = _decide(candidate)
  assert alone.accepted  # the seeds at hand alone: a +0.002 gain "clears" their spread
  pooled = _decide(candidate, EARLIER.variance)
  assert not pooled.accepted and pooled.reason_code == 'undecided'  # at the cap of 6
  assert pooled.checks['pooled_std'] == pytest.approx(math.sqrt(EARLIER.variance))
  assert pooled.noise_floor == pytest.approx(math.sqrt(EARLIER.variance / 6))
  assert 'the run\'s pooled spread of paired gains' in pooled.rationale


def test_a_clear_win_still_passes_the_floor_and_the_floor_is_silent_when_it_does_not_bind():
  win = tuple(v + 0.05 + 0.004 * (i % 2) for i, v in enumerate(INCUMBENT))
  verdict = _decide(win, EARLIER.variance)
  assert verdict.accepted and verdict.reason_code == 'improved'
  noisy = tuple(v + g for v, g in zip(INCUMBENT, (0.03, -0.02, 0.04, -0.01, 0.05, 0.0)))
  assert _decide(noisy, 1e-6).rationale == _decide(noisy).rationale  # own spread is larger


def test_the_floor_only_raises_p_values_that_could_decide_whatever_its_value():
  """A wider spread pulls t toward 0: p-values below 1/2 (every share is) only grow."""
  rng = np.random.default_rng(0)
  for _ in range(200):
    gains = rng.normal(rng.normal(0, 0.01), rng.uniform(0.001, 0.02), 6)
    floor = rng.uniform(0, 0.03) ** 2
    for null, side in ((0.0, 'greater'), (0.02, 'less')):
      plain = sequential.one_sided_p(gains, null, side)
      floored = sequential.one_sided_p(gains, null, side, floor)
      assert floored >= plain - 1e-12 or plain > 0.5


def test_false_acceptance_with_the_floor_is_at_most_without_it_on_the_same_draws():
  design = Design(false_accept=0.01, power=0.8, min_effect=0.02, max_seeds=24)
  plain, _ = sequential.operating_characteristics(design, 0.0, 0.01, 20000,
                                                  np.random.default_rng(3))
  floored, seeds = sequential.operating_characteristics(design, 0.0, 0.01, 20000,
                                                        np.random.default_rng(3), 0.02**2)
  assert floored <= plain <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / 20000)
  assert seeds > 3


def test_non_finite_and_degenerate_inputs():
  with pytest.raises(ValueError, match='pooled_variance'):
    _decide(CANDIDATE, math.nan)
  with pytest.raises(ValueError, match='pooled_variance'):
    _decide(CANDIDATE, -1.0)
  assert _decide((math.nan,) + CANDIDATE[1:], EARLIER.variance).reason_code == 'nonfinite'
  assert RunNoise().variance == 0.0
  same = RunNoise().seen([((0.9, 0.8, 0.7), (0.9, 0.8, 0.7))])  # the same computation
  assert same.variances == ()
  assert RunNoise().seen([((0.9, 0.8), (0.9, math.nan))]).variances == ()
  assert RunNoise().seen([((0.9,), (0.95,))]).variances == ()
  assert RunNoise().seen([((0.9, 0.8), (0.9,))]).variances == ()


def test_a_comparison_counts_its_spread_about_its_own_mean_and_the_median_resists_outliers():
  gain = RunNoise().seen([((0.0, 0.0, 0.0), (0.10, 0.11, 0.12))])
  assert gain.variance == pytest.approx(1e-4)  # a real gain of 0.11 is not noise
  looks = RunNoise().seen([((0.0, 0.0, 0.0), (0.10, 0.11, 0.12)), ((0.0,) * 3, (0.13,) * 3)])
  assert looks.variance == pytest.approx(np.var([0.10, 0.11, 0.12, 0.13, 0.13, 0.13], ddof=1))
  broken = gain.seen([((0.9, 0.9, 0.9), (0.1, 0.9, 0.1))]).seen(
      [((0.0, 0.0, 0.0), (0.01, 0.02, 0.03))])
  assert broken.variance == pytest.approx(1e-4)  # one candidate at chance does not set it
