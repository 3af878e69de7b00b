"""Every kind of journal record, typed: what the loop, `main`, review and the benchmarks write
and what replay, report, audit, review and the benchmarks read back.

Each record is a frozen dataclass with its journal kind (`KIND`), `to_record()` (the payload
dict, in exactly the shape the journal has always held, so chains written before and after
hash the same structure) and `from_record(payload)`: tolerant of fields an older journal
lacks (they take their defaults), strict on the types of the fields it holds, so a forged or
damaged payload fails here with the field named, not deep inside whoever reads it.

A field marked `_omitted(default)` is left out of the payload while it holds its default,
as the loop always did for details only some trials have (a confirmation, a pruning).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from agent.judging import decide as decide_lib
from harness.scorecard import SCORECARD

NAN = float('nan')
_NON_FINITE = {'nan': NAN, 'inf': math.inf, '-inf': -math.inf}  # how the journal stores them


class RecordError(ValueError):
  """A payload that does not fit its kind: a missing field, a wrong type, an unknown key."""


def _omitted(default: Any = None) -> Any:
  return dataclasses.field(default=default, metadata={'omit_default': True})


def _plain(value: Any) -> Any:
  """A record's value as the journal's JSON holds it."""
  if dataclasses.is_dataclass(value):
    return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
            if not (f.metadata.get('omit_default') and getattr(value, f.name) == f.default)}
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _decode(cls: type, payload: Any, where: str) -> Any:
  if not isinstance(payload, Mapping):
    raise RecordError(f'{where}: expected an object, got {type(payload).__name__}')
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(payload) - set(fields))
  if unknown:
    raise RecordError(f'{where}: unknown field {unknown[0]!r}')
  hints = typing.get_type_hints(cls)
  values = {}
  for name, field in fields.items():
    if name in payload:
      values[name] = _coerce(hints[name], payload[name], f'{where}.{name}')
    elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
      raise RecordError(f'{where}: {name} is missing')
  return cls(**values)


def _coerce(kind: Any, value: Any, where: str) -> Any:
  """`value` checked against the annotation `kind`; stored non-finite floats read back."""
  origin, args = typing.get_origin(kind), typing.get_args(kind)
  if origin in (typing.Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    return _coerce(next(a for a in args if a is not type(None)), value, where)
  if kind is Any:
    return value
  if dataclasses.is_dataclass(kind):
    return _decode(kind, value, where)
  if kind is float:
    if isinstance(value, str) and value in _NON_FINITE:
      return _NON_FINITE[value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return value  # an int stays an int, so a record written again hashes the same
  elif kind in (int, str, bool):
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
      return value
  elif origin is list and isinstance(value, list):
    return [_coerce(args[0], v, f'{where}[{i}]') for i, v in enumerate(value)] if args else value
  elif origin in (dict, Mapping) and isinstance(value, Mapping):
    return {k: _coerce(args[1], v, f'{where}.{k}') for k, v in value.items()} if args else dict(value)
  raise RecordError(f'{where}: expected {getattr(kind, "__name__", kind)}, got '
                    f'{type(value).__name__} {str(value)[:60]!r}')


class _Record:
  """What every record kind shares: its payload, and back."""
  KIND: ClassVar[str]

  def to_record(self) -> dict[str, Any]:
    return _plain(self)

  @classmethod
  def from_record(cls, payload: Mapping[str, Any]):
    return _decode(cls, payload, cls.KIND)


# ---- what records hold ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What `agent.main run` was asked to do; recorded in the journal's first record."""
  run_id: str
  experiment: str
  proposer: str
  seeds: int
  budget_trials: int
  budget_minutes: float
  budget_compute_seconds: float
  start_commit: str = ''
  budget_tokens: int = 0  # proposer (LLM) tokens, input + output; 0 = unlimited
  review: str = 'none'  # 'required': a winner waits for a person's approve/reject
  llm: dict[str, Any] | None = None  # the LLM proposer's settings (never its key)
  # the offline proposer's statistics file shared with other workspaces (--share_stats,
  # opt-in: agent.proposing.bandit.SharedBandit); '' = this workspace's own only
  share_stats: str = _omitted('')


def mean_of(values: list[float | None]) -> float:
  finite = [v for v in values if v is not None]
  return sum(finite) / len(finite) if len(finite) == len(values) and finite else NAN


