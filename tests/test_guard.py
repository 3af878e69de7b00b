"""The guard: paths, sizes, Python and deletions, each rejected with a one-line reason."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from agent.charter import Charter, Scope
from agent.editing import source_edit
from agent.safety import guard
from tests.conftest import ROOT

CHARTER = Charter()


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
  """A copy of the code the guard looks at: editable packages and the harness importing them."""
  tree = tmp_path / 'wt'
  for name in ('models', 'experiments', 'harness'):
    shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns('__pycache__'))
  (tmp_path / 'outside.py').write_text('SECRET = 1\n')
  return tree


def check(worktree: Path, changes: dict[str, str | None], **kwargs) -> guard.GuardResult:
  current = guard.read_current(worktree, list(changes))
  return guard.check(CHARTER, current, changes, worktree=worktree, **kwargs)


@pytest.mark.parametrize('path, block, callee', [
    ('models/mlp.py', 'DenseBlock', 'Linear'), ('models/mlp.py', 'MLP', 'Linear'),
    ('models/cnn.py', 'ConvBlock', 'Conv'), ('models/cnn.py', 'ConvNet', 'Linear')])
@pytest.mark.parametrize('init', ['he_normal', 'zeros_init'])
def test_the_heuristic_proposers_source_edits_pass(worktree, path, block, callee, init):
  text = (worktree / path).read_text()
  new = source_edit.replace_call_keyword(text, block, callee, 'kernel_init',
                                         f'nnx.initializers.{init}()')
  assert check(worktree, {path: new}).ok


def test_an_ordinary_edit_passes_with_its_diff(worktree):
  text = (worktree / 'models/mlp.py').read_text()
  new = text.replace('nnx.Linear(in_features, out_features, dtype=dtype, rngs=rngs)',
                     'nnx.Linear(in_features, out_features, dtype=dtype, rngs=rngs, '
                     'kernel_init=nnx.initializers.he_normal())')
  assert new != text
  result = check(worktree, {'models/mlp.py': new})
  assert result.ok and result.reason == 'passed'
  assert 'he_normal' in result.diff and result.diff.startswith('diff --git a/models/mlp.py')


@pytest.mark.parametrize('path, why', [
    ('harness/train.py', 'protected'),
    ('agent/loop.py', 'protected'),
    ('tests/test_x.py', 'protected'),
    ('WORKSPACE.md', 'protected'),
    ('Harness/train.py', 'protected'),  # case-insensitive file systems
    ('README.md', 'not under an editable glob'),
    ('../outside.py', "'..' leaves the worktree"),
    ('models/../../outside.py', "'..' leaves the worktree"),
    ('/etc/passwd', 'absolute path'),
    ('models\\..\\..\\x.py', 'backslash'),
    ('models/x\0.py', 'NUL'),
    ('', 'empty path'),
    ('models//x.py', 'empty or "." path segment'),
    ('./models/x.py', 'empty or "." path segment'),
    ('.git/config', 'hidden'),
    ('models/.github/workflow.py', 'hidden'),
    ('pyproject.toml', "'pyproject.toml' is packaging"),
    ('models/setup.py', "'setup.py' is packaging"),
    ('models/requirements-dev.txt', "'requirements-dev.txt' is packaging"),
    ('experiments/Makefile', "'makefile' is packaging"),
    ('models/conftest.py', "'conftest.py' is packaging"),
    ('models/sitecustomize.py', "'sitecustomize.py' is packaging"),
    ('models/__pycache__/mlp.cpython-311.pyc', "'__pycache__'"),
    ('models/weights.npz', 'only .py, .md, .rst, .txt files'),
    ('models/data.csv', 'only .py'),
    ('models/table.json', 'only .py'),
    ('models/fast.so', 'only .py'),
    ('models/hook.pth', 'only .py'),
])
def test_paths_outside_the_scope_are_rejected_before_anything_is_read(worktree, path, why):
  result = check(worktree, {path: 'x = 1\n'})
  assert not result.ok
  assert result.reason.startswith(f"{path} is outside the charter's editable scope (")
  assert why in result.reason and '\n' not in result.reason


def test_deleting_a_protected_file_is_a_scope_rejection(worktree):
  result = check(worktree, {'harness/datasets.py': None})
  assert not result.ok and 'editable scope (protected)' in result.reason


def test_protected_globs_of_the_charter_win_over_editable_ones(worktree):
  charter = dataclasses.replace(CHARTER, scope=Scope(editable=('models/**',),
                                                     protected=('models/mlp.py',)))
  result = guard.check(charter, {}, {'models/mlp.py': 'x = 1\n'}, worktree=worktree)
  assert not result.ok and '(protected)' in result.reason


def test_a_symlinked_file_or_folder_in_the_worktree_is_never_followed(worktree, tmp_path):
  os.symlink(tmp_path / 'outside.py', worktree / 'models/escape.py')
  os.symlink(tmp_path, worktree / 'models/linked')
  for path, shown in (('models/escape.py', 'models/escape.py'),
                      ('models/linked/outside.py', 'models/linked/outside.py: models/linked')):
    result = check(worktree, {path: 'x = 2\n'})
    assert not result.ok and result.reason == (
        f'{shown} is a symlink in the worktree; edits never follow symlinks')
  assert (tmp_path / 'outside.py').read_text() == 'SECRET = 1\n'


def test_special_files_hard_links_and_files_used_as_folders_are_rejected(worktree, tmp_path):
  os.mkfifo(worktree / 'models/pipe.py')
  os.link(worktree / 'models/mlp.py', tmp_path / 'hardlink.py')
  (worktree / 'models/folder.py').mkdir()
  cases = {'models/pipe.py': 'is not a regular file', 'models/folder.py': 'not a regular file',
           'models/mlp.py': 'is hard-linked', 'models/mlp.py/x.py': 'is a file, not a folder'}
  for path, why in cases.items():
    result = check(worktree, {path: 'x = 1\n'})
    assert not result.ok and why in result.reason, (path, result.reason)


def test_read_current_never_leaves_the_worktree_or_blocks(worktree, tmp_path):
  os.symlink(tmp_path / 'outside.py', worktree / 'models/escape.py')
  os.mkfifo(worktree / 'models/pipe.py')
  paths = ['models/mlp.py', 'models/absent.py', 'models', '../outside.py', '/dev/zero',
           'models/escape.py', 'models/pipe.py', 'models/x\0.py', 'models\\mlp.py']
  texts = guard.read_current(worktree, paths)
  assert texts.pop('models/mlp.py') == (worktree / 'models/mlp.py').read_text()
  assert set(texts.values()) == {None}


@pytest.mark.parametrize('changes, words', [
    ({f'models/m{i}.py': 'x = 1\n' for i in range(guard.MAX_FILES + 1)}, 'at most 20'),
    ({'models/m.py': 'x = 1\n' * (guard.MAX_CHANGED_LINES + 1)}, 'diff of 401 lines exceeds 400'),
    ({'models/m.py': 'x = "' + 'a' * guard.MAX_FILE_BYTES + '"\n'}, 'bytes exceed the limit'),
])
def test_huge_proposals_are_rejected_before_they_are_diffed(worktree, changes, words):
  result = check(worktree, changes)
  assert not result.ok and words in result.reason


@pytest.mark.parametrize('text, words', [
    ('def f(:\n  pass\n', 'models/m.py:1: syntax error'),
    ('x = 1\n\ny = (\n', 'models/m.py:3: syntax error'),
    ('x = 1\0\n', 'contains NUL bytes'),
    ('x = "\udc80"\n', 'not valid UTF-8'),
    ('import os\nimport subprocess\n', "models/m.py:1: import of 'os' is not allowed"),
])
def test_python_must_parse_and_pass_the_code_policy(worktree, text, words):
  result = check(worktree, {'models/m.py': text})
  assert not result.ok and words in result.reason


def test_a_rejection_counts_the_other_problems(worktree):
  result = check(worktree, {'models/m.py': 'import os\nimport subprocess\neval("1")\n'})
  assert result.reason.endswith('(and 2 more)')


def test_non_python_text_is_not_policed_but_must_be_text(worktree):
  assert check(worktree, {'models/NOTES.md': 'import os\n'}).ok
  assert 'NUL' in check(worktree, {'models/NOTES.md': 'a\0b'}).reason


def test_the_charters_extra_editable_packages_are_importable(worktree):
  charter = dataclasses.replace(CHARTER, scope=dataclasses.replace(
      CHARTER.scope, editable=(*CHARTER.scope.editable, 'extra/**')))
  changes = {'models/m.py': 'import extra.lib\n'}
  assert not guard.check(CHARTER, {}, changes, worktree=worktree).ok
  assert guard.check(charter, {}, changes, worktree=worktree).ok


def test_deleting_a_module_something_imports_is_rejected(worktree):
  result = check(worktree, {'models/layers.py': None})
  assert not result.ok
  assert result.reason.startswith('deleting models/layers.py would break models/cnn.py:')
  result = check(worktree, {'models/__init__.py': None})
  assert not result.ok and 'which imports models' in result.reason
  assert result.reason.split(' break ')[1].startswith('harness/')


def test_deleting_a_module_together_with_its_importers_is_allowed(worktree):
  (worktree / 'models/unused.py').write_text('X = 1\n')
  (worktree / 'models/user.py').write_text('from models.unused import X\n')
  assert not check(worktree, {'models/unused.py': None}).ok
  assert check(worktree, {'models/unused.py': None, 'models/user.py': None}).ok
  assert check(worktree, {'models/unused.py': None, 'models/user.py': 'Y = 2\n'}).ok


def test_deleting_the_running_experiment_or_nothing_is_rejected(worktree):
  experiment = 'experiments/digits_mlp.py'
  assert check(worktree, {experiment: None}).ok  # not the experiment being run
  result = check(worktree, {experiment: None}, keep=(experiment,))
  assert not result.ok and 'is the experiment being run' in result.reason
  assert check(worktree, {'models/absent.py': None}).reason == 'the proposal changes nothing'


@pytest.mark.parametrize('path, why', [
    ('models/' + 'a' * 300 + '.py', 'segment is longer than 255 bytes'),
    ('models/' + 'é' * 130 + '.py', 'segment is longer than 255 bytes'),  # 263 bytes
    ('models/' + 'a/' * 600 + 'x.py', 'at most 1024 are allowed'),
    ('models/x\udcff.py', 'lone surrogates'),
    ('models/x\r[trial 3] ACCEPTED.py', 'U+000D'),
    ('models/\x1b[2Jx.py', 'U+001B'),
    ('models/x\x85.py', 'U+0085'),
    ('models/gpj.\u202eyp', 'U+202E'),  # shows as models/yp.jpg
    ('models/x\u200b.py', 'U+200B'),
    ('models/x\u00a0y.py', 'U+00A0'),
    ('models/x\u2028y.py', 'U+2028'),
])
def test_long_or_odd_paths_are_refused_before_the_disk_is_touched(worktree, monkeypatch, path,
                                                                  why):
  def no_disk(*args, **kwargs):
    raise AssertionError('the disk was touched')
  monkeypatch.setattr(guard, '_disk_reason', no_disk)
  assert guard.read_current(worktree, [path]) == {path: None}
  result = guard.check(CHARTER, {}, {path: 'x = 1\n'}, worktree=worktree)
  assert not result.ok and why in result.reason


def test_a_300_character_name_is_a_refusal_not_a_crash(worktree):
  path = 'models/' + 'n' * 300 + '.py'
  assert guard.read_current(worktree, [path]) == {path: None}
  result = check(worktree, {path: 'x = 1\n'})
  assert not result.ok and 'longer than 255 bytes' in result.reason
  # Past the text checks too, the file system's own refusal is a reason, never an OSError.
  assert 'File name too long' in guard._disk_reason(worktree, path)


def test_file_system_errors_on_the_way_are_refusals(worktree, monkeypatch):
  lstat = Path.lstat

  def refusing(self):
    if self.name == 'locked':
      raise PermissionError(13, 'Permission denied', str(self))
    return lstat(self)
  monkeypatch.setattr(Path, 'lstat', refusing)
  (worktree / 'models/locked').mkdir()
  assert guard.read_current(worktree, ['models/locked/x.py']) == {'models/locked/x.py': None}
  result = check(worktree, {'models/locked/x.py': 'x = 1\n'})
  assert not result.ok and result.reason == (
      'models/locked/x.py: models/locked cannot be checked in the worktree (Permission denied)')


def test_a_file_the_agent_cannot_read_or_write_is_refused(worktree, monkeypatch):
  access = os.access
  monkeypatch.setattr(os, 'access', lambda path, mode, **kw: (
      Path(path).name != 'mlp.py' and access(path, mode, **kw)))
  assert guard.read_current(worktree, ['models/mlp.py']) == {'models/mlp.py': None}
  result = check(worktree, {'models/mlp.py': 'x = 1\n'})
  assert not result.ok and 'not readable and writable' in result.reason


def test_read_current_survives_a_file_that_fails_to_read(worktree, monkeypatch):
  def refusing(self, *args, **kwargs):
    raise PermissionError(13, 'Permission denied', str(self))
  monkeypatch.setattr(Path, 'read_text', refusing)
  assert guard.read_current(worktree, ['models/mlp.py']) == {'models/mlp.py': None}


def test_a_new_file_in_a_folder_the_agent_cannot_write_is_refused(worktree, monkeypatch):
  access = os.access
  monkeypatch.setattr(os, 'access', lambda path, mode, **kw: (
      Path(path).name != 'models' and access(path, mode, **kw)))
  result = check(worktree, {'models/new.py': 'x = 1\n'})
  assert not result.ok and 'its folder is not writable' in result.reason


def test_a_deletion_is_refused_when_a_remaining_file_cannot_be_read(worktree, monkeypatch):
  (worktree / 'models/unused.py').write_text('X = 1\n')
  read_text = Path.read_text

  def refusing(self, *args, **kwargs):
    if self.name == 'cnn.py':
      raise PermissionError(13, 'Permission denied', str(self))
    return read_text(self, *args, **kwargs)
  monkeypatch.setattr(Path, 'read_text', refusing)
  result = check(worktree, {'models/unused.py': None})
  assert not result.ok and result.reason == (
      'deleting is refused: models/cnn.py cannot be read to check its imports')


def test_a_deletion_is_refused_when_a_folder_cannot_be_listed(worktree, monkeypatch):
  (worktree / 'models/unused.py').write_text('X = 1\n')
  scandir = os.scandir

  def refusing(path='.'):
    if Path(path).name == 'experiments':
      raise PermissionError(13, 'Permission denied', os.fspath(path))
    return scandir(path)
  monkeypatch.setattr(os, 'scandir', refusing)
  result = check(worktree, {'models/unused.py': None})
  assert not result.ok and result.reason == (
      'deleting is refused: experiments cannot be read to check its imports')
