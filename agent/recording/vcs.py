"""Git operations that isolate a run: its own worktree and branch, a ref for every candidate.

Why a worktree: the agent edits, commits and hard-resets there, so the user's checkout (its
files, index and HEAD) is never touched; the only things added to the user's repository are
the worktree's metadata, the run's branch and refs. Why refs for rejected candidates: a
`git reset --hard` alone lets gc delete the diff of a failed experiment; a ref under
`refs/agent/<run-id>/...` keeps it reviewable forever. `refs/agent/<run-id>/anchor` holds the
run journal's head (see `anchor_ref`), so the journal has a witness outside its own file.

Put the worktree outside the checkout or under an ignored folder (e.g. `runs/`), and keep run
outputs outside the worktree: `reset_to` deletes every untracked and ignored file in it.

Why every git here is boxed in: code a trial runs once wrote `core.fsmonitor = <command>` into
the user's `.git/config`, and the agent's next git ran that command outside the sandbox with
the agent's whole environment, API keys included. The sandbox stops the write; this is the
second layer. Every git command gets:

- An environment built from nothing: PATH, LANG, LC_ALL and TZ are kept, nothing else of the
  agent's (no API key, no GIT_DIR, GIT_CONFIG_* or GIT_EXTERNAL_DIFF). HOME=/dev/null,
  GIT_CONFIG_GLOBAL=/dev/null and GIT_CONFIG_NOSYSTEM=1: no user or system config, attributes
  or excludes, so only the repository's own files can name a command. GIT_TERMINAL_PROMPT=0
  and --no-pager. GIT_ALLOW_PROTOCOL='' forbids every transport whatever protocol.*.allow
  says: in a partial clone `cat-file -e` of a missing object fetches, which would run
  remote.*.uploadpack, core.sshCommand, credential helpers or a remote helper.
- Command-scope config (GIT_CONFIG_COUNT, which beats every config file):
  core.fsmonitor=false (the attack: run on every index refresh); core.hooksPath=/dev/null (no
  hook, the user's or a planted one, e.g. pre-commit, post-checkout, reference-transaction);
  commit.gpgSign=false (gpg.program); submodule.recurse=false (checkout and reset stay out of
  nested repositories); and for each `filter.<name>` the repository's config defines, empty
  clean/smudge/process and required=false (add, status, checkout and reset run them; the names
  are read with `git config --list` just before each command, so includes and worktree config
  count).
- Per command: `--no-ext-diff --no-textconv` on every diff (diff.external,
  diff.<name>.command, diff.<name>.textconv). Nested repositories (one a trial made in the
  worktree, or a submodule folder it filled) have config of their own that these overrides
  miss, and git add and status run git inside them: status gets `--ignore-submodules=all`,
  commits leave every nested repository out, and `reset_to` deletes untracked ones.

What remains possible: git cannot be told to skip `.git/config`, so a setting outside this
list still applies. Those known to run commands are unreachable here: editors (every commit
passes -m), merge drivers (nothing here merges), aliases (built-in commands win over them).
Settings that redirect rather than run: core.worktree points the user's checkout elsewhere,
include.path can pull config from a file a trial can write, and the worktree's own `.git` file
lives in the worktree, so rewritten it points the agent's git at another repository (whose
filters are still neutralised, its core.worktree is not). `protected_config_digest` lets the
loop notice a change to the files that carry such settings and stop the run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import re
import subprocess
import tarfile
import threading
from pathlib import Path, PurePosixPath
from typing import Callable

DEFAULT_AUTHOR = 'research-agent <agent@localhost>'

# What git needs from the agent's environment: where programs are, the user's locale and zone.
_KEPT_VARIABLES = ('PATH', 'LANG', 'LC_ALL', 'TZ')

# Settings that make git run a command, each set to the value that stops it.
_NEUTRAL_CONFIG = {
    'core.fsmonitor': 'false',
    'core.hooksPath': os.devnull,
    'commit.gpgSign': 'false',
    'submodule.recurse': 'false',
}

# A filter driver whose commands are empty does nothing, and must not fail the command for it.
_NEUTRAL_FILTER = {'clean': '', 'smudge': '', 'process': '', 'required': 'false'}

# Diffs show the stored bytes: no external diff program, no textconv command.
_PLAIN_DIFF = ('--no-ext-diff', '--no-textconv')


class VcsError(RuntimeError):
  """A git command failed; the message is one line naming the command and git's complaint."""


