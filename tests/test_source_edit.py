"""Model-source edits are scoped to one class and leave everything else byte-for-byte."""

import difflib
from pathlib import Path

import pytest

from agent.editing.config_edit import EditError
from agent.editing.source_edit import replace_call_keyword, set_default

ROOT = Path(__file__).resolve().parents[1]

SOURCE = '''\
"""Two small modules."""

from flax import nnx


class Block(nnx.Module):
  """A block."""

  def __init__(self, width: int = 64, act: str = 'relu', *, rngs: nnx.Rngs):
    self.dense = nnx.Linear(width, width, rngs=rngs)  # the only layer
    self.other = nnx.MyLinear(width, width, rngs=rngs)


class Head(nnx.Module):

  def __init__(self, features, scale: float = 1.0, *, rngs):
    self.proj = nnx.Linear(
        features,
        10,
        use_bias=True,
    )
    self.norm = nnx.LayerNorm(features, rngs=rngs)
'''


def changed_lines(old: str, new: str) -> list[str]:
  diff = difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm='', n=0)
  return [line for line in diff if line[:1] in '+-' and line[:3] not in ('---', '+++')]


def test_set_default_changes_only_that_default():
  new = set_default(SOURCE, 'Block', 'width', 128)
  assert changed_lines(SOURCE, new) == [
      "-  def __init__(self, width: int = 64, act: str = 'relu', *, rngs: nnx.Rngs):",
      "+  def __init__(self, width: int = 128, act: str = 'relu', *, rngs: nnx.Rngs):"]


def test_set_default_writes_typed_literals():
  assert "act: str = 'gelu'" in set_default(SOURCE, 'Block', 'act', 'gelu')
  assert 'scale: float = 5e-4' in set_default(SOURCE, 'Head', 'scale', 5e-4)


def test_keyword_is_replaced_in_the_named_class_only():
  new = replace_call_keyword(SOURCE, 'Head', 'nnx.Linear', 'use_bias', 'False')
  assert changed_lines(SOURCE, new) == ['-        use_bias=True,', '+        use_bias=False,']


def test_keyword_is_added_on_one_line_calls_and_matches_at_a_dot_boundary():
  new = replace_call_keyword(SOURCE, 'Block', 'Linear', 'kernel_init',
                             'nnx.initializers.zeros_init()')
  assert changed_lines(SOURCE, new) == [
      '-    self.dense = nnx.Linear(width, width, rngs=rngs)  # the only layer',
      '+    self.dense = nnx.Linear(width, width, rngs=rngs, '
      'kernel_init=nnx.initializers.zeros_init())  # the only layer']


def test_keyword_is_added_as_its_own_line_in_a_multiline_call():
  new = replace_call_keyword(SOURCE, 'Head', 'nnx.Linear', 'rngs', 'rngs')
  assert '        use_bias=True,\n        rngs=rngs,\n    )\n' in new
  compile(new, 'head.py', 'exec')


def test_every_matching_call_in_the_class_changes():
  source = SOURCE.replace('self.norm = nnx.LayerNorm(features, rngs=rngs)',
                          'self.extra = nnx.Linear(1, 2)')
  new = replace_call_keyword(source, 'Head', 'nnx.Linear', 'use_bias', 'False')
  assert 'use_bias=False,' in new and 'nnx.Linear(1, 2, use_bias=False)' in new


@pytest.mark.parametrize('edit, message', [
    (lambda: set_default(SOURCE, 'Tail', 'width', 1), 'no top-level class Tail'),
    (lambda: set_default(SOURCE, 'Block', 'depth', 1), "no parameter 'depth'"),
    (lambda: set_default(SOURCE, 'Head', 'features', 1), "'features' has no default"),
    (lambda: set_default(SOURCE, 'Block', 'width', object()), 'cannot write object'),
    (lambda: replace_call_keyword(SOURCE, 'Block', 'nnx.Conv', 'x', '1'), r'no call to nnx\.Conv'),
    (lambda: replace_call_keyword(SOURCE, 'Head', 'nnx.Linear', 'x', '1 +'), 'does not parse'),
    (lambda: replace_call_keyword(SOURCE, 'Head', 'nnx.Linear', 'not-a-name', '1'),
     'not a keyword argument name'),
    (lambda: replace_call_keyword(SOURCE, 'Head', 'nnx.Linear', 'class', '1'), 'invalid Python'),
])
def test_errors(edit, message):
  with pytest.raises(EditError, match=message) as info:
    edit()
  assert '\n' not in str(info.value)


@pytest.mark.skipif(not (ROOT / 'models' / 'mlp.py').exists(), reason='models/ not written yet')
def test_against_the_shipped_mlp(tmp_path):
  from agent.editing.knobs import model_signature
  source = (ROOT / 'models' / 'mlp.py').read_text()
  new = set_default(source, 'MLP', 'width', 256)
  new = replace_call_keyword(new, 'MLP', 'nnx.Linear', 'use_bias', 'False')
  assert len(changed_lines(source, new)) == 4
  (tmp_path / 'mlp.py').write_text(new)
  (tmp_path / '__init__.py').write_text((ROOT / 'models' / '__init__.py').read_text())
  assert model_signature(tmp_path, 'mlp')['width'] == 256
  compile(new, 'mlp.py', 'exec')
