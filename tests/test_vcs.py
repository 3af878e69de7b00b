"""The run's worktree must isolate the user's checkout and keep every candidate's diff."""

import subprocess
from pathlib import Path

import pytest

from agent import vcs


def git(cwd: Path, *args: str) -> str:
  return subprocess.run(['git', *args], cwd=cwd, check=True, capture_output=True,
                        text=True).stdout.strip()


@pytest.fixture(autouse=True)
def no_user_git_config(monkeypatch, tmp_path):
  """Tests run as a machine with no user.name, signing or hooks configured anywhere."""
  monkeypatch.setenv('GIT_CONFIG_GLOBAL', str(tmp_path / 'no-global-config'))
  monkeypatch.setenv('GIT_CONFIG_NOSYSTEM', '1')


@pytest.fixture
def repo(tmp_path) -> Path:
  root = tmp_path / 'user-checkout'
  (root / 'experiments').mkdir(parents=True)
  (root / 'experiments' / 'task.py').write_text('LEARNING_RATE = 1e-3\n')
  (root / 'models').mkdir()
  (root / 'models' / 'mlp.py').write_text('WIDTH = 100\n')
  (root / 'README.md').write_text('notes\n')
  git(root, 'init', '--quiet', '-b', 'main')
  git(root, 'add', '--all')
  git(root, '-c', 'user.name=User', '-c', 'user.email=user@example.com',
      'commit', '--quiet', '-m', 'initial')
  return root


@pytest.fixture
def tree(repo, tmp_path) -> vcs.Worktree:
  return vcs.create_worktree(repo, tmp_path / 'runs' / 'r1' / 'worktree', 'agent/r1')


def _snapshot(repo: Path) -> tuple:
  files = {p.relative_to(repo): p.read_bytes() for p in repo.rglob('*')
           if p.is_file() and '.git' not in p.parts}
  return git(repo, 'rev-parse', 'HEAD'), git(repo, 'symbolic-ref', 'HEAD'), files, git(
      repo, 'status', '--porcelain')


def _unreachable_history_is_collected(repo: Path) -> None:
  git(repo, 'reflog', 'expire', '--expire=now', '--all')
  git(repo, 'gc', '--quiet', '--prune=now')


def test_worktree_is_created_on_its_branch(repo, tree):
  assert git(tree.path, 'symbolic-ref', '--short', 'HEAD') == 'agent/r1'
  assert tree.head() == vcs.resolve(repo, 'HEAD')
  assert (tree.path / 'models' / 'mlp.py').read_text() == 'WIDTH = 100\n'
  assert tree.is_clean()
  assert vcs.repo_root(tree.path / 'models') == tree.path.resolve()
  assert vcs.repo_root(repo) == repo.resolve()


def test_commit_in_worktree_leaves_the_user_checkout_alone(repo, tree):
  before = _snapshot(repo)
  tree.write_files({'experiments/task.py': 'LEARNING_RATE = 3e-3\n', 'README.md': None,
                    'models/new/block.py': 'DEPTH = 2\n'})
  assert not tree.is_clean()
  sha = tree.commit('Raise the learning rate')
  assert tree.is_clean()
  assert _snapshot(repo) == before
  assert vcs.resolve(repo, 'agent/r1') == sha
  assert vcs.show_file(repo, sha, 'experiments/task.py') == 'LEARNING_RATE = 3e-3\n'
  assert vcs.show_file(repo, sha, 'models/new/block.py') == 'DEPTH = 2\n'
  with pytest.raises(vcs.VcsError):
    vcs.show_file(repo, sha, 'README.md')
  assert git(repo, 'log', '-1', '--format=%an <%ae>|%s', sha) == (
      'research-agent <agent@localhost>|Raise the learning rate')


def test_rejected_commit_kept_under_a_ref_survives_reset_and_gc(repo, tree):
  base = tree.head()
  tree.write_files({'models/mlp.py': 'WIDTH = 256\n'})
  rejected = tree.commit('Widen the MLP')
  tree.keep_ref('refs/agent/r1/rejected/1', rejected)
  tree.write_files({'models/mlp.py': 'WIDTH = 8\n'})
  forgotten = tree.commit('Shrink the MLP')
  (tree.path / 'stray.log').write_text('left behind by a crash\n')

  tree.reset_to(base)
  assert tree.head() == base and tree.is_clean()
  assert not (tree.path / 'stray.log').exists()
  _unreachable_history_is_collected(repo)

  assert vcs.object_exists(repo, rejected)
  assert not vcs.object_exists(repo, forgotten)  # proves gc really ran: only the ref saved it
  assert vcs.resolve(repo, 'refs/agent/r1/rejected/1') == rejected
  diff = tree.diff(base, rejected)
  assert '-WIDTH = 100' in diff and '+WIDTH = 256' in diff


def test_reopening_an_existing_worktree(repo, tree, tmp_path):
  tree.write_files({'models/mlp.py': 'WIDTH = 128\n'})
  sha = tree.commit('Widen a little')
  again = vcs.create_worktree(repo, tree.path, 'agent/r1')
  assert again == tree and again.head() == sha
  with pytest.raises(vcs.VcsError, match="not 'agent/r2'"):
    vcs.create_worktree(repo, tree.path, 'agent/r2')


def test_a_deleted_worktree_folder_is_reattached_to_its_branch(repo, tree):
  tree.write_files({'models/mlp.py': 'WIDTH = 64\n'})
  sha = tree.commit('Narrow')
  git(repo, 'worktree', 'remove', '--force', str(tree.path))
  reopened = vcs.create_worktree(repo, tree.path, 'agent/r1')
  assert reopened.head() == sha
  assert (reopened.path / 'models' / 'mlp.py').read_text() == 'WIDTH = 64\n'


def test_advance_branch_fast_forwards_only(repo, tree):
  base = tree.head()
  tree.write_files({'models/mlp.py': 'WIDTH = 200\n'})
  candidate = tree.commit('Candidate')
  tree.reset_to(base)
  tree.advance_branch(candidate)
  assert tree.head() == candidate == vcs.resolve(repo, 'agent/r1')
  assert (tree.path / 'models' / 'mlp.py').read_text() == 'WIDTH = 200\n'
  with pytest.raises(vcs.VcsError, match='not a descendant'):
    tree.advance_branch(base)


def test_write_files_refuses_paths_outside_the_worktree(tree):
  for bad in ('../escape.py', '/etc/passwd', '.git/config', ''):
    with pytest.raises(vcs.VcsError, match='refusing'):
      tree.write_files({bad: 'x'})


def test_failures_are_one_line_vcs_errors(repo, tree):
  with pytest.raises(vcs.VcsError) as error:
    vcs.resolve(repo, 'no-such-branch')
  assert str(error.value).startswith('git rev-parse failed') and '\n' not in str(error.value)
  with pytest.raises(vcs.VcsError, match='nothing to commit'):
    tree.commit('nothing changed')
  with pytest.raises(vcs.VcsError, match='Name <email>'):
    tree.commit('x', author='nobody')
  assert not vcs.object_exists(repo, '0' * 40)
