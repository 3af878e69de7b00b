"""What a proposer sees and what it answers: the one seam every proposer plugs into.

The loop builds an `Observation`, asks a proposer for a `Proposal`, and from then on
treats every proposer alike: the proposal's `changes` (new file texts) go through the
guard, become a diff and a commit, and are run and judged the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol

from agent.charter import Charter
from agent.editing.knobs import Knob
from agent.recording.records import Proposed
from agent.recording.state import TrialSummary


@dataclasses.dataclass(frozen=True)
class Observation:
  """The incumbent as the agent sees it before proposing trial number `trial`."""
  charter: Charter
  experiment: str  # path of the experiment config, relative to the worktree
  files: Mapping[str, str]  # editable files the proposal may start from: path -> text
  knobs: list[Knob]
  scorecard: Mapping[str, Any]  # the incumbent's validation scorecard (curve included)
  direction: str  # 'max' | 'min' for the objective metric
  history: list[TrialSummary]
  trial: int
  # What the run's budget has left (wall clock or compute seconds, the lesser); None: unknown.
  budget_left_seconds: float | None = None


class Proposal(Proposed):
  """A hypothesis and the edit that tests it; the journal keeps it as it is (`to_record`,
  `from_record` on resume).

  `changes` maps a worktree-relative path to its full new text, or None to delete it.
  `operator` names the kind of edit (for example 'lr_down', 'to_cnn1d'); the proposer's
  statistics of which operators pay off are kept under these names.
  """


class NoProposal(Exception):
  """The proposer has nothing left to try (its search space is exhausted)."""


class ProposalFailed(Exception):
  """The proposer tried and produced no usable proposal (say, an LLM's answers stayed
  malformed after every retry, or its endpoint kept failing). The loop records the attempt
  as a failed trial, which counts against the trial budget, and goes on."""


class Proposer(Protocol):
  """Any proposer: heuristic, LLM, or a test double."""
  name: str

  def propose(self, observation: Observation) -> Proposal:
    """Returns the next proposal, or raises NoProposal."""

  def learn(self, proposal: Proposal, accepted: bool, gain: float | None) -> None:
    """Updates the proposer's statistics after the trial's verdict."""
