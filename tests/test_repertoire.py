"""The proposer's wider repertoire (issue 13 item 7): augmentation, label smoothing, a weight
EMA, schedule shapes, batch size with the learning rate, CNN width, pooling, downsampling.

For each new operator: a symptom on a constructed scorecard nominates it, it applies to the
incumbent it suits (and not to one it does not), its edit passes the guard, and the config
it writes is one the harness accepts, with the values the proposal names. No training here.
"""

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

import models
from agent.editing import space
from agent.proposing import diagnosis as d
from agent.proposing import heuristic as h
from agent.proposing.heuristic import HeuristicProposer
from agent.safety import guard
from harness import regimen
from harness.optimizers import make_optimizer
from harness.regimen import Regimen
from tests.test_heuristic_proposer import CHARTER, INPUTS, MNIST1D, OVERFIT, ROOT, card, \
    files_with, load_config, observe

DIGITS = 'experiments/digits_mlp.py'
CHARLM = 'experiments/charlm_transformer.py'

# Val loss up and down over the second half, ending near its minimum: a noisy end.
NOISY = card([(250, 1.0, 1.0), (500, 0.5, 0.6), (750, 0.4, 0.5), (1000, 0.35, 0.56),
              (1250, 0.33, 0.49), (1500, 0.32, 0.52)])
FALLING = card([(100, 1.0, 1.1), (200, 0.8, 0.9), (300, 0.6, 0.75)])  # undertrained
NARROW = card([(250, 1.4, 1.5), (500, 1.2, 1.3), (750, 1.19, 1.29)])  # underfitting
SPIKY = card([(250, 1.0, 1.1), (500, 0.6, 0.7)], stability={
    'nonfinite': False, 'max_grad_norm': {'per_seed': [9.0]},
    'loss_spikes': {'per_seed': [20, 20, 20], 'total': 60}}, steps_completed=500)
SLOW = card([(250, 1.0, 1.1), (500, 0.6, 0.7)], step_latency_ms={'p50': 80.0, 'p95': 90.0})

# operator -> (the symptom that nominates it, its scorecard, the incumbent it suits)
NEW = {
    'augment_shift': ('overfitting', OVERFIT, 'mnist1d'),
    'augment_noise': ('overfitting', OVERFIT, 'digits'),
    'label_smoothing': ('overfitting', OVERFIT, 'mnist1d'),
    'channels_down': ('overfitting', OVERFIT, 'cnn1d'),
    'pooling_max': ('overfitting', OVERFIT, 'cnn1d'),
    'pooling_mean': ('overfitting', OVERFIT, 'cnn1d'),
    'batch_lr_down': ('overfitting', OVERFIT, 'digits'),
    'ema': ('noisy_end', NOISY, 'mnist1d'),
    'schedule_linear': ('noisy_end', NOISY, 'mnist1d'),
    'warmup_cosine': ('spikes', SPIKY, 'digits'),
    'batch_lr_up': ('noisy_end', NOISY, 'mnist1d'),
    'schedule_constant': ('undertrained', FALLING, 'charlm'),
    'downsample': ('underfitting', NARROW, 'cnn1d'),
}


@functools.cache
def _incumbents(tmp_path: Path) -> dict[str, tuple[str, str]]:
  """(experiment, text) of the shipped tasks and of the MNIST-1D 1-D CNN the proposer
  switches to (the charlm config has no regimen keys: they are optional)."""
  mnist1d = (ROOT / MNIST1D).read_text()
  inc = HeuristicProposer(None, 0)._incumbent(observe(OVERFIT, tmp_path=tmp_path))
  switch = h.OPERATORS['to_cnn1d'].build(inc, np.random.default_rng(0))
  return {'mnist1d': (MNIST1D, mnist1d), 'digits': (DIGITS, (ROOT / DIGITS).read_text()),
          'charlm': (CHARLM, (ROOT / CHARLM).read_text()),
          'cnn1d': (MNIST1D, h._render(switch, inc, MNIST1D)[MNIST1D])}


def _scorecard(base: dict, name: str) -> dict:
  task = {'cnn1d': 'mnist1d'}.get(name, name)
  kind, shape = INPUTS[task]
  model = {'cnn1d': 'cnn1d', 'charlm': 'transformer'}.get(name, 'mlp')
  return base | {'task': task, 'input_kind': kind, 'input_shape': shape,
                 'config': {'model': {'name': model}, 'optimizer': {'schedule': 'constant'}}}


def test_every_new_operator_is_declared_and_nominated():
  assert set(NEW) <= set(h.OPERATORS)
  for op, (symptom, _, _) in NEW.items():
    assert op in h.RULES[symptom], (op, symptom)
  assert set(h.RULES) == set(h._WHY)


@pytest.mark.parametrize('op', sorted(NEW))
def test_a_new_operator_is_nominated_applies_and_writes_a_valid_config(op, tmp_path):
  symptom, base, scenario = NEW[op]
  experiment, text = _incumbents(tmp_path.parent)[scenario]
  scorecard = _scorecard(base, scenario)
  observation = observe(scorecard, experiment=experiment, files=files_with(experiment, text),
                        tmp_path=tmp_path)
  proposer = HeuristicProposer(None, 0)
  inc = proposer._incumbent(observation)
  _, findings = h._diagnosis(observation, inc)
  assert symptom in findings and h._weights(findings)[op] == h.RULES[symptom][op]
  change = h.OPERATORS[op].build(inc, np.random.default_rng(1))
  assert change is not None
  changes = h._render(change, inc, experiment)
  proposal = h._proposal(op, change, changes, findings, observation)
  assert proposal.hypothesis.endswith(h._WHY[symptom])
  assert findings[symptom] in proposal.diagnosis
  result = guard.check(CHARTER, {experiment: text}, changes)
  assert result.ok, result.reason
  config = load_config(changes[experiment], tmp_path)
  for edit in change.edits:
    section, _, key = edit.path.partition('.')
    assert config[section][key] == edit.value
  task = {'cnn1d': 'mnist1d'}.get(scenario, scenario)
  kind, shape = INPUTS[task]
  Regimen.from_config(config.train, 'language_model' if kind == 'text' else 'classification',
                      tuple(shape))
  make_optimizer(config.optimizer, config.train.steps)
  nnx.eval_shape(lambda: models.build_model(  # the constructor accepts it; nothing computed
      config.model, input_shape=tuple(shape), num_outputs=256 if kind == 'text' else 10,
      rngs=nnx.Rngs(0)))


