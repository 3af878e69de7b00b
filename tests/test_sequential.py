"""The group-sequential design's error rates, by Monte Carlo on simulated paired gains.

Seed noise of the size seen on MNIST-1D: a per-seed spread of 0.014-0.021 accuracy, so paired
gains of an edit whose seeds are independent of the incumbent's spread sqrt(2) times that
(0.02-0.03). Thousands of simulated candidates per case, vectorised over every look.
"""

import math

import numpy as np
import pytest

from agent.judging import sequential
from agent.judging.sequential import Design

DRAWS = 20000


def _mc_bound(rate: float) -> float:
  """rate + 3 Monte Carlo standard errors: a bound an honest design stays under."""
  return rate + 3 * math.sqrt(rate * (1 - rate) / DRAWS)


def test_the_shares_spend_exactly_the_rates_over_the_looks():
  design = Design(false_accept=0.01, power=0.8, max_seeds=24, group=3)
  shares = [design.shares(j) for j in range(1, design.looks + 1)]
  assert design.looks == 8
  assert sum(a for a, _ in shares) == pytest.approx(0.01)
  assert sum(b for _, b in shares) == pytest.approx(0.2)
  assert shares[0] == (0.0, pytest.approx(0.2 / 8))  # never kept on the screen's seeds alone
  assert shares[1][0] == pytest.approx(0.01 / 49)
  assert [a for a, _ in shares] == sorted(a for a, _ in shares)  # saved for later looks
  with pytest.raises(ValueError):
    design.shares(9)
  assert Design(max_seeds=2, group=3).looks == 1  # the screen alone, never fewer
  assert Design(max_seeds=2, group=3).shares(1) == (0.01, pytest.approx(0.2))


@pytest.mark.parametrize('max_seeds', [6, 24, 60])
@pytest.mark.parametrize('sigma', [0.02, 0.03])
def test_null_candidates_are_kept_at_most_false_accept_however_many_looks(max_seeds, sigma):
  design = Design(false_accept=0.01, power=0.8, min_effect=0.02, max_seeds=max_seeds)
  rate, _ = sequential.operating_characteristics(design, 0.0, sigma, DRAWS,
                                                 np.random.default_rng(max_seeds))
  assert rate <= _mc_bound(0.01)


def test_a_gain_of_min_effect_is_kept_with_the_declared_power_and_few_seeds():
  """At a spread of min_effect (MNIST-1D: 0.02 per-seed std, a null edit's gains ~0.03), the
  design keeps a gain of min_effect at least `power` of the time within the cap."""
  design = Design(false_accept=0.01, power=0.8, min_effect=0.03, max_seeds=24)
  rng = np.random.default_rng(1)
  power, seeds_kept = sequential.operating_characteristics(design, 0.03, 0.03, DRAWS, rng)
  _, seeds_null = sequential.operating_characteristics(design, 0.0, 0.03, DRAWS, rng)
  _, seeds_worse = sequential.operating_characteristics(design, -0.02, 0.03, DRAWS, rng)
  assert power >= 0.8
  assert seeds_worse < seeds_null < seeds_kept < 24  # decided early where it is clear
  assert seeds_worse < 6  # a loser costs about one look beyond the screen


def test_the_vectorised_simulation_decides_as_look_does():
  design = Design(min_effect=0.02, max_seeds=12)
  rng = np.random.default_rng(5)
  for _ in range(40):
    gains = rng.normal(0.015, 0.02, 12)
    outcome = next(o for n in (3, 6, 9, 12)
                   if (o := sequential.look(gains[:n], design)).outcome != 'continue')
    accepted, seeds = sequential.operating_characteristics(
        design, 0.0, 1.0, 1, _Replay(gains))
    assert (accepted == 1.0) == (outcome.outcome == 'accept') and seeds == outcome.n


class _Replay:
  """A generator stand-in that hands back fixed gains (effect 0, sigma 1)."""

  def __init__(self, gains):
    self.gains = gains

  def normal(self, loc, scale, size):
    return self.gains.reshape(size) * scale + loc
