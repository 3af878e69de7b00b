"""Diffs: generated ones apply with git, and parsing cannot be fooled about which files change."""

import shutil
import subprocess

import pytest

from agent.editing.diffs import DiffError, changed_paths, diff_stats, parse_diff, unified_diff

OLD = 'a = 1\nb = 2\nc = 3\n'
NEW = 'a = 1\nb = 20\nc = 3\nd = 4\n'


def test_git_style_headers():
  diff = unified_diff('models/mlp.py', OLD, NEW)
  assert diff.splitlines()[:4] == ['diff --git a/models/mlp.py b/models/mlp.py',
                                   '--- a/models/mlp.py', '+++ b/models/mlp.py',
                                   '@@ -1,3 +1,4 @@']
  assert diff_stats(diff) == (1, 2, 1)
  assert unified_diff('x.py', OLD, OLD) == ''


def test_creation_and_deletion_use_dev_null():
  created = unified_diff('models/new.py', None, 'x = 1\n')
  deleted = unified_diff('models/old.py', 'x = 1\n', None)
  assert '--- /dev/null\n+++ b/models/new.py\n' in created
  assert '--- a/models/old.py\n+++ /dev/null\n' in deleted
  [c, d] = parse_diff(created + deleted)
  assert (c.old_path, c.new_path, d.old_path, d.new_path) == (
      None, 'models/new.py', 'models/old.py', None)
  assert changed_paths(created + deleted) == ['models/new.py', 'models/old.py']


@pytest.mark.skipif(shutil.which('git') is None, reason='git not installed')
def test_generated_diffs_apply_with_git(tmp_path):
  def git(*args):
    return subprocess.run(['git', *args], cwd=tmp_path, check=True, capture_output=True,
                          text=True).stdout
  git('init', '-q')
  (tmp_path / 'edit.py').write_text('x = 1\ny = 2')  # no final newline
  (tmp_path / 'gone.py').write_text('z = 3\n')
  git('add', '.')
  git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'start')
  diff = (unified_diff('edit.py', 'x = 1\ny = 2', 'x = 1\ny = 3\f\n')
          + unified_diff('gone.py', 'z = 3\n', None)
          + unified_diff('new.py', None, 'w = 4'))
  (tmp_path / 'patch.diff').write_text(diff)
  git('apply', '--index', 'patch.diff')
  assert (tmp_path / 'edit.py').read_text() == 'x = 1\ny = 3\f\n'
  assert (tmp_path / 'new.py').read_text() == 'w = 4'
  assert not (tmp_path / 'gone.py').exists()
  git_diff = git('diff', '--cached', '-M')
  assert sorted(changed_paths(git_diff)) == ['edit.py', 'gone.py', 'new.py']
  assert diff_stats(git_diff) == diff_stats(diff) == (3, 2, 2)


def test_removed_lines_that_look_like_headers_are_content():
  old = '-- a/harness/train.py\n++ b/harness/train.py\nkeep\n'
  new = '++ b/harness/evil.py\nkeep\n'
  diff = unified_diff('models/notes.txt', old, new)
  assert '--- a/harness/train.py\n' in diff
  assert changed_paths(diff) == ['models/notes.txt']
  assert diff_stats(diff) == (1, 1, 2)


def test_a_second_file_after_a_hunk_is_found():
  diff = unified_diff('models/mlp.py', OLD, NEW) + (
      '--- a/harness/train.py\n+++ b/harness/train.py\n@@ -1 +1 @@\n-x\n+y\n')
  assert changed_paths(diff) == ['models/mlp.py', 'harness/train.py']


def test_renames_name_both_paths():
  diff = ('diff --git a/models/old.py b/harness/new.py\n'
          'similarity index 100%\n'
          'rename from models/old.py\n'
          'rename to harness/new.py\n')
  [patch] = parse_diff(diff)
  assert (patch.old_path, patch.new_path) == ('models/old.py', 'harness/new.py')
  assert changed_paths(diff) == ['models/old.py', 'harness/new.py']
  assert diff_stats(diff) == (1, 0, 0)


def test_plain_unified_diff_with_timestamps_and_binary_and_quoted_names():
  diff = ('--- a/models/x.py\t2024-01-01 00:00:00\n+++ b/models/x.py\t2024-01-02 00:00:00\n'
          '@@ -1,2 +1,2 @@\n a\n-b\n+c\n'
          'diff --git a/data.npz b/data.npz\nBinary files a/data.npz and b/data.npz differ\n'
          'diff --git "a/models/caf\\303\\251.py" "b/models/caf\\303\\251.py"\n'
          'new file mode 100644\n--- /dev/null\n+++ "b/models/caf\\303\\251.py"\n'
          '@@ -0,0 +1 @@\n+x\n')
  assert changed_paths(diff) == ['models/x.py', 'data.npz', 'models/café.py']
  assert diff_stats(diff) == (3, 2, 1)


def test_header_only_git_parts_count():
  diff = 'diff --git a/run.sh b/run.sh\nold mode 100644\nnew mode 100755\n'
  assert changed_paths(diff) == ['run.sh'] and diff_stats(diff) == (1, 0, 0)


@pytest.mark.parametrize('diff, message', [
    ('@@ -1 +1 @@\n-a\n+b\n', 'hunk without a ---/.+. file header'),
    ('--- a/x\n+++ b/x\n@@ -1,3 +1,3 @@\n a\n-b\n+c\n', 'hunk ends before'),
    ('--- a/x\n+++ b/x\n@@ -1 +1,2 @@\n-a\n-b\n+c\n', 'more lines than its header'),
    ('--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n*b\n', 'unexpected line in hunk'),
    ('--- a/x\n+++ b/x\n@@ bogus @@\n', 'malformed hunk header'),
])
def test_malformed_diffs_raise(diff, message):
  with pytest.raises(DiffError, match=message):
    changed_paths(diff)


def test_empty_diff():
  assert changed_paths('') == [] and diff_stats('') == (0, 0, 0)
