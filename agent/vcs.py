"""Git operations that isolate a run: its own worktree and branch, a ref for every candidate.

Why a worktree: the agent edits, commits and hard-resets there, so the user's checkout (its
files, index and HEAD) is never touched; the only things added to the user's repository are
the worktree's metadata, the run's branch and refs. Why refs for rejected candidates: a
`git reset --hard` alone lets gc delete the diff of a failed experiment; a ref under
`refs/agent/<run-id>/...` keeps it reviewable forever.

Put the worktree outside the checkout or under an ignored folder (e.g. `runs/`), and keep run
outputs outside the worktree: `reset_to` deletes every untracked and ignored file in it.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path, PurePosixPath

DEFAULT_AUTHOR = 'research-agent <agent@localhost>'

# The user's hooks never run on the agent's operations.
_NO_HOOKS = 'core.hooksPath=/dev/null'


class VcsError(RuntimeError):
  """A git command failed; the message is one line naming the command and git's complaint."""


def _git(cwd: Path, *args: str, config: tuple[str, ...] = ()) -> str:
  """Runs `git -c <config>... <args>` in cwd and returns stdout; VcsError on failure."""
  options = [part for setting in (_NO_HOOKS, *config) for part in ('-c', setting)]
  try:
    result = subprocess.run(['git', *options, *args], cwd=cwd, check=True,
                            capture_output=True, text=True)
  except subprocess.CalledProcessError as error:
    complaint = (error.stderr or '').strip() or (error.stdout or '').strip() or 'no output'
    raise VcsError(f'git {args[0]} failed in {cwd}: {complaint.splitlines()[0]}') from None
  except FileNotFoundError:
    raise VcsError('git is not installed or not on PATH') from None
  return result.stdout


def _git_ok(cwd: Path, *args: str) -> bool:
  """Runs a git query whose answer is its exit status."""
  return subprocess.run(['git', *args], cwd=cwd, capture_output=True).returncode == 0


def _parse_author(author: str) -> tuple[str, str]:
  match = re.fullmatch(r'\s*(.+?)\s*<([^<>]+)>\s*', author)
  if not match:
    raise VcsError(f'author must look like "Name <email>", got {author!r}')
  return match.group(1), match.group(2)


def repo_root(path: Path) -> Path:
  """The top folder of the checkout (or worktree) that contains path."""
  return Path(_git(Path(path), 'rev-parse', '--show-toplevel').strip())


def resolve(repo: Path, rev: str) -> str:
  """The full commit sha that rev names."""
  return _git(Path(repo), 'rev-parse', '--verify', f'{rev}^{{commit}}').strip()


def object_exists(repo: Path, sha: str) -> bool:
  """Whether the object is in the repository's store (e.g. still there after gc)."""
  return _git_ok(Path(repo), 'cat-file', '-e', sha)


def show_file(repo: Path, sha: str, path: str) -> str:
  """A file's content at a commit, read from the object store without checking anything out."""
  return _git(Path(repo), 'show', f'{sha}:{PurePosixPath(path)}')


def parent(repo: Path, sha: str) -> str:
  """The first parent of a commit."""
  return resolve(repo, f'{sha}^')


def changed_files(repo: Path, a: str, b: str) -> list[str]:
  """Paths that differ between two commits (renames shown as delete + add)."""
  out = _git(Path(repo), 'diff', '--no-renames', '--name-only', '-z', a, b)
  return sorted(p for p in out.split('\0') if p)


def file_at(repo: Path, sha: str, path: str) -> str | None:
  """A file's content at a commit, or None where the commit does not have it."""
  if not _git_ok(Path(repo), 'cat-file', '-e', f'{sha}:{PurePosixPath(path)}'):
    return None
  return show_file(repo, sha, path)


