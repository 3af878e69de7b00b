"""The offline proposer: symptoms read off constructed scorecards, and the edits they lead to.

No training runs here: observations are built by hand from the shipped experiment files
and small fake scorecards, so the whole file takes seconds.
"""

import collections
import importlib.util
import logging
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.charter import load_charter
from agent.editing import knobs, space
from agent.proposing import diagnosis as d
from agent.proposing import heuristic as h
from agent.proposing.heuristic import HeuristicProposer
from agent.proposing.proposal import NoProposal, Observation, Proposal
from agent.recording.state import TrialSummary

ROOT = Path(__file__).resolve().parents[1]
CHARTER = load_charter(ROOT / 'WORKSPACE.md')
MNIST1D = 'experiments/mnist1d_mlp.py'
MODEL_FILES = ('models/mlp.py', 'models/cnn.py', 'models/transformer.py')
# What the harness records of one example, per task: (input_kind, input_shape).
INPUTS = {'mnist1d': ('signal', [40, 1]), 'digits': ('image', [8, 8, 1]), 'charlm': ('text', [128])}


def card(points: list[tuple[int, float, float]], *, task: str = 'mnist1d', model: str = 'mlp',
         metric: str = 'accuracy', val_metric: float = 0.64, **extra: Any) -> dict[str, Any]:
  """A scorecard with the fields the proposer reads; points are (step, train, val) losses."""
  base = {
      'status': 'ok', 'task': task, 'metric': {'name': metric, 'direction': 'max'},
      'seeds': [0, 1, 2], 'steps': points[-1][0] if points else 0,
      'val_metric': {'mean': val_metric, 'per_seed': [val_metric] * 3, 'std': 0.0},
      'stability': {'nonfinite': False, 'nonfinite_step': None,
                    'max_grad_norm': {'per_seed': [2.0, 3.0, 2.5]},
                    'loss_spikes': {'per_seed': [0, 0, 0], 'total': 0}},
      'step_latency_ms': {'p50': 1.0, 'p95': 2.0},
      'memory': {'compiled_bytes': None, 'device_peak_bytes': None},
      'config': {'model': {'name': model}},
      'input_kind': INPUTS[task][0], 'input_shape': INPUTS[task][1],
      'curve': [{'step': s, 'train_loss': [t] * 3, 'val_loss': [v] * 3,
                 'val_metric': [val_metric] * 3} for s, t, v in points]}
  return base | extra


# The shipped MNIST-1D MLP: train loss collapses while val loss climbs.
OVERFIT = card([(250, 1.2, 1.3), (500, 0.6, 1.1), (1500, 0.1, 1.6), (3000, 0.01, 2.9)])
HEALTHY = card([(250, 0.9, 1.0), (500, 0.35, 0.4), (750, 0.34, 0.39)])


def files_with(experiment: str, text: str | None = None) -> dict[str, str]:
  files = {p: (ROOT / p).read_text() for p in MODEL_FILES}
  files[experiment] = text if text is not None else (ROOT / experiment).read_text()
  return files


def knobs_of(text: str, tmp_path: Path) -> list[knobs.Knob]:
  path = tmp_path / 'knobs_of.py'
  path.write_text(text)
  return knobs.inventory(path)


def observe(scorecard: dict[str, Any], *, experiment: str = MNIST1D,
            files: dict[str, str] | None = None, history: list[TrialSummary] | None = None,
            trial: int = 0, tmp_path: Path, direction: str = 'max',
            budget_left: float | None = None) -> Observation:
  files = files or files_with(experiment)
  return Observation(CHARTER, experiment, files, knobs_of(files[experiment], tmp_path),
                     scorecard, direction, list(history or []), trial, budget_left)


