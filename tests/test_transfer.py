"""The transfer check: the charter's [transfer] section, the shuffled MNIST-1D task a change
can fail to transfer to, the per-dataset rule, and a kept change rejected for losing on a
transfer experiment with `verify` redoing the verdict from the journal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.candidate import BUDGET, Budget
from agent.charter import CharterError, parse_charter
from agent.editing import config_edit, knobs
from agent.judging import transfer as rule
from agent.recording import audit, records
from agent.recording import html_report
from agent.recording import report as report_lib
from agent.safety.executor import TrialOutcome
from harness import datasets
from harness.scorecard import TEST_SCORECARD, summarize
from tests.agent_workspace import TINY_EXPERIMENT, fake_scorecard, write_scorecard
from tests.conftest import ROOT, load_experiment
from tests.test_agent_loop import ScriptedProposer, SimulatedRunner, make_loop, set_lr
from tests.test_audit import _forge
from tests.test_charter import charter, error_of

SHUFFLED = 'experiments/mnist1d_shuffled_mlp.py'


# ---- the charter --------------------------------------------------------------------------
def test_transfer_section_parses_with_reject_as_the_default_mode():
  loaded = parse_charter(charter(f'[transfer]\nexperiments = ["{SHUFFLED}", '
                                 f'"experiments/digits_mlp.py"]\n'))
  assert loaded.transfer.experiments == (SHUFFLED, 'experiments/digits_mlp.py')
  assert loaded.transfer.mode == 'reject'
  assert parse_charter(charter('[transfer]\nmode = "report"\n')).transfer.mode == 'report'
  assert parse_charter(charter('')).transfer.experiments == ()


@pytest.mark.parametrize('toml, line, message', [
    ('[transfer]\nmode = "warn"\n', 11, "'transfer.mode' must be 'reject' or 'report'"),
    ('[transfer]\nexperiments = "experiments/digits_mlp.py"\n', 11,
     "'transfer.experiments' must be a list of strings"),
    ('[transfer]\n\nexperiments = ["../outside.py"]\n', 12,
     "'transfer.experiments' must be a list of distinct experiment config files"),
    ('[transfer]\nexperiments = ["a.py", "a.py"]\n', 11, 'distinct'),
    ('[transfer]\nexperiments = ["experiments/digits_mlp.yaml"]\n', 11, 'config files'),
    ('[transfer]\nexprmnts = []\n', 11, "unknown key 'transfer.exprmnts'"),
])
def test_a_malformed_transfer_section_is_one_line_naming_its_line(toml, line, message):
  error = error_of(charter(toml))
  assert str(error).startswith(f'WORKSPACE.md:{line}: ') and message in str(error)


# ---- the shuffled task -----------------------------------------------------------------------
def test_shuffled_mnist1d_is_one_fixed_permutation_of_mnist1ds_time_steps():
  plain = datasets.load_task(load_experiment('mnist1d_mlp').dataset)
  shuffled = datasets.load_task(load_experiment('mnist1d_shuffled_mlp').dataset)
  order = np.random.default_rng(datasets.SHUFFLE_SEED).permutation(40)
  assert sorted(order) == list(range(40)) and list(order) != list(range(40))
  for name in ('train', 'val', 'test'):
    a, b = getattr(plain, name), getattr(shuffled, name)
    np.testing.assert_array_equal(b.x, a.x[:, order])  # every example, the same permutation
    np.testing.assert_array_equal(b.y, a.y)
    assert a.fingerprint != b.fingerprint
  assert (shuffled.name, shuffled.input_shape, shuffled.metric_name) == (
      'mnist1d_shuffled', (40, 1), 'accuracy')
  again = datasets.load_task(load_experiment('mnist1d_shuffled_mlp').dataset, cache=None)
  assert again.fingerprints() == shuffled.fingerprints()  # deterministic, cached or not


# ---- the rule --------------------------------------------------------------------------------
def test_the_rule_says_gained_held_or_lost_against_the_noise_floor():
  incumbent = [0.80, 0.81, 0.82]
  assert rule.judge(incumbent, [0.85, 0.86, 0.87], 'max').outcome == rule.GAINED
  assert rule.judge(incumbent, [0.80, 0.812, 0.82], 'max').outcome == rule.HELD
  assert rule.judge(incumbent, [0.70, 0.71, 0.72], 'max').outcome == rule.LOST
  assert rule.judge([2.0, 2.1, 2.2], [1.5, 1.6, 1.7], 'min').outcome == rule.GAINED
  assert rule.judge(incumbent, [0.8, float('nan'), 0.8], 'max').outcome == rule.FAILED
  lost = {'e.py': rule.judge(incumbent, [0.70, 0.71, 0.72], 'max')}
  assert rule.summary(lost, {}, 'reject')[0] and not rule.summary(lost, {}, 'report')[0]


def test_a_change_carries_the_settings_it_changed_where_the_transfer_config_has_them():
  main, other = (ROOT / TINY_EXPERIMENT).read_text(), (ROOT / SHUFFLED).read_text()
  changed = config_edit.set_value(main, 'optimizer.learning_rate', 0.03)
  changed = config_edit.set_value(changed, 'dataset.split_seed', 7)  # data stays pinned
  assert rule.overrides(main, changed, other) == ['--config.optimizer.learning_rate=0.03']
  same = config_edit.set_value(main, 'optimizer.learning_rate', 1e-2)  # shuffled's own value
  assert rule.overrides(main, same, other) == [] == rule.overrides(main, main, other)
  # a family switch reshapes model.*: none of it carries as overrides (the old family's keys
  # would stay); it carries as a derived config instead (below)
  switched = config_edit.set_value(changed, 'model.name', 'cnn1d')
  switched = switched.replace('  config.model.width = ', '  config.model.channels = ')
  assert rule.overrides(main, switched, other) == ['--config.optimizer.learning_rate=0.03']
  assert rule.derived(main, changed, other) == '' == rule.derived(main, main, other)


def _switch_to_cnn(text: str, family: str = 'cnn2d') -> str:
  """A family switch as the heuristic writes it: model.name, the old family's keys removed,
  the new one's added, scan_steps off."""
  text = config_edit.set_value(text, 'model.name', family)
  text = config_edit.set_value(text, 'train.scan_steps', False)
  for key in ('width', 'residual'):
    text = config_edit.remove_value(text, f'model.{key}')
  text = config_edit.add_value(text, 'model.channels', 16, after='model.name')
  return config_edit.add_value(text, 'model.kernel_size', 5, after='model.channels')