@dataclasses.dataclass(frozen=True)
class Worktree:
  """The run's private checkout of its branch; every command here runs inside it."""
  repo: Path
  path: Path
  branch: str

  def _git(self, *args: str, config: tuple[str, ...] = ()) -> str:
    return _git(self.path, *args, config=config)

  def head(self) -> str:
    return self._git('rev-parse', 'HEAD').strip()

  def is_clean(self) -> bool:
    """No tracked change and no untracked file that is not ignored."""
    return not self._git('status', '--porcelain', '--untracked-files=all').strip()

  def write_files(self, files: dict[str, str | None]) -> None:
    """Writes (or, for None, deletes) files given relative to the worktree."""
    for relative, content in files.items():
      target = self._inside(relative)
      if content is None:
        target.unlink(missing_ok=True)
      else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding='utf-8')

  def _inside(self, relative: str) -> Path:
    """Refuses paths that would escape the worktree or reach into git's own files."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or '..' in parts or '.git' in parts:
      raise VcsError(f'refusing to write {relative!r}: not a plain path inside the worktree')
    return self.path.joinpath(*parts)

  def commit(self, message: str, author: str = DEFAULT_AUTHOR) -> str:
    """Commits every change, deletions included, and returns the new sha."""
    name, email = _parse_author(author)
    self._git('add', '--all')
    if _git_ok(self.path, 'diff', '--cached', '--quiet'):
      raise VcsError(f'git commit refused in {self.path}: nothing to commit')
    identity = (f'user.name={name}', f'user.email={email}', 'commit.gpgsign=false')
    self._git('commit', '--quiet', '-m', message, config=identity)
    return self.head()

  def amend_message(self, message: str, author: str = DEFAULT_AUTHOR) -> str:
    """Rewrites HEAD's message only (same tree), e.g. to add the verdict; returns the new sha."""
    name, email = _parse_author(author)
    identity = (f'user.name={name}', f'user.email={email}', 'commit.gpgsign=false')
    self._git('commit', '--quiet', '--amend', '--allow-empty', '--only', '-m', message,
              config=identity)
    return self.head()

  def tree(self, rev: str = 'HEAD') -> str:
    return self._git('rev-parse', f'{rev}^{{tree}}').strip()

  def diff(self, a: str, b: str) -> str:
    """The unified diff from a to b, free of the user's colour and external-diff settings."""
    return self._git('diff', '--no-color', '--no-ext-diff', a, b)

  def keep_ref(self, ref: str, sha: str) -> None:
    """Points a full ref (e.g. refs/agent/<run-id>/rejected/<n>) at sha so gc never drops it."""
    if not ref.startswith('refs/'):
      raise VcsError(f'keep_ref wants a full ref name under refs/, got {ref!r}')
    self._git('update-ref', ref, sha)

  def reset_to(self, sha: str) -> None:
    """Makes the worktree exactly sha: branch moved back, every untracked file removed."""
    self._git('reset', '--quiet', '--hard', sha)
    self._git('clean', '-fdxq')

  def advance_branch(self, sha: str) -> None:
    """Fast-forwards the run's branch to sha and checks it out here; refuses to rewrite history."""
    if not _git_ok(self.path, 'merge-base', '--is-ancestor', self.branch, sha):
      raise VcsError(f'advance_branch: {sha} is not a descendant of {self.branch}')
    self._git('checkout', '--quiet', '-B', self.branch, sha)


def create_detached(repo: Path, path: Path, rev: str) -> Path:
  """A read-only-by-convention checkout of rev (no branch), e.g. to re-evaluate the start."""
  repo, path = Path(repo).resolve(), Path(path).resolve()
  if path in _registered_worktrees(repo) and path.exists():
    _git(path, 'checkout', '--quiet', '--detach', rev)
  else:
    _git(repo, 'worktree', 'prune')
    _git(repo, 'worktree', 'add', '--quiet', '--detach', str(path), rev)
  return path


def _registered_worktrees(repo: Path) -> dict[Path, str | None]:
  """Worktree path -> checked-out branch (None when detached), as git records them."""
  worktrees: dict[Path, str | None] = {}
  current: Path | None = None
  for line in _git(repo, 'worktree', 'list', '--porcelain').splitlines():
    if line.startswith('worktree '):
      current = Path(line.removeprefix('worktree ')).resolve()
      worktrees[current] = None
    elif line.startswith('branch refs/heads/') and current is not None:
      worktrees[current] = line.removeprefix('branch refs/heads/')
  return worktrees


def _branch_exists(repo: Path, branch: str) -> bool:
  return _git_ok(repo, 'show-ref', '--verify', '--quiet', f'refs/heads/{branch}')


def create_worktree(repo: Path, worktree: Path, branch: str, start: str = 'HEAD') -> Worktree:
  """Creates the run's worktree on a new branch from start, or reopens it on resume."""
  repo, worktree = Path(repo).resolve(), Path(worktree).resolve()
  registered = _registered_worktrees(repo)
  if worktree in registered and worktree.exists():
    if registered[worktree] != branch:
      raise VcsError(f'{worktree} is a worktree of {registered[worktree]!r}, not {branch!r}')
    return Worktree(repo, worktree, branch)
  if _branch_exists(repo, branch):
    _git(repo, 'worktree', 'prune')  # the folder was deleted: forget it, re-attach the branch
    _git(repo, 'worktree', 'add', '--quiet', str(worktree), branch)
  else:
    _git(repo, 'worktree', 'add', '--quiet', '-b', branch, str(worktree), start)
  return Worktree(repo, worktree, branch)