@dataclasses.dataclass(frozen=True)
class ArmRecord:
  """One K-seed run as the journal keeps it: enough to decide against it later."""
  commit: str
  workdir: str
  per_seed: list[float]
  train_seconds: float
  peak_memory_mb: float
  step_latency_ms: float
  nonfinite: bool
  curve: list[list[float]]  # [step, mean val metric]
  steps: int
  fingerprints: dict[str, str]
  scorecard_sha256: str = ''  # of the scorecard file, so `verify` notices a later edit
  wall_seconds: float = 0.0  # the trial process's lifetime as the trusted parent measured it

  @classmethod
  def from_scorecard(cls, commit: str, workdir: Path, card: dict[str, Any]) -> ArmRecord:
    per_seed = [NAN if v is None else v for v in card['val_metric']['per_seed']]
    digest = hashlib.sha256((workdir / SCORECARD).read_bytes()).hexdigest()
    curve = [[p['step'], mean_of(p['val_metric'])] for p in card.get('curve', [])]
    trusted = card.get('trusted') or {}
    # A batch member's costs are its batch's, which say nothing about it: it ran the
    # incumbent's compiled program with other values, so its costs count as unknown (0)
    # and no cost rule or efficiency tie can turn on them.
    own = not card.get('batch')
    known = lambda v: v if own and isinstance(v, (int, float)) and v == v else 0.0
    return cls(commit=commit, workdir=str(workdir), per_seed=per_seed,
               train_seconds=known(card['train_seconds']),
               # host memory, or the accelerator's allocator peak where it reports one
               peak_memory_mb=max(known(card['memory']['max_rss_mb']),
                                  known(trusted.get('max_rss_mb')),
                                  known(card['memory'].get('device_peak_bytes')) / 2**20),
               step_latency_ms=known(card['step_latency_ms']['p50']),
               nonfinite=card['stability']['nonfinite'], curve=curve, steps=card['steps'],
               fingerprints=card['data']['fingerprints'], scorecard_sha256=digest,
               wall_seconds=known(trusted.get('wall_seconds')))

  def arm(self) -> decide_lib.ArmResult:
    return decide_lib.ArmResult(tuple(self.per_seed), self.train_seconds, self.peak_memory_mb,
                                self.step_latency_ms, self.nonfinite, self.wall_seconds)


@dataclasses.dataclass(frozen=True)
class FinalArm:
  """One arm of the final evaluation: its numbers, or why it did not run."""
  status: str
  reason: str | None = _omitted()
  val: dict[str, Any] | None = _omitted()  # the scorecard's summary: per_seed, mean, std
  test: dict[str, Any] | None = _omitted()
  train_seconds: float | None = _omitted()
  seeds: list[int] | None = _omitted()


@dataclasses.dataclass(frozen=True)
class TransferArm:
  """One arm on a transfer experiment (charter [transfer]): its run, and the settings of the
  run's own experiment it carried there (`--config.a.b=v`: what the arm's config changed
  from the start commit's, where the transfer experiment has the same knob)."""
  arm: ArmRecord
  overrides: list[str] = dataclasses.field(default_factory=list)
  # the config it ran there when it reshaped a section (agent.judging.transfer.derived): the
  # transfer experiment's file with that section the arm's; '' = that file as named
  derived: str = _omitted('')


@dataclasses.dataclass(frozen=True)
class TransferResult:
  """A kept candidate against the incumbent on one transfer experiment (agent.judging.
  transfer): the outcome, and the arms it follows from (an arm is None where it did not
  finish; `reason` then says why)."""
  outcome: str  # 'gained' | 'held' | 'lost' | 'failed'
  metric: str = ''
  gain: float = NAN
  noise_floor: float = NAN
  incumbent: TransferArm | None = None
  candidate: TransferArm | None = None
  reason: str = ''


@dataclasses.dataclass(frozen=True)
class TransferFinal:
  """The start commit and the final incumbent on one transfer experiment, once, on fresh
  seeds and its test split."""
  baseline: FinalArm
  final: FinalArm
  overrides: list[str] = dataclasses.field(default_factory=list)  # the final arm's
  metric: str = ''
  derived: str = _omitted('')  # the final arm's derived config (TransferArm.derived)


# ---- the records, in the order a run writes them ---------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunStarted(_Record):
  KIND = 'run_started'
  config: RunConfig
  charter: dict[str, Any] | None = _omitted()  # the charter's settings, for `verify`'s rule


@dataclasses.dataclass(frozen=True)
class SessionStarted(_Record):
  KIND = 'session_started'
  pid: int


