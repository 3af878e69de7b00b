"""Starts agent-written code confined, and stops all of it: one place for the bounds that every
run of such code gets (trials and import checks alike), taken from the charter's [trial]
settings (`charter.Trial`) as they are.

Filesystem: where bubblewrap runs, the code sees only what `agent.safety.sandbox` mounts.
Where it cannot and the charter allows it (`filesystem_sandbox = "best_effort"`), the
namespaces below are all there is, and the description of the isolation says so.

Memory: `memory_mb` sets RLIMIT_DATA, not RLIMIT_AS. RLIMIT_AS counts every mapping,
including PROT_NONE address-space reservations that use no memory: glibc reserves 64 MB per
malloc arena (up to 8 per core), XLA reserves ranges, and the CUDA driver reserves host
address space of about twice the device memory, so an AS limit scales with core count and
breaks GPU start-up (reported publicly; not verified here, this task had no GPU). RLIMIT_DATA
(Linux >= 4.7) counts only private writable mappings: the heap and anonymous mmaps, i.e.
memory the trial can actually fill. Measured on a 2-core CPU box, mnist1d_mlp with 2 seeds:
peak RSS ~490 MB, private writable ~670 MB, address space ~1.9 GB; it needed ~1 GB of
RLIMIT_DATA but ~2 GB of RLIMIT_AS. So memory_mb is a cap on committed private memory, about
twice the peak RSS of a JAX CPU run: give it headroom. When the limit bites, the trial rarely
dies cleanly: seen here were SIGSEGV/SIGABRT inside XLA, "can't start new thread" (thread
stacks count) and MemoryError; the executor reports all as status 'killed', reason 'memory
limit'. RLIMIT_RSS is ignored by Linux; a true resident-memory cap needs a cgroup (e.g.
`systemd-run --scope -p MemoryMax=...`), which is outside this module.

Other limits: `cpu_minutes` sets RLIMIT_CPU (CPU time of the trial process, all threads
summed, so a multi-threaded XLA run spends it faster than wall time; SIGXCPU at the limit,
SIGKILL a few seconds later). `max_processes` sets RLIMIT_NPROC, which counts threads too
and every process of the same real user, not only the trial's; root ignores it. There is no
RLIMIT_FSIZE: checkpoints are legitimately large, and the log's cap is kept by its reader.

Namespaces without bwrap (Linux): the code runs under `unshare --pid --fork --kill-child
--mount-proc`, plus `--net` when the charter denies network, and plus `--user
--map-root-user` when not root (unprivileged user namespaces). The network namespace has only
a loopback device that is down, so no connection of any kind leaves it. In the PID namespace a
small trusted init (`_INIT`) is PID 1 and the code its child: when the code ends, or the
group is killed, the kernel kills everything left in the namespace, including children that
called setsid() to leave the process group; the private /proc hides the agent's own
environment. PID 1 cannot die of a signal it has no handler for, so the init exits with 128 + N
when the code died of signal N and `reap` turns that back into -N. What works is probed once
per process (`isolation`); where nothing does (macOS, containers without unshare) the code
still runs, in its own process group, and the description says so.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from agent import charter
from agent.safety import sandbox as fs_sandbox

# Variables agent-written code may inherit from the parent; nothing else (keys, tokens,
# proxies) crosses. The device masks are what a Ray node (or the user) gives the trial: its
# share of the GPUs or of a TPU host's chips.
PASSTHROUGH_ENV = ('PATH', 'HOME', 'LANG', 'LC_ALL', 'TMPDIR', 'LD_LIBRARY_PATH',
                   'JAX_PLATFORMS', 'XLA_FLAGS', 'CUDA_VISIBLE_DEVICES', 'TPU_VISIBLE_CHIPS',
                   'TPU_CHIPS_PER_HOST_BOUNDS', 'TPU_HOST_BOUNDS',
                   'XLA_PYTHON_CLIENT_PREALLOCATE', 'XLA_PYTHON_CLIENT_MEM_FRACTION',
                   'TF_CPP_MIN_LOG_LEVEL')
# Set for every run: reproducible hashing, prompt log lines (a killed trial loses no
# buffered output), and XLA's C++ INFO chatter off unless the parent asks for it.
FIXED_ENV = {'PYTHONHASHSEED': '0', 'PYTHONUNBUFFERED': '1'}
DEFAULT_ENV = {'TF_CPP_MIN_LOG_LEVEL': '1'}
KILL_GRACE_S = 3.0  # between SIGTERM and SIGKILL to the process group
REASON_CHARS = 300
_CPU_KILL_AFTER_S = 5  # RLIMIT_CPU hard limit above the soft one, so SIGXCPU comes first
_PROBE_S = 20.0


class SandboxUnavailable(RuntimeError):
  """The charter requires the filesystem sandbox and it cannot run here (one line: why)."""


def env_for(worktree: Path, parent: Mapping[str, str] = os.environ) -> dict[str, str]:
  """The whole environment of agent-written code run from `worktree`: an allow-list, never
  the parent's environment minus a few."""
  env = {**DEFAULT_ENV, **{k: parent[k] for k in PASSTHROUGH_ENV if k in parent}}
  return {**env, **FIXED_ENV, 'PYTHONPATH': str(worktree)}


