"""The run's worktree must isolate the user's checkout and keep every candidate's diff."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.recording import vcs


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


# Planted commands must not run in any of the agent's git commands, nor see its secrets.

CANARY = 'sk-canary-0123456789'

SPY = '''#!/bin/sh
{{ echo "== $0 $*"; env; }} >> {marker}
if [ "$1" = pass ]; then exec cat; fi
'''

HOOKS = ('pre-commit', 'prepare-commit-msg', 'commit-msg', 'post-commit', 'post-checkout',
         'post-rewrite', 'reference-transaction', 'post-index-change', 'pre-auto-gc')


def _write_script(path: Path, text: str) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)
  return path


def _plant_fsmonitor(repo: Path, spy: Path) -> None:
  git(repo, 'config', 'core.fsmonitor', str(spy))


def _plant_hooks(repo: Path, spy: Path) -> None:
  for name in HOOKS:
    _write_script(repo / '.git' / 'hooks' / name, spy.read_text())


def _plant_hooks_path(repo: Path, spy: Path) -> None:
  for name in HOOKS:
    _write_script(spy.parent / 'planted-hooks' / name, spy.read_text())
  git(repo, 'config', 'core.hooksPath', str(spy.parent / 'planted-hooks'))


def _plant_attribute_drivers(repo: Path, spy: Path) -> None:
  """Committed attributes send every file through a filter and diff driver the config names."""
  (repo / '.gitattributes').write_text('* filter=spy.v1 diff=spy.v1\n')
  git(repo, 'add', '.gitattributes')
  git(repo, '-c', 'user.name=User', '-c', 'user.email=user@example.com',
      'commit', '--quiet', '-m', 'attributes')
  for key, value in (('filter.spy.v1.clean', f'{spy} pass'),
                     ('filter.spy.v1.smudge', f'{spy} pass'), ('filter.spy.v1.required', 'true'),
                     ('diff.spy.v1.textconv', str(spy)), ('diff.spy.v1.command', str(spy))):
    git(repo, 'config', key, value)


def _plant_lazy_fetch(repo: Path, spy: Path) -> None:
  """A partial clone fetches a missing object from its promisor remote, running uploadpack."""
  for key, value in (('core.repositoryformatversion', '1'), ('extensions.partialClone', 'spy'),
                     ('remote.spy.url', str(spy.parent)), ('remote.spy.promisor', 'true'),
                     ('remote.spy.uploadpack', str(spy)), ('protocol.file.allow', 'always')):
    git(repo, 'config', key, value)


def _plant_signing(repo: Path, spy: Path) -> None:
  git(repo, 'config', 'commit.gpgSign', 'true')
  git(repo, 'config', 'gpg.program', str(spy))


PLANTS = {  # how to plant, and plain git commands that run what was planted
    'fsmonitor': (_plant_fsmonitor, [('status',)]),
    'hooks': (_plant_hooks, [('-c', 'user.name=U', '-c', 'user.email=u@x', 'commit',
                              '--allow-empty', '-m', 'x')]),
    'hooks-path': (_plant_hooks_path, [('-c', 'user.name=U', '-c', 'user.email=u@x', 'commit',
                                        '--allow-empty', '-m', 'x')]),
    'attribute-drivers': (_plant_attribute_drivers, [('add', '--renormalize', '.'),
                                                     ('diff', 'HEAD~1', 'HEAD')]),
    'lazy-fetch': (_plant_lazy_fetch, [('cat-file', '-e', 'f' * 40)]),
    'signing': (_plant_signing, [('-c', 'user.name=U', '-c', 'user.email=u@x', 'commit',
                                  '--allow-empty', '-m', 'x')]),
}


def _every_operation(repo: Path, tmp_path: Path) -> vcs.Worktree:
  """Each of the agent's git operations, the way a run uses them."""
  tree = vcs.create_worktree(repo, tmp_path / 'runs' / 'r1' / 'worktree', 'agent/r1')
  base = tree.head()
  tree.write_files({'models/mlp.py': 'WIDTH = 256\n', 'models/new.py': 'DEPTH = 2\n'})
  assert not tree.is_clean()
  tree.commit('Widen')
  sha = tree.amend_message('Widen\n\nverdict: rejected')
  tree.keep_ref('refs/agent/r1/rejected/1', sha)
  assert '+WIDTH = 256' in tree.diff(base, sha) and tree.tree(sha) != tree.tree(base)
  assert vcs.changed_files(repo, base, sha) == ['models/mlp.py', 'models/new.py']
  assert vcs.show_file(repo, sha, 'models/mlp.py') == 'WIDTH = 256\n'
  assert vcs.file_at(repo, sha, 'models/none.py') is None and vcs.parent(repo, sha) == base
  assert vcs.object_exists(repo, sha) and not vcs.object_exists(repo, 'f' * 40)
  tree.reset_to(base)
  assert tree.is_clean()
  tree.advance_branch(sha)
  assert vcs.create_worktree(repo, tree.path, 'agent/r1').head() == sha
  start = vcs.create_detached(repo, tmp_path / 'runs' / 'r1' / 'start', base)
  assert vcs.resolve(vcs.create_detached(repo, start, sha), 'HEAD') == sha
  assert vcs.repo_root(start) == start
  vcs.protected_config_digest(tree.path)
  return tree


