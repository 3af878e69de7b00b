"""Where a run stands, rebuilt from its journal alone: the run's settings, the incumbent arm,
the trials spent, the session clock and what a proposer may see of earlier trials.

Nothing else is trusted on resume, so a run killed at any moment continues without losing
or double-counting a trial; `verify`, `review` and `report` read the same replay.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import signal
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from agent.recording import records
from agent.recording.journal import Journal, Record
from agent.recording.records import ArmRecord, RunConfig


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

  def see(self, record: Record) -> float:
    """Seconds to add to the elapsed total once `record` is seen."""
    now = _seconds(record.ts)
    added = 0.0
    if isinstance(record.body, records.SessionStarted):
      added = self.close(until=now)
      self.start = (record.seq, now)
    elif isinstance(record.body, records.SessionEnded) and self.start is not None:
      added, self.start = float(record.body.elapsed_seconds), None
    self.last = now
    return added

  def close(self, until: float | None = None) -> float:
    """The open session's time, if it never ended (killed, or running now); never past
    `until`, the next session's start (a heartbeat cannot outlive its session)."""
    if self.start is None:
      return 0.0
    seq, began = self.start
    self.start = None
    end = self.last
    if self.heartbeat.get('session') == seq and isinstance(self.heartbeat.get('time'), str):
      end = max(end, _seconds(self.heartbeat['time']))
    if until is not None:
      end = min(end, until)
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
  since_accept: int = 0  # tries (a trial, or a batch trained together) since a kept change
  compute_seconds: float = 0.0
  elapsed_before: float = 0.0  # wall seconds spent in earlier sessions of this run
  history: list[TrialSummary] = dataclasses.field(default_factory=list)
  pending: Record | None = None  # a proposal whose trial never got a verdict
  later: list[Record] = dataclasses.field(default_factory=list)  # more such, after pending
  awaiting_review: Record | None = None  # a winner's verdict, until a person decides
  tokens: int = 0
  cost_usd: float = 0.0
  finished: bool = False
  data: records.DataPinned | None = None  # the run's pinned dataset config and fingerprints
  last_trial: int = 0  # the highest trial number proposed or ended (trials end out of order)
  bases: dict[int, str] = dataclasses.field(default_factory=dict)  # trial -> incumbent it ran on
  # late wins (verdicts STALE) not yet judged again: (trial, its proposal, its commit)
  stale: list[tuple[int, records.Proposed, str]] = dataclasses.field(default_factory=list)

  @classmethod
  def replay(cls, journal: Journal) -> RunState:
    entries = journal.records()
    if not entries or not isinstance(entries[0].body, records.RunStarted):
      raise ValueError(f'{journal.path} does not start with a run_started record')
    state = cls(entries[0].body.config)
    proposals: dict[int, Record] = {}
    batches: dict[int, list[int] | None] = {}  # trial -> its batch, as its last screen ran
    clock = _SessionClock(heartbeat_of(journal.path.parent))
    for record in entries:
      body = record.body
      state.elapsed_before += clock.see(record)
      if isinstance(body, records.DataPinned) and body.experiment is None:
        state.data = body
      elif isinstance(body, records.Baseline):
        state.incumbent = body.arm
      if isinstance(body, (records.TrialFinished, records.ConfirmFinished, records.Baseline)):
        state.compute_seconds += body.wall_seconds
      if isinstance(body, records.TrialFinished):
        batches[record.trial] = body.batch
      if isinstance(body, records.TrialStarted) and body.incumbent:
        state.bases[record.trial] = body.incumbent
      if isinstance(body, records.Proposed):
        proposals[record.trial] = record
        state.last_trial = max(state.last_trial, record.trial)
        state.stale = [late for late in state.stale if late[0] != body.rejudges]
      elif isinstance(body, records.TRIAL_ENDS):
        proposal = proposals.pop(record.trial, None)
        state.count(record, proposal.body if proposal else None, batches.get(record.trial))
      elif isinstance(body, records.Review):
        state.reviewed(body)
      elif isinstance(body, records.LlmUsage):
        state.book(body)
      elif isinstance(body, records.RunFinished):
        state.finished = True
    state.elapsed_before += clock.close()
    # an interrupted batch, or trials in flight side by side (--workers): several
    waiting = [proposals[trial] for trial in sorted(proposals)]
    state.pending, state.later = (waiting[0], waiting[1:]) if waiting else (None, [])
    return state

  def count(self, end: Record, proposed: records.Proposed | None,
            batch: Sequence[int] | None = None) -> None:
    """Folds one finished trial (its verdict, guard rejection or failed proposal) into the
    state; `proposed` is the trial's proposal, if it had one. The trials of a `batch` are one
    try for patience: a sweep of four rates is one idea tested, not four."""
    verdict: records.TrialEnd = end.body
    self.trials_done += 1
    self.last_trial = max(self.last_trial, end.trial)
    awaiting = isinstance(verdict, records.Verdict) and verdict.awaiting_review
    if awaiting:
      self.awaiting_review = end
    elif verdict.accepted:
      self.since_accept = 0
    elif verdict.reason_code == records.STALE:
      pass  # a win that came too late is judged again: that try counts, this one does not
    elif not batch or end.trial == min(batch):
      self.since_accept += 1
    if verdict.accepted:
      self.incumbent = verdict.candidate
    if verdict.reason_code == records.STALE and proposed is not None:
      self.stale.append((end.trial, proposed, verdict.commit))
    self.history.append(TrialSummary(
        trial=end.trial, operator=proposed.operator if proposed else '?',
        hypothesis=proposed.hypothesis if proposed else '', accepted=verdict.accepted,
        reason_code=verdict.reason_code, gain=verdict.gain,
        changes=proposed.changes if proposed else {}, rationale=verdict.rationale,
        log_excerpt=getattr(verdict, 'log_excerpt', None) or ''))

  def reviewed(self, review: records.Review) -> None:
    """Folds a person's decision on the winner that waits for review into the state."""
    waiting = self.awaiting_review
    if waiting is None or waiting.trial != review.trial:
      raise ValueError(f'review of trial {review.trial}, which does not await review')
    self.awaiting_review = None
    self.since_accept = 0 if review.approved else self.since_accept + 1
    if review.approved:
      self.incumbent = waiting.body.candidate
    words = 'approved by' if review.approved else 'rejected by'
    self.history = [dataclasses.replace(
        h, accepted=review.approved,
        reason_code=h.reason_code if review.approved else 'rejected_in_review',
        rationale=f'{h.rationale} {words} {review.reviewer}: {review.why}'.strip())
        if h.trial == review.trial else h for h in self.history]

  def book(self, usage: records.LlmUsage) -> None:
    """Adds one LLM call's tokens and cost to the run's totals."""
    self.tokens += usage.input_tokens + usage.output_tokens
    self.cost_usd += float(usage.cost_usd or 0.0)
