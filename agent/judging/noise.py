"""The run's pooled seed noise: how much paired gains vary from seed to seed in this run.

A candidate's own seeds say how noisy its paired gains are, but a few seeds can agree by
chance, or exactly (accuracy on a fixed validation set moves in steps of one example: three
seeds at 0.9600/0.9625/0.9625), and a tiny spread lets a tiny gain pass. Every candidate this
run judged before measured the same kind of noise on the same experiment, so their paired
gains give a floor under the spread a look tests against (agent.judging.sequential explains
why a floor cannot raise false acceptance).

The estimate: each earlier comparison (a candidate against the incumbent it was judged
against, all its looks' seeds together) gives the sample variance of its paired gains about
their own mean, so a real gain does not count as noise; the floor is the median of those
variances, so one broken candidate (chance accuracy on some seeds) does not set it for the
whole run. A median of sample variances sits a little below their mean (the chi-square is
skewed); it is a floor, so erring low only leaves more to the candidate's own spread.

It is computed from the journal alone (agent.recording.pooled_noise), the same way by the
loop (before a trial runs) and by `verify` (before it recomputes that trial's verdict), so a
resumed run and its audit agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

Pairs = Sequence[tuple[Sequence[float], Sequence[float]]]  # (incumbent, candidate) per look


@dataclasses.dataclass(frozen=True)
class RunNoise:
  """The paired-gain variance of each comparison seen so far, in the order seen."""
  variances: tuple[float, ...] = ()

  def seen(self, pairs: Pairs) -> RunNoise:
    """With one more comparison: its looks' (incumbent, candidate) per-seed values. One with
    fewer than 2 seeds, unequal arms, a non-finite value or no difference at all says nothing
    about seed noise."""
    gains = []
    for incumbent, candidate in pairs:
      if len(incumbent) != len(candidate):
        return self
      gains += [c - i for i, c in zip(incumbent, candidate)]
    values = np.asarray(gains, dtype=float)
    if values.size < 2 or not np.all(np.isfinite(values)) or not np.any(values):
      return self  # all gains exactly 0: the same computation, which measures no noise
    return RunNoise(self.variances + (float(values.var(ddof=1)),))

  @property
  def variance(self) -> float:
    """The floor under a look's paired-gain variance: 0 before any comparison."""
    return float(np.median(self.variances)) if self.variances else 0.0