def _environment(config: dict[str, str]) -> dict[str, str]:
  """Built from nothing, so no API key or git variable of the agent's reaches git."""
  env = {name: os.environ[name] for name in _KEPT_VARIABLES if name in os.environ}
  env.update(HOME=os.devnull, GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM='1',
             GIT_TERMINAL_PROMPT='0', GIT_ALLOW_PROTOCOL='', GIT_CONFIG_COUNT=str(len(config)))
  for i, (key, value) in enumerate(config.items()):  # unlike -c, keys may hold '='
    env[f'GIT_CONFIG_KEY_{i}'], env[f'GIT_CONFIG_VALUE_{i}'] = key, value
  return env


def _run(cwd: Path, args: tuple[str, ...], env: dict[str, str],
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
  try:
    return subprocess.run(['git', '--no-pager', *args], cwd=cwd, env=env, capture_output=True,
                          text=True, input=stdin)
  except FileNotFoundError:
    raise VcsError('git is not installed or not on PATH') from None


def _checked(cwd: Path, args: tuple[str, ...], env: dict[str, str],
             stdin: str | None = None) -> str:
  result = _run(cwd, args, env, stdin)
  if result.returncode:
    complaint = result.stderr.strip() or result.stdout.strip() or 'no output'
    raise VcsError(f'git {args[0]} failed in {cwd}: {complaint.splitlines()[0]}')
  return result.stdout


def git_environment(cwd: Path, config: dict[str, str] | None = None) -> dict[str, str]:
  """The whole environment the agent's git gets in cwd: scrubbed, with every command-running
  setting of the repository neutralised, then config (e.g. the commit identity) on top."""
  listing = _checked(cwd, ('config', '--list', '-z'), _environment(_NEUTRAL_CONFIG))
  keys = (entry.split('\n', 1)[0] for entry in listing.split('\0'))
  drivers = sorted({key.rsplit('.', 1)[0] for key in keys
                    if key.startswith('filter.') and key.count('.') >= 2})
  filters = {f'{driver}.{key}': value for driver in drivers
             for key, value in _NEUTRAL_FILTER.items()}
  return _environment({**filters, **_NEUTRAL_CONFIG, **(config or {})})


def _git(cwd: Path, *args: str, config: dict[str, str] | None = None) -> str:
  """Runs git with args in cwd, boxed in as the module docstring says; VcsError on failure."""
  return _checked(cwd, args, git_environment(cwd, config))


def _git_ok(cwd: Path, *args: str) -> bool:
  """Runs a git query whose answer is its exit status."""
  return _run(cwd, args, git_environment(cwd)).returncode == 0


def _identity(author: str) -> dict[str, str]:
  """The commit identity as config, from "Name <email>"."""
  match = re.fullmatch(r'\s*(.+?)\s*<([^<>]+)>\s*', author)
  if not match:
    raise VcsError(f'author must look like "Name <email>", got {author!r}')
  return {'user.name': match.group(1), 'user.email': match.group(2)}


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


def export(repo: Path, rev: str, dest: Path) -> None:
  """The committed tree of rev, written into dest (`git archive`): a commit's files without a
  worktree, e.g. to check an experiment before a run exists."""
  try:
    result = subprocess.run(['git', '--no-pager', 'archive', '--format=tar', rev], cwd=repo,
                            env=git_environment(Path(repo)), capture_output=True)
  except FileNotFoundError:
    raise VcsError('git is not installed or not on PATH') from None
  if result.returncode:
    raise VcsError(f'git archive failed in {repo}: {result.stderr.decode(errors="replace")}')
  with tarfile.open(fileobj=io.BytesIO(result.stdout)) as archive:
    archive.extractall(dest, filter='data')


def provenance(path: Path) -> dict[str, str | bool | None]:
  """The commit and tree checked out at path and whether it has uncommitted changes: the
  scorecard's `code`, read with the agent's safe git (never the harness's plain one, which
  would run in the agent's process with its whole environment)."""
  try:
    return {'commit': resolve(path, 'HEAD'), 'tree': _git(Path(path), 'rev-parse',
                                                         'HEAD^{tree}').strip(),
            'dirty': bool(_git(Path(path), 'status', '--porcelain', '--untracked-files=no',
                               '--ignore-submodules=all').strip())}
  except VcsError:
    return {'commit': None, 'tree': None, 'dirty': None}


def clean_tree(path: Path) -> str | None:
  """The tree checked out at path when the files there are exactly that tree (no change, no
  untracked file, ignored ones included), else None: the name of the code a process started
  there can read."""
  try:
    if _git(Path(path), 'status', '--porcelain', '--untracked-files=all', '--ignored',
            '--ignore-submodules=none').strip():
      return None
    return _git(Path(path), 'rev-parse', 'HEAD^{tree}').strip()
  except VcsError:
    return None


def changed_files(repo: Path, a: str, b: str) -> list[str]:
  """Paths that differ between two commits (renames shown as delete + add)."""
  out = _git(Path(repo), 'diff', *_PLAIN_DIFF, '--no-renames', '--name-only', '-z', a, b)
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

  def _git(self, *args: str, config: dict[str, str] | None = None) -> str:
    return _git(self.path, *args, config=config)

  def head(self) -> str:
    return self._git('rev-parse', 'HEAD').strip()

  def is_clean(self) -> bool:
    """No tracked change and no untracked file that is not ignored."""
    return not self._git('status', '--porcelain', '--untracked-files=all',
                         '--ignore-submodules=all').strip()

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

  def _nested_repositories(self) -> list[str]:
    """Folders under the worktree that hold a repository of their own."""
    found = []
    for folder, subfolders, files in os.walk(self.path):
      if folder != str(self.path) and '.git' in subfolders + files:
        found.append(Path(folder).relative_to(self.path).as_posix())
        subfolders.clear()
    return found

  def commit(self, message: str, author: str = DEFAULT_AUTHOR) -> str:
    """Commits every change, deletions included, and returns the new sha."""
    identity = _identity(author)
    # git add would run git inside a nested repository (e.g. one a trial made), under its
    # own config; the agent never edits one, so they are left out of every commit.
    nested = [f':(exclude,literal){path}' for path in self._nested_repositories()]
    self._git('add', '--all', '--', '.', *nested)
    if _git_ok(self.path, 'diff', *_PLAIN_DIFF, '--cached', '--quiet'):
      raise VcsError(f'git commit refused in {self.path}: nothing to commit')
    self._git('commit', '--quiet', '-m', message, config=identity)
    return self.head()

  def amend_message(self, message: str, author: str = DEFAULT_AUTHOR) -> str:
    """Rewrites HEAD's message only (same tree), e.g. to add the verdict; returns the new sha."""
    self._git('commit', '--quiet', '--amend', '--allow-empty', '--only', '-m', message,
              config=_identity(author))
    return self.head()

  def tree(self, rev: str = 'HEAD') -> str:
    return self._git('rev-parse', f'{rev}^{{tree}}').strip()

  def diff(self, a: str, b: str) -> str:
    """The unified diff from a to b, free of the user's colour, external-diff and textconv."""
    return self._git('diff', '--no-color', *_PLAIN_DIFF, a, b)

  def keep_ref(self, ref: str, sha: str) -> None:
    """Points a full ref (e.g. refs/agent/<run-id>/rejected/<n>) at sha so gc never drops it."""
    if not ref.startswith('refs/'):
      raise VcsError(f'keep_ref wants a full ref name under refs/, got {ref!r}')
    self._git('update-ref', ref, sha)

  def reset_to(self, sha: str) -> None:
    """Makes the worktree exactly sha: branch moved back, every untracked file removed, nested
    repositories too (-ff)."""
    self._git('reset', '--quiet', '--hard', sha)
    self._git('clean', '-ffdxq')

  def advance_branch(self, sha: str) -> None:
    """Fast-forwards the run's branch to sha and checks it out here; refuses to rewrite history."""
    if not _git_ok(self.path, 'merge-base', '--is-ancestor', self.branch, sha):
      raise VcsError(f'advance_branch: {sha} is not a descendant of {self.branch}')
    self._git('checkout', '--quiet', '-B', self.branch, sha)


# Worktrees are added, pruned and checked out one at a time: trials judged in parallel
# threads (the loop's --workers) share the repository's worktree list and the run's
# start and incumbent checkouts, and git's lock files refuse a second writer.
_WORKTREES = threading.Lock()


def create_detached(repo: Path, path: Path, rev: str) -> Path:
  """A read-only-by-convention checkout of rev (no branch), e.g. to re-evaluate the start."""
  repo, path = Path(repo).resolve(), Path(path).resolve()
  with _WORKTREES:
    if path in _registered_worktrees(repo) and path.exists():
      _git(path, 'checkout', '--quiet', '--detach', rev)
    else:
      _git(repo, 'worktree', 'prune')
      _git(repo, 'worktree', 'add', '--quiet', '--detach', str(path), rev)
  return path


def detached_worktree(repo: Path, path: Path, rev: str) -> Worktree:
  """A worktree of its own at rev, on no branch: a parallel trial's slot, where its candidate
  is committed on top of the incumbent it was proposed on (the run's branch moves only when
  one is kept)."""
  return Worktree(Path(repo).resolve(), create_detached(repo, path, rev), branch='')


def rebased_files(repo: Path, onto: str, commit: str) -> dict[str, str | None] | None:
  """The files `commit` changed from its parent, 3-way merged onto `onto` (a descendant of
  that parent: the run's incumbent moved on), as new texts (None: deleted); None when the
  change does not apply there (a conflict, or nothing left to change)."""
  result = _run(Path(repo), ('merge-tree', '--write-tree', '--no-messages', onto, commit),
                git_environment(Path(repo)))
  if result.returncode:
    return None
  tree = result.stdout.split()[0]
  paths = [p for p in _git(Path(repo), 'diff', *_PLAIN_DIFF, '--no-renames', '--name-only', '-z',
                           onto, tree).split('\0') if p]
  return {p: file_at(repo, tree, p) for p in sorted(paths)} or None


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


def protected_config_digest(repo: Path) -> str:
  """A sha256 over the repository's files that can make git run code: its config, every
  worktree's config.worktree, info/attributes and the hooks folder (names and content).

  Trial code cannot legitimately touch any of them, so the loop compares this before and after
  each trial and stops the run on a change: the settings git cannot be told to skip are seen.
  """
  common = Path(repo, _git(Path(repo), 'rev-parse', '--git-common-dir').strip()).resolve()
  hooks = sorted(path for path in (common / 'hooks').rglob('*') if not path.is_dir())
  paths = [common / 'config', common / 'config.worktree',
           *sorted(common.glob('worktrees/*/config.worktree')), common / 'info' / 'attributes',
           *hooks]
  digest = hashlib.sha256()
  for path in paths:
    name = path.relative_to(common).as_posix().encode()
    digest.update(b'%d:%s' % (len(name), name))
    try:
      content = path.read_bytes()
    except OSError:  # missing, or a dangling link: recorded as missing
      digest.update(b'-')
    else:
      digest.update(b'%d:%s' % (len(content), content))
  return digest.hexdigest()


def anchor_ref(run_id: str) -> str:
  """Where a run's journal head is kept in git (Journal.anchor_with writes it, `verify` reads
  it): a journal cut short or re-hashed wholesale no longer matches it."""
  return f'refs/agent/{run_id}/anchor'


def anchor_writer(repo: Path, run_id: str) -> Callable[[str], None]:
  """What Journal.anchor_with takes for a run: writes the text to the run's anchor ref."""
  return functools.partial(write_text_ref, Path(repo), anchor_ref(run_id))


def write_text_ref(repo: Path, ref: str, text: str) -> None:
  """Points ref at a blob holding text: two git commands, cheap enough after every record."""
  env = git_environment(Path(repo))
  blob = _checked(Path(repo), ('hash-object', '-w', '--no-filters', '--stdin'), env,
                  stdin=text).strip()
  _checked(Path(repo), ('update-ref', ref, blob), env)


def read_text_ref(repo: Path, ref: str) -> str | None:
  """The text of the blob ref points at, or None where there is no such ref or blob."""
  result = _run(Path(repo), ('cat-file', 'blob', ref), git_environment(Path(repo)))
  return None if result.returncode else result.stdout


def ref_commit(repo: Path, ref: str) -> str | None:
  """The commit a full ref names, or None where the ref does not exist."""
  result = _run(Path(repo), ('rev-parse', '--verify', '--quiet', f'{ref}^{{commit}}'),
                git_environment(Path(repo)))
  return None if result.returncode else result.stdout.strip()
