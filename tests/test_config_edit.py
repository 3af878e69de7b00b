"""Config edits change exactly the lines they mean to, and the file still loads."""

import difflib
import importlib.util
from pathlib import Path

import pytest

from agent.editing.config_edit import (
                                       ConfigEdit, EditError, add_value, apply_edits, literal_code, remove_value, set_value)

ROOT = Path(__file__).resolve().parents[1]
MNIST1D = (ROOT / 'experiments' / 'mnist1d_mlp.py').read_text()


def load(source: str, tmp_path: Path):
  """get_config() of the source, imported from a file as the harness would."""
  path = tmp_path / 'edited_config.py'
  path.write_text(source)
  spec = importlib.util.spec_from_file_location('edited_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def changed_lines(old: str, new: str) -> list[str]:
  """The -/+ lines of a diff, so a test can say the edit touched nothing else."""
  diff = difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm='', n=0)
  return [line for line in diff if line[:1] in '+-' and line[:3] not in ('---', '+++')]


@pytest.mark.parametrize('name, old, value, code', [
    ('mnist1d_mlp', '1e-2', 5e-3, '5e-3'),
    ('digits_mlp', '3e-3', 1e-3, '1e-3'),
    ('charlm_transformer', '3e-3', 0.0005, '5e-4'),
])
def test_set_changes_one_line_and_loads(tmp_path, name, old, value, code):
  source = (ROOT / 'experiments' / f'{name}.py').read_text()
  new = set_value(source, 'optimizer.learning_rate', value)
  assert changed_lines(source, new) == [f'-  config.optimizer.learning_rate = {old}',
                                        f'+  config.optimizer.learning_rate = {code}']
  assert load(new, tmp_path).optimizer.learning_rate == value


def test_set_keeps_trailing_comment(tmp_path):
  new = set_value(MNIST1D, 'optimizer.momentum', 0.95)
  assert changed_lines(MNIST1D, new) == ['-  config.optimizer.momentum = 0.9  # used by sgd only',
                                         '+  config.optimizer.momentum = 0.95  # used by sgd only']
  assert load(new, tmp_path).optimizer.momentum == 0.95


@pytest.mark.parametrize('path, value, code', [
    ('model.activation', 'gelu', "'gelu'"),
    ('model.residual', True, 'True'),
    ('train.steps', 5000, '5000'),
    ('optimizer.weight_decay', 1e-4, '1e-4'),
    ('optimizer.grad_clip_norm', 1, '1.0'),  # an int widens on a float knob
    ('dataset.val_fraction', 0.2, '0.2'),
])
def test_set_each_kind(tmp_path, path, value, code):
  new = set_value(MNIST1D, path, value)
  [_, plus] = changed_lines(MNIST1D, new)
  assert plus.split(' = ')[1].split('  #')[0] == code
  section, key = path.split('.')
  loaded = load(new, tmp_path)[section][key]
  assert loaded == value and type(loaded) is type(eval(code))


def test_same_value_leaves_the_text_alone():
  assert set_value(MNIST1D, 'optimizer.learning_rate', 0.01) is MNIST1D
  assert apply_edits(MNIST1D, [ConfigEdit('model.width', 100)]) == MNIST1D


def test_scientific_style_is_kept_on_a_tie():
  new = set_value(MNIST1D, 'optimizer.learning_rate', 0.02)
  assert '  config.optimizer.learning_rate = 2e-2\n' in new


def test_strings_follow_the_files_quotes(tmp_path):
  source = MNIST1D.replace("'", '"')
  new = set_value(source, 'model.activation', 'gelu')
  assert '  config.model.activation = "gelu"\n' in new
  assert '  config.model.pooling = "mean"\n' in add_value(source, 'model.pooling', 'mean')
  assert load(new, tmp_path).model.activation == 'gelu'


@pytest.mark.parametrize('value, code', [
    (3e-3, '3e-3'), (1e-4, '1e-4'), (2.5e-5, '2.5e-5'), (-1e-3, '-1e-3'), (0.1, '0.1'),
    (0.05, '0.05'), (0.123, '0.123'), (1.0, '1.0'), (100.0, '100.0'), (0.0, '0.0'),
    ("it's", '"it\'s"'), (None, 'None'), (False, 'False'),
])
def test_literal_code(value, code):
  assert literal_code(value) == code
  assert eval(code) == value