@pytest.mark.parametrize('plant', PLANTS)
def test_a_planted_command_never_runs_in_the_agents_git(plant, repo, tmp_path, monkeypatch):
  marker = tmp_path / 'planted-command-ran'
  spy = _write_script(tmp_path / 'spy', SPY.format(marker=marker))
  plant_it, triggers = PLANTS[plant]
  plant_it(repo, spy)
  for args in triggers:  # the plant is live: plain git runs it, and it sees the secret
    subprocess.run(['git', *args], cwd=repo, capture_output=True,
                   env={**os.environ, 'OPENAI_API_KEY': CANARY}, timeout=60)
  assert CANARY in marker.read_text()
  marker.unlink()

  monkeypatch.setenv('OPENAI_API_KEY', CANARY)
  _every_operation(repo, tmp_path)
  assert not marker.exists()


def _command_config(env: dict[str, str]) -> dict[str, str]:
  return {env[f'GIT_CONFIG_KEY_{i}']: env[f'GIT_CONFIG_VALUE_{i}']
          for i in range(int(env['GIT_CONFIG_COUNT']))}


def test_git_gets_none_of_the_agents_variables(repo, tmp_path, monkeypatch):
  _plant_attribute_drivers(repo, _write_script(tmp_path / 'spy', '#!/bin/sh\n'))
  monkeypatch.setenv('OPENAI_API_KEY', CANARY)
  monkeypatch.setenv('GIT_DIR', str(tmp_path / 'elsewhere'))
  monkeypatch.setenv('GIT_CONFIG_PARAMETERS', "'core.fsmonitor'='/bin/sh'")
  env = vcs.git_environment(repo)
  assert CANARY not in str(env)
  assert set(env) - {'PATH', 'LANG', 'LC_ALL', 'TZ'} == {
      'HOME', 'GIT_CONFIG_GLOBAL', 'GIT_CONFIG_NOSYSTEM', 'GIT_TERMINAL_PROMPT',
      'GIT_ALLOW_PROTOCOL', 'GIT_CONFIG_COUNT', *(f'GIT_CONFIG_{part}_{i}' for part in (
          'KEY', 'VALUE') for i in range(int(env['GIT_CONFIG_COUNT'])))}
  assert env['GIT_CONFIG_GLOBAL'] == env['HOME'] == os.devnull
  assert env['GIT_ALLOW_PROTOCOL'] == '' and env['GIT_TERMINAL_PROMPT'] == '0'
  config = _command_config(env)
  assert config['core.fsmonitor'] == 'false' and config['core.hooksPath'] == os.devnull
  assert config['filter.spy.v1.clean'] == config['filter.spy.v1.smudge'] == ''
  assert config['filter.spy.v1.required'] == 'false'
  assert vcs.resolve(repo, 'HEAD') == git(repo, '--git-dir', '.git', 'rev-parse', 'HEAD')


