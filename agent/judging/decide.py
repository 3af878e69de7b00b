"""The acceptance rule: keep a candidate only if it beats the incumbent by more than seed noise.

Pure functions over numbers, so the rule is testable on constructed data and auditable.

Why paired seeds: the incumbent and the candidate run on the same seeds (init, data order), so
per-seed differences cancel much of the seed effect. Why two bars, a noise floor and a t-test:
with K = 3 seeds the sample spread of the gains can be small by chance, so a consistent but
tiny gain would pass a t-test alone; the noise floor asks for a gain that is large compared
with the seed-to-seed spread of the metric itself. Why a confirm stage: when the loop tries
many candidates, some pass the screen by luck (the many-comparisons problem); a screen winner
is re-run with the incumbent on K fresh seeds, must gain again there, and is judged on the
pooled 2K pairs (`pool`, then `decide(..., stage='confirm')`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats

from agent import charter

Direction = Literal['max', 'min']
Stage = Literal['screen', 'confirm']
Values = Sequence[float]


@dataclasses.dataclass(frozen=True)
class ArmResult:
  """One side of a comparison: per-seed metric values and costs of one K-seed run (0 = unknown)."""
  per_seed: tuple[float, ...]
  train_seconds: float = 0.0
  peak_memory_mb: float = 0.0
  step_latency_ms: float = 0.0  # p50
  nonfinite: bool = False
  wall_seconds: float = 0.0  # the trial's lifetime as the trusted parent measured it

  def __post_init__(self) -> None:
    object.__setattr__(self, 'per_seed', tuple(float(v) for v in self.per_seed))


@dataclasses.dataclass(frozen=True)
class SeedResults:
  """Incumbent and candidate on the SAME seeds, paired by position.

  fresh_from is set by `pool`: the index of the first pair from the confirm stage's fresh seeds.
  """
  incumbent: ArmResult
  candidate: ArmResult
  metric: str = 'metric'
  fresh_from: int = 0

  def __post_init__(self) -> None:
    if len(self.incumbent.per_seed) != len(self.candidate.per_seed):
      raise ValueError('incumbent and candidate must be measured on the same seeds')


@dataclasses.dataclass(frozen=True)
class AcceptancePolicy:
  """The charter's acceptance terms, as its own [acceptance] and [tradeoffs] settings: metric
  units for gains, ratios are candidate / incumbent."""
  acceptance: charter.Acceptance = charter.Acceptance()
  tradeoffs: charter.Tradeoffs = charter.Tradeoffs()
  efficiency_time_ratio: float = 0.8  # a tie this much cheaper to train is an efficiency win

  @classmethod
  def of(cls, settings: charter.Charter) -> AcceptancePolicy:
    return cls(settings.acceptance, settings.tradeoffs)


@dataclasses.dataclass(frozen=True)
class PairedTest:
  mean_gain: float
  std_gain: float
  t: float
  p_one_sided: float
  k: int


@dataclasses.dataclass(frozen=True)
class Verdict:
  accepted: bool
  reason_code: str
  rationale: str
  gain: float
  noise_floor: float
  p_value: float
  checks: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PruneDecision:
  prune: bool
  at_step: int | None
  reason: str


def noise_floor(incumbent_per_seed: Values, multiplier: float, min_std: float = 0.0) -> float:
  """multiplier x the standard error of a difference of two K-seed means: s * sqrt(2 / K).

  s is the incumbent's seed-to-seed std (ddof=1), or min_std if that is larger (a spread
  measured on more seeds elsewhere, since 3 values can understate it). Treating the two means
  as independent ignores the pairing, which makes the floor conservative on purpose.
  """
  values = np.asarray(incumbent_per_seed, dtype=float)
  if values.size < 2:
    raise ValueError('a noise floor needs at least 2 seeds')
  spread = max(float(np.std(values, ddof=1)), min_std)
  return multiplier * spread * math.sqrt(2.0 / values.size)


def _gains(incumbent: Values, candidate: Values, direction: Direction) -> np.ndarray:
  """Per-seed differences oriented so that positive means the candidate is better."""
  difference = np.asarray(candidate, dtype=float) - np.asarray(incumbent, dtype=float)
  return difference if direction == 'max' else -difference


def paired_test(incumbent: Values, candidate: Values, direction: Direction) -> PairedTest:
  """One-sided paired t-test of 'the candidate is better' (H0: mean gain <= 0)."""
  gains = _gains(incumbent, candidate, direction)
  if gains.size < 2:
    raise ValueError('a paired test needs at least 2 seeds')
  mean, std = float(gains.mean()), float(gains.std(ddof=1))
  if std <= 1e-12 * max(1.0, abs(mean)):  # all gains equal: no spread to test against
    return PairedTest(mean, 0.0, math.copysign(math.inf, mean) if mean else 0.0,
                      0.0 if mean > 0 else 1.0, gains.size)
  result = stats.ttest_1samp(gains, 0.0, alternative='greater')
  return PairedTest(mean, std, float(result.statistic), float(result.pvalue), gains.size)


def pool(a: SeedResults, b: SeedResults) -> SeedResults:
  """Screen results a followed by confirm results b on fresh seeds: 2K pairs for the verdict."""
  if a.fresh_from or b.fresh_from or a.metric != b.metric:
    raise ValueError('pool takes two single-stage results on the same metric')
  return SeedResults(_pool_arm(a.incumbent, b.incumbent), _pool_arm(a.candidate, b.candidate),
                     a.metric, fresh_from=len(a.incumbent.per_seed))


def _pool_arm(a: ArmResult, b: ArmResult) -> ArmResult:
  """Per-run costs average over the two runs (memory takes the peak); non-finite is sticky."""
  return ArmResult(a.per_seed + b.per_seed, _mean_known(a.train_seconds, b.train_seconds),
                   max(a.peak_memory_mb, b.peak_memory_mb),
                   _mean_known(a.step_latency_ms, b.step_latency_ms), a.nonfinite or b.nonfinite,
                   _mean_known(a.wall_seconds, b.wall_seconds))


def _mean_known(x: float, y: float) -> float:
  known = [v for v in (x, y) if v > 0]
  return sum(known) / len(known) if known else 0.0


def _ratio(candidate: float, incumbent: float) -> float | None:
  return candidate / incumbent if candidate > 0 and incumbent > 0 else None


def _cost_ratio(reported: float | None, trusted: float | None) -> float | None:
  """A cost ratio the candidate cannot shrink: its own report (train time, step latency,
  measured inside the trial, precise but forgeable) or the wall time the trusted parent
  measured (start-up included, so looser, but out of the trial's reach), whichever is
  larger."""
  known = [r for r in (reported, trusted) if r is not None]
  return max(known) if known else None


@dataclasses.dataclass(frozen=True)
class _Evidence:
  """Everything the rule looks at, computed once; becomes Verdict.checks."""
  stage: Stage
  test: PairedTest
  p_worse: float
  noise_floor: float
  required_gain: float
  fresh_gain: float | None
  time_ratio: float | None
  latency_ratio: float | None
  wall_ratio: float | None
  peak_memory_mb: float
  net_lines: int

  def checks(self) -> dict[str, Any]:
    fields = dataclasses.asdict(self)
    fields.update(fields.pop('test'))
    return fields


def _evidence(results: SeedResults, direction: Direction, policy: AcceptancePolicy,
              stage: Stage, net_lines: int, seed_std: float) -> _Evidence:
  incumbent, candidate = results.incumbent, results.candidate
  floor = noise_floor(incumbent.per_seed, policy.acceptance.noise_multiplier, seed_std)
  wall = _ratio(candidate.wall_seconds, incumbent.wall_seconds)
  fresh = slice(results.fresh_from, None)
  fresh_gain = (float(_gains(incumbent.per_seed[fresh], candidate.per_seed[fresh],
                             direction).mean()) if stage == 'confirm' else None)
  return _Evidence(
      stage=stage,
      test=paired_test(incumbent.per_seed, candidate.per_seed, direction),
      p_worse=paired_test(candidate.per_seed, incumbent.per_seed, direction).p_one_sided,
      noise_floor=floor, required_gain=max(policy.acceptance.min_delta, floor),
      fresh_gain=fresh_gain,
      time_ratio=_cost_ratio(_ratio(candidate.train_seconds, incumbent.train_seconds), wall),
      latency_ratio=_cost_ratio(_ratio(candidate.step_latency_ms, incumbent.step_latency_ms),
                                wall),
      wall_ratio=wall,
      peak_memory_mb=candidate.peak_memory_mb, net_lines=net_lines)


class _Words:
  """Plain-language fragments for rationales, so a reviewer can check the numbers by eye."""

  def __init__(self, results: SeedResults, direction: Direction, policy: AcceptancePolicy):
    self.results, self.direction, self.policy = results, direction, policy

  def gain(self, value: float) -> str:
    better = ' (lower is better)' if self.direction == 'min' else ''
    return f'mean gain {value:+.3g} {self.results.metric}{better}'

  def seeds(self, k: int) -> str:
    fresh_from = self.results.fresh_from
    split = f' ({fresh_from} screen + {k - fresh_from} fresh)' if fresh_from else ''
    return f'{k} paired seeds{split}'

  def bar(self, ev: _Evidence) -> str:
    terms = self.policy.acceptance
    if ev.noise_floor >= terms.min_delta:
      return (f'the noise floor {ev.noise_floor:.3g} ({terms.noise_multiplier} x '
              'seed-to-seed standard error)')
    return f'the minimum gain {terms.min_delta:.3g} (noise floor {ev.noise_floor:.3g})'

  def costs(self, ev: _Evidence) -> str:
    parts = [f'{name} {ratio:.2f}x' for name, ratio in
             (('train time', ev.time_ratio), ('step latency', ev.latency_ratio)) if ratio]
    if ev.peak_memory_mb:
      parts.append(f'peak memory {ev.peak_memory_mb:.0f} MB')
    return f' Costs vs incumbent: {", ".join(parts)}.' if parts else ''


def _quality_failure(ev: _Evidence, words: _Words, alpha: float) -> tuple[str, str] | None:
  """Why the candidate is not a clear, consistent, replicated improvement; None if it is."""
  test, says = ev.test, f'{words.gain(ev.test.mean_gain)} over {words.seeds(ev.test.k)}'
  if test.mean_gain <= 0:
    if ev.p_worse < alpha:
      return 'worse', (f'Rejected: {says}: the candidate is significantly worse (one-sided '
                       f'paired t-test p = {ev.p_worse:.3g}).')
    return 'no_gain', f'Rejected: {says}: the candidate is not better than the incumbent.'
  if test.mean_gain < ev.required_gain:
    return 'below_noise_floor', f'Rejected: {says} is below {words.bar(ev)}.'
  if test.p_one_sided >= alpha:
    return 'not_significant', (f'Rejected: {says} clears {words.bar(ev)} but is not consistent '
                               f'across seeds (one-sided paired t-test p = '
                               f'{test.p_one_sided:.3g}, needs < {alpha}).')
  if ev.fresh_gain is not None and ev.fresh_gain <= 0:
    fresh = test.k - words.results.fresh_from
    return 'not_replicated', (f'Rejected: the screen win did not replicate: '
                              f'{words.gain(ev.fresh_gain)} on the {fresh} fresh seeds '
                              f'(pooled over {test.k}: {test.mean_gain:+.3g}).')
  return None


def _tie_win(ev: _Evidence, words: _Words, policy: AcceptancePolicy) -> tuple[str, str] | None:
  """A statistical tie that is simpler or clearly cheaper is worth keeping."""
  tied = abs(ev.test.mean_gain) < ev.required_gain and ev.p_worse >= policy.acceptance.alpha
  if not tied:
    return None
  says = (f'{words.gain(ev.test.mean_gain)} over {words.seeds(ev.test.k)} is a statistical tie '
          f'(within +/-{ev.required_gain:.3g}, not significantly worse: p = {ev.p_worse:.3g})')
  if ev.net_lines < 0:
    return 'simplification', (f'Accepted as a simplification: {says} and the change removes '
                              f'{-ev.net_lines} more lines than it adds.')
  if ev.time_ratio is not None and ev.time_ratio <= policy.efficiency_time_ratio:
    return 'efficiency', (f'Accepted as an efficiency win: {says} and training takes '
                          f'{ev.time_ratio:.2f}x the incumbent\'s time.')
  return None


def _cost_failure(ev: _Evidence, words: _Words, policy: AcceptancePolicy) -> tuple[str, str] | None:
  """The charter's trade-offs: a large enough gain pays for slower training and steps;
  nothing pays for exceeding the memory cap."""
  gain, t = ev.test.mean_gain, policy.tradeoffs
  if (ev.time_ratio is not None and ev.time_ratio > t.max_time_ratio
      and gain < t.time_ratio_min_gain):
    return 'train_time', (f'Rejected for train time: training takes {ev.time_ratio:.2f}x as long '
                          f'as the incumbent\'s (limit {t.max_time_ratio}x unless the mean '
                          f'gain is at least {t.time_ratio_min_gain:.3g}, and it is '
                          f'{gain:+.3g} {words.results.metric}).')
  if t.max_memory_mb > 0 and ev.peak_memory_mb > t.max_memory_mb:
    return 'memory', (f'Rejected for memory: peak memory {ev.peak_memory_mb:.0f} MB exceeds the '
                      f'cap {t.max_memory_mb:.0f} MB.')
  if (ev.latency_ratio is not None and ev.latency_ratio > t.max_latency_ratio
      and gain < t.time_ratio_min_gain):
    return 'latency', (f'Rejected for latency: step latency p50 is {ev.latency_ratio:.2f}x the '
                       f'incumbent\'s (limit {t.max_latency_ratio}x unless the mean gain is '
                       f'at least {t.time_ratio_min_gain:.3g}, and it is {gain:+.3g} '
                       f'{words.results.metric}).')
  return None


def _nonfinite_verdict(results: SeedResults, policy: AcceptancePolicy, stage: Stage,
                       seed_std: float) -> Verdict | None:
  """Non-finite metrics cannot be compared; a non-finite flag rejects when the policy says so."""
  incumbent, candidate = results.incumbent.per_seed, results.candidate.per_seed
  if not np.all(np.isfinite(incumbent)):
    raise ValueError('the incumbent has non-finite metric values; it cannot be a reference')
  bad_values = not np.all(np.isfinite(candidate))
  if not bad_values and not (policy.tradeoffs.reject_nonfinite and results.candidate.nonfinite):
    return None
  what = 'non-finite metric values' if bad_values else 'non-finite values during training'
  floor = noise_floor(incumbent, policy.acceptance.noise_multiplier, seed_std)
  return Verdict(False, 'nonfinite', f'Rejected: the candidate produced {what}.', math.nan,
                 floor, math.nan, {'stage': stage, 'nonfinite': True})


def decide(results: SeedResults, direction: Direction, policy: AcceptancePolicy, *,
           diff_lines: int = 0, incumbent_diff_lines: int = 0, stage: Stage = 'screen',
           seed_std: float = 0.0) -> Verdict:
  """Accept or reject the candidate, with a reason code and a rationale in plain words.

  diff_lines and incumbent_diff_lines are net line counts (added - removed) measured against
  the same reference; the candidate is simpler when its count is lower (with the incumbent as
  the reference, pass diff_lines alone). seed_std: a seed-to-seed std measured elsewhere, used
  for the noise floor when larger than this comparison's. stage='confirm' expects `pool`'s
  output and also requires a positive mean gain on the fresh seeds alone.
  """
  if direction not in ('max', 'min'):
    raise ValueError(f"direction must be 'max' or 'min', got {direction!r}")
  if (stage == 'confirm') != bool(results.fresh_from):
    raise ValueError("stage='confirm' takes pool(screen, fresh); stage='screen' takes one stage")
  rejected = _nonfinite_verdict(results, policy, stage, seed_std)
  if rejected:
    return rejected
  ev = _evidence(results, direction, policy, stage, diff_lines - incumbent_diff_lines, seed_std)
  words = _Words(results, direction, policy)
  failure = _quality_failure(ev, words, policy.acceptance.alpha)
  win = _tie_win(ev, words, policy) if failure else None
  if failure and not win:
    return _verdict(False, failure, ev)
  cost = _cost_failure(ev, words, policy)
  if cost:
    return _verdict(False, cost, ev)
  if win:
    return _verdict(True, (win[0], win[1] + words.costs(ev)), ev)
  says = (f'Accepted: {words.gain(ev.test.mean_gain)} over {words.seeds(ev.test.k)} clears '
          f'{words.bar(ev)} with one-sided paired t-test p = {ev.test.p_one_sided:.3g} < '
          f'{policy.acceptance.alpha}.{words.costs(ev)}')
  return _verdict(True, ('improved', says), ev)


def _verdict(accepted: bool, reason: tuple[str, str], ev: _Evidence) -> Verdict:
  code, rationale = reason
  return Verdict(accepted, code, rationale, ev.test.mean_gain, ev.noise_floor, ev.test.p_one_sided,
                 ev.checks())


def should_prune(incumbent_curve: list[tuple[int, float]], candidate_curve: list[tuple[int, float]],
                 total_steps: int, direction: Direction, noise: float,
                 margin_multiplier: float = 3.0, min_fraction: float = 0.3, *,
                 epsilon: float = 1e-4) -> PruneDecision:
  """Stop a candidate that is clearly losing: behind the incumbent by more than the margin at
  the last two shared evaluation steps past min_fraction of training.

  Curves are (step, validation metric averaged over seeds). Two steps, not one, so a single
  noisy evaluation cannot kill a run; epsilon keeps exact ties alive when noise is 0.
  A non-finite candidate value counts as losing by any margin.
  """
  incumbent, candidate = dict(incumbent_curve), dict(candidate_curve)
  shared = sorted(s for s in incumbent.keys() & candidate.keys()
                  if s >= min_fraction * total_steps)
  margin = max(margin_multiplier * noise, epsilon)
  if len(shared) < 2:
    return PruneDecision(False, None, f'Continue: fewer than two shared evaluations past '
                                      f'{min_fraction:.0%} of {total_steps} steps.')
  steps = shared[-2:]
  deficits = [_deficit(incumbent[s], candidate[s], direction) for s in steps]
  where = f'at steps {steps[0]} and {steps[1]}'
  if min(deficits) > margin:
    return PruneDecision(True, steps[1], (
        f'Pruned at step {steps[1]} of {total_steps}: the candidate trails the incumbent by '
        f'{deficits[0]:.3g} and {deficits[1]:.3g} {where} (margin {margin:.3g}).'))
  return PruneDecision(False, None, f'Continue: the deficits {deficits[0]:.3g} and '
                                    f'{deficits[1]:.3g} {where} are within the margin '
                                    f'{margin:.3g}.')


def _deficit(incumbent: float, candidate: float, direction: Direction) -> float:
  """How far the candidate is behind (positive = worse); non-finite is infinitely behind."""
  if not math.isfinite(candidate):
    return math.inf
  return float(_gains([candidate], [incumbent], direction)[0])
