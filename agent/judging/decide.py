"""The acceptance rule: keep a candidate only when paired seeds show, at the charter's error
rates, that it is better than the incumbent; decided in looks, adding seeds while undecided.

Pure functions over numbers, so the rule is testable on constructed data and auditable.

Why paired seeds: the incumbent and the candidate run on the same seeds (init, data order), so
per-seed differences cancel much of the seed effect. Why looks (agent.judging.sequential): a
fixed number of seeds is either too few for a real but modest gain or wasted on a clear loser;
a group-sequential test adds seed groups only while the outcome is undecided and holds the
charter's false-acceptance rate however many looks it takes. The first look is the screen's
seeds; each later one pools fresh seeds (`pool`), so a lucky screen must hold on seeds it has
not seen before it is kept: the same guard against many comparisons as a confirmation, with
the rate stated rather than implied. Seeds that agree by chance (or exactly: accuracy moves
in steps of one validation example) are not trusted alone: the spread each look tests against
is at least the run's pooled paired-gain spread (agent.judging.noise; `decide`'s
pooled_variance), which can only make acceptance harder (agent.judging.sequential).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats

from agent import charter
from agent.judging import sequential

Direction = Literal['max', 'min']
Values = Sequence[float]
MORE_SEEDS = 'more_seeds'  # the reason code of a look that decides nothing yet
WORSE_ALPHA = 0.05  # a tie kept for simplicity or speed must not be worse at this level
EFFICIENCY_TIME_RATIO = 0.8  # a tie this much cheaper to train is an efficiency win


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

  fresh_from is set by `pool`: the index of the first pair beyond the screen's seeds.
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
  """The charter's acceptance terms, as its own [acceptance] and [tradeoffs] settings, and the
  seeds per look (its [trial] seeds): metric units for gains, ratios are candidate /
  incumbent."""
  acceptance: charter.Acceptance = charter.Acceptance()
  tradeoffs: charter.Tradeoffs = charter.Tradeoffs()
  group: int = charter.Trial.seeds

  @classmethod
  def of(cls, settings: charter.Charter, seeds: int | None = None) -> AcceptancePolicy:
    """The charter's terms for a run of `seeds` per trial (the run may override the
    charter's [trial] seeds)."""
    return cls(settings.acceptance, settings.tradeoffs, seeds or settings.trial.seeds)

  def batch(self, members: int) -> AcceptancePolicy:
    """The rule for each of `members` screened together, of which only the best goes on:
    picking the best of B is a selection, so each is tested at false_accept / B (Bonferroni:
    a batch keeps a candidate that is not better at most false_accept of the time)."""
    a = self.acceptance
    return dataclasses.replace(self, acceptance=dataclasses.replace(
        a, false_accept=a.false_accept / members))

  def at(self, results: SeedResults, direction: Direction) -> AcceptancePolicy:
    """The terms for a comparison with this incumbent: min_effect, or min_effect_of_error
    times the incumbent's remaining error on the screen's seeds where that is smaller (an
    accuracy-like metric in [0, 1] when maximised, a loss when minimised), so the test stays
    powered for the gains that still exist near the top. The same at every look."""
    share = self.acceptance.min_effect_of_error
    screen = results.incumbent.per_seed[:results.fresh_from or None]
    mean = float(np.mean(screen)) if screen else math.nan
    error = 1 - mean if direction == 'max' else mean
    if not share or not math.isfinite(mean) or not 0 <= error <= (1 if direction == 'max' else
                                                                   math.inf):
      return self
    bar = min(self.acceptance.min_effect, share * error)
    if bar <= 0 or bar == self.acceptance.min_effect:
      return self
    return dataclasses.replace(self, acceptance=dataclasses.replace(self.acceptance,
                                                                    min_effect=bar))

  @property
  def design(self) -> sequential.Design:
    a = self.acceptance
    return sequential.Design(a.false_accept, a.power, a.min_effect, a.max_seeds, self.group)


@dataclasses.dataclass(frozen=True)
class PairedTest:
  mean_gain: float
  std_gain: float
  t: float
  p_one_sided: float
  k: int


@dataclasses.dataclass(frozen=True)
class Verdict:
  """reason_code MORE_SEEDS: undecided, the next group of seeds is wanted (accepted False).
  noise_floor is the standard error of the mean paired gain: the seed noise it is judged
  against (the larger of the gains' own spread and the run's pooled one, over sqrt(n))."""
  accepted: bool
  reason_code: str
  rationale: str
  gain: float
  noise_floor: float
  p_value: float
  checks: dict[str, Any]

  @property
  def undecided(self) -> bool:
    return self.reason_code == MORE_SEEDS


@dataclasses.dataclass(frozen=True)
class PruneDecision:
  prune: bool
  at_step: int | None
  reason: str


