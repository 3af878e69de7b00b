"""A filesystem boundary for agent-written code: bubblewrap builds each run a new root from an
allow-list, so the code sees only the system, the Python installation and what it is given.

Why: namespaces alone bound processes and the network, not files. Code in a trial, running as
the agent's user (often root), read the test labels, appended to the protected
harness/steps.py in the user's checkout and wrote core.fsmonitor into its .git/config. Under
`wrap` none of that exists: the new root holds the system folders and the Python installation
read-only, `Mounts.read_only` read-only and `Mounts.writable` read-write, a private /tmp, and
nothing else: no checkout (beyond a venv inside it), /root, /home, /work, /var, /run, /srv,
/mnt or /opt (beyond the Python installation). What in /etc other users may not read
(shadow, SSH host keys, ...) is hidden too: a trial running as root would read it as owner.

Exit status, as Popen reports it: the child's exit code; 128 + N when it died of signal N
(bwrap's PID 1 reports it so, like agent.safety.confine's _INIT); -N when bwrap itself was
killed by signal N; 1 with a 'bwrap: ...' line on stderr when bwrap could not build the
sandbox or exec the command, which by code alone looks like the child's own exit 1.

Processes: bwrap's PID 1 reaps orphans but, unlike confine's _INIT, waits for all of
them. --die-with-parent is what ends them: bwrap exits as soon as its command does, and its
exit SIGKILLs PID 1, which takes the whole PID namespace with it. The same happens when bwrap
dies of any signal and when the agent dies. That death signal (PR_SET_PDEATHSIG) belongs to
the thread that started bwrap: start and wait for it in one thread that outlives it, or bwrap
is SIGKILLed when that thread exits. --new-session gives the sandbox its own session, so
signals sent to bwrap's process group reach bwrap only; bwrap dying of them kills everything
inside with SIGKILL at once (the trial gets no grace period).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

# Read-only system folders; a symlink (merged /usr) is recreated as the same symlink.
_SYSTEM = ('/usr', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32', '/etc', '/sys')
# Accelerators under /dev, so the same sandbox runs on a GPU box or a TPU VM.
_DEVICES = ('nvidia*', 'accel*', 'vfio', 'dri')
_PROBE_S = 20.0
_REASON_CHARS = 300


class Unavailable(RuntimeError):
  """bwrap cannot run here; the message says why."""


@dataclasses.dataclass(frozen=True)
class Mounts:
  """What the sandboxed process sees beyond the system folders and the Python installation.

  A folder listed both read-only and writable, or writable inside a read-only one, is
  writable. `hidden` is applied after all mounts: a folder there looks empty and read-only,
  a file is unreadable; one that does not exist is skipped (nothing to hide).
  """
  read_only: tuple[Path, ...]
  writable: tuple[Path, ...]
  hidden: tuple[Path, ...] = ()
  chdir: Path | None = None  # None: the caller's folder where visible inside, else HOME
  tmp_mb: int = 512  # caps /tmp and /dev/shm each: RAM the trial fills there escapes RLIMIT_DATA

  def __post_init__(self) -> None:
    for name in ('read_only', 'writable', 'hidden'):
      object.__setattr__(self, name, tuple(Path(p).absolute() for p in getattr(self, name)))
    if self.chdir is not None:
      object.__setattr__(self, 'chdir', Path(self.chdir).absolute())
    if self.tmp_mb < 1:
      raise ValueError('tmp_mb must be positive')


def available() -> str | None:
  """None when bwrap works here (probed once, cached), else why not in one line."""
  return _bwrap()[2]


def wrap(argv: list[str], mounts: Mounts, *, network: bool = False) -> tuple[list[str], str]:
  """The command line that runs argv inside the sandbox, and the sandbox described in words.

  The environment given to bwrap passes through unchanged except HOME and TMPDIR, which point
  to the private /tmp (a host path there would not exist inside). argv[0] must be visible
  inside (sys.executable is). Raises Unavailable where bwrap does not work here, ValueError
  for a read-only or writable folder that does not exist.
  """
  bwrap, hardened, why = _bwrap()
  if why:
    raise Unavailable(why)
  missing = [str(p) for p in (*mounts.read_only, *mounts.writable) if not p.exists()]
  if missing:
    raise ValueError(f'cannot mount what does not exist: {", ".join(missing)}')
  return _command(bwrap, argv, mounts, network, hardened), _describe(mounts, network, hardened)


@functools.cache
def _bwrap() -> tuple[str, bool, str | None]:
  """bwrap's path, whether it takes --disable-userns and --size, and why it cannot run here.

  Without those two (bwrap < 0.8, e.g. Ubuntu 22.04's 0.6, or a setuid bwrap) the sandbox
  still runs, with /tmp uncapped and nested user namespaces allowed; that is logged once and
  said in every description.
  """
  path = shutil.which('bwrap')
  if not path:
    return '', False, 'bubblewrap (bwrap) is not installed'
  why = _probe(path, hardened=True)
  if why is None:
    return path, True, None
  if _probe(path, hardened=False) is None:
    logging.warning('the bwrap sandbox runs without --disable-userns and --size: %s', why)
    return path, False, None
  return path, False, why


def _probe(bwrap: str, hardened: bool) -> str | None:
  """None when bwrap runs a Python child here with `wrap`'s flags, else why not (one line)."""
  argv = _command(bwrap, [sys.executable, '-I', '-S', '-c', 'pass'], Mounts((), ()), False,
                  hardened)
  try:
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=_PROBE_S)
  except (OSError, subprocess.TimeoutExpired) as e:
    return _one_line(f'bwrap does not start: {e}')
  if result.returncode == 0:
    return None
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  return _one_line(f'bwrap fails here (exit code {result.returncode}): '
                   f'{lines[-1] if lines else "no message"}')


