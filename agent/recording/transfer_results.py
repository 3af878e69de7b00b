"""The transfer check's pure part (agent.transfer runs it): a kept candidate's arms, an
outcome on two finished arms, the verdict a set of outcomes gives. Here, below the loop, so
that `verify` (agent.recording.audit) redoes the check with the loop's own functions and
without reaching the code that runs trials."""

from __future__ import annotations

from pathlib import Path

from agent.judging import decide as decide_lib
from agent.judging import transfer as rule
from agent.recording import records
from agent.recording.records import ArmRecord, TransferArm, TransferResult
from harness.scorecard import SCORECARD, read_json


def kept_arms(verdict: records.Verdict) -> dict[str, TransferArm]:
  """A kept candidate's arms on the transfer experiments: the new incumbent's there."""
  return {e: r.candidate for e, r in (verdict.transfer or {}).items() if r.candidate}


def result_of(incumbent: TransferArm, candidate: TransferArm) -> TransferResult:
  """The rule's outcome on two finished arms, with the metric their scorecards name."""
  name, direction = metric_of(incumbent.arm)
  outcome = rule.judge(incumbent.arm.per_seed, candidate.arm.per_seed, direction)
  return TransferResult(outcome.outcome, name, outcome.gain, outcome.noise_floor,
                        incumbent, candidate)


def metric_of(arm: ArmRecord) -> tuple[str, str]:
  """(metric name, direction) as the arm's scorecard states them."""
  metric = read_json(Path(arm.workdir) / SCORECARD)['metric']
  return metric['name'], 'min' if metric['direction'] == 'min' else 'max'


def outcome_of(result: TransferResult) -> rule.Outcome:
  return rule.Outcome(result.outcome, result.gain, result.noise_floor)


def transferred(verdict: decide_lib.Verdict, results: dict[str, TransferResult],
                mode: str) -> decide_lib.Verdict:
  """The kept verdict with the transfer sentence added, the rejection a loss makes, or, where
  the minute budget cut a transfer run and nothing lost, an undecided verdict (not kept, as
  agent.candidate's BUDGET); its numbers stay the run's own experiment's. What `verify`
  recomputes."""
  reject, sentence = rule.summary({e: outcome_of(r) for e, r in results.items()},
                                  {e: r.metric or 'metric' for e, r in results.items()}, mode,
                                  {e: r.reason for e, r in results.items()})
  if reject:
    return decide_lib.Verdict(False, rule.REASON, f'{sentence} On its own experiment: '
                              f'{verdict.rationale}', verdict.gain, verdict.noise_floor,
                              verdict.p_value, verdict.checks)
  if any(r.outcome == rule.UNDECIDED for r in results.values()):
    return decide_lib.Verdict(False, rule.BUDGET, f'Undecided, not rejected: the run\'s minute '
                              f'budget ran out during the transfer check. {sentence} The '
                              f'candidate is not kept, which is no evidence against it. On '
                              f'its own experiment: {verdict.rationale}', verdict.gain,
                              verdict.noise_floor, verdict.p_value, verdict.checks)
  return decide_lib.Verdict(True, verdict.reason_code, f'{verdict.rationale} {sentence}',
                            verdict.gain, verdict.noise_floor, verdict.p_value, verdict.checks)