def test_every_git_the_agent_starts_receives_only_the_scrubbed_environment(
    repo, tmp_path, monkeypatch):
  """A git on PATH that records its environment, then runs the real one."""
  log = tmp_path / 'git-environments.log'
  wrapper = _write_script(tmp_path / 'bin' / 'git', (
      f'#!/bin/sh\n{{ echo "== git $*"; env; }} >> {log}\nexec {shutil.which("git")} "$@"\n'))
  monkeypatch.setenv('PATH', f'{wrapper.parent}{os.pathsep}{os.environ["PATH"]}')
  monkeypatch.setenv('OPENAI_API_KEY', CANARY)
  _every_operation(repo, tmp_path)
  records = log.read_text().split('== git ')[1:]
  assert len(records) > 40 and CANARY not in log.read_text()
  for record in records:
    assert 'OPENAI_API_KEY' not in record and f'GIT_CONFIG_GLOBAL={os.devnull}\n' in record
    assert 'GIT_CONFIG_VALUE_0=' in record and record.startswith('--no-pager ')


def test_protected_config_digest_sees_every_file_that_can_run_code(repo, tmp_path):
  before = vcs.protected_config_digest(repo)
  tree = _every_operation(repo, tmp_path)
  assert vcs.protected_config_digest(repo) == vcs.protected_config_digest(tree.path) == before
  assert vcs.protected_config_digest(repo / 'models') == before

  common = repo / '.git'
  admin = next((common / 'worktrees').iterdir())
  changes = {
      'config gains a line': lambda: git(repo, 'config', 'core.fsmonitor', '/bin/true'),
      'info/attributes appears, empty': lambda: (common / 'info' / 'attributes').write_text(''),
      'info/attributes changes': lambda: (common / 'info' / 'attributes').write_text('* diff=x\n'),
      'a hook is added': lambda: _write_script(common / 'hooks' / 'pre-commit', '#!/bin/sh\n'),
      'a hook changes': lambda: _write_script(common / 'hooks' / 'pre-commit', '#!/bin/sh\n\n'),
      'a hook in a subfolder': lambda: _write_script(common / 'hooks' / 'd' / 'x', ''),
      'config.worktree appears': lambda: (common / 'config.worktree').write_text(''),
      "a worktree's config.worktree": lambda: (admin / 'config.worktree').write_text(''),
  }
  seen = [before]
  for why, change in changes.items():
    change()
    after = vcs.protected_config_digest(repo)
    assert after not in seen, why
    assert vcs.protected_config_digest(tree.path) == after, why
    seen.append(after)


def _nested_repository(path: Path, spy: Path) -> str:
  """A repository whose own config runs spy as a filter on every file; returns its HEAD."""
  path.mkdir(exist_ok=True)
  (path / 'a.txt').write_text('a\n')
  (path / '.gitattributes').write_text('* filter=spy\n')
  git(path, 'init', '--quiet')
  git(path, 'add', '--all')
  date = '2020-01-01T00:00:00Z'  # every such repository has the same HEAD, as a clone would
  subprocess.run(['git', '-c', 'user.name=U', '-c', 'user.email=u@x', 'commit', '--quiet', '-m',
                  'n'], cwd=path, check=True,
                 env={**os.environ, 'GIT_AUTHOR_DATE': date, 'GIT_COMMITTER_DATE': date})
  for key in ('clean', 'smudge'):
    git(path, 'config', f'filter.spy.{key}', f'{spy} pass')
  return git(path, 'rev-parse', 'HEAD')