@dataclasses.dataclass(frozen=True)
class SessionEnded(_Record):
  KIND = 'session_ended'
  reason: str
  elapsed_seconds: float


@dataclasses.dataclass(frozen=True)
class DataPinned(_Record):
  """The run's dataset config and fingerprints; with `experiment`, another experiment's."""
  KIND = 'data'
  dataset: dict[str, Any]
  fingerprints: dict[str, str]
  experiment: str | None = _omitted()


@dataclasses.dataclass(frozen=True)
class Baseline(_Record):
  KIND = 'baseline'
  arm: ArmRecord
  wall_seconds: float = 0.0
  sandbox: str = ''


@dataclasses.dataclass(frozen=True)
class TransferBaseline(_Record):
  """The start commit on one transfer experiment, on the search's seeds: the first
  incumbent's arm there, and a check that the experiment trains at all."""
  KIND = 'transfer_baseline'
  experiment: str
  arm: TransferArm
  wall_seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class BaselineFailed(_Record):
  KIND = 'baseline_failed'
  status: str
  reason: str


@dataclasses.dataclass(frozen=True)
class Proposed(_Record):
  """A proposal as the journal keeps it (`agent.proposing.proposal.Proposal` is one)."""
  KIND = 'proposal'
  operator: str
  diagnosis: str
  hypothesis: str
  expected_effect: str
  changes: Mapping[str, str | None]
  # the trial whose win came after the incumbent moved on (a verdict STALE), whose change
  # this proposal (a copy, merged onto the new incumbent) judges again
  rejudges: int | None = _omitted()


@dataclasses.dataclass(frozen=True)
class _NothingRan(_Record):
  """A trial spent before anything ran, and why in words (a verdict's fields, not all)."""
  rationale: str
  accepted: bool = False
  reason_code: str = ''
  gain: float | None = None


@dataclasses.dataclass(frozen=True)
class FailedProposal(_NothingRan):
  """The proposer produced nothing usable."""
  KIND = 'proposal_failed'
  reason_code: str = 'proposal_failed'


@dataclasses.dataclass(frozen=True)
class GuardRejected(_NothingRan):
  """The guard or the import check refused the proposal."""
  KIND = 'guard_rejected'
  reason_code: str = 'guard'


@dataclasses.dataclass(frozen=True)
class TrialStarted(_Record):
  KIND = 'trial_started'
  commit: str
  diff: str
  # the incumbent the trial is judged against (its commit's parent): with --workers another
  # trial may be kept while it runs; absent (journals before it): the journal's at its verdict
  incumbent: str = _omitted('')


@dataclasses.dataclass(frozen=True)
class TrialFinished(_Record):
  """The screen run of a trial: how it ended, and the compute it took."""
  KIND = 'trial_finished'
  status: str
  reason: str = ''
  wall_seconds: float = 0.0
  workdir: str = ''
  sandbox: str = ''
  # the trials trained together in this one process (harness members), if more than this
  # one; wall_seconds is then this trial's even share of the process's
  batch: list[int] | None = _omitted()


@dataclasses.dataclass(frozen=True)
class RungDecided(_Record):
  """One rung of a batch's successive halving (agent.judging.rungs), in trials: the mean
  paired gain of each candidate still in over the incumbent trained alongside, and who went
  on; `verify` decides it again from these numbers."""
  KIND = 'rung'
  batch: list[int]
  step: int
  total_steps: int
  keep: float
  margin: float
  gains: dict[str, float]  # trial -> gain ('-inf' for a non-finite score)
  kept: list[int]
  stopped: list[int]

  @classmethod
  def of(cls, rung: Any, trials: list[int]) -> RungDecided:
    """From a rungs.Rung whose members are batch indices, the incumbent's being 0."""
    trial = lambda member: trials[member - 1]
    return cls(batch=list(trials), step=rung.step, total_steps=rung.total_steps, keep=rung.keep,
               margin=rung.margin, gains={str(trial(m)): g for m, g in rung.gains.items()},
               kept=[trial(m) for m in rung.kept], stopped=[trial(m) for m in rung.stopped])


@dataclasses.dataclass(frozen=True)
class ConfirmFinished(_Record):
  """A pair of runs beyond the screen: one look on fresh seeds (`first_seed`; an incumbent
  arm an earlier candidate's look already ran is reused, its wall time not counted again), or
  on another `experiment` that runs the changed code."""
  KIND = 'confirm_finished'
  wall_seconds: float
  candidate: str  # the run's status
  incumbent: str
  first_seed: int | None = _omitted()
  experiment: str | None = _omitted()


