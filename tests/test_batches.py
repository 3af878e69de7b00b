"""Batched candidates: which proposals may train together, how the loop judges and records a
batch (each candidate its own trial, the winner confirmed alone), resume, and one real run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from agent.charter import Charter
from agent.editing import batching, config_edit, knobs
from agent.loop import Loop
from agent.proposing.heuristic import HeuristicProposer
from agent.proposing.proposal import Observation, Proposal
from agent.recording.audit import verify_run
from agent.recording.state import RunState, TrialSummary
from agent.safety.executor import TrialOutcome, run_batch
from harness import scoring
from tests.agent_workspace import TINY_EXPERIMENT, fake_scorecard, git, write_scorecard
from tests.test_agent_loop import SEED_NOISE, ScriptedProposer, SimulatedRunner, make_loop, set_lr

EXPERIMENT = (
    "import ml_collections\n\n\ndef get_config():\n  config = ml_collections.ConfigDict()\n"
    "  config.optimizer = ml_collections.ConfigDict()\n"
    "  config.optimizer.learning_rate = 1e-3  # the step size\n"
    "  config.optimizer.weight_decay = 0.0\n"
    "  config.model = ml_collections.ConfigDict()\n  config.model.width = 64\n"
    "  return config\n")


def _edit(path, value, text=EXPERIMENT):
  return {'exp.py': config_edit.set_value(text, path, value)}


@pytest.mark.parametrize('changes, expected', [
    (_edit('optimizer.learning_rate', 3e-3), {'optimizer.learning_rate': 3e-3}),
    (_edit('optimizer.weight_decay', 1e-4), {'optimizer.weight_decay': 1e-4}),
    (_edit('model.width', 128), None),  # changes a shape: trains alone
    ({'exp.py': EXPERIMENT.replace('1e-3', '3e-3') + '# and a comment\n'}, None),
    ({**_edit('optimizer.learning_rate', 3e-3), 'models/mlp.py': ''}, None),
    ({'exp.py': EXPERIMENT.replace('0.0\n', 'config.optimizer.learning_rate * 2\n')}, None),
    ({'exp.py': None}, None),
])
def test_only_literal_edits_of_traced_knobs_may_train_in_a_batch(changes, expected):
  assert batching.traced_values('exp.py', {'exp.py': EXPERIMENT}, changes) == expected


def test_a_traced_knob_read_elsewhere_in_the_file_trains_alone():
  text = EXPERIMENT.replace('  return config', '  config.model.lr_copy = 0  # learning_rate\n'
                            '  return config')
  changes = _edit('optimizer.learning_rate', 3e-3, text)
  assert batching.traced_values('exp.py', {'exp.py': text}, changes) is None


class SimulatedBatch:
  """Each member's accuracy from its learning rate, as SimulatedRunner scores a run alone."""

  def __init__(self, effect_per_lr):
    self.effect_per_lr, self.calls = effect_per_lr, []

  def __call__(self, spec, scorer=None, rule=None) -> list[TrialOutcome]:
    self.calls.append(spec)
    outcomes = []
    for index, values in enumerate(spec.members):
      lr = values['optimizer.learning_rate']
      per_seed = [0.80 + self.effect_per_lr.get(lr, 0.0)
                  + SEED_NOISE * np.random.default_rng(s).standard_normal()
                  for s in range(spec.first_seed, spec.first_seed + spec.seeds)]
      card = {**fake_scorecard(per_seed, train_seconds=9.0),
              'batch': {'size': len(spec.members), 'member': index, 'values': values}}
      write_scorecard(spec.workdir / f'member-{index}', card)
      outcomes.append(TrialOutcome('ok', card, card['curve'], 3.0, 0, spec.workdir / 'trial.log',
                                   '', 'ok'))
    return outcomes


class BatchProposer(ScriptedProposer):
  """Proposes each script step's edits as one batch."""

  def propose_batch(self, observation: Observation, size: int) -> list[Proposal]:
    batch = []
    while self.steps and len(batch) < size:
      batch.append(self.propose(observation))
    return batch


