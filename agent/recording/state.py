"""Where a run stands, rebuilt from its journal alone: the run's settings, the incumbent arm,
the trials spent, the session clock and what a proposer may see of earlier trials.

Nothing else is trusted on resume, so a run killed at any moment continues without losing
or double-counting a trial; `verify`, `review` and `report` read the same replay.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import signal
import threading
from pathlib import Path
from typing import Any, Mapping

from agent.judging import decide as decide_lib
from agent.recording.journal import Journal
from harness.scorecard import SCORECARD


@dataclasses.dataclass(frozen=True)
class TrialSummary:
  """One earlier trial as a proposer may see it (never any test-split number)."""
  trial: int
  operator: str
  hypothesis: str
  accepted: bool
  reason_code: str
  gain: float | None  # mean paired gain, oriented so positive is better; None if not run
  changes: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
  rationale: str = ''  # the verdict's or the guard's reason, in words
  log_excerpt: str = ''  # bounded tail of what the trial printed (failed trials only)


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
  def from_scorecard(cls, commit: str, workdir: Path, card: dict[str, Any]) -> 'ArmRecord':
    per_seed = [float('nan') if v is None else v for v in card['val_metric']['per_seed']]
    digest = hashlib.sha256((workdir / SCORECARD).read_bytes()).hexdigest()
    curve = [[p['step'], mean_of(p['val_metric'])] for p in card.get('curve', [])]
    trusted = card.get('trusted') or {}
    known = lambda v: v if isinstance(v, (int, float)) and v == v else 0.0
    return cls(commit=commit, workdir=str(workdir), per_seed=per_seed,
               train_seconds=known(card['train_seconds']),
               peak_memory_mb=max(known(card['memory']['max_rss_mb']),
                                  known(trusted.get('max_rss_mb'))),
               step_latency_ms=known(card['step_latency_ms']['p50']),
               nonfinite=card['stability']['nonfinite'], curve=curve, steps=card['steps'],
               fingerprints=card['data']['fingerprints'], scorecard_sha256=digest,
               wall_seconds=known(trusted.get('wall_seconds')))

  def arm(self) -> decide_lib.ArmResult:
    return decide_lib.ArmResult(tuple(self.per_seed), self.train_seconds, self.peak_memory_mb,
                                self.step_latency_ms, self.nonfinite, self.wall_seconds)


def mean_of(values: list[float | None]) -> float:
  finite = [v for v in values if v is not None]
  return sum(finite) / len(finite) if len(finite) == len(values) and finite else float('nan')


HEARTBEAT = 'heartbeat.json'
HEARTBEAT_S = 5.0


def heartbeat_of(run_dir: Path) -> dict[str, Any]:
  """The last heartbeat a session of this run wrote ({} if none or unreadable)."""
  try:
    beat = json.loads((run_dir / HEARTBEAT).read_text())
  except (OSError, ValueError):
    return {}
  return beat if isinstance(beat, dict) else {}


class _SessionClock:
  """Wall time spent in the run's sessions, from the journal alone plus the heartbeat: a
  session that ended says how long it ran; one killed (kill -9, power loss) counts from its
  start to its last sign of life (its last record, or its heartbeat if later), so the
  minute budget survives any number of kills."""

  def __init__(self, heartbeat: dict[str, Any]):
    self.heartbeat = heartbeat
    self.start: tuple[int, float] | None = None  # (seq, time) of the open session
    self.last = 0.0

  def see(self, record: Any) -> float:
    """Seconds to add to the elapsed total once `record` is seen."""
    now = _seconds(record.ts)
    added = 0.0
    if record.kind == 'session_started':
      added = self.close()
      self.start = (record.seq, now)
    elif record.kind == 'session_ended' and self.start is not None:
      added, self.start = float(record.payload['elapsed_seconds']), None
    self.last = now
    return added

  def close(self) -> float:
    """The open session's time, if it never ended (killed, or running now)."""
    if self.start is None:
      return 0.0
    seq, began = self.start
    self.start = None
    end = self.last
    if self.heartbeat.get('session') == seq and isinstance(self.heartbeat.get('time'), str):
      end = max(end, _seconds(self.heartbeat['time']))
    return max(0.0, end - began)


def _seconds(iso: str) -> float:
  return datetime.datetime.fromisoformat(iso).timestamp()