def load_config(text: str, tmp_path: Path):
  path = tmp_path / 'proposed_experiment.py'
  path.write_text(text)
  spec = importlib.util.spec_from_file_location('proposed_experiment', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def rejected(proposal: Proposal, trial: int) -> TrialSummary:
  return TrialSummary(trial, proposal.operator, proposal.hypothesis, False, 'no_gain', 0.0,
                      dict(proposal.changes))


# ----------------------------------------------------------------------------- diagnosis


def test_nonfinite():
  diverged = card([(250, 1.0, 1.1)], status='diverged')
  diverged['stability'] |= {'nonfinite': True, 'nonfinite_step': 412,
                            'max_grad_norm': {'per_seed': [3e4, None, 5.0]}}
  text = d.diagnose_nonfinite(diverged)
  assert 'step 412 of 250' in text and '3e+04' in text and 'diverged' in text
  assert d.diagnose_nonfinite(HEALTHY) is None


def test_spikes():
  spiky = card([(250, 1.0, 1.1)])
  spiky['stability']['loss_spikes'] = {'per_seed': [2, 0, 1], 'total': 3}
  assert d.diagnose_spikes(spiky).startswith('3 loss spike(s) over 3 seed(s)')
  assert d.diagnose_spikes(HEALTHY) is None


def test_overfitting_by_gap_and_by_rising_val_loss():
  text = d.diagnose_overfitting(OVERFIT)
  assert 'train loss 0.01 vs val loss 2.9' in text and 'the MLP memorises' in text
  assert 'minimum 1.1 at step 500' in text
  rising_only = card([(500, 0.6, 0.7), (1000, 0.5, 0.8)])
  assert 'val loss up from its minimum 0.7 at step 500' in d.diagnose_overfitting(rising_only)
  assert d.diagnose_overfitting(HEALTHY) is None


def test_underfitting():
  text = d.diagnose_underfitting(card([(500, 1.6, 1.7), (1000, 1.5, 1.6)]))
  assert 'train loss 1.5 is high and close to val loss 1.6' in text
  assert d.diagnose_underfitting(HEALTHY) is None
  assert d.diagnose_underfitting(OVERFIT) is None


def test_undertrained():
  falling = card([(100, 1.0, 1.1), (200, 0.8, 0.9), (300, 0.6, 0.75)])
  assert '(0.8 -> 0.6 over the last 100 steps, val loss 0.9 -> 0.75)' in d.diagnose_undertrained(
      falling)
  assert d.diagnose_undertrained(HEALTHY) is None  # flat at the end
  assert d.diagnose_undertrained(OVERFIT) is None  # train falls, but val loss rises


def test_slow_steps_and_memory():
  slow = card([(100, 1.0, 1.1)], step_latency_ms={'p50': 80.0, 'p95': 90.0},
              memory={'device_peak_bytes': 9 * 2**30, 'compiled_bytes': None})
  assert d.diagnose_slow(slow) == 'the median step takes 80 ms (over 50 ms): steps are slow'
  assert d.diagnose_memory(slow) == 'peak memory 9216 MB (over 8192 MB): memory is tight'
  assert d.diagnose_memory(slow, cap_mb=10000) == (
      'peak memory 9216 MB (cap 10000 MB): memory is tight')
  assert d.diagnose_memory(slow, cap_mb=20000) is None
  assert d.diagnose_slow(HEALTHY) is None and d.diagnose_memory(HEALTHY) is None


def test_data_and_family_mismatches():
  assert 'a 1-D convolution' in d.diagnose_signal_under_mlp('mnist1d', 'mlp', 'signal')
  assert d.diagnose_signal_under_mlp('mnist1d', 'cnn1d', 'signal') is None
  assert 'a 2-D convolution' in d.diagnose_image_under_mlp('digits', 'mlp', 'image')
  assert d.diagnose_image_under_mlp('mnist1d', 'mlp', 'signal') is None
  assert 'width, depth and learning rate' in d.diagnose_char_lm_transformer('transformer',
                                                                            'text')
  assert d.diagnose_char_lm_transformer('transformer', 'signal') is None


def test_the_input_kind_is_the_scorecards():
  assert d.input_kind(OVERFIT) == 'signal' and d.input_kind(card([], task='digits')) == 'image'
  unknown = {k: v for k, v in OVERFIT.items() if k not in ('input_kind', 'input_shape')}
  assert d.input_kind(unknown) == 'unknown'
  assert set(d.diagnose(unknown, dataset='mnist1d', family='mlp')) == {'overfitting'}


def test_diagnose_collects_symptoms_and_ignores_losses_of_a_diverged_run():
  assert set(d.diagnose(OVERFIT, dataset='mnist1d', family='mlp')) == {
      'overfitting', 'signal_under_mlp'}
  diverged = OVERFIT | {'status': 'diverged'}
  assert set(d.diagnose(diverged, dataset='mnist1d', family='mlp')) == {
      'nonfinite', 'signal_under_mlp'}


# ----------------------------------------------------------------------------- proposals


def test_mnist1d_baseline_gets_a_cnn1d_that_builds(tmp_path: Path):
  proposals = [HeuristicProposer(None, seed).propose(observe(OVERFIT, tmp_path=tmp_path))
               for seed in range(20)]
  counts = collections.Counter(p.operator for p in proposals)
  assert counts['to_cnn1d'] >= 15, counts
  proposal = next(p for p in proposals if p.operator == 'to_cnn1d')
  assert list(proposal.changes) == [MNIST1D]
  assert 'train loss 0.01 vs val loss 2.9' in proposal.diagnosis
  assert 'MLP to 1-D CNN' in proposal.hypothesis and 'val accuracy up' in proposal.expected_effect
  config = load_config(proposal.changes[MNIST1D], tmp_path)
  assert config.model.name == 'cnn1d'
  assert config.model.kernel_size == 5 and config.model.pooling == 'flatten'
  assert config.model.channels in (16, 32) and 'width' not in config.model
  assert config.dataset.to_dict() == load_config(files_with(MNIST1D)[MNIST1D],
                                                 tmp_path).dataset.to_dict()
  from flax import nnx
  import models
  from models.cnn import CNN1D
  model = nnx.eval_shape(lambda: models.build_model(  # shapes only: no init compute
      config.model, input_shape=(40, 1), num_outputs=10, rngs=nnx.Rngs(0)))
  assert isinstance(model, CNN1D)
  assert model.head.kernel.shape == (40 * config.model.channels, 10)
  # Comments and layout survive: the diff is the model section only.
  original = files_with(MNIST1D)[MNIST1D]
  assert '# carved out of the 4000 training examples' in proposal.changes[MNIST1D]
  assert original.split('config.model = ')[0] == proposal.changes[MNIST1D].split(
      'config.model = ')[0]


@pytest.mark.parametrize('platform, scan', [('cpu', False), ('gpu', True), ('tpu', True)])
def test_a_switch_to_convolutions_keeps_scan_off_the_cpu_only(tmp_path: Path, platform, scan):
  """XLA:CPU runs a convolution inside a loop ~10x slower; accelerators want the scan."""
  card = {**OVERFIT, 'device': {'platform': platform}}
  proposal = next(p for p in (HeuristicProposer(None, seed).propose(
      observe(card, tmp_path=tmp_path)) for seed in range(20)) if p.operator == 'to_cnn1d')
  assert load_config(proposal.changes[MNIST1D], tmp_path).train.scan_steps is scan



@pytest.mark.parametrize('platform', ['gpu', 'tpu'])
def test_on_an_accelerator_bfloat16_is_tried_without_a_slow_step(tmp_path: Path, platform):
  """What pays on a GPU or TPU is tried there even when no step looks slow; never on CPU."""
  on_device = {**HEALTHY, 'device': {'platform': platform, 'kind': 'some chip'}}
  on_cpu = {**HEALTHY, 'device': {'platform': 'cpu'}}
  assert 'bfloat16' in d.diagnose_on_accelerator(on_device)
  assert d.diagnose_slow(on_device) is None and d.diagnose_memory(on_device) is None
  findings = lambda card: d.diagnose(card, dataset='mnist1d', family='mlp').keys()
  requires = h.OPERATORS['dtype_bf16'].requires
  assert requires & findings(on_device) and not requires & findings(on_cpu)
  assert any(HeuristicProposer(None, seed).propose(observe(on_device, tmp_path=tmp_path))
             .operator == 'dtype_bf16' for seed in range(40))


def test_same_seed_same_proposals_and_other_seeds_differ(tmp_path: Path):
  def run(seed: int) -> list[tuple[str, tuple]]:
    proposer, history, out = HeuristicProposer(None, seed), [], []
    for trial in range(6):
      proposal = proposer.propose(observe(OVERFIT, history=history, trial=trial,
                                          tmp_path=tmp_path))
      out.append((proposal.operator, tuple(sorted(proposal.changes.items()))))
      history.append(rejected(proposal, trial))
    return out
  assert run(3) == run(3)
  assert run(3) != run(4)


def test_exhaustion_never_repeats_and_ends_in_no_proposal(tmp_path: Path):
  """Feeding its own proposals back as rejected must end, without a repeated text."""
  proposer, history = HeuristicProposer(None, 1), []
  files = files_with(MNIST1D)
  seen = {MNIST1D: {files[MNIST1D]}, 'models/mlp.py': {files['models/mlp.py']}}
  original = {k.path: k.value for k in knobs_of(files[MNIST1D], tmp_path)}
  for trial in range(100):
    try:
      proposal = proposer.propose(observe(OVERFIT, history=history, trial=trial,
                                          tmp_path=tmp_path))
    except NoProposal:
      break
    for path, text in proposal.changes.items():
      assert CHARTER.is_editable(path)
      assert text not in seen.setdefault(path, set()), f'repeated text from {proposal.operator}'
      seen[path].add(text)
    history.append(rejected(proposal, trial))
  else:
    pytest.fail('no NoProposal within 100 trials')
  operators = [t.operator for t in history]
  assert len(operators) <= 2 * len(h.OPERATORS)
  # Source edits come only once every config operator is spent.
  sources = [i for i, t in enumerate(history) if h.OPERATORS[t.operator].source]
  assert sources and sources == list(range(sources[0], len(history)))
  for trial in history:
    if MNIST1D in trial.changes:
      new = {k.path: k.value for k in knobs_of(trial.changes[MNIST1D], tmp_path)}
      changed = {p for p in original.keys() | new.keys() if original.get(p) != new.get(p)}
      assert changed and all(knobs.categorize(p) in h.TUNABLE for p in changed), changed


def test_source_edits_load_and_build(tmp_path: Path):
  """Once the config is exhausted, the model-source edits produce modules that still build."""
  history = [rejected(p, i) for i, p in enumerate(_config_proposals(tmp_path))]
  proposer = HeuristicProposer(None, 0)
  from flax import nnx
  for trial in range(len(history), len(history) + 2):
    proposal = proposer.propose(observe(OVERFIT, history=history, trial=trial,
                                        tmp_path=tmp_path))
    assert proposal.operator in ('init_he', 'head_zero_init')
    assert list(proposal.changes) == ['models/mlp.py']
    assert 'kernel_init=nnx.initializers.' in proposal.changes['models/mlp.py']
    path = tmp_path / f'edited_mlp_{trial}.py'
    path.write_text(proposal.changes['models/mlp.py'])
    spec = importlib.util.spec_from_file_location(f'edited_mlp_{trial}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = nnx.eval_shape(lambda: module.MLP(width=16, depth=2, input_shape=(40, 1),
                                              num_outputs=10, rngs=nnx.Rngs(0)))
    assert model.head.kernel.shape == (16, 10)
    history.append(rejected(proposal, trial))
  with pytest.raises(NoProposal):
    proposer.propose(observe(OVERFIT, history=history, trial=len(history), tmp_path=tmp_path))