def test_the_extras_apply_only_where_they_mean_something(tmp_path):
  """No augmentation or label smoothing for a language model, no CNN knob on an MLP, no
  second EMA, and warmup + cosine only once."""
  incumbents = _incumbents(tmp_path.parent)
  built = {}
  for name, (experiment, text) in incumbents.items():
    observation = observe(_scorecard(OVERFIT, name), experiment=experiment,
                          files=files_with(experiment, text), tmp_path=tmp_path)
    inc = HeuristicProposer(None, 0)._incumbent(observation)
    built[name] = {op: h.OPERATORS[op].build(inc, np.random.default_rng(0)) for op in NEW}
    built[name, 'inc'] = inc
  for op in ('augment_shift', 'augment_noise', 'label_smoothing'):
    assert built['charlm'][op] is None and built['mnist1d'][op] is not None
  for op in ('channels_down', 'pooling_max', 'pooling_mean', 'downsample'):
    assert built['mnist1d'][op] is None and built['cnn1d'][op] is not None
  assert built['digits']['augment_shift'].edits[0].value == 1  # one pixel of an 8x8 digit
  assert 2 <= built['mnist1d']['augment_shift'].edits[0].value <= 4
  inc = built['mnist1d', 'inc']
  with_ema = dataclasses.replace(inc, values={**inc.values, 'train.ema_decay': 0.99})
  assert h.OPERATORS['ema'].build(with_ema, np.random.default_rng(0)) is None
  cosine = dataclasses.replace(inc, values={**inc.values, 'optimizer.schedule': 'cosine',
                                            'optimizer.warmup_steps': 100})
  assert h.OPERATORS['warmup_cosine'].build(cosine, np.random.default_rng(0)) is None


def test_an_experiment_without_the_regimen_keys_gets_them_added(tmp_path):
  """The keys are optional: an operator adds the line, at the space's declared default."""
  experiment, text = _incumbents(tmp_path.parent)['charlm']
  assert 'ema_decay' not in text
  observation = observe(_scorecard(NOISY, 'charlm'), experiment=experiment,
                        files=files_with(experiment, text), tmp_path=tmp_path)
  inc = HeuristicProposer(None, 0)._incumbent(observation)
  change = h.OPERATORS['ema'].build(inc, np.random.default_rng(0))
  assert change.edits[0].op == 'add' and 0.9 <= change.edits[0].value < 1
  config = load_config(h._render(change, inc, experiment)[experiment], tmp_path)
  assert config.train.ema_decay == change.edits[0].value


def test_the_batch_and_its_learning_rate_move_together():
  """Square-root scaling for adaptive optimisers, linear for SGD."""
  values = {'train.batch_size': 64, 'optimizer.learning_rate': 0.01, 'optimizer.name': 'adam'}
  base = h.Incumbent('', values, 'mlp', {}, {}, 1000, {})
  up = h.OPERATORS['batch_lr_up'].build(base, np.random.default_rng(0))
  assert [(e.path, e.value) for e in up.edits] == [('train.batch_size', 128),
                                                   ('optimizer.learning_rate', 0.014)]
  sgd = dataclasses.replace(base, values={**values, 'optimizer.name': 'sgd'})
  down = h.OPERATORS['batch_lr_down'].build(sgd, np.random.default_rng(0))
  assert [(e.path, e.value) for e in down.edits] == [('train.batch_size', 32),
                                                     ('optimizer.learning_rate', 0.005)]


def test_the_space_declares_the_harness_defaults():
  for field in dataclasses.fields(Regimen):
    assert space.BY_PATH[f'train.{field.name}'].default == field.default
  assert set(space.BY_PATH['optimizer.schedule'].choices) == {'constant', 'cosine', 'linear'}
  assert regimen.Regimen() == Regimen.from_config({}, 'classification', (40, 1))


def test_noisy_end_is_named_only_for_a_wandering_val_loss():
  text = d.diagnose_noisy_end(NOISY | {'config': {'optimizer': {'schedule': 'constant'}}})
  assert text.startswith('val loss goes up and down over the last 3 evaluations (0.56, 0.49, '
                         '0.52; up to 14% between two) with the learning rate held constant')
  assert 'noisy_end' in d.diagnose(NOISY, dataset='mnist1d', family='mlp')
  assert d.diagnose_noisy_end(FALLING) is None  # monotone
  assert d.diagnose_noisy_end(OVERFIT) is None  # rising: overfitting, not noise
  steady = card([(250, 1.0, 1.0), (500, 0.5, 0.6), (750, 0.4, 0.5), (1000, 0.35, 0.501),
                 (1250, 0.33, 0.5), (1500, 0.32, 0.5005)])
  assert d.diagnose_noisy_end(steady) is None  # up and down by less than NOISY_SWING
  at_chance = card([(250, 2.3, 2.3), (500, 2.3, 2.4), (750, 2.3, 2.3), (1000, 2.3, 2.4)])
  assert d.diagnose_noisy_end(at_chance) is None
