"""`verify` checks the record against the world: the rule, git, the scorecard files, the anchor.

A forger who rewrites the whole journal keeps a valid hash chain, so these tests forge
journals that way (and edit git and files behind the run's back) and expect verify to name
what lies. One honest run is built once and copied back to its own path for each test.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from agent.charter import load_charter
from agent.judging import decide as decide_lib
from agent.recording import review, vcs
from agent.recording.audit import Rule, verify_run
from agent.recording.journal import Journal
from harness.scorecard import TEST_SCORECARD, summarize
from tests.agent_workspace import git
from tests.test_agent_e2e import agent
from tests.test_agent_loop import (DataChangingRunner, ScriptedProposer, SimulatedRunner,
                                   make_loop, set_lr)


class FinalRunner(SimulatedRunner):
  """Also writes the test split's scorecard, as the trusted scorer does at the end."""

  def __call__(self, spec, scorer=None, on_curve=None):
    outcome = super().__call__(spec, scorer, on_curve)
    if spec.workdir.parent.name == 'final':
      test = [v - 0.01 for v in outcome.scorecard['val_metric']['per_seed']]
      (spec.workdir / TEST_SCORECARD).write_text(json.dumps({'test_metric': summarize(test)}))
    return outcome


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
  """A confirmed win (trial 1), a rejection (trial 2), the final evaluation: built once."""
  base = tmp_path_factory.mktemp('audit')
  (base / 'live').mkdir()
  runner = FinalRunner(effect_per_lr={1e-2: 0.05})
  proposer = ScriptedProposer([('lr_up', set_lr(1e-2)), ('lr_nudge', set_lr(1.1e-2))])
  _, loop, journal = make_loop(base / 'live', proposer, runner, trials=2)
  reason = loop.run()
  loop.final_evaluation()
  journal.append('run_finished', {'reason': reason})
  loop.end_session(reason)
  assert [v.payload['accepted'] for v in journal.records('verdict')] == [True, False]
  journal.close()
  shutil.copytree(base / 'live', base / 'pristine', symlinks=True)
  return base


@pytest.fixture
def run(pristine):
  """A fresh copy of the honest run, at the path its records and worktrees name."""
  shutil.rmtree(pristine / 'live')
  shutil.copytree(pristine / 'pristine', pristine / 'live', symlinks=True)
  repo = pristine / 'live' / 'workspace'
  journal = Journal.open(repo / 'runs/r1/journal.sqlite')
  yield repo, journal
  journal.close()


def _forge(journal: Journal, kind: str | None = None, trial: int | None = None,
           change=lambda payload: payload) -> Journal:
  """The journal rewritten in place with a valid chain (new timestamps, so new hashes), one
  record's payload changed, as a forger with write access to the run folder would."""
  records, path = journal.records(), journal.path
  journal.close()
  for suffix in ('', '-wal', '-shm'):
    Path(f'{path}{suffix}').unlink(missing_ok=True)
  forged = Journal.open(path)
  for record in records:
    payload = record.payload
    if record.kind == kind and record.trial == trial:
      payload = change(json.loads(json.dumps(payload)))
    forged.append(record.kind, payload, trial=record.trial)
  assert forged.verify() is None  # the chain alone cannot tell
  return forged


def _set(**fields):
  return lambda payload: {**payload, **fields}


def test_an_honest_run_verifies_and_its_anchor_names_the_head(run):
  repo, journal = run
  assert verify_run(repo, journal) is None
  head = journal.head()
  assert vcs.read_text_ref(repo, 'refs/agent/r1/anchor') == f'{head.seq} {head.hash}\n'
  looks = journal.last('verdict', trial=1).payload['looks']
  assert len(looks) == 1 and set(looks[0]) == {'incumbent', 'candidate'}
  charter = load_charter(repo / 'WORKSPACE.md')
  rule = Rule.recorded(journal.records()[0].payload['charter'])
  assert rule.policy == decide_lib.AcceptancePolicy.of(charter)


@pytest.mark.parametrize('trial, change, named', [
    (2, _set(accepted=True), 'the verdict says accepted ('),
    (1, _set(accepted=False), 'the verdict says rejected (improved), but the charter\'s rule '
     'on the recorded arms gives accepted (improved)'),
    (2, _set(reason_code='train_time'), 'the verdict says rejected (train_time)'),
    (1, _set(rationale='Accepted: a huge gain.'), 'the rationale is not what the charter'),
    (1, _set(gain=0.5), 'the verdict\'s gain is 0.5, the rule gives'),
    (1, _set(looks=None), 'the verdict records no arms for look 2'),
])
def test_a_verdict_that_contradicts_the_rule_is_named_even_when_rehashed(run, trial, change,
                                                                         named):
  repo, journal = run
  forged = _forge(journal, 'verdict', trial, change)
  problem = verify_run(repo, forged)
  assert f'kind=verdict, trial {trial}' in problem and named in problem, problem