def test_a_reshaped_section_carries_as_a_derived_config_keeping_the_transfer_data():
  main, other = (ROOT / TINY_EXPERIMENT).read_text(), (ROOT / SHUFFLED).read_text()
  switched = config_edit.set_value(_switch_to_cnn(main), 'train.seed', 5)
  assert rule.reshaped_sections(main, switched) == ['model']
  derived = rule.derived(main, switched, other)
  ran, theirs = knobs_of(derived), knobs_of(other)
  model = {k: v for k, v in knobs_of(switched).items() if k.startswith('model.')}
  assert {k: v for k, v in ran.items() if k.startswith('model.')} == model  # the CNN, whole
  assert 'model.width' not in ran and ran['model.channels'] == 16
  unchanged = {k: v for k, v in theirs.items() if not k.startswith('model.')}
  assert {k: ran[k] for k in unchanged} == unchanged  # its data, optimizer and train as named
  assert rule.overrides(main, switched, other) == ['--config.train.scan_steps=False']
  assert derived.index('config.model.name') < derived.index('config.optimizer')  # in place
  with pytest.raises(config_edit.EditError, match="no section 'model'"):
    rule.derived(main, switched, other.replace('config.model', 'config.net'))


def knobs_of(source: str) -> dict:
  """A config's literal settings by key path."""
  found = ((p, config_edit.literal_value(stmt.body[0].value)) for p, stmt in
           config_edit.config_assignments(config_edit.parse_module(source)))
  return {p: v for p, v in found if config_edit.is_literal(v)}


# ---- in the loop -----------------------------------------------------------------------------
class TransferRunner(SimulatedRunner):
  """The learning rate's effect depends on the experiment; a transfer arm's learning rate
  is the one its overrides carry, else its own config's."""

  def __init__(self, effects):
    super().__init__(independent=0.0)
    self.effects = effects

  def __call__(self, spec, scorer=None, on_curve=None):
    self.calls += 1
    values = {k.path: k.value for k in knobs.inventory(spec.worktree / spec.experiment)}
    for override in spec.overrides:
      key, _, value = override.removeprefix('--config.').partition('=')
      values[key] = value
    seeds = range(spec.first_seed, spec.first_seed + spec.seeds)
    per_seed = [0.8 + self.effect(spec, values)
                + 0.01 * np.random.default_rng(s).standard_normal() for s in seeds]
    card = fake_scorecard(per_seed)
    write_scorecard(spec.workdir, card)
    if 'final' in spec.workdir.parts:  # the scorer's test scorecard, at the end only
      test = [v - 0.01 for v in per_seed]
      (spec.workdir / TEST_SCORECARD).write_text(json.dumps({'test_metric': summarize(test)}))
    return TrialOutcome('ok', card, card['curve'], 1.0, 0, spec.workdir / 'trial.log', '', 'ok')

  def effect(self, spec, values):
    return self.effects.get((spec.experiment, float(values['optimizer.learning_rate'])), 0.0)


