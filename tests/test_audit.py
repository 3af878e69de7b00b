"""`verify` checks the record against the world: commits, diffs and scorecard files.

A forger who rewrites the whole journal keeps a valid hash chain, so these tests forge
journals that way and expect the cross-checks to name the record that lies.
"""

from __future__ import annotations

import json

from agent.audit import verify_run
from agent.journal import Journal
from tests.test_agent_loop import ScriptedProposer, SimulatedRunner, make_loop, set_lr


def _run(tmp_path):
  runner = SimulatedRunner(effect_per_lr={1e-2: 0.05})
  proposer = ScriptedProposer([('lr_up', set_lr(1e-2)), ('lr_nudge', set_lr(1.1e-2))])
  repo, loop, journal = make_loop(tmp_path, proposer, runner, trials=2)
  loop.run()
  assert journal.last('verdict', trial=1).payload['accepted']
  return repo, journal


def _forge(journal: Journal, path, kind: str, trial: int | None, change) -> Journal:
  """A new journal with a valid chain in which one record's payload was changed."""
  forged = Journal.open(path)
  for record in journal.records():
    payload = record.payload
    if record.kind == kind and record.trial == trial:
      payload = change(json.loads(json.dumps(payload)))
    forged.append(record.kind, payload, trial=record.trial)
  return forged


def test_an_honest_run_verifies(tmp_path):
  repo, journal = _run(tmp_path)
  assert verify_run(repo, journal) is None


def test_a_scorecard_edited_after_the_fact_is_named(tmp_path):
  repo, journal = _run(tmp_path)
  workdir = journal.last('verdict', trial=1).payload['candidate']['workdir']
  card_path = tmp_path / workdir / 'scorecard.json'
  card = json.loads(card_path.read_text())
  card['val_metric']['per_seed'][0] += 0.1
  card_path.write_text(json.dumps(card))
  problem = verify_run(repo, journal)
  assert problem.startswith('record ') and 'kind=verdict, trial 1' in problem
  assert 'changed after it was recorded' in problem


def test_a_forged_metric_is_named_even_with_a_valid_chain(tmp_path):
  repo, journal = _run(tmp_path)

  def inflate(payload):
    payload['candidate']['per_seed'][0] += 0.2
    return payload
  forged = _forge(journal, tmp_path / 'forged.sqlite', 'verdict', 2, inflate)
  assert forged.verify() is None  # the chain alone cannot tell
  problem = verify_run(repo, forged)
  assert 'kind=verdict, trial 2' in problem and 'val_metric.per_seed' in problem


def test_a_kept_commit_that_does_not_carry_the_recorded_diff_is_named(tmp_path):
  repo, journal = _run(tmp_path)

  def other_diff(payload):
    payload['diff'] = payload['diff'].replace('= 1e-2', '= 2e-2')
    return payload
  forged = _forge(journal, tmp_path / 'forged.sqlite', 'trial_started', 1, other_diff)
  problem = verify_run(repo, forged)
  assert 'kind=verdict, trial 1' in problem and 'does not change what the journal recorded' \
      in problem


def test_a_commit_missing_from_the_repository_is_named(tmp_path):
  repo, journal = _run(tmp_path)

  def elsewhere(payload):
    payload['commit'] = 'f' * 40
    return payload
  forged = _forge(journal, tmp_path / 'forged.sqlite', 'verdict', 2, elsewhere)
  problem = verify_run(repo, forged)
  assert 'kind=verdict, trial 2' in problem and 'ffffffffff is not in the repository' in problem