def test_a_forged_look_arm_is_named(run):
  repo, journal = run

  def inflate(payload):
    payload['looks'][0]['candidate']['per_seed'][0] += 0.2
    return payload
  problem = verify_run(repo, _forge(journal, 'verdict', 1, inflate))
  assert 'kind=verdict, trial 1' in problem and 'confirm_candidate' in problem
  assert 'val_metric.per_seed' in problem


def test_a_look_more_than_the_test_needed_is_named(run):
  repo, journal = run
  problem = verify_run(repo, _forge(journal, 'verdict', 1,
                                    lambda payload: {**payload, 'looks': payload['looks'] * 2}))
  assert 'kind=verdict, trial 1' in problem
  assert 'records 2 looks after the screen, but the test decided after 1' in problem


def test_a_look_that_did_not_finish_must_reject(run):
  repo, journal = run
  forged = _forge(journal, 'confirm_finished', 1, _set(candidate='timeout'))
  problem = verify_run(repo, forged)
  assert 'the verdict says accepted (improved)' in problem
  assert 'gives rejected (confirm_failed)' in problem


def test_a_run_judged_by_the_fixed_rule_is_named_not_misjudged():
  old = {'acceptance': {'alpha': 0.05, 'noise_multiplier': 2.0, 'min_delta': 0.002,
                        'confirm_on_fresh_seeds': True}}
  with pytest.raises(Exception, match='fixed screen-and-confirm rule'):
    Rule.recorded(old)


def test_records_cut_off_the_end_are_caught_by_the_anchor(run):
  repo, journal = run
  last = journal.head().seq
  db = sqlite3.connect(journal.path)
  db.execute('DROP TRIGGER records_no_delete')
  db.execute('DELETE FROM records WHERE seq > ?', (last - 3,))
  db.commit()
  db.close()
  assert journal.verify() is None  # a prefix of a chain is a chain
  problem = verify_run(repo, journal)
  assert problem == (f'journal anchor refs/agent/r1/anchor: the journal ends at record '
                     f'{last - 3}, but its anchor names record {last}: records were removed')


def test_a_journal_rehashed_wholesale_is_caught_by_the_anchor(run):
  repo, journal = run
  last = journal.head().seq
  problem = verify_run(repo, _forge(journal))
  assert problem.startswith('journal anchor refs/agent/r1/anchor: ')
  assert f'record {last} does not have the hash its anchor names' in problem


def test_a_deleted_anchor_is_named(run):
  repo, journal = run
  git(repo, 'update-ref', '-d', 'refs/agent/r1/anchor')
  assert 'refs/agent/r1/anchor: it is missing' in verify_run(repo, journal)


@pytest.mark.parametrize('file, key', [('scorecard.json', 'val_metric'),
                                       (TEST_SCORECARD, 'test_metric')])
def test_an_edited_final_summary_is_named(run, file, key):
  repo, journal = run
  path = repo / 'runs/r1/final/final' / file
  card = json.loads(path.read_text())
  card[key]['mean'] += 0.05
  path.write_text(json.dumps(card))
  problem = verify_run(repo, journal)
  assert 'kind=final_eval' in problem and f'{key}.mean is' in problem
  assert 'but its per_seed values give' in problem


def test_final_per_seed_values_edited_with_their_summary_are_named(run):
  repo, journal = run
  path = repo / 'runs/r1/final/final' / TEST_SCORECARD
  card = json.loads(path.read_text())
  card['test_metric'] = summarize([v + 0.05 for v in card['test_metric']['per_seed']])
  path.write_text(json.dumps(card))
  problem = verify_run(repo, journal)
  assert 'kind=final_eval' in problem and 'test_metric.per_seed is' in problem
  assert 'the journal recorded' in problem


@pytest.mark.parametrize('tamper, named', [
    (lambda repo: git(repo, 'update-ref', '-d', 'refs/agent/r1/rejected/2'),
     'refs/agent/r1/rejected/2 is missing'),
    (lambda repo: git(repo, 'update-ref', 'refs/agent/r1/rejected/2', 'agent/r1'),
     'refs/agent/r1/rejected/2 names '),
])
def test_a_rejected_trials_ref_that_is_gone_or_moved_is_named(run, tamper, named):
  repo, journal = run
  tamper(repo)
  problem = verify_run(repo, journal)
  assert 'kind=verdict, trial 2' in problem and named in problem, problem


@pytest.mark.parametrize('tamper', [
    lambda worktree, start: git(worktree, 'reset', '--quiet', '--hard', start),
    lambda worktree, start: git(worktree, 'commit', '--quiet', '--amend', '-m', 'rewritten'),
])
def test_a_branch_moved_off_the_incumbent_is_named(run, tamper):
  repo, journal = run
  incumbent = journal.last('verdict', trial=1).payload['commit']
  tamper(repo / 'runs/r1/worktree', journal.records()[0].payload['config']['start_commit'])
  head = git(repo, 'rev-parse', 'agent/r1')
  assert verify_run(repo, journal) == (f'branch agent/r1: the branch is at {head[:10]}, not at '
                                       f'the journal\'s incumbent {incumbent[:10]}')