def noise_floor(incumbent_per_seed: Values, multiplier: float, min_std: float = 0.0) -> float:
  """multiplier x the standard error of a difference of two K-seed means: s * sqrt(2 / K).

  s is the incumbent's seed-to-seed std (ddof=1), or min_std if that is larger. Treating the
  two means as independent ignores the pairing, which makes the floor conservative on purpose.
  Pruning and the check on other experiments measure how far behind a candidate is with it.
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


def pool(looks: Sequence[SeedResults]) -> SeedResults:
  """The screen's results followed by each later look's on fresh seeds, for the next look."""
  first = looks[0]
  if any(r.fresh_from or r.metric != first.metric for r in looks):
    raise ValueError('pool takes single-look results on the same metric')
  return SeedResults(_pool_arm([r.incumbent for r in looks]),
                     _pool_arm([r.candidate for r in looks]), first.metric,
                     fresh_from=len(first.incumbent.per_seed) if len(looks) > 1 else 0)


def _pool_arm(arms: Sequence[ArmResult]) -> ArmResult:
  """Per-run costs average over the runs that know them (memory takes the peak); non-finite
  is sticky."""
  return ArmResult(sum((a.per_seed for a in arms), ()),
                   _mean_known([a.train_seconds for a in arms]),
                   max(a.peak_memory_mb for a in arms),
                   _mean_known([a.step_latency_ms for a in arms]),
                   any(a.nonfinite for a in arms), _mean_known([a.wall_seconds for a in arms]))


def _mean_known(values: Sequence[float]) -> float:
  known = [v for v in values if v > 0]
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
  look: sequential.Look
  p_worse: float
  standard_error: float
  time_ratio: float | None
  latency_ratio: float | None
  wall_ratio: float | None
  peak_memory_mb: float
  net_lines: int

  def checks(self) -> dict[str, Any]:
    fields = dataclasses.asdict(self)
    fields.update(fields.pop('look'))
    return fields


def _evidence(results: SeedResults, direction: Direction, policy: AcceptancePolicy,
              net_lines: int, pooled_variance: float) -> _Evidence:
  """p_worse (a loss, or a tie's 'not worse') keeps the gains' own spread: a floor there would
  make 'not significantly worse' easier, the wrong way for keeping a tie."""
  incumbent, candidate = results.incumbent, results.candidate
  gains = _gains(incumbent.per_seed, candidate.per_seed, direction)
  wall = _ratio(candidate.wall_seconds, incumbent.wall_seconds)
  look = sequential.look(gains, policy.design, pooled_variance)
  return _Evidence(
      look=look,
      p_worse=sequential.one_sided_p(gains, 0.0, 'less'),
      standard_error=max(look.std_gain, look.pooled_std) / math.sqrt(gains.size),
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

  def seeds(self, look: sequential.Look) -> str:
    fresh_from = self.results.fresh_from
    split = f', {fresh_from} screen + {look.n - fresh_from} fresh' if fresh_from else ''
    return f'{look.n} paired seeds (look {look.look} of {look.looks}{split})'

  def better(self, look: sequential.Look) -> str:
    return (f'one-sided paired t-test of a gain above 0{self.spread(look)}: p = '
            f'{look.p_better:.3g}, this look\'s share of false_accept '
            f'{self.policy.acceptance.false_accept:g} is {look.accept_share:.3g}')

  @staticmethod
  def spread(look: sequential.Look) -> str:
    """Said only where the run's pooled spread replaced the seeds' own."""
    if look.pooled_std <= look.std_gain:
      return ''
    return (f' against the run\'s pooled spread of paired gains {look.pooled_std:.3g} (these '
            f'seeds\' own, {look.std_gain:.3g}, is smaller)')

  def below(self, look: sequential.Look) -> str:
    return (f'of a gain below min_effect {self.policy.acceptance.min_effect:g}: p = '
            f'{look.p_below:.3g}, this look\'s share of 1 - power is {look.futility_share:.3g}')

  def costs(self, ev: _Evidence) -> str:
    parts = [f'{name} {ratio:.2f}x' for name, ratio in
             (('train time', ev.time_ratio), ('step latency', ev.latency_ratio)) if ratio]
    if ev.peak_memory_mb:
      parts.append(f'peak memory {ev.peak_memory_mb:.0f} MB')
    return f' Costs vs incumbent: {", ".join(parts)}.' if parts else ''


def _no_win(ev: _Evidence, words: _Words) -> tuple[str, str]:
  """Why a look that did not accept ends the candidate, or asks for more seeds."""
  look = ev.look
  says = f'{words.gain(look.mean_gain)} over {words.seeds(look)}'
  tests = f'{words.better(look)}; {words.below(look)}'
  if look.outcome == 'continue':
    return MORE_SEEDS, (f'Undecided: {says}: neither test decides ({tests}); the next '
                        f'{words.policy.group} seeds are run.')
  if look.mean_gain < 0 and ev.p_worse < WORSE_ALPHA:
    return 'worse', (f'Rejected: {says}: the candidate is significantly worse (one-sided '
                     f'paired t-test p = {ev.p_worse:.3g} < {WORSE_ALPHA}).')
  if look.outcome == 'futile':
    return 'futile', (f'Rejected: {says} is credibly below the smallest gain worth keeping '
                      f'({tests}).')
  return 'undecided', (f'Rejected: {says} is still undecided at the cap of '
                       f'{look.looks * words.policy.group} seeds ({tests}).')


def _tie_win(ev: _Evidence, words: _Words, policy: AcceptancePolicy) -> tuple[str, str] | None:
  """A statistical tie that is simpler or clearly cheaper is worth keeping."""
  look, bar = ev.look, policy.acceptance.min_effect
  if abs(look.mean_gain) >= bar or ev.p_worse < WORSE_ALPHA:
    return None
  says = (f'{words.gain(look.mean_gain)} over {words.seeds(look)} is a statistical tie '
          f'(within +/-{bar:g}, not significantly worse: p = {ev.p_worse:.3g})')
  if ev.net_lines < 0:
    return 'simplification', (f'Accepted as a simplification: {says} and the change removes '
                              f'{-ev.net_lines} more lines than it adds.')
  if ev.time_ratio is not None and ev.time_ratio <= EFFICIENCY_TIME_RATIO:
    return 'efficiency', (f'Accepted as an efficiency win: {says} and training takes '
                          f'{ev.time_ratio:.2f}x the incumbent\'s time.')
  return None


def _cost_failure(ev: _Evidence, words: _Words, policy: AcceptancePolicy) -> tuple[str, str] | None:
  """The charter's trade-offs: a large enough gain pays for slower training and steps;
  nothing pays for exceeding the memory cap."""
  gain, t = ev.look.mean_gain, policy.tradeoffs
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


def _nonfinite_verdict(results: SeedResults, policy: AcceptancePolicy) -> Verdict | None:
  """Non-finite metrics cannot be compared; a non-finite flag rejects when the policy says so."""
  incumbent, candidate = results.incumbent.per_seed, results.candidate.per_seed
  if not np.all(np.isfinite(incumbent)):
    raise ValueError('the incumbent has non-finite metric values; it cannot be a reference')
  bad_values = not np.all(np.isfinite(candidate))
  if not bad_values and not (policy.tradeoffs.reject_nonfinite and results.candidate.nonfinite):
    return None
  what = 'non-finite metric values' if bad_values else 'non-finite values during training'
  return Verdict(False, 'nonfinite', f'Rejected: the candidate produced {what}.', math.nan,
                 math.nan, math.nan, {'n': len(candidate), 'nonfinite': True})


def decide(results: SeedResults, direction: Direction, policy: AcceptancePolicy, *,
           diff_lines: int = 0, incumbent_diff_lines: int = 0,
           pooled_variance: float = 0.0) -> Verdict:
  """The verdict at this look: accept, reject, or ask for more seeds (`Verdict.undecided`),
  with a reason code and a rationale in plain words.

  results: all paired seeds so far (the screen's, then `pool`ed later looks), a whole number
  of the policy's groups. diff_lines and incumbent_diff_lines are net line counts (added -
  removed) measured against the same reference; the candidate is simpler when its count is
  lower (with the incumbent as the reference, pass diff_lines alone). The trade-offs and the
  ties are judged once the test has stopped, on all its seeds. pooled_variance is the floor
  under the paired gains' variance (agent.judging.noise.RunNoise.variance; 0: none).
  """
  if direction not in ('max', 'min'):
    raise ValueError(f"direction must be 'max' or 'min', got {direction!r}")
  rejected = _nonfinite_verdict(results, policy)
  if rejected:
    return rejected
  policy = policy.at(results, direction)
  ev = _evidence(results, direction, policy, diff_lines - incumbent_diff_lines,
                 pooled_variance)
  words = _Words(results, direction, policy)
  win = None
  if ev.look.outcome != 'accept':
    failure = _no_win(ev, words)
    win = None if failure[0] == MORE_SEEDS else _tie_win(ev, words, policy)
    if not win:
      return _verdict(False, failure, ev)
  cost = _cost_failure(ev, words, policy)
  if cost:
    return _verdict(False, cost, ev)
  if win:
    return _verdict(True, (win[0], win[1] + words.costs(ev)), ev)
  says = (f'Accepted: {words.gain(ev.look.mean_gain)} over {words.seeds(ev.look)} is '
          f'better than the incumbent\'s: {words.better(ev.look)}.{words.costs(ev)}')
  return _verdict(True, ('improved', says), ev)


def _verdict(accepted: bool, reason: tuple[str, str], ev: _Evidence) -> Verdict:
  code, rationale = reason
  return Verdict(accepted, code, rationale, ev.look.mean_gain, ev.standard_error,
                 ev.look.p_better, ev.checks())


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