def test_add_goes_after_the_sections_last_line_and_keeps_the_blank_line(tmp_path):
  new = add_value(MNIST1D, 'optimizer.b2', 0.95)
  assert '  config.optimizer.momentum = 0.9  # used by sgd only\n  config.optimizer.b2 = 0.95\n\n' \
      '  config.train = ml_collections.ConfigDict()\n' in new
  assert changed_lines(MNIST1D, new) == ['+  config.optimizer.b2 = 0.95']
  assert load(new, tmp_path).optimizer.b2 == 0.95


def test_add_after_a_given_key():
  new = add_value(MNIST1D, 'model.pooling', 'mean', after='model.name')
  assert "  config.model.name = 'mlp'\n  config.model.pooling = 'mean'\n" in new


def test_remove_keeps_layout(tmp_path):
  new = remove_value(MNIST1D, 'optimizer.momentum')
  assert changed_lines(MNIST1D, new) == ['-  config.optimizer.momentum = 0.9  # used by sgd only']
  assert 'momentum' not in load(new, tmp_path).optimizer


def test_remove_leaves_no_double_gap():
  source = MNIST1D.replace("  config.model.name = 'mlp'\n", "\n  config.model.name = 'mlp'\n\n")
  new = remove_value(source, 'model.name')
  assert '  config.model = ml_collections.ConfigDict()\n\n  config.model.width = 100\n' in new


def test_remove_keeps_the_comment_above_on_the_next_line():
  name_line = "  config.model.name = 'mlp'\n"
  new = remove_value(MNIST1D.replace(name_line, '  # Family.\n' + name_line), 'model.name')
  assert ('  config.model = ml_collections.ConfigDict()\n  # Family.\n'
          '  config.model.width = 100\n') in new


def test_switching_family_gives_exactly_the_new_models_keys(tmp_path):
  edits = [ConfigEdit('model.name', 'cnn1d'), ConfigEdit('model.width', op='remove'),
           ConfigEdit('model.channels', 32, 'add', after='model.name'),
           ConfigEdit('model.kernel_size', 5, 'add', after='model.channels'),
           ConfigEdit('model.pooling', 'flatten', 'add'),
           ConfigEdit('model.downsample', 1, 'add')]
  new = apply_edits(MNIST1D, edits)
  model_lines = [line.split(' = ')[0] for line in new.splitlines() if 'config.model.' in line]
  assert model_lines == [f'  config.model.{key}' for key in (
      'name', 'channels', 'kernel_size', 'depth', 'activation', 'normalization', 'dropout',
      'residual', 'dtype', 'remat', 'pooling', 'downsample')]
  model = load(new, tmp_path).model
  assert (model.name, model.channels, model.pooling) == ('cnn1d', 32, 'flatten')
  if (ROOT / 'models' / 'cnn.py').exists():
    from agent.editing.knobs import model_signature
    assert set(model) - {'name'} == set(model_signature(ROOT / 'models', 'cnn1d'))


@pytest.mark.parametrize('edit, message', [
    (lambda s: set_value(s, 'model.widht', 3), "unknown config path 'model.widht'"),
    (lambda s: set_value(s, 'model.width', 3.5), "'model.width' holds int values"),
    (lambda s: set_value(s, 'model.residual', 1), "'model.residual' holds bool values"),
    (lambda s: set_value(s, 'model.dropout', '0.1'), "'model.dropout' holds float values"),
    (lambda s: set_value(s, 'optimizer.learning_rate', float('inf')), 'no Python literal'),
    (lambda s: set_value(s, 'model.width', [1, 2]), 'cannot write list'),
    (lambda s: add_value(s, 'model.width', 3), "'model.width' is already set"),
    (lambda s: add_value(s, 'mdoel.width', 3), "no section 'mdoel'"),
    (lambda s: add_value(s, 'model.x', 3, after='train.steps'), "not in section 'model'"),
    (lambda s: remove_value(s, 'model'), "'model' is not a key path"),
    (lambda s: set_value(s, 'model', 3), "'model' is not a key path"),
    (lambda s: remove_value(s, 'model.nope'), "unknown config path 'model.nope'"),
    (lambda s: apply_edits(s, [ConfigEdit('model.width', 3, 'rename')]), 'unknown edit op'),
    (lambda s: set_value('def get_config(:\n', 'a.b', 1), 'does not parse'),
    (lambda s: set_value('x = 1\n', 'a.b', 1), 'no top-level get_config()'),
])
def test_errors_are_one_line(edit, message):
  with pytest.raises(EditError, match=message) as info:
    edit(MNIST1D)
  assert '\n' not in str(info.value)


def test_apply_edits_stops_at_the_first_bad_edit():
  with pytest.raises(EditError, match='model.bogus'):
    apply_edits(MNIST1D, [ConfigEdit('model.width', 10), ConfigEdit('model.bogus', 1)])
