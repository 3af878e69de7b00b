"""Human sign-off: what a reviewer sees of a waiting winner, and the record of the decision.

With `--review=required` the loop stops at a winner instead of advancing the branch (see
state.RunState.awaiting_review). A person reads `review`, then `approve N` or `reject N
--why ...`; the decision is a journal record, so it is hash-chained with everything else,
and `resume` goes on from whichever incumbent the decision leaves.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

from agent.recording import records, vcs
from agent.recording.journal import Journal
from agent.recording.state import RunState
from agent.untrusted import one_line


class ReviewError(ValueError):
  """A decision that does not fit the run's state (no such waiting trial, say)."""


def describe(journal: Journal) -> str:
  """The waiting change: hypothesis, evidence and diff, in the words the journal holds."""
  state = RunState.replay(journal)
  if state.awaiting_review is None:
    return 'no change awaits review'
  trial, verdict = state.awaiting_review.trial, state.awaiting_review.body
  proposal = journal.latest(records.Proposed, trial)
  started = journal.latest(records.TrialStarted, trial)
  incumbent, candidate = state.incumbent, verdict.candidate
  lines = [f'trial {trial} awaits review (commit {verdict.commit[:10]}, '
           f'on top of the incumbent {incumbent.commit[:10]})',
           f'  operator:        {one_line(proposal.operator)}',
           f'  diagnosis:       {one_line(proposal.diagnosis)}',
           f'  hypothesis:      {one_line(proposal.hypothesis)}',
           f'  expected effect: {one_line(proposal.expected_effect)}',
           f'  evidence:        {one_line(verdict.rationale)}',
           f'  incumbent seeds: {_values(incumbent.per_seed)}',
           f'  candidate seeds: {_values(candidate.per_seed)}',
           f'  train seconds:   {incumbent.train_seconds:.1f} -> {candidate.train_seconds:.1f}',
           '', started.diff.rstrip(), '',
           f'decide with: approve {trial}   or   reject {trial} --why "..."']
  return '\n'.join(lines)


def decide(journal: Journal, repo: Path, run_dir: Path, trial: int, approved: bool,
           why: str, reviewer: str | None = None) -> str:
  """Records the decision and moves the run's branch to match it; returns one line."""
  state = RunState.replay(journal)
  if state.awaiting_review is None:
    raise ReviewError('no change awaits review in this run')
  if state.awaiting_review.trial != trial:
    raise ReviewError(f'trial {trial} does not await review (trial '
                      f'{state.awaiting_review.trial} does)')
  if not approved and not why.strip():
    raise ReviewError('a rejection needs its reason: --why "..."')
  reviewer = reviewer or getpass.getuser()
  run_id, commit = state.config.run_id, state.awaiting_review.body.commit
  worktree = vcs.Worktree(repo, run_dir / 'worktree', f'agent/{run_id}')
  if approved:
    worktree.reset_to(commit)
  else:
    worktree.keep_ref(f'refs/agent/{run_id}/rejected/{trial}', commit)
  journal.anchor_with(vcs.anchor_writer(repo, run_id))
  journal.write(records.Review(trial=trial, approved=approved, why=why, reviewer=reviewer,
                               commit=commit), trial=trial)
  word = 'approved' if approved else 'rejected'
  return (f'trial {trial} {word}; continue the run with `python -m agent.main resume '
          f'--run_id={run_id}`')


def _values(values: list[Any]) -> str:
  return ', '.join(f'{v:.4f}' if isinstance(v, float) else str(v) for v in values)