class Heartbeat:
  """Writes the session's last sign of life every few seconds (beside the journal, outside
  any trial's reach), so the time of a session killed mid-trial is not lost."""

  def __init__(self, run_dir: Path, session: int):
    self.path, self.session = run_dir / HEARTBEAT, session
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, name='heartbeat', daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # main's Ctrl-C
    while not self._stop.wait(HEARTBEAT_S):
      self.write()

  def write(self) -> None:
    tmp = self.path.with_suffix('.tmp')
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='microseconds')
    try:
      tmp.write_text(json.dumps({'session': self.session, 'time': now}))
      tmp.replace(self.path)
    except OSError:
      pass  # a missed beat costs at most HEARTBEAT_S of budget accounting

  def stop(self) -> None:
    self._stop.set()
    self._thread.join()


@dataclasses.dataclass
class RunState:
  """Where a run stands, rebuilt from its journal."""
  config: RunConfig
  incumbent: ArmRecord | None = None
  trials_done: int = 0
  since_accept: int = 0
  compute_seconds: float = 0.0
  elapsed_before: float = 0.0  # wall seconds spent in earlier sessions of this run
  history: list[TrialSummary] = dataclasses.field(default_factory=list)
  pending: dict[str, Any] | None = None  # a proposal whose trial never got a verdict
  awaiting_review: dict[str, Any] | None = None  # a winner's verdict, until a person decides
  tokens: int = 0
  cost_usd: float = 0.0
  finished: bool = False
  data: dict[str, Any] | None = None  # the run's pinned dataset config and its fingerprints

  @classmethod
  def replay(cls, journal: Journal) -> 'RunState':
    records = journal.records()
    if not records or records[0].kind != 'run_started':
      raise ValueError(f'{journal.path} does not start with a run_started record')
    state = cls(RunConfig(**records[0].payload['config']))
    proposals: dict[int, dict[str, Any]] = {}
    clock = _SessionClock(heartbeat_of(journal.path.parent))
    for record in records:
      payload = record.payload
      state.elapsed_before += clock.see(record)
      if record.kind == 'data' and 'experiment' not in payload:
        state.data = payload
      if record.kind == 'baseline':
        state.incumbent = ArmRecord(**payload['arm'])
      if record.kind in ('trial_finished', 'confirm_finished', 'baseline'):
        state.compute_seconds += payload.get('wall_seconds', 0.0)
      if record.kind == 'proposal':
        proposals[record.trial] = payload
      elif record.kind in ('verdict', 'guard_rejected', 'proposal_failed'):
        state.count(record.trial, payload, proposals.pop(record.trial, {}))
      elif record.kind == 'review':
        state.reviewed(payload)
      elif record.kind == 'llm_usage':
        state.book(payload)
      elif record.kind == 'run_finished':
        state.finished = True
    state.elapsed_before += clock.close()
    state.pending = next(iter(proposals.values()), None)
    if state.pending is not None:
      state.pending = {**state.pending, 'trial': min(proposals)}
    return state

  def count(self, trial: int, payload: dict[str, Any], proposal: dict[str, Any]) -> None:
    """Folds one finished trial (verdict or guard rejection) into the state."""
    accepted = payload.get('accepted', False)
    self.trials_done += 1
    if payload.get('awaiting_review'):
      self.awaiting_review = {**payload, 'trial': trial}
    else:
      self.since_accept = 0 if accepted else self.since_accept + 1
    if accepted:
      self.incumbent = ArmRecord(**payload['candidate'])
    self.history.append(TrialSummary(
        trial=trial, operator=proposal.get('operator', '?'),
        hypothesis=proposal.get('hypothesis', ''), accepted=accepted,
        reason_code=payload.get('reason_code', 'guard'), gain=payload.get('gain'),
        changes=proposal.get('changes', {}), rationale=payload.get('rationale', ''),
        log_excerpt=payload.get('log_excerpt', '')))

  def reviewed(self, review: dict[str, Any]) -> None:
    """Folds a person's decision on the winner that waits for review into the state."""
    waiting = self.awaiting_review
    if waiting is None or waiting['trial'] != review['trial']:
      raise ValueError(f'review of trial {review["trial"]}, which does not await review')
    self.awaiting_review = None
    approved = review['approved']
    self.since_accept = 0 if approved else self.since_accept + 1
    if approved:
      self.incumbent = ArmRecord(**waiting['candidate'])
    words = 'approved by' if approved else 'rejected by'
    self.history = [dataclasses.replace(
        h, accepted=approved, reason_code=h.reason_code if approved else 'rejected_in_review',
        rationale=f'{h.rationale} {words} {review["reviewer"]}: {review["why"]}'.strip())
        if h.trial == review['trial'] else h for h in self.history]

  def book(self, usage: dict[str, Any]) -> None:
    """Adds one LLM call's tokens and cost to the run's totals."""
    self.tokens += int(usage.get('input_tokens', 0)) + int(usage.get('output_tokens', 0))
    self.cost_usd += float(usage.get('cost_usd') or 0.0)
