"""Human sign-off: a winner waits for a person, and the run goes on from their decision."""

from __future__ import annotations

import re

import pytest

from agent.charter import load_charter
from agent.loop import Loop
from agent.recording import review
from agent.recording.state import RunState
from tests.agent_workspace import git
from tests.test_agent_e2e import agent
from tests.test_agent_loop import ScriptedProposer, SimulatedRunner, make_loop, set_lr


def _waiting_run(tmp_path):
  runner = SimulatedRunner(effect_per_lr={1e-2: 0.05, 2e-2: 0.08})
  proposer = ScriptedProposer([('lr_up', set_lr(1e-2)), ('lr_up_more', set_lr(2e-2))])
  repo, loop, journal = make_loop(tmp_path, proposer, runner, trials=2, review='required')
  reason = loop.run()
  return repo, loop, journal, proposer, runner, reason


def _resume(repo, loop, journal, proposer, runner):
  """A later session of the same run, as `agent.main resume` builds it."""
  return Loop(repo, loop.run_dir, load_charter(repo / 'WORKSPACE.md'), proposer, journal,
              RunState.replay(journal), execute=runner, print_fn=lambda _: None)


def test_a_winner_waits_without_advancing_the_branch(tmp_path):
  repo, loop, journal, _, _, reason = _waiting_run(tmp_path)
  assert 'trial 1 won and awaits review' in reason
  verdict = journal.last('verdict', trial=1).payload
  assert verdict['awaiting_review'] and not verdict['accepted']
  start = loop.config.start_commit
  assert loop.worktree.head() == start == loop.state.incumbent.commit
  assert git(repo, 'rev-parse', 'refs/agent/r1/pending/1') == verdict['commit']
  text = review.describe(journal)
  assert 'trial 1 awaits review' in text and 'scripted lr_up' in text
  assert 'learning_rate' in text and 'approve 1' in text
  # Resuming before a decision stops again at once; nothing runs.
  again = _resume(repo, loop, journal, ScriptedProposer([]), SimulatedRunner())
  assert 'awaits review' in again.run()


def test_approval_makes_the_winner_the_incumbent_and_the_run_goes_on(tmp_path):
  repo, loop, journal, proposer, runner, _ = _waiting_run(tmp_path)
  winner = journal.last('verdict', trial=1).payload['commit']
  line = review.decide(journal, repo, loop.run_dir, 1, approved=True, why='looks right',
                       reviewer='alice')
  assert 'approved' in line and 'resume' in line
  assert git(repo, 'rev-parse', 'agent/r1') == winner
  resumed = _resume(repo, loop, journal, proposer, runner)
  assert resumed.state.incumbent.commit == winner
  resumed.run()
  second = journal.last('verdict', trial=2).payload
  assert second['awaiting_review']  # 2e-2 beats 1e-2 and waits in turn
  assert git(repo, 'rev-parse', f'{second["commit"]}^') == winner
  assert journal.last('review').payload == {'trial': 1, 'approved': True, 'why': 'looks right',
                                            'reviewer': 'alice', 'commit': winner}
  assert journal.verify() is None


def test_rejection_keeps_the_old_incumbent_and_records_why(tmp_path):
  repo, loop, journal, proposer, runner, _ = _waiting_run(tmp_path)
  start = loop.config.start_commit
  candidate = journal.last('verdict', trial=1).payload['commit']
  review.decide(journal, repo, loop.run_dir, 1, approved=False, why='too slow to serve',
                reviewer='bob')
  assert git(repo, 'rev-parse', 'refs/agent/r1/rejected/1') == candidate
  state = RunState.replay(journal)
  assert state.incumbent.commit == start and state.awaiting_review is None
  assert state.history[0].reason_code == 'rejected_in_review'
  assert 'too slow to serve' in state.history[0].rationale
  resumed = _resume(repo, loop, journal, proposer, runner)
  resumed.run()
  assert git(repo, 'rev-parse', f'{journal.last("verdict", trial=2).payload["commit"]}^') == start


@pytest.mark.parametrize('trial, approved, why, message', [
    (2, True, '', 'trial 2 does not await review (trial 1 does)'),
    (1, False, ' ', 'a rejection needs its reason'),
])
def test_decisions_that_do_not_fit_are_refused(tmp_path, trial, approved, why, message):
  repo, loop, journal, *_ = _waiting_run(tmp_path)
  with pytest.raises(review.ReviewError, match=re.escape(message)):
    review.decide(journal, repo, loop.run_dir, trial, approved, why)
  assert journal.last('review') is None


def test_without_review_there_is_nothing_to_decide(tmp_path):
  runner = SimulatedRunner(effect_per_lr={1e-2: 0.05})
  repo, loop, journal = make_loop(tmp_path, ScriptedProposer([('lr_up', set_lr(1e-2))]),
                                  runner, trials=1)
  loop.run()
  assert journal.last('verdict').payload['accepted']
  assert review.describe(journal) == 'no change awaits review'
  with pytest.raises(review.ReviewError, match='no change awaits review'):
    review.decide(journal, repo, loop.run_dir, 1, approved=True, why='')


def test_the_review_commands_on_the_command_line(tmp_path):
  repo, loop, journal, *_ = _waiting_run(tmp_path)
  shown = agent(repo, 'review', '--run_id=r1')
  assert shown.returncode == 0 and 'trial 1 awaits review' in shown.stdout
  bad = agent(repo, 'approve', 'one', '--run_id=r1')
  assert bad.returncode == 2 and bad.stderr.count('\n') == 1 and 'usage: approve N' in bad.stderr
  no_reason = agent(repo, 'reject', '1', '--run_id=r1')
  assert no_reason.returncode == 2 and 'needs its reason' in no_reason.stderr
  done = agent(repo, 'reject', '1', '--why=not convincing', '--run_id=r1')
  assert done.returncode == 0 and 'trial 1 rejected' in done.stdout
  assert 'review: rejected by' in agent(repo, 'log', '--run_id=r1').stdout
  assert agent(repo, 'verify', '--run_id=r1').returncode == 0
