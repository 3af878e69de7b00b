"""The loop's decisions and records, with scripted proposers and a simulated trial runner.

The runner turns the candidate's config into metrics with a known true effect plus seed
noise, so accept/reject behaviour is checked against ground truth in seconds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from agent.charter import load_charter
from agent.editing import config_edit, knobs
from agent.loop import Loop, RunHalted
from agent.proposing.proposal import NoProposal, Observation, Proposal, ProposalFailed
from agent.recording.journal import Journal
from agent.recording.records import RunConfig
from agent.recording.state import RunState
from agent.safety.executor import TrialOutcome
from tests.agent_workspace import (TINY_EXPERIMENT, fake_scorecard, git, make_workspace,
                                   write_scorecard)

SEED_NOISE = 0.01


class SimulatedRunner:
  """Accuracy = 0.80 + true effect of the learning rate + per-seed noise (shared by both
  arms of a paired comparison) + a little independent noise per run."""

  def __init__(self, effect_per_lr=None, time_factor=None, independent=0.003):
    self.effect_per_lr = effect_per_lr or {}
    self.time_factor = time_factor or {}
    self.independent = independent
    self.calls = 0

  def __call__(self, spec, scorer=None, on_curve=None) -> TrialOutcome:
    self.calls += 1
    values = {k.path: k.value for k in knobs.inventory(spec.worktree / spec.experiment)}
    lr = values['optimizer.learning_rate']
    rng = np.random.default_rng(self.calls)
    seeds = range(spec.first_seed, spec.first_seed + spec.seeds)
    per_seed = [0.80 + self.effect_per_lr.get(lr, 0.0)
                + SEED_NOISE * np.random.default_rng(s).standard_normal()
                + self.independent * rng.standard_normal() for s in seeds]
    card = fake_scorecard(per_seed, train_seconds=self.time_factor.get(lr, 1.0))
    write_scorecard(spec.workdir, card)
    return TrialOutcome('ok', card, card['curve'], 1.0, 0, spec.workdir / 'trial.log', '', 'ok')


class ScriptedProposer:
  """Proposes the given (operator, edit function) pairs in order."""
  name = 'scripted'

  def __init__(self, steps):
    self.steps = list(steps)
    self.learned: list[tuple[str, bool]] = []

  def propose(self, observation: Observation) -> Proposal:
    if not self.steps:
      raise NoProposal('script finished')
    operator, edit = self.steps.pop(0)
    path, text = edit(observation)
    return Proposal(operator, 'scripted diagnosis', f'scripted {operator}', 'scripted', {path: text})

  def learn(self, proposal, accepted, gain):
    self.learned.append((proposal.operator, accepted))


def set_lr(value):
  def edit(obs: Observation):
    text = obs.files[obs.experiment]
    return obs.experiment, config_edit.set_value(text, 'optimizer.learning_rate', value)
  return edit


def comment_only(n):
  def edit(obs: Observation):
    return obs.experiment, obs.files[obs.experiment] + f'# note {n}\n'
  return edit


def touch(path):
  return lambda obs: (path, '# not allowed\n')


def make_loop(tmp_path, proposer, runner, trials, charter_text=None, **config):
  repo = make_workspace(tmp_path)
  if charter_text:
    charter_path = repo / 'WORKSPACE.md'
    charter_path.write_text(charter_text(charter_path.read_text()))
    git(repo, 'commit', '-qam', 'charter')
  run_dir = repo / 'runs' / 'r1'
  journal = Journal.open(run_dir / 'journal.sqlite')
  config = RunConfig(run_id='r1', experiment=TINY_EXPERIMENT, proposer=proposer.name, seeds=3,
                     budget_trials=trials, start_commit=git(repo, 'rev-parse', 'HEAD'),
                     **{'budget_minutes': 60, 'budget_compute_seconds': 0, **config})
  charter = load_charter(repo / 'WORKSPACE.md')
  settings = {k: v for k, v in dataclasses.asdict(charter).items() if k != 'prose'}
  journal.append('run_started', {'config': dataclasses.asdict(config), 'charter': settings})
  loop = Loop(repo, run_dir, charter, proposer, journal, RunState.replay(journal),
              execute=runner, print_fn=lambda _: None)
  return repo, loop, journal


def test_a_clear_win_is_confirmed_and_kept_and_a_noise_sized_change_is_rolled_back(tmp_path):
  runner = SimulatedRunner(effect_per_lr={1e-2: 0.05, 1.1e-2: 0.0505})
  proposer = ScriptedProposer([('lr_up', set_lr(1e-2)), ('lr_nudge', set_lr(1.1e-2))])
  repo, loop, journal = make_loop(tmp_path, proposer, runner, trials=2)
  user_head = git(repo, 'rev-parse', 'HEAD')
  loop.run()

  verdicts = journal.records('verdict')
  assert [v.payload['accepted'] for v in verdicts] == [True, False]
  assert verdicts[0].payload['confirm_seeds'] == [1000, 1001, 1002]  # one look after the screen
  assert len(verdicts[0].payload['looks']) == 1
  assert verdicts[1].payload['reason_code'] == 'futile' and 'looks' not in verdicts[1].payload
  winner = verdicts[0].payload['commit']
  assert loop.worktree.head() == winner == loop.state.incumbent.commit
  message = git(repo, 'log', '-1', '--format=%B', winner)
  assert 'Hypothesis: scripted lr_up' in message and 'ACCEPTED' in message
  rejected = git(repo, 'rev-parse', 'refs/agent/r1/rejected/2')
  assert rejected == verdicts[1].payload['commit']
  assert 'learning_rate' in git(repo, 'diff', winner, rejected)
  assert git(repo, 'rev-parse', 'HEAD') == user_head and git(repo, 'status', '--porcelain') == ''
  assert journal.verify() is None
  assert proposer.learned == [('lr_up', True), ('lr_nudge', False)]


def test_undecided_candidates_get_seed_groups_until_decided_and_share_the_incumbents(tmp_path):
  """Two null edits on the same incumbent, noisy enough that the screen decides nothing: each
  gets fresh seed groups, journaled look by look, and the incumbent runs each group once."""
  runner = SimulatedRunner(independent=0.015)
  proposer = ScriptedProposer([('note', comment_only(1)), ('note', comment_only(2))])
  _, loop, journal = make_loop(tmp_path, proposer, runner, trials=2, charter_text=lambda text:
                               text.replace('min_effect = 0.02', 'min_effect = 0.01').replace(
                                   'max_seeds = 6', 'max_seeds = 24'))
  loop.run()
  verdicts = [v.payload for v in journal.records('verdict')]
  assert [v['accepted'] for v in verdicts] == [False, False]
  assert all(v['reason_code'] in ('futile', 'undecided', 'worse') for v in verdicts)
  looks = [v['looks'] for v in verdicts]
  assert all(looks) and all(v['confirm_seeds'][:3] == [1000, 1001, 1002] for v in verdicts)
  shared = min(len(looks[0]), len(looks[1]))
  assert [a['incumbent'] for a in looks[1][:shared]] == [a['incumbent'] for a in looks[0][:shared]]
  per_look = [r.payload for r in journal.records('confirm_finished')]
  assert [r['first_seed'] for r in per_look] == [1000 + 3 * i for i in range(len(looks[0]))] + [
      1000 + 3 * i for i in range(len(looks[1]))]
  incumbent_runs = max(len(looks[0]), len(looks[1]))
  assert runner.calls == 1 + 2 + len(looks[0]) + len(looks[1]) + incumbent_runs
  assert sum(r['wall_seconds'] for r in per_look) == len(looks[0]) + len(looks[1]) + incumbent_runs
  assert loop.state.compute_seconds == runner.calls


def test_a_win_that_breaks_the_time_tradeoff_is_rejected(tmp_path):
  runner = SimulatedRunner(effect_per_lr={1e-2: 0.005}, time_factor={1e-2: 3.0},
                           independent=0.0)
  _, loop, journal = make_loop(tmp_path, ScriptedProposer([('slow', set_lr(1e-2))]), runner,
                               trials=1, charter_text=lambda text: text.replace(
                                   'min_effect = 0.02', 'min_effect = 0.004'))
  loop.run()
  verdict = journal.last('verdict').payload
  assert not verdict['accepted'] and verdict['reason_code'] == 'train_time'


def test_edits_that_change_nothing_accept_nothing_in_20_trials(tmp_path):
  patience = lambda text: text.replace('patience = 6', 'patience = 50')
  proposer = ScriptedProposer([(f'note_{n}', comment_only(n)) for n in range(20)])
  runner = SimulatedRunner()
  _, loop, journal = make_loop(tmp_path, proposer, runner, trials=20, charter_text=patience)
  reason = loop.run()
  assert 'trial budget spent (20/20)' in reason
  verdicts = journal.records('verdict')
  assert len(verdicts) == 20 and not any(v.payload['accepted'] for v in verdicts)


@pytest.mark.parametrize('path', ['harness/train.py', 'WORKSPACE.md', '../outside.py'])
def test_out_of_scope_edits_are_rejected_before_running_and_the_loop_goes_on(tmp_path, path):
  runner = SimulatedRunner(effect_per_lr={1e-2: 0.05})
  proposer = ScriptedProposer([('escape', touch(path)), ('lr_up', set_lr(1e-2))])
  _, loop, journal = make_loop(tmp_path, proposer, runner, trials=2)
  loop.run()
  rejected = journal.last('guard_rejected', trial=1).payload
  assert 'editable scope' in rejected['rationale']
  assert journal.last('verdict', trial=2).payload['accepted']
  assert runner.calls == 1 + 1 + 2  # baseline, trial 2, its confirmation pair


def broken_import(obs: Observation):
  text = obs.files[obs.experiment].replace('ml_collections.ConfigDict()',
                                          'ml_collections.ConfigDictt()', 1)
  return obs.experiment, text


def test_an_edit_that_parses_but_does_not_import_is_rejected_before_running(tmp_path):
  runner = SimulatedRunner()
  _, loop, journal = make_loop(tmp_path, ScriptedProposer([('typo', broken_import)]), runner,
                               trials=1)
  loop.run()
  rejected = journal.last('guard_rejected', trial=1).payload
  assert 'does not import' in rejected['rationale'] and 'ConfigDictt' in rejected['rationale']
  assert runner.calls == 1  # the baseline only
  assert loop.worktree.is_clean() and loop.worktree.head() == loop.state.incumbent.commit


def test_replay_rebuilds_the_state_and_finds_an_interrupted_trial(tmp_path):
  runner = SimulatedRunner(effect_per_lr={1e-2: 0.05})
  _, loop, journal = make_loop(tmp_path, ScriptedProposer([('lr_up', set_lr(1e-2))]), runner,
                               trials=1)
  loop.run()
  state = RunState.replay(journal)
  assert state.trials_done == 1 and state.incumbent == loop.state.incumbent
  assert state.pending is None
  journal.append('proposal', {'operator': 'x', 'diagnosis': 'd', 'hypothesis': 'h',
                              'expected_effect': 'e', 'changes': {}}, trial=2)
  assert RunState.replay(journal).pending.trial == 2


class FailingThenScripted(ScriptedProposer):
  """Fails to produce a proposal on its first call (say, an LLM answered nonsense)."""

  def __init__(self, steps, tokens_per_call=0):
    super().__init__(steps)
    self.calls = 0
    self.tokens_per_call = tokens_per_call
    self.on_usage = None
    self.observations: list[Observation] = []

  def propose(self, observation):
    self.calls += 1
    self.observations.append(observation)
    if self.on_usage:
      self.on_usage({'api': 'openai', 'model': 'm', 'attempt': 1, 'outcome': 'ok',
                     'input_tokens': self.tokens_per_call, 'output_tokens': 0,
                     'cost_usd': 0.001})
    if self.calls == 1:
      raise ProposalFailed('three malformed answers in a row')
    return super().propose(observation)


def test_a_failed_proposal_is_a_recorded_trial_and_the_loop_goes_on(tmp_path):
  runner = SimulatedRunner(effect_per_lr={1e-2: 0.05})
  proposer = FailingThenScripted([('lr_up', set_lr(1e-2))])
  _, loop, journal = make_loop(tmp_path, proposer, runner, trials=2)
  loop.run()
  failed = journal.last('proposal_failed', trial=1).payload
  assert failed['rationale'] == 'three malformed answers in a row' and not failed['accepted']
  assert journal.last('verdict', trial=2).payload['accepted']
  state = RunState.replay(journal)
  assert state.trials_done == 2 and state.history[0].reason_code == 'proposal_failed'
  # What the proposer saw during the search holds no test-split number.
  for observation in proposer.observations:
    assert '"test_' not in json.dumps(observation.scorecard)


def test_the_token_budget_stops_the_run_and_survives_a_resume(tmp_path):
  runner = SimulatedRunner()
  proposer = FailingThenScripted([(f'note_{n}', comment_only(n)) for n in range(5)],
                                 tokens_per_call=400)
  _, loop, journal = make_loop(tmp_path, proposer, runner, trials=5, budget_tokens=1000)
  proposer.on_usage = loop.record_usage
  reason = loop.run()
  assert reason == 'token budget spent (1200/1000)'
  assert len(journal.records('llm_usage')) == 3
  state = RunState.replay(journal)
  assert state.tokens == 1200 and abs(state.cost_usd - 0.003) < 1e-12


class DataChangingRunner(SimulatedRunner):
  """A candidate whose run saw other data (say, an edit that reshuffled the splits)."""

  def __call__(self, spec, scorer=None, on_curve=None) -> TrialOutcome:
    outcome = super().__call__(spec, on_curve)
    if self.calls > 1:
      outcome.scorecard['data']['fingerprints'] = {'train': 'a', 'val': 'other', 'test': 'c'}
      write_scorecard(spec.workdir, outcome.scorecard)
    return outcome


def test_a_trial_that_saw_other_data_is_rejected_however_good_it_looks(tmp_path):
  runner = DataChangingRunner(effect_per_lr={1e-2: 0.2})
  _, loop, journal = make_loop(tmp_path, ScriptedProposer([('lr_up', set_lr(1e-2))]), runner,
                               trials=1)
  loop.run()
  verdict = journal.last('verdict', trial=1).payload
  assert not verdict['accepted'] and verdict['reason_code'] == 'data_changed'
  assert 'fingerprints differ' in verdict['rationale']
  assert loop.worktree.head() == loop.config.start_commit


# ---- where a change is judged; what the run pins and watches ------------------------------
ROOT_MODELS = Path(__file__).resolve().parent.parent / 'models'


def test_a_tie_in_code_the_experiment_never_runs_is_not_kept_as_a_simplification(tmp_path):
  """Deleting the causal mask of the transformer is a tie on digits (an MLP): without the
  rule it would pass as a simplification; it must be judged where the code runs."""
  source = (ROOT_MODELS / 'transformer.py').read_text()
  assert 'mask' in source
  lines = source.splitlines(keepends=True)
  shorter = ''.join(line for line in lines if 'mask' not in line or 'def ' in line)
  proposer = ScriptedProposer([('drop_mask', lambda obs: ('models/transformer.py', shorter))])
  _, loop, journal = make_loop(tmp_path, proposer, SimulatedRunner(independent=0.0), trials=1)
  loop.run()
  verdict = journal.last('verdict').payload
  assert not verdict['accepted'] and verdict['reason_code'] == 'unused_code'
  assert 'models/transformer.py is not run by experiments/digits_mlp.py' in verdict['rationale']


def test_a_winner_that_changes_shared_code_is_also_judged_on_the_experiments_that_run_it(
    tmp_path):
  class Breaks(SimulatedRunner):
    """The candidate wins on digits and fails on every other experiment."""
    def __call__(self, spec, scorer=None, on_curve=None):
      outcome = super().__call__(spec, scorer, on_curve)
      if spec.experiment != TINY_EXPERIMENT and 'elsewhere/' in str(spec.workdir) and (
          spec.workdir.name == 'candidate'):
        return dataclasses.replace(outcome, status='invalid', scorecard=None,
                                   reason='invariant broken (probe_causal): reads ahead')
      return outcome

  def shared_and_lr(obs: Observation):
    return {'models/layers.py': obs.files['models/layers.py'] + '\n# shared note\n',
            obs.experiment: config_edit.set_value(obs.files[obs.experiment],
                                                  'optimizer.learning_rate', 1e-2)}

  class Both(ScriptedProposer):
    def propose(self, observation):
      proposal = super().propose(observation)
      return dataclasses.replace(proposal, changes=shared_and_lr(observation))

  runner = Breaks(effect_per_lr={1e-2: 0.05})
  _, loop, journal = make_loop(tmp_path, Both([('lr_and_layers', set_lr(1e-2))]), runner,
                               trials=1)
  loop.run()
  verdict = journal.last('verdict').payload
  assert not verdict['accepted'] and verdict['reason_code'] == 'breaks_elsewhere'
  assert 'reads ahead' in verdict['rationale']
  judged = [r.payload['experiment'] for r in journal.records('confirm_finished')
            if 'experiment' in r.payload]
  assert judged[0] in ('experiments/charlm_transformer.py', 'experiments/mnist1d_mlp.py')
  pinned = [r.payload for r in journal.records('data')]
  assert pinned[0]['dataset']['name'] == 'digits' and 'experiment' in pinned[1]


def test_the_run_pins_its_data_and_trials_get_inputs_without_labels(tmp_path):
  seen = []

  class Records(SimulatedRunner):
    def __call__(self, spec, scorer=None, on_curve=None):
      seen.append((spec.inputs, scorer))
      return super().__call__(spec, scorer, on_curve)

  _, loop, journal = make_loop(tmp_path, ScriptedProposer([]), Records(), trials=1)
  loop.run()
  data = journal.last('data').payload
  assert data['dataset']['name'] == 'digits' and set(data['fingerprints']) == {
      'train', 'val', 'test'}
  inputs, scorer = seen[0]
  assert sorted(p.name for p in inputs.iterdir()) == [
      'predict_probe_batch.npy', 'predict_val.npy', 'task.json', 'train_x.npy', 'train_y.npy']
  assert 'val' in scorer.targets.labels and 'test' not in scorer.targets.labels


def test_a_change_to_the_repositorys_git_settings_during_a_trial_halts_the_run(tmp_path):
  class Plants(SimulatedRunner):
    def __call__(self, spec, scorer=None, on_curve=None):
      if 'trials' in str(spec.workdir):  # as if a trial had escaped its sandbox
        config = spec.worktree.parent.parent.parent / '.git' / 'config'
        config.write_text(config.read_text() + '[core]\n\tfsmonitor = /tmp/planted\n')
      return super().__call__(spec, scorer, on_curve)

  _, loop, journal = make_loop(tmp_path, ScriptedProposer([('lr_up', set_lr(1e-2))]),
                               Plants(), trials=1)
  with pytest.raises(RunHalted, match='git settings'):
    loop.run()
  assert not journal.records('verdict')  # nothing after the trial ran, git included