def _config_proposals(tmp_path: Path) -> list[Proposal]:
  """Every config proposal the exhaustion loop makes before the source edits start."""
  proposer, history, out = HeuristicProposer(None, 1), [], []
  while True:
    proposal = proposer.propose(observe(OVERFIT, history=history, trial=len(history),
                                        tmp_path=tmp_path))
    if h.OPERATORS[proposal.operator].source:
      return out
    out.append(proposal)
    history.append(rejected(proposal, len(history)))


WIDTH, DEPTH, STEPS, LR = (space.BY_PATH[p] for p in (
    'model.width', 'model.depth', 'train.steps', 'optimizer.learning_rate'))


def test_accepting_everything_stays_within_bounds(tmp_path: Path):
  """A walk that accepts each proposal keeps width, depth, steps and lr inside the bounds."""
  files, history = files_with(MNIST1D), []
  start_steps = load_config(files[MNIST1D], tmp_path).train.steps
  proposer = HeuristicProposer(None, 5)
  scorecard = card([(100, 1.0, 1.1), (200, 0.8, 0.9), (300, 0.6, 0.75)])  # undertrained
  for trial in range(40):
    try:
      proposal = proposer.propose(observe(scorecard, files=files, history=history, trial=trial,
                                          tmp_path=tmp_path))
    except NoProposal:
      break
    files = files | dict(proposal.changes)
    history.append(TrialSummary(trial, proposal.operator, proposal.hypothesis, True, 'accepted',
                                0.01, dict(proposal.changes)))
    config = load_config(files[MNIST1D], tmp_path)
    model = config.model
    assert model.get('width', 0) <= WIDTH.high and model.get('channels', 0) <= WIDTH.high
    assert 1 <= model.depth <= DEPTH.high
    assert config.train.steps <= STEPS.high * start_steps
    assert LR.low <= config.optimizer.learning_rate <= LR.high
    assert config.optimizer.warmup_steps < config.train.steps
    assert config.train.seed == 0 and config.dataset.name == 'mnist1d'
  assert any(t.operator == 'steps_up' for t in history)