def _touch(repository: Path) -> None:
  """Same size, newer: only its content, through the filter, can tell whether it changed."""
  (repository / 'a.txt').write_text('b\n')
  os.utime(repository / 'a.txt', (time.time() + 10, time.time() + 10))


def test_a_repository_nested_in_the_worktree_runs_nothing(repo, tmp_path, monkeypatch):
  """Trial code can make repositories in the worktree, or fill the user's submodule folder:
  git add and status would run git inside them, under their own config."""
  marker = tmp_path / 'planted-command-ran'
  spy = _write_script(tmp_path / 'spy', SPY.format(marker=marker))
  (repo / '.gitmodules').write_text('[submodule "sub"]\n\tpath = sub\n\turl = ./sub\n')
  git(repo, 'update-index', '--add', '--cacheinfo',
      f'160000,{_nested_repository(tmp_path / "sub-origin", spy)},sub')
  git(repo, 'add', '.gitmodules')
  git(repo, '-c', 'user.name=U', '-c', 'user.email=u@x', 'commit', '--quiet', '-m', 'sub')
  git(repo, 'config', 'submodule.sub.url', str(tmp_path / 'sub-origin'))
  git(repo, 'config', 'submodule.recurse', 'true')
  tree = vcs.create_worktree(repo, tmp_path / 'runs' / 'r1' / 'worktree', 'agent/r1')
  base = tree.head()
  for nested in ('sub', 'made-by-a-trial'):
    _nested_repository(tree.path / nested, spy)
  for args in (('add', '--all'), ('status', '--porcelain')):  # the plant is live
    _touch(tree.path / 'sub')
    subprocess.run(['git', *args], cwd=tree.path, capture_output=True,
                   env={**os.environ, 'OPENAI_API_KEY': CANARY}, check=True)
    assert CANARY in marker.read_text()
    marker.unlink()
  git(tree.path, 'reset', '--quiet', 'HEAD')  # unstage what plain git add took
  marker.unlink(missing_ok=True)

  monkeypatch.setenv('OPENAI_API_KEY', CANARY)
  operations = {
      'is_clean': tree.is_clean,
      'write_files': lambda: tree.write_files({'models/mlp.py': 'WIDTH = 1\n'}),
      'commit': lambda: tree.commit('Narrow'),
      'amend_message': lambda: tree.amend_message('Narrow, rejected'),
      'reset_to': lambda: tree.reset_to(base),
      'advance_branch': lambda: tree.advance_branch(vcs.resolve(repo, 'agent/r1')),
      'reset_to again': lambda: tree.reset_to(base)}
  results = {}
  for name, operation in operations.items():
    _touch(tree.path / 'sub')
    results[name] = operation()
    assert not marker.exists(), name
  assert not (tree.path / 'made-by-a-trial').exists()
  assert vcs.changed_files(repo, base, results['amend_message']) == ['models/mlp.py']


def test_a_worktree_names_its_code_only_when_it_holds_exactly_its_tree(repo, tree):
  """The compilation cache folder a trial gets is named by this: any file beside the tree,
  untracked or ignored, could be code the tree does not name."""
  path = tree.path
  assert vcs.clean_tree(path) == git(repo, 'rev-parse', 'HEAD^{tree}')
  (path / 'notes.txt').write_text('')
  assert vcs.clean_tree(path) is None  # untracked
  (path / 'notes.txt').unlink()
  (repo / '.git' / 'info').mkdir(exist_ok=True)
  (repo / '.git' / 'info' / 'exclude').write_text('scratch_*.py\n')
  (path / 'models' / 'scratch_x.py').write_text('import os\n')
  assert vcs.clean_tree(path) is None  # ignored, yet importable
  (path / 'models' / 'scratch_x.py').unlink()
  (path / 'models' / 'mlp.py').write_text('WIDTH = 200\n')
  assert vcs.clean_tree(path) is None  # changed