def _command(bwrap: str, argv: list[str], mounts: Mounts, network: bool,
             hardened: bool) -> list[str]:
  """bwrap's arguments: namespaces and flags, then mounts parents first, covers, remounts."""
  size = ['--size', str(mounts.tmp_mb << 20)] if hardened else []
  binds: list[tuple[Path, list[str]]] = [
      (Path('/proc'), ['--proc', '/proc']),  # fresh: only the sandbox's own processes
      (Path('/dev'), ['--dev', '/dev']),  # null, zero, random, tty, pts, ...; no host devices
      (Path('/dev/shm'), [*size, '--tmpfs', '/dev/shm']),
      (Path('/tmp'), [*size, '--tmpfs', '/tmp'])]
  for name in _SYSTEM:
    path = Path(name)
    if path.is_symlink():
      binds.append((path, ['--symlink', os.readlink(path), name]))
    elif path.is_dir():
      binds.append((path, ['--ro-bind', name, name]))
  binds += [(d, ['--dev-bind', str(d), str(d)])
            for pattern in _DEVICES for d in sorted(Path('/dev').glob(pattern))]
  for flag, paths in (('--ro-bind', _python_dirs()), ('--ro-bind', mounts.read_only),
                      ('--bind', mounts.writable)):
    binds += [(p, [flag, str(p), str(p)]) for path in paths for p in _names(path)]
  binds.sort(key=lambda bind: len(bind[0].parts))  # parents first; a tie: the later one wins
  covers: list[str] = []
  remounts = ['/dev', '/']  # nothing can be created there: no RAM to fill beyond /tmp
  for path in (p for hidden in (*_etc_secrets(), *mounts.hidden) for p in _names(hidden)):
    if path.is_dir():
      covers += ['--tmpfs', str(path)]
      remounts.append(str(path))
    elif path.exists():
      covers += ['--ro-bind', '/dev/null', str(path)]  # nodev: opening it is refused
  return [
      bwrap,
      '--unshare-user',  # for --disable-userns; the caller's uid (0 too) stays the same inside
      *(['--disable-userns'] if hardened else []),  # no nested namespaces to regain caps in
      '--unshare-pid', '--unshare-ipc', '--unshare-uts',
      *([] if network else ['--unshare-net']),  # its own loopback only (bwrap brings it up)
      '--die-with-parent',  # SIGKILL to all inside when bwrap or the agent dies (see above)
      '--new-session',  # no controlling terminal: no TIOCSTI into the agent's terminal
      '--cap-drop', 'ALL',  # root inside cannot mount, remount, or bypass file permissions
      *(arg for _, args in binds for arg in args),
      *covers,
      *(arg for path in remounts for arg in ('--remount-ro', path)),
      '--setenv', 'HOME', '/tmp', '--setenv', 'TMPDIR', '/tmp',
      *(['--chdir', str(mounts.chdir)] if mounts.chdir else []),
      '--', *argv]


def _names(path: Path) -> list[Path]:
  """The path as given and, where symlinks lead elsewhere, its real path: both work inside."""
  return list(dict.fromkeys((path, path.resolve())))


@functools.cache
def _python_dirs() -> tuple[Path, ...]:
  """The running interpreter's installation: its prefixes (the venv and its base), stdlib and
  site-packages, and any site-packages on sys.path outside them (a --system-site-packages
  base). No other sys.path entry: the current folder or PYTHONPATH may be the user's checkout;
  a package installed in editable mode from elsewhere must be passed in Mounts.read_only."""
  paths = sysconfig.get_paths()
  found = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
           *(paths[key] for key in ('stdlib', 'platstdlib', 'purelib', 'platlib')),
           *(p for p in sys.path if Path(p).name in ('site-packages', 'dist-packages'))}
  dirs = {Path(p).absolute() for p in found if Path(p).is_dir()}
  return tuple(sorted(d for d in dirs if not any(d != o and d.is_relative_to(o) for o in dirs)))


@functools.cache
def _etc_secrets() -> tuple[Path, ...]:
  """What in /etc other users may not read (shadow, SSH host keys, ssl/private, ...): a trial
  running as root would read it as its owner, so it sees /etc as an unprivileged user does."""
  found: list[Path] = []
  for root, dirs, files in os.walk('/etc'):
    for name in list(dirs):
      mode = os.lstat(os.path.join(root, name)).st_mode
      if stat.S_ISDIR(mode) and mode & 0o005 != 0o005:
        found.append(Path(root, name))
        dirs.remove(name)
    for name in files:
      mode = os.lstat(os.path.join(root, name)).st_mode
      if stat.S_ISREG(mode) and not mode & 0o004:
        found.append(Path(root, name))
  return tuple(found)


def _describe(mounts: Mounts, network: bool, hardened: bool) -> str:
  tmp = (f'{mounts.tmp_mb} MB' if hardened else
         'size uncapped and nested user namespaces allowed: bwrap < 0.8 or setuid')
  return (f'bubblewrap: system and Python read-only, {len(mounts.read_only)} read-only and '
          f'{len(mounts.writable)} writable folders, {len(mounts.hidden)} hidden, nothing else; '
          f'private /tmp ({tmp}); own PID, IPC and UTS namespaces, '
          f'{"network shared" if network else "no network"}; no capabilities')


def _one_line(text: str) -> str:
  text = ' '.join(text.split())
  return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + '...'