def test_a_batch_is_one_process_with_a_trial_and_a_verdict_per_candidate(tmp_path):
  effects = {2e-3: 0.002, 5e-3: 0.05, 8e-3: 0.03}
  proposer = BatchProposer([('lr_up', set_lr(lr)) for lr in effects])
  repo, loop, journal = make_loop(tmp_path, proposer, SimulatedRunner(effects), trials=3)
  batch = loop.execute_batch = SimulatedBatch(effects)
  loop.run()
  assert len(batch.calls) == 1 and [m['optimizer.learning_rate'] for m in
                                    batch.calls[0].members] == list(effects)
  finished = journal.records('trial_finished')
  assert [(r.trial, r.payload['batch']) for r in finished] == [(t, [1, 2, 3]) for t in (1, 2, 3)]
  assert sum(r.payload['wall_seconds'] for r in finished) == pytest.approx(3.0)
  verdicts = {r.trial: r.payload for r in journal.records('verdict')}
  assert [r.trial for r in journal.records('verdict')][-1] == 2  # the winner is recorded last
  assert verdicts[2]['accepted'] and verdicts[2]['confirm_seeds'] == [1000, 1001, 1002]
  assert 'false_accept 0.00333' in verdicts[2]['rationale']  # tested at its share: 1 of 3
  assert verdicts[3]['reason_code'] == 'outranked' and 'trial 2' in verdicts[3]['rationale']
  assert not verdicts[1]['accepted'] and verdicts[1]['reason_code'] != 'outranked'
  # a member's costs are its batch's, so none is compared: no cost rule can fire
  assert verdicts[2]['candidate']['train_seconds'] == 0.0
  assert loop.worktree.head() == verdicts[2]['commit'] == loop.state.incumbent.commit
  assert 'learning_rate = 5e-3' in git(repo, 'show', verdicts[2]['commit'] + f':{TINY_EXPERIMENT}')
  for trial in (1, 3):
    assert git(repo, 'rev-parse', f'refs/agent/r1/rejected/{trial}') == verdicts[trial]['commit']
  assert sorted(proposer.learned) == [('lr_up', False), ('lr_up', False), ('lr_up', True)]
  assert verify_run(repo, journal) is None


def test_an_interrupted_batch_resumes_its_candidates_one_by_one_alone(tmp_path):
  effects = {2e-3: 0.0, 5e-3: 0.05}
  proposer = BatchProposer([('lr_up', set_lr(lr)) for lr in effects])
  repo, loop, journal = make_loop(tmp_path, proposer, SimulatedRunner(effects), trials=2)

  def killed(spec, scorer=None, rule=None):
    raise KeyboardInterrupt
  loop.execute_batch = killed
  with pytest.raises(KeyboardInterrupt):
    loop.run()
  state = RunState.replay(journal)
  assert [state.pending.trial] + [r.trial for r in state.later] == [1, 2]
  runner = SimulatedRunner(effects)
  resumed = Loop(repo, loop.run_dir, loop.charter, ScriptedProposer([]), journal, state,
                 execute=runner, print_fn=lambda _: None)
  resumed.run()
  verdicts = {r.trial: r.payload for r in journal.records('verdict')}
  assert sorted(verdicts) == [1, 2] and verdicts[2]['accepted']
  assert 'batch' not in journal.records('trial_finished')[-1].payload
  assert verify_run(repo, journal) is None