def cpu_seconds(limits: charter.Trial) -> int:
  """The charter's CPU-time cap in whole seconds, as RLIMIT_CPU counts it; 0 = none."""
  return round(limits.cpu_minutes * 60)


def _rlimits(limits: charter.Trial) -> list[tuple[int, str, int, int]]:
  """(resource, prlimit's name for it, soft, hard) for each limit the charter sets; never
  more than the current hard limit (only root could raise it)."""
  wanted = []
  if cpu := cpu_seconds(limits):
    wanted.append((resource.RLIMIT_CPU, 'cpu', cpu, cpu + _CPU_KILL_AFTER_S))
  if limits.memory_mb:
    wanted.append((resource.RLIMIT_DATA, 'data', limits.memory_mb << 20,
                   limits.memory_mb << 20))
  if limits.max_processes:
    wanted.append((resource.RLIMIT_NPROC, 'nproc', limits.max_processes,
                   limits.max_processes))
  found = []
  for kind, name, soft, hard in wanted:
    current_hard = resource.getrlimit(kind)[1]
    if current_hard != resource.RLIM_INFINITY:
      hard = min(hard, current_hard)
    found.append((kind, name, min(soft, hard), hard))
  return found


def _limited(command: list[str], limits: charter.Trial) -> tuple[list[str], Any]:
  """The command under the charter's rlimits, and a preexec_fn where one is needed.

  Where util-linux's `prlimit` exists the limits are set by it, just before it execs the
  command: no Python runs between fork and exec (unsafe once JAX's threads run in this
  process). Elsewhere (macOS) a preexec_fn sets them. Limits are inherited by everything
  the command starts.
  """
  rlimits = _rlimits(limits)
  prlimit = shutil.which('prlimit')
  if not rlimits:
    return command, None
  if prlimit:
    return [prlimit, *(f'--{name}={soft}:{hard}' for _, name, soft, hard in rlimits), '--',
            *command], None

  def apply() -> None:
    for kind, _, soft, hard in rlimits:
      resource.setrlimit(kind, (soft, hard))
  return command, apply


# PID 1 of the code's PID namespace: starts the code as its only child, reaps orphans, and
# exits with the child's status, 128 + N for death by signal N (PID 1 itself cannot die of
# an unhandled signal). Its exit makes the kernel kill whatever is left in the namespace.
_INIT = """
import os, sys
child = os.fork()
if child == 0:
  try:
    os.execv(sys.argv[1], sys.argv[1:])
  finally:
    os._exit(127)
while True:
  pid, status = os.wait()
  if pid == child:
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)
"""


@dataclasses.dataclass(frozen=True)
class Isolation:
  """How agent-written code is isolated on this machine, beyond its own process group."""
  prefix: tuple[str, ...]  # prepended to the command: unshare ... python -c _INIT; () = none
  network_isolated: bool
  description: str
  pid_namespace: bool  # its PID 1 reports death by signal N as exit code 128 + N


@functools.cache
def isolation(isolate_network: bool) -> Isolation:
  """The strongest isolation this machine allows, probed once per process and flag.

  Tried in order: the namespaces directly (root), then inside an unprivileged user
  namespace; without --net if that is all that works. Anything weaker than asked for is
  warned once here, with the reason, and each outcome repeats it in `sandbox`.
  """
  unshare = shutil.which('unshare')
  failure = 'unshare is not available on this system'
  found: Isolation | None = None
  if sys.platform.startswith('linux') and unshare:
    users = [(), ('--user', '--map-root-user')] if os.geteuid() == 0 else [
        ('--user', '--map-root-user')]
    for net in ((True, False) if isolate_network else (False,)):
      for user in users:
        prefix = (unshare, *user, *(('--net',) if net else ()), '--pid', '--fork',
                  '--kill-child', '--mount-proc', '--', sys.executable, '-I', '-S', '-c', _INIT)
        error = _probe(prefix)
        if error is None:
          how = 'in a user namespace' if user else 'as root'
          what = 'PID and network namespaces' if net else 'PID namespace'
          found = Isolation(prefix, net, f'{what} (unshare, {how})', True)
          break
        failure = error
      if found:
        break
  found = found or Isolation((), False, 'process group only', False)
  if isolate_network and not found.network_isolated:
    found = dataclasses.replace(found, description=f'{found.description}, network NOT isolated')
  if not found.pid_namespace or (isolate_network and not found.network_isolated):
    found = dataclasses.replace(found, description=f'{found.description} ({failure})')
    logging.warning('agent-written code runs with weaker isolation: %s', found.description)
  return found