@dataclasses.dataclass(frozen=True)
class Verdict(_Record):
  """decide.Verdict for one trial, the commits it names, and what the trial showed."""
  KIND = 'verdict'
  accepted: bool
  reason_code: str
  rationale: str
  gain: float | None = None  # mean paired gain, oriented so positive is better
  noise_floor: float = NAN
  p_value: float = NAN
  checks: dict[str, Any] = dataclasses.field(default_factory=dict)
  commit: str = ''
  ran_commit: str = ''  # the commit that ran; `commit` carries the verdict in its message
  candidate: ArmRecord | None = None
  status: str | None = _omitted()  # how the screen run ended
  log_excerpt: str | None = _omitted()  # a failed trial's output, for the next proposal
  compute_saved_seconds: float | None = _omitted()  # by pruning
  confirm_seeds: list[int] | None = _omitted()  # the fresh seeds of the looks after the screen
  # the fixed rule's one fresh-seed pair, 'incumbent' and 'candidate' (journals before `looks`)
  confirm_arms: dict[str, ArmRecord] | None = _omitted()
  looks: list[dict[str, ArmRecord]] | None = _omitted()  # each look after the screen's, its arms
  elsewhere: dict[str, str] | None = _omitted()  # experiment -> 'held' or why it failed
  transfer: dict[str, TransferResult] | None = _omitted()  # charter [transfer], by experiment
  awaiting_review: bool = _omitted(False)  # a winner waiting for a person (accepted False)

  @classmethod
  def of(cls, verdict: decide_lib.Verdict, **fields: Any) -> Verdict:
    return cls(accepted=verdict.accepted, reason_code=verdict.reason_code,
               rationale=verdict.rationale, gain=verdict.gain,
               noise_floor=verdict.noise_floor, p_value=verdict.p_value,
               checks=verdict.checks, **fields)


STALE = 'stale'  # a verdict's reason code: won against an incumbent replaced meanwhile
TrialEnd = Verdict | GuardRejected | FailedProposal
TRIAL_ENDS = (Verdict, GuardRejected, FailedProposal)


@dataclasses.dataclass(frozen=True)
class Review(_Record):
  """A person's decision on a winner that waited for review."""
  KIND = 'review'
  trial: int
  approved: bool
  why: str
  reviewer: str
  commit: str


@dataclasses.dataclass(frozen=True)
class LlmUsage(_Record):
  """One HTTP attempt of the LLM proposer, booked to the trial it was made for."""
  KIND = 'llm_usage'
  api: str = ''
  model: str = ''
  attempt: int = 0
  outcome: str = ''
  input_tokens: int = 0
  output_tokens: int = 0
  cost_usd: float | None = None  # None when no token price is configured


@dataclasses.dataclass(frozen=True)
class FinalEval(_Record):
  """The start commit and the final incumbent, once, on fresh seeds and the test split."""
  KIND = 'final_eval'
  baseline: FinalArm
  final: FinalArm
  commit: dict[str, str]  # 'baseline', 'final' -> the commit evaluated
  transfer: dict[str, TransferFinal] | None = _omitted()  # charter [transfer], by experiment


@dataclasses.dataclass(frozen=True)
class RunFinished(_Record):
  KIND = 'run_finished'
  reason: str


KINDS: dict[str, type[_Record]] = {cls.KIND: cls for cls in (
    RunStarted, SessionStarted, SessionEnded, DataPinned, Baseline, TransferBaseline,
    BaselineFailed, Proposed,
    FailedProposal, GuardRejected, TrialStarted, TrialFinished, RungDecided, ConfirmFinished,
    Verdict, Review,
    LlmUsage, FinalEval, RunFinished)}
Body = (RunStarted | SessionStarted | SessionEnded | DataPinned | Baseline | TransferBaseline
        | BaselineFailed
        | Proposed | FailedProposal | GuardRejected | TrialStarted | TrialFinished | RungDecided
        | ConfirmFinished | Verdict | Review | LlmUsage | FinalEval | RunFinished)


def parse(kind: str, payload: Mapping[str, Any]) -> Body:
  """The typed record of a stored one; RecordError for a kind no code writes."""
  if kind not in KINDS:
    raise RecordError(f'unknown record kind {kind!r}')
  return KINDS[kind].from_record(payload)