def test_the_heuristic_sweeps_a_traced_knob_and_proposes_anything_else_alone(tmp_path):
  from tests.agent_workspace import make_workspace
  repo = make_workspace(tmp_path)
  experiment = repo / TINY_EXPERIMENT
  files = {TINY_EXPERIMENT: experiment.read_text()}
  card = fake_scorecard([0.9, 0.91, 0.92])
  observation = Observation(Charter(), TINY_EXPERIMENT, files, knobs.inventory(experiment),
                            card, 'max', [], 1)
  proposer = HeuristicProposer(seed=0)
  proposer.bandit.choose = lambda pool, rng, **_: 'lr_up' if 'lr_up' in pool else pool[0]
  batch = proposer.propose_batch(observation, 4)
  values = [batching.traced_values(TINY_EXPERIMENT, files, p.changes) for p in batch]
  assert len(batch) == 4 and all(p.operator == 'lr_up' for p in batch)
  lrs = [v['optimizer.learning_rate'] for v in values]
  assert len(set(lrs)) == 4 and all(lr > 3e-3 for lr in lrs)  # the incumbent's is 3e-3
  alone = HeuristicProposer(seed=0)
  alone.bandit.choose = proposer.bandit.choose
  assert batch[0] == alone.propose(observation)  # a batch starts with what comes alone
  proposer.bandit.choose = lambda pool, rng, **_: 'width_up' if 'width_up' in pool else pool[0]
  # A weak pick on an incumbent whose learning rate is untried gives way to a sweep of it,
  # both directions; once a rate was tried on this incumbent, the pick comes alone.
  sweep = proposer.propose_batch(observation, 4)
  assert [p.operator for p in sweep] == ['lr_down', 'lr_up', 'lr_down', 'lr_up']
  lrs = [batching.traced_values(TINY_EXPERIMENT, files, p.changes)['optimizer.learning_rate']
         for p in sweep]
  assert len(set(lrs)) == 4 and sorted(lr > 3e-3 for lr in lrs) == [False, False, True, True]
  tried = TrialSummary(1, 'lr_down', '', False, 'not_better', -0.01, sweep[0].changes)
  later = dataclasses.replace(observation, history=[tried], trial=2)
  assert [p.operator for p in proposer.propose_batch(later, 4)] == ['width_up']


def test_a_real_batch_trains_in_one_sandboxed_process_and_verifies(tmp_path):
  """Through the real executor and harness: the incumbent trains alongside as member 0 to the
  last rung; at the first rung (step 20 of 60) the trailing candidate of two stops there,
  judged from outside; each scored member's scorecard, written by the trusted side, says it
  trained in a batch; the journal holds the rungs and the run verifies."""
  proposer = BatchProposer([('lr_up', set_lr(lr)) for lr in (1e-4, 1e-2)])
  repo, loop, journal = make_loop(tmp_path, proposer, None, trials=2)
  from agent.safety.executor import run_trial
  loop.execute = run_trial
  loop.execute_batch = run_batch
  loop.run()
  finished = {r.trial: r.payload for r in journal.records('trial_finished')}
  assert [finished[t]['batch'] for t in (1, 2)] == [[1, 2], [1, 2]]
  rungs = [r.payload for r in journal.records('rung')]
  assert [(r['step'], r['total_steps']) for r in rungs] == [(20, 60), (40, 60)]
  first = rungs[0]
  assert sorted(first['kept'] + first['stopped']) == [1, 2] and len(first['stopped']) == 1
  assert first['gains'][str(first['kept'][0])] > first['gains'][str(first['stopped'][0])]
  stopped, kept = first['stopped'][0], first['kept'][0]
  assert finished[stopped]['status'] == 'pruned'
  verdicts = {r.trial: r.payload for r in journal.records('verdict')}
  assert verdicts[stopped]['reason_code'] == 'pruned'
  assert 'rung at step 20 of 60' in verdicts[stopped]['rationale']
  screen = loop.run_dir / 'trials/1/screen'
  assert not (screen / f'member-{stopped}' / 'scorecard.json').exists()
  card = json.loads((screen / f'member-{kept}' / 'scorecard.json').read_text())
  assert card['batch']['member'] == kept and card['status'] == 'ok'
  assert card['config']['optimizer']['learning_rate'] == (1e-4, 1e-2)[kept - 1]
  # the incumbent's member trained to the last rung only, and nothing of it was scored
  assert scoring.val_steps(screen / 'output/member-0') == [20, 40]
  assert verify_run(repo, journal) is None


def test_a_batch_is_one_try_for_patience_live_and_on_replay(tmp_path):
  effects = {2e-3: -0.05, 5e-3: -0.05, 8e-3: -0.05}
  proposer = BatchProposer([('lr_up', set_lr(lr)) for lr in effects])
  repo, loop, journal = make_loop(tmp_path, proposer, SimulatedRunner(effects), trials=3)
  loop.execute_batch = SimulatedBatch(effects)
  loop.run()
  assert not any(r.payload['accepted'] for r in journal.records('verdict'))
  assert loop.state.since_accept == RunState.replay(journal).since_accept == 1
