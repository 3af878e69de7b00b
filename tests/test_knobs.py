"""The observe step: knobs found in the shipped experiments agree with what get_config() returns."""

import importlib
from pathlib import Path

import pytest

from agent.editing.knobs import (REQUIRED, Expr, KnobError, categorize, families, family_name,
                                 inventory, model_signature)

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ['mnist1d_mlp', 'digits_mlp', 'charlm_transformer']


def leaves(config, prefix=''):
  """Flattened {dotted path: value} of a ConfigDict."""
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      out.update(leaves(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_inventory_matches_get_config(name):
  path = ROOT / 'experiments' / f'{name}.py'
  knobs = inventory(path)
  expected = leaves(importlib.import_module(f'experiments.{name}').get_config())
  assert {k.path: k.value for k in knobs} == expected
  lines = path.read_text().splitlines()
  for knob in knobs:
    assert type(knob.value).__name__ == knob.kind
    assert lines[knob.line - 1].strip().startswith(f'config.{knob.path} = ')


@pytest.mark.parametrize('name, lr', [('mnist1d_mlp', 1e-2), ('digits_mlp', 3e-3),
                                      ('charlm_transformer', 3e-3)])
def test_learning_rate_is_found_with_value_kind_and_category(name, lr):
  by_path = {k.path: k for k in inventory(ROOT / 'experiments' / f'{name}.py')}
  knob = by_path['optimizer.learning_rate']
  assert (knob.value, knob.kind, knob.category) == (lr, 'float', 'optimization')
  assert (knob.section, knob.key) == ('optimizer', 'learning_rate')


def test_trailing_comments_are_kept():
  by_path = {k.path: k for k in inventory(ROOT / 'experiments' / 'mnist1d_mlp.py')}
  assert by_path['optimizer.momentum'].comment == 'used by sgd only'
  assert by_path['optimizer.grad_clip_norm'].comment == '0 disables clipping'
  assert by_path['optimizer.learning_rate'].comment is None


@pytest.mark.parametrize('path, category', [
    ('optimizer.learning_rate', 'optimization'), ('optimizer.name', 'optimization'),
    ('optimizer.warmup_steps', 'optimization'), ('optimizer.weight_decay', 'regularization'),
    ('model.dropout', 'regularization'), ('model.width', 'capacity'),
    ('model.num_heads', 'capacity'), ('model.name', 'architecture'),
    ('model.activation', 'architecture'), ('model.pooling', 'architecture'),
    ('model.dtype', 'efficiency'), ('train.batch_size', 'efficiency'),
    ('train.steps', 'schedule'), ('train.eval_every', 'schedule'),
    ('dataset.val_fraction', 'data'), ('dataset.name', 'data'), ('train.seed', 'other'),
])
def test_categories(path, category):
  assert categorize(path) == category


def test_inventory_reads_without_running_the_file(tmp_path):
  path = tmp_path / 'exp.py'
  path.write_text(
      'raise SystemExit("must not run")\n\n\n'
      'def get_config():\n'
      '  config = ml_collections.ConfigDict()\n'
      '  config.model = ml_collections.ConfigDict()\n'
      '  config.model.width = -8  # negative on purpose\n'
      '  config.model.layers = (1, 2)\n'
      '  config.model.init = make_init()\n'
      '  return config\n')
  [knob] = inventory(path)
  assert (knob.path, knob.value, knob.kind, knob.line, knob.comment) == (
      'model.width', -8, 'int', 7, 'negative on purpose')


REGISTRY = (ROOT / 'models' / '__init__.py').read_text()


def write_models(tmp_path, source, filename='cnn.py'):
  (tmp_path / '__init__.py').write_text(REGISTRY)
  (tmp_path / filename).write_text(source)
  return tmp_path


def test_families_are_read_from_the_registry():
  assert families(REGISTRY) == {'mlp': ('mlp.py', 'MLP'), 'cnn1d': ('cnn.py', 'CNN1D'),
                                'cnn2d': ('cnn.py', 'CNN2D'),
                                'transformer': ('transformer.py', 'Transformer')}
  assert families('from .res import ResNet as R\nMODELS = {"resnet": R, "x": Unknown}\n') == {
      'resnet': ('res.py', 'ResNet')}
  with pytest.raises(KnobError, match='no MODELS dict'):
    families('from models.mlp import MLP\n')
  with pytest.raises(KnobError, match='line 1'):
    families('MODELS = {\n')
  names = families(REGISTRY)
  assert [family_name(f, names, '?') for f in names] == ['MLP', '1-D CNN', '2-D CNN',
                                                         'transformer']
  assert family_name('resnet', names, 'model') == 'model'


def test_signature_follows_a_base_class_and_drops_harness_arguments(tmp_path):
  models_dir = write_models(tmp_path, (
      'class ConvNet(nnx.Module):\n'
      '  def __init__(self, channels: int = 32, kernel_size=5, act=ACT, *, depth,\n'
      '               input_shape, num_outputs, rngs):\n'
      '    pass\n\n'
      'class CNN1D(ConvNet):\n'
      '  spatial_dims = 1\n'))
  assert model_signature(models_dir, 'cnn1d') == {
      'channels': 32, 'kernel_size': 5, 'act': Expr('ACT'), 'depth': REQUIRED}


def test_signature_errors_are_clear(tmp_path):
  with pytest.raises(KnobError, match='cannot read .*__init__.py'):
    model_signature(tmp_path, 'mlp')
  (tmp_path / '__init__.py').write_text(REGISTRY)
  with pytest.raises(KnobError, match='unknown model family'):
    model_signature(tmp_path, 'resnet')
  with pytest.raises(KnobError, match='cannot read'):
    model_signature(tmp_path, 'mlp')
  write_models(tmp_path, 'class Other:\n  pass\n', 'mlp.py')
  with pytest.raises(KnobError, match='no class MLP'):
    model_signature(tmp_path, 'mlp')
  write_models(tmp_path, 'class MLP(nnx.Module):\n  pass\n', 'mlp.py')
  with pytest.raises(KnobError, match='MLP has no __init__'):
    model_signature(tmp_path, 'mlp')


@pytest.mark.skipif(not (ROOT / 'models' / 'mlp.py').exists(), reason='models/ not written yet')
@pytest.mark.parametrize('name, family', [('mnist1d_mlp', 'mlp'), ('digits_mlp', 'mlp'),
                                          ('charlm_transformer', 'transformer')])
def test_shipped_model_keys_are_constructor_parameters(name, family):
  model_keys = {k.key for k in inventory(ROOT / 'experiments' / f'{name}.py')
                if k.section == 'model' and k.key != 'name'}
  signature = model_signature(ROOT / 'models', family)
  assert model_keys <= set(signature)
  assert REQUIRED not in signature.values()