def transfer_charter(mode):
  """The shipped charter's [transfer] section, naming shuffled MNIST-1D."""
  def edit(text):
    assert 'experiments = []' in text and 'mode = "reject"' in text
    return text.replace('experiments = []', f'experiments = ["{SHUFFLED}"]').replace(
        'mode = "reject"', f'mode = "{mode}"')
  return edit


@pytest.mark.parametrize('mode', ['reject', 'report'])
def test_a_win_that_loses_on_a_transfer_dataset_is_rejected_and_verify_agrees(tmp_path, mode):
  """lr 3e-2 wins clearly on digits and loses clearly on shuffled MNIST-1D: rejected for it
  (kept, with the loss said, in report mode); `verify` redoes every outcome, and a forged one
  contradicts it; the final evaluation and the summary carry the transfer table."""
  runner = TransferRunner({(TINY_EXPERIMENT, 3e-2): 0.06, (SHUFFLED, 3e-2): -0.1})
  repo, loop, journal = make_loop(tmp_path, ScriptedProposer([('lr_up', set_lr(3e-2))]),
                                  runner, trials=1, charter_text=transfer_charter(mode))
  loop.run()
  loop.final_evaluation()
  verdict = journal.latest(records.Verdict)
  result = verdict.transfer[SHUFFLED]
  assert result.outcome == rule.LOST and result.gain < -result.noise_floor
  assert result.candidate.overrides == ['--config.optimizer.learning_rate=0.03']
  assert result.incumbent == journal.latest(records.TransferBaseline).arm
  assert f'{SHUFFLED} lost (accuracy' in verdict.rationale
  if mode == 'reject':
    assert not verdict.accepted and verdict.reason_code == rule.REASON
    assert loop.state.incumbent.commit == loop.config.start_commit
  else:
    assert verdict.accepted and 'Transfer (report only)' in verdict.rationale
  assert audit.verify_run(repo, journal) is None

  final = journal.latest(records.FinalEval).transfer[SHUFFLED]
  assert final.baseline.status == final.final.status == 'ok'
  assert final.final.test['mean'] > 0 and final.baseline.test['mean'] > 0
  summary = report_lib.summary(journal, 'agent/r1', str(loop.run_dir))
  assert 'Transfer, evaluated once at the end' in summary and SHUFFLED in summary
  page = html_report.render(repo, journal)
  assert 'id="transfer"' in page and SHUFFLED in page and 'run verified' in page

  forged = _forge(journal, 'verdict', 1, lambda payload: {**payload, 'transfer': {
      e: {**r, 'outcome': rule.HELD} for e, r in payload['transfer'].items()}})
  assert 'transfer' in audit.verify_run(repo, forged)


class FamilyRunner(TransferRunner):
  """As TransferRunner, and a model family's effect per experiment: a 2-D CNN wins on digits,
  loses on shuffled MNIST-1D, and cannot build on MNIST-1D's 1-D signals at all (the
  harness's model raises on the input shape). Arms on a derived config run from a copy of
  the commit's files, never from the run's worktree."""

  def __init__(self, families, cannot_build=()):
    super().__init__({})
    self.families, self.cannot_build = families, cannot_build
    self.derived_trees = []

  def __call__(self, spec, scorer=None, on_curve=None):
    if spec.worktree.name.endswith('.code'):
      self.derived_trees.append(spec.worktree)
    family = knobs_of((spec.worktree / spec.experiment).read_text())['model.name']
    if (spec.experiment, family) in self.cannot_build:
      error = 'ValueError: Cnn2d expects input_shape of 2 spatial dims, got (40, 1)'
      return TrialOutcome('failed', None, [], 1.0, 1, spec.workdir / 'trial.log', error, error)
    return super().__call__(spec, scorer, on_curve)

  def effect(self, spec, values):
    return self.families.get((spec.experiment, values['model.name']), 0.0)