def test_charlm_transformer_gets_capacity_or_lr_edits(tmp_path: Path):
  experiment = 'experiments/charlm_transformer.py'
  flat = card([(100, 1.6, 1.65), (200, 1.55, 1.6), (300, 1.55, 1.6)], task='charlm',
              model='transformer', metric='bits_per_byte', val_metric=2.3)
  counts = collections.Counter(
      HeuristicProposer(None, seed).propose(observe(flat, experiment=experiment,
                                                    tmp_path=tmp_path, direction='min')).operator
      for seed in range(20))
  assert sum(counts[op] for op in ('width_up', 'depth_up', 'lr_up', 'lr_down')) >= 15, counts
  proposal = HeuristicProposer(None, 0).propose(observe(flat, experiment=experiment,
                                                        tmp_path=tmp_path, direction='min'))
  config = load_config(proposal.changes[experiment], tmp_path)
  assert config.model.width % config.model.num_heads == 0
  assert 'bits_per_byte down' in proposal.expected_effect


def test_diverged_run_gets_a_stabilising_edit(tmp_path: Path):
  diverged = card([(250, math.nan, math.nan)], status='diverged')
  diverged['stability'] |= {'nonfinite': True, 'nonfinite_step': 120}
  operators = collections.Counter(
      HeuristicProposer(None, seed).propose(observe(diverged, tmp_path=tmp_path)).operator
      for seed in range(20))
  assert sum(operators[op] for op in ('lr_down', 'clip', 'warmup', 'to_cnn1d')) >= 17, operators