def test_verify_exits_1_naming_the_problem(run):
  repo, journal = run
  git(repo, 'update-ref', '-d', 'refs/agent/r1/rejected/2')
  result = agent(repo, 'verify', '--run_id=r1')
  assert result.returncode == 1 and 'refs/agent/r1/rejected/2 is missing' in result.stdout


def test_a_scorecard_edited_after_the_fact_is_named(run):
  repo, journal = run
  card_path = Path(journal.last('verdict', trial=1).payload['candidate']['workdir'],
                   'scorecard.json')
  card = json.loads(card_path.read_text())
  card['val_metric']['per_seed'][0] += 0.1
  card_path.write_text(json.dumps(card))
  problem = verify_run(repo, journal)
  assert problem.startswith('record ') and 'kind=verdict, trial 1' in problem
  assert 'changed after it was recorded' in problem


def test_a_forged_metric_is_named_even_with_a_valid_chain(run):
  repo, journal = run

  def inflate(payload):
    payload['candidate']['per_seed'][0] += 0.2
    return payload
  problem = verify_run(repo, _forge(journal, 'verdict', 2, inflate))
  assert 'kind=verdict, trial 2' in problem and 'val_metric.per_seed' in problem


def test_a_kept_commit_that_does_not_carry_the_recorded_diff_is_named(run):
  repo, journal = run

  def other_diff(payload):
    payload['diff'] = payload['diff'].replace('= 1e-2', '= 2e-2')
    return payload
  problem = verify_run(repo, _forge(journal, 'trial_started', 1, other_diff))
  assert 'kind=verdict, trial 1' in problem and 'does not change what the journal recorded' \
      in problem


def test_a_commit_missing_from_the_repository_is_named(run):
  repo, journal = run
  problem = verify_run(repo, _forge(journal, 'verdict', 2, _set(commit='f' * 40)))
  assert 'kind=verdict, trial 2' in problem and 'ffffffffff is not in the repository' in problem


class Fails(SimulatedRunner):
  """Trial 1's screen ends with `status` instead of a scorecard."""

  def __init__(self, status, **kwargs):
    super().__init__(**kwargs)
    self.status = status

  def __call__(self, spec, scorer=None, on_curve=None):
    outcome = super().__call__(spec, scorer, on_curve)
    if spec.workdir.name == 'screen':
      if self.status == 'killed':  # the agent itself dies mid-trial
        raise KeyboardInterrupt
      return dataclasses.replace(outcome, status=self.status, scorecard=None, reason='ran long')
    return outcome


@pytest.mark.parametrize('runner, code', [
    (SimulatedRunner(effect_per_lr={1e-2: 0.005}, time_factor={1e-2: 3.0}, independent=0.0),
     'train_time'),
    (DataChangingRunner(effect_per_lr={1e-2: 0.2}), 'data_changed'),
    (Fails('timeout', effect_per_lr={1e-2: 0.05}), 'timeout'),
    (Fails('killed', effect_per_lr={1e-2: 0.05}), None),
])
def test_other_honest_endings_verify(tmp_path, runner, code):
  """Rejections the loop makes without the rule (and a trial cut short by a kill, which
  leaves the branch at its candidate) recompute too; min_effect below the train-time rule's
  gain, so a gain can pass the test and still fail that rule."""
  repo, loop, journal = make_loop(tmp_path, ScriptedProposer([('lr_up', set_lr(1e-2))]),
                                  runner, trials=1, charter_text=lambda text: text.replace(
                                      'min_effect = 0.02', 'min_effect = 0.004'))
  try:
    loop.run()
  except KeyboardInterrupt:
    assert git(repo, 'rev-parse', 'agent/r1') == journal.last('trial_started').payload['commit']
  verdict = journal.last('verdict')
  assert (verdict.payload['reason_code'] if verdict else None) == code
  assert verify_run(repo, journal) is None


def test_a_run_whose_winner_was_approved_in_review_verifies(tmp_path):
  runner = SimulatedRunner(effect_per_lr={1e-2: 0.05})
  repo, loop, journal = make_loop(tmp_path, ScriptedProposer([('lr_up', set_lr(1e-2))]),
                                  runner, trials=1, review='required')
  loop.run()
  loop.end_session('awaits review')
  assert verify_run(repo, journal) is None
  review.decide(journal, repo, loop.run_dir, 1, approved=True, why='fine', reviewer='alice')
  assert git(repo, 'rev-parse', 'agent/r1') == journal.last('review').payload['commit']
  assert verify_run(repo, journal) is None


def test_the_final_evaluation_gets_the_charters_trial_time_when_the_search_spent_its_budget(
    tmp_path):
  timeouts: dict[str, float] = {}
  base = FinalRunner()

  def runner(spec, scorer=None, on_curve=None):
    timeouts[f'{spec.workdir.parent.name}/{spec.workdir.name}'] = spec.timeout_s
    return base(spec, scorer, on_curve)

  # A spent minute budget: a search trial would get the 30 s floor.
  _, loop, _ = make_loop(tmp_path, ScriptedProposer([]), runner, trials=0, budget_minutes=0)
  loop.run()
  loop.final_evaluation()
  assert timeouts['final/baseline'] == timeouts['final/final'] == 10 * 60