def switch_family(observation):
  return observation.experiment, _switch_to_cnn(observation.files[observation.experiment])


MNIST1D = 'experiments/mnist1d_mlp.py'


def test_a_family_switch_runs_as_itself_on_each_transfer_dataset_and_verify_rederives_it(
    tmp_path):
  """The CNN that wins on digits is run as that CNN on both transfer experiments (a derived
  config: their data, its model section): it loses on shuffled MNIST-1D and cannot build on
  MNIST-1D's 1-D signals, which fails that run with the model's own error, not the agent;
  the change is rejected for it. `verify` re-derives each config from git and notices a
  tampered one; the copies the arms ran from are gone."""
  runner = FamilyRunner({(TINY_EXPERIMENT, 'cnn2d'): 0.06, (SHUFFLED, 'cnn2d'): -0.1},
                        cannot_build={(MNIST1D, 'cnn2d')})
  def both(text):
    return text.replace('experiments = []', f'experiments = ["{SHUFFLED}", "{MNIST1D}"]')
  repo, loop, journal = make_loop(tmp_path, ScriptedProposer([('to_cnn2d', switch_family)]),
                                  runner, trials=1, charter_text=both)
  loop.run()
  verdict = journal.latest(records.Verdict)
  assert not verdict.accepted and verdict.reason_code == rule.REASON
  lost, failed = verdict.transfer[SHUFFLED], verdict.transfer[MNIST1D]
  assert lost.outcome == rule.LOST and failed.outcome == rule.FAILED
  assert 'cnn2d' in lost.candidate.derived and "'mnist1d_shuffled'" in lost.candidate.derived
  assert lost.candidate.overrides == ['--config.train.scan_steps=False']
  assert lost.incumbent.derived == ''  # the start commit runs the experiment as named
  assert 'Cnn2d expects input_shape' in failed.reason and 'derived' in failed.reason
  assert f"{MNIST1D} failed (the candidate's run there ended 'failed' on the config derived" in (
      verdict.rationale)
  assert len(runner.derived_trees) == 2 and not any(t.exists() for t in runner.derived_trees)
  assert audit.verify_run(repo, journal) is None

  def tamper(payload):
    arm = payload['transfer'][SHUFFLED]['candidate']
    arm['derived'] = arm['derived'].replace('channels = 16', 'channels = 64')
    return payload
  assert 'derives there' in audit.verify_run(repo, _forge(journal, 'verdict', 1, tamper))


def test_a_transfer_run_the_budget_cut_leaves_the_candidate_undecided(tmp_path):
  """A winner whose transfer run times out because the minute budget cut its time is not
  kept and nothing counts against it (reason 'budget', as the search's own runs); verify
  agrees, and a forged 'undecided' with no budget-stopped run is caught."""
  class CutRunner(TransferRunner):
    def __call__(self, spec, scorer=None, on_curve=None):
      if 'transfer' in spec.workdir.parts and 'trials' in spec.workdir.parts:
        return TrialOutcome('timeout', None, [], 5.0, None, spec.workdir / 'trial.log', '',
                            'timed out after 5 s')
      return super().__call__(spec, scorer, on_curve)

  runner = CutRunner({(TINY_EXPERIMENT, 3e-2): 0.06})
  repo, loop, journal = make_loop(tmp_path, ScriptedProposer([('lr_up', set_lr(3e-2))]),
                                  runner, trials=1, charter_text=transfer_charter('reject'))
  assert loop.transfer.budget is loop.judge.budget  # the loop's: what a run started now gets
  loop.transfer.budget = Budget(timeout=lambda: 5.0)  # less than the charter's per-trial time
  loop.run()
  verdict = journal.latest(records.Verdict)
  assert not verdict.accepted and verdict.reason_code == BUDGET == rule.BUDGET
  assert verdict.transfer[SHUFFLED].outcome == rule.UNDECIDED
  assert verdict.rationale.startswith('Undecided, not rejected')
  assert loop.state.incumbent.commit == loop.config.start_commit
  assert audit.verify_run(repo, journal) is None

  def claim_undecided(payload):  # the transfer run's record said 'budget'; now 'timeout'
    return {**payload, 'candidate': 'timeout'} if payload.get('experiment') else payload
  forged = _forge(journal, 'confirm_finished', 1, claim_undecided)
  assert 'stopped by the minute budget' in audit.verify_run(repo, forged)