def test_stats_persist_across_instances_and_steer_later_runs(tmp_path: Path):
  stats = tmp_path / 'stats' / 'heuristic.json'
  first = HeuristicProposer(stats, 0)
  proposal = first.propose(observe(OVERFIT, tmp_path=tmp_path))
  first.learn(proposal, accepted=True, gain=0.2)
  saved = HeuristicProposer(stats, 0).bandit
  assert saved.counts == {'mnist1d/mlp': {proposal.operator: [1.0, 0.0]}}
  # Repeated failures of the 1-D CNN on this task make the next run look elsewhere.
  cnn = next(p for p in (HeuristicProposer(None, s).propose(observe(OVERFIT, tmp_path=tmp_path))
                         for s in range(20)) if p.operator == 'to_cnn1d')
  for _ in range(30):
    first.learn(cnn, accepted=False, gain=-0.1)
  later = [HeuristicProposer(stats, seed).propose(observe(OVERFIT, tmp_path=tmp_path)).operator
           for seed in range(20)]
  assert later.count('to_cnn1d') <= 5, later


def test_corrupt_stats_file_starts_fresh(tmp_path: Path, caplog):
  stats = tmp_path / 'heuristic.json'
  stats.write_text('{"version": 1, "contexts": ')
  with caplog.at_level(logging.WARNING):
    proposer = HeuristicProposer(stats, 0)
  assert proposer.bandit.counts == {}
  assert any('starting fresh' in r.getMessage() for r in caplog.records)
  proposal = proposer.propose(observe(OVERFIT, tmp_path=tmp_path))
  proposer.learn(proposal, accepted=False, gain=None)
  assert HeuristicProposer(stats, 0).bandit.counts['mnist1d/mlp'][proposal.operator] == [0, 1]


def test_unwritable_stats_file_warns_instead_of_failing(tmp_path: Path, caplog):
  (tmp_path / 'blocker').write_text('a file where a directory should be')
  proposer = HeuristicProposer(tmp_path / 'blocker' / 'heuristic.json', 0)
  proposal = proposer.propose(observe(OVERFIT, tmp_path=tmp_path))
  with caplog.at_level(logging.WARNING):
    proposer.learn(proposal, accepted=True, gain=0.1)
  assert proposer.bandit.counts['mnist1d/mlp'][proposal.operator] == [1, 0]
  assert any('Cannot save proposer stats' in r.getMessage() for r in caplog.records)


def test_every_operator_is_registered_with_known_requirements():
  symptoms = set(h.RULES)
  for op in h.OPERATORS.values():
    assert op.requires <= symptoms
  nominated = {op for remedies in h.RULES.values() for op in remedies}
  assert nominated <= set(h.OPERATORS)
  assert {'lr_up', 'lr_down', 'warmup', 'schedule_cosine', 'clip', 'wd_up', 'dropout_up',
          'width_up', 'width_down', 'depth_up', 'depth_down', 'steps_up', 'batch_up',
          'batch_down', 'normalization_layernorm', 'residual_on', 'activation_gelu', 'to_cnn1d',
          'to_cnn2d', 'channels_up', 'kernel_up', 'dtype_bf16', 'remat_on'} <= set(h.OPERATORS)
  assert any(op.source for op in h.OPERATORS.values())


if __name__ == '__main__':
  sys.exit(pytest.main([__file__]))