def _probe(prefix: tuple[str, ...]) -> str | None:
  """None when the sandbox starts a Python child here, else why not (one line)."""
  try:
    result = subprocess.run([*prefix, sys.executable, '-I', '-S', '-c', 'pass'],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=_PROBE_S)
  except (OSError, subprocess.TimeoutExpired) as e:
    return one_line(f'{prefix[0]}: {e}')
  if result.returncode == 0:
    return None
  return one_line(last_line(result.stderr) or f'{prefix[0]} exit code {result.returncode}')


def require_sandbox(limits: charter.Trial) -> str:
  """How agent-written code will be isolated here, in words; SandboxUnavailable when the
  filesystem sandbox is required and cannot run (checked before a run starts anything)."""
  why = fs_sandbox.available()
  if why is None:
    return fs_sandbox.wrap([sys.executable], fs_sandbox.Mounts((), ()),
                           network=limits.network)[1]
  if limits.filesystem_sandbox == 'required':
    raise SandboxUnavailable(f'the filesystem sandbox cannot run here: {why}. Install '
                             'bubblewrap (Debian/Ubuntu: apt-get install bubblewrap), or accept '
                             'weaker isolation with [trial] filesystem_sandbox = "best_effort" '
                             'in WORKSPACE.md')
  iso = isolation(not limits.network)
  return f'{iso.description}; NO filesystem sandbox ({why})'


def start(argv: list[str], cwd: Path, env: dict[str, str], limits: charter.Trial,
          mounts: fs_sandbox.Mounts) -> tuple[subprocess.Popen, Isolation]:
  """Starts argv sandboxed: bubblewrap's filesystem view (or, where the charter allows its
  absence, namespaces only), own session and process group, limits; stdout and stderr
  merged into one pipe."""
  described = require_sandbox(limits)
  if fs_sandbox.available() is None:
    command, words = fs_sandbox.wrap(argv, mounts, network=limits.network)
    iso = Isolation((), not limits.network, words, True)
  else:
    iso = dataclasses.replace(isolation(not limits.network), description=described)
    setpriv = shutil.which('setpriv')  # without bwrap, this is what dies with the agent
    command = [*([setpriv, '--pdeathsig', 'KILL'] if setpriv else []), *iso.prefix, *argv]
  command, preexec = _limited(command, limits)
  proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True, preexec_fn=preexec)
  return proc, iso


def bounded(argv: list[str], timeout_s: float) -> list[str]:
  """argv under coreutils' `timeout`, inside the sandbox: the trial cannot outlive its time
  limit even if nothing outside is left to enforce it. Set past the executor's own limit,
  which normally ends the trial first (with its grace period)."""
  timeout = shutil.which('timeout')
  if timeout is None:
    return argv
  return [timeout, '--signal=KILL', f'{math.ceil(timeout_s + KILL_GRACE_S + 30)}', *argv]


def exited(pid: int) -> bool:
  """Whether the group's leader has exited, without reaping it: while it is an unreaped
  zombie its pid cannot be reused, so signalling its process group stays safe."""
  return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def sleep_until_exit(pid: int, seconds: float) -> None:
  """Sleeps `seconds`, or less when process `pid` exits first (a pidfd, Linux >= 5.3;
  elsewhere the whole time): a finished trial is scored at once, not a poll interval later.
  Reaps nothing."""
  try:
    fd = os.pidfd_open(pid)
  except (AttributeError, OSError):
    time.sleep(seconds)
    return
  try:
    select.select([fd], [], [], seconds)
  finally:
    os.close(fd)


def signal_group(pid: int, sig: int) -> None:
  try:
    os.killpg(pid, sig)
  except ProcessLookupError:
    pass


def terminate_group(pid: int) -> None:
  """SIGTERM to the whole group, KILL_GRACE_S for the leader to exit, then SIGKILL to all."""
  signal_group(pid, signal.SIGTERM)
  deadline = time.monotonic() + KILL_GRACE_S
  try:
    while not exited(pid) and time.monotonic() < deadline:
      time.sleep(0.05)
  except KeyboardInterrupt:
    pass  # a second Ctrl-C skips the grace period, not the kill
  signal_group(pid, signal.SIGKILL)


def reap(proc: subprocess.Popen, iso: Isolation) -> int:
  """Waits for the leader and returns the confined code's own exit code: the init reports
  death by signal N as 128 + N."""
  returncode = proc.wait()
  if iso.pid_namespace and 128 < returncode <= 128 + 64:
    return 128 - returncode
  return returncode


def one_line(text: str, limit: int = REASON_CHARS) -> str:
  text = ' '.join(text.split())
  return text if len(text) <= limit else text[:limit - 3] + '...'


def last_line(text: str) -> str:
  lines = [line for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else ''


def signal_name(sig: int) -> str:
  try:
    return signal.Signals(sig).name
  except ValueError:  # e.g. a real-time signal
    return f'signal {sig}'
