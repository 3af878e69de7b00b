"""Runs one trial (`python -m harness.main ...`) as a sandboxed, bounded subprocess.

Why a subprocess and not a call: the trial runs code the agent wrote. In its own process
group it can be stopped as a whole (timeout, pruning, Ctrl-C in the parent) with nothing left
behind; with a scrubbed environment it never sees the parent's API keys or proxies; with
rlimits a runaway trial fails alone instead of taking the machine down; with a capped log a
print loop cannot fill the disk. A trial's own failure is an outcome, never an exception:
`run_trial` raises only for the caller's mistakes.

Judged from outside: the trial writes predictions and a self-report into its `output/`
folder, the only place it may write; this process (which never imports candidate code)
scores them with `harness.scoring`, measures the trial's wall time, CPU time and peak RSS
itself (`TreeUsage`), and writes the scorecard beside `output/`, never inside it.

Filesystem: everything runs inside bubblewrap (`agent.safety.sandbox`): the worktree and inputs
read-only, `output/` writable, a private /tmp, nothing else of the machine's files but the
system and the Python installation, the data's sources hidden. Where bwrap cannot run and
the charter allows it (`filesystem_sandbox = "best_effort"`), the namespaces below are all
there is, and each outcome's `sandbox` says so.

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
stacks count) and MemoryError; all are reported as status 'killed', reason 'memory limit'.
RLIMIT_RSS is ignored by Linux; a true resident-memory cap needs a cgroup (e.g.
`systemd-run --scope -p MemoryMax=...`), which is outside this module.

Other limits: `cpu_seconds` sets RLIMIT_CPU (CPU time of the trial process, all threads
summed, so a multi-threaded XLA run spends it faster than wall time; SIGXCPU at the limit,
SIGKILL a few seconds later). `max_processes` sets RLIMIT_NPROC, which counts threads too
and every process of the same real user, not only the trial's; root ignores it. There is no
RLIMIT_FSIZE: checkpoints are legitimately large, and the log's cap is kept by its reader.

Namespaces without bwrap (Linux): each trial (and each import check) runs under `unshare
--pid --fork --kill-child --mount-proc`, plus `--net` when the charter denies network, and plus `--user
--map-root-user` when not root (unprivileged user namespaces). The network namespace has only
a loopback device that is down, so no connection of any kind leaves it. In the PID namespace a
small trusted init (`_INIT`) is PID 1 and the trial its child: when the trial ends, or the
group is killed, the kernel kills everything left in the namespace, including children that
called setsid() to leave the process group; the private /proc hides the agent's own
environment. PID 1 cannot die of a signal it has no handler for, so the init exits with 128 + N
when the trial died of signal N and `_exit_code` turns that back into -N. What works is probed
once per process (`isolation`); where nothing does (macOS, containers without unshare) trials
still run, in their own process group, and the outcome's `sandbox` says so.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Literal, Mapping

from agent import charter
from agent.recording import vcs
from agent.safety import sandbox as fs_sandbox
from harness import scorecard as sc
from harness import scoring
from harness.datasets import source_paths
from harness.scorecard import CURVES, SCORECARD

Status = Literal['ok', 'diverged', 'failed', 'bad_input', 'timeout', 'pruned', 'killed',
                 'invalid']
OnCurve = Callable[[list[dict[str, Any]]], str | None]

LOG = 'trial.log'
OUTPUT = 'output'  # the trial's own folder inside its workdir: the only place it may write
# Variables a trial may inherit from the parent; nothing else (keys, tokens, proxies) crosses.
PASSTHROUGH_ENV = ('PATH', 'HOME', 'LANG', 'LC_ALL', 'TMPDIR', 'LD_LIBRARY_PATH',
                   'JAX_PLATFORMS', 'XLA_FLAGS', 'CUDA_VISIBLE_DEVICES',
                   'XLA_PYTHON_CLIENT_PREALLOCATE', 'XLA_PYTHON_CLIENT_MEM_FRACTION',
                   'TF_CPP_MIN_LOG_LEVEL')
# Set for every trial: reproducible hashing, prompt log lines (a killed trial loses no
# buffered output), and XLA's C++ INFO chatter off unless the parent asks for it.
FIXED_ENV = {'PYTHONHASHSEED': '0', 'PYTHONUNBUFFERED': '1'}
DEFAULT_ENV = {'TF_CPP_MIN_LOG_LEVEL': '1'}
KILL_GRACE_S = 3.0  # between SIGTERM and SIGKILL to the trial's process group
TAIL_CHARS = 2000
REASON_CHARS = 300
_READER_JOIN_S = 5.0
_LINE_BYTES = 1 << 16
_CPU_KILL_AFTER_S = 5  # RLIMIT_CPU hard limit above the soft one, so SIGXCPU comes first
_MEMORY_SIGNS = re.compile(r"MemoryError|bad_alloc|Cannot allocate memory|Unable to allocate|"
                           r"can't start new thread|RESOURCE_EXHAUSTED|[Oo]ut of memory")
_MEMORY_SIGNALS = (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS)


@dataclasses.dataclass(frozen=True)
class Sandbox:
  """The bounds every run of agent-written code gets (trials and import checks); 0 = none."""
  memory_mb: int = 0
  cpu_seconds: int = 0
  max_processes: int = 0
  isolate_network: bool = True
  require_filesystem: bool = True  # False: run without bubblewrap where it cannot run

  @classmethod
  def of(cls, trial: 'charter.Trial') -> 'Sandbox':
    """The charter's bounds ([trial]) for everything that runs agent-written code."""
    return cls(memory_mb=trial.memory_mb, cpu_seconds=round(trial.cpu_minutes * 60),
               max_processes=trial.max_processes, isolate_network=not trial.network,
               require_filesystem=trial.filesystem_sandbox == 'required')


@dataclasses.dataclass(frozen=True)
class TrialSpec:
  """What to run and within which bounds; 0 for a limit means none."""
  worktree: Path
  experiment: str  # config file, relative to the worktree
  workdir: Path  # outside the worktree; must be absent or empty
  seeds: int
  first_seed: int
  timeout_s: float
  eval_test: bool = False
  overrides: tuple[str, ...] = ()  # '--config.a.b=v'
  memory_mb: int = 0
  cpu_seconds: int = 0
  max_output_bytes: int = 1_000_000
  max_processes: int = 0
  isolate_network: bool = True  # run without network where the OS allows it
  inputs: Path | None = None  # the trial's data (harness.trial_inputs), mounted read-only
  require_filesystem: bool = True

  def __post_init__(self) -> None:
    worktree, workdir = Path(self.worktree).absolute(), Path(self.workdir).absolute()
    object.__setattr__(self, 'worktree', worktree)
    object.__setattr__(self, 'workdir', workdir)
    object.__setattr__(self, 'overrides', tuple(self.overrides))
    if self.inputs is not None:
      object.__setattr__(self, 'inputs', Path(self.inputs).absolute())
    if Path(self.experiment).is_absolute():
      raise ValueError(f'experiment must be relative to the worktree: {self.experiment}')
    if workdir.resolve().is_relative_to(worktree.resolve()):
      raise ValueError(f'workdir {workdir} lies inside the worktree {worktree}')
    if self.seeds < 1 or self.timeout_s <= 0 or self.max_output_bytes < 1:
      raise ValueError('seeds, timeout_s and max_output_bytes must be positive')
    if min(self.memory_mb, self.cpu_seconds, self.max_processes) < 0:
      raise ValueError('memory_mb, cpu_seconds and max_processes must be >= 0')
    bad = [o for o in self.overrides if not o.startswith('--config.')]
    if bad:
      raise ValueError(f'overrides must look like --config.a.b=v: {bad}')

  @property
  def sandbox(self) -> 'Sandbox':
    return Sandbox(self.memory_mb, self.cpu_seconds, self.max_processes, self.isolate_network,
                   self.require_filesystem)

  @property
  def output(self) -> Path:
    return self.workdir / OUTPUT

  def command(self) -> list[str]:
    """The trial: trains on the given inputs and writes predictions into `output`, never a
    scorecard; `eval_test` is for a run by hand (an agent gives test inputs instead)."""
    inputs = [f'--inputs={self.inputs}'] if self.inputs else []
    return [sys.executable, '-m', 'harness.main', f'--config={self.experiment}',
            f'--workdir={self.output}', f'--seeds={self.seeds}',
            f'--config.train.seed={self.first_seed}', *inputs, *self.overrides,
            *(['--eval_test'] if self.eval_test else [])]

  def mounts(self) -> fs_sandbox.Mounts:
    """What the trial sees: its code read-only, its inputs read-only, its output writable."""
    read_only = (self.worktree, *([self.inputs] if self.inputs else []))
    return fs_sandbox.Mounts(read_only, (self.output,), source_paths(), chdir=self.worktree)


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
  """What happened; log_tail and reason are bounded so they can go into a prompt."""
  status: Status
  scorecard: dict[str, Any] | None
  curve: list[dict[str, Any]]
  wall_seconds: float
  returncode: int | None
  log_path: Path
  log_tail: str
  reason: str
  pruned_at_step: int | None = None
  sandbox: str = ''  # the isolation the trial ran under, in words (see `isolation`)
  trusted: dict[str, float] | None = None  # wall and CPU seconds, peak RSS, as the parent saw


class SandboxUnavailable(RuntimeError):
  """The charter requires the filesystem sandbox and it cannot run here (one line: why)."""


def trial_env(spec: TrialSpec, parent: Mapping[str, str] = os.environ) -> dict[str, str]:
  """The trial's whole environment: an allow-list, never the parent's environment minus a few."""
  return trial_env_for(spec.worktree, parent)


def trial_env_for(worktree: Path, parent: Mapping[str, str] = os.environ) -> dict[str, str]:
  """The environment of any agent-written code run from `worktree` (trials, import checks)."""
  env = {**DEFAULT_ENV, **{k: parent[k] for k in PASSTHROUGH_ENV if k in parent}}
  return {**env, **FIXED_ENV, 'PYTHONPATH': str(worktree)}


IMPORT_CHECK = """
import importlib, runpy, sys
for path in sys.argv[1:]:
  if path.startswith('experiments/'):
    runpy.run_path(path)['get_config']()
  else:
    importlib.import_module(path[:-3].replace('/', '.'))
"""
# Prints the experiment's dataset config as one JSON line: how a run pins its data without
# executing a config file in the agent's own process.
DATASET_OF = """
import json, runpy, sys
print('DATASET=' + json.dumps(runpy.run_path(sys.argv[1])['get_config']().dataset.to_dict()))
"""
IMPORT_MEMORY_MB = 4096  # importing jax and flax commits a few hundred MB
IMPORT_OUTPUT_BYTES = 64_000


def import_check(worktree: Path, paths: list[str], timeout_s: float = 120,
                 sandbox: Sandbox = Sandbox(memory_mb=IMPORT_MEMORY_MB)) -> str | None:
  """Imports the edited modules (and builds each edited config) in a sandboxed subprocess.

  Returns None when they load, else one line saying why not: an edit must parse AND import
  before a trial is spent on it. Importing runs the agent's code, so it gets a trial's
  sandbox (its filesystem view with nothing writable but a private /tmp, scrubbed
  environment, limits, namespaces, a capped log, the whole group killed).
  """
  worktree = Path(worktree).absolute()
  modules = [p for p in paths if p.endswith('.py') and (worktree / p).exists()]
  if not modules:
    return None
  returncode, tail = _run_code(worktree, [IMPORT_CHECK, *modules], timeout_s, sandbox)
  if returncode is None:
    return f'importing the edited modules took more than {timeout_s:g} s'
  if returncode == 0:
    return None
  last = _last_line(tail)
  if returncode < 0:
    return _one_line(f'killed by {_signal_name(-returncode)}: {last}')
  return _one_line(last or f'exit code {returncode}')


def dataset_config(worktree: Path, experiment: str, sandbox: Sandbox,
                   timeout_s: float = 120) -> dict[str, Any]:
  """The experiment's `config.dataset`, resolved inside the sandbox; ValueError if it cannot
  be (the message is the config's own error)."""
  returncode, tail = _run_code(Path(worktree).absolute(), [DATASET_OF, experiment], timeout_s,
                               sandbox)
  lines = [line for line in tail.splitlines() if line.startswith('DATASET=')]
  if returncode != 0 or not lines:
    raise ValueError(_one_line(f'cannot read config.dataset of {experiment}: '
                               f'{_last_line(tail) or returncode}'))
  dataset = json.loads(lines[-1].removeprefix('DATASET='))
  if not isinstance(dataset, dict):
    raise ValueError(f'config.dataset of {experiment} is not a mapping')
  return dataset


def _run_code(worktree: Path, code_and_args: list[str], timeout_s: float,
              sandbox: Sandbox) -> tuple[int | None, str]:
  """Runs `python -c code args` from the worktree in the sandbox, nothing writable; returns
  its exit code (None when it timed out) and the tail of its output."""
  env = {**trial_env_for(worktree), 'PYTHONDONTWRITEBYTECODE': '1'}  # leave no __pycache__
  with tempfile.TemporaryDirectory(prefix='agent-code-') as folder:
    log = _CappedLog(Path(folder) / LOG, IMPORT_OUTPUT_BYTES)
    try:
      mounts = fs_sandbox.Mounts((worktree,), (), source_paths(), chdir=worktree)
      proc, iso = _start([sys.executable, '-c', *code_and_args], worktree, env, sandbox, mounts)
    except BaseException:
      log.close()
      raise
    reader = log.drain(proc.stdout)
    deadline = time.monotonic() + timeout_s
    try:
      while not _exited(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
      timed_out = not _exited(proc.pid)
    finally:
      _signal_group(proc.pid, signal.SIGKILL)  # nothing of it may outlive it
      returncode = _reap(proc, iso)
      reader.join(_READER_JOIN_S)
      log.close()
  return (None if timed_out else returncode), log.tail()


def _limits(sandbox: Sandbox) -> list[tuple[int, str, int, int]]:
  """(resource, prlimit's name for it, soft, hard) for each limit the sandbox sets; never
  more than the current hard limit (only root could raise it)."""
  wanted = []
  if sandbox.cpu_seconds:
    wanted.append((resource.RLIMIT_CPU, 'cpu', sandbox.cpu_seconds,
                   sandbox.cpu_seconds + _CPU_KILL_AFTER_S))
  if sandbox.memory_mb:
    wanted.append((resource.RLIMIT_DATA, 'data', sandbox.memory_mb << 20,
                   sandbox.memory_mb << 20))
  if sandbox.max_processes:
    wanted.append((resource.RLIMIT_NPROC, 'nproc', sandbox.max_processes,
                   sandbox.max_processes))
  limits = []
  for kind, name, soft, hard in wanted:
    current_hard = resource.getrlimit(kind)[1]
    if current_hard != resource.RLIM_INFINITY:
      hard = min(hard, current_hard)
    limits.append((kind, name, min(soft, hard), hard))
  return limits


def _limited(command: list[str], sandbox: Sandbox) -> tuple[list[str], Any]:
  """The command under the sandbox's rlimits, and a preexec_fn where one is needed.

  Where util-linux's `prlimit` exists the limits are set by it, just before it execs the
  command: no Python runs between fork and exec (unsafe once JAX's threads run in this
  process). Elsewhere (macOS) a preexec_fn sets them. Limits are inherited by everything
  the command starts.
  """
  limits = _limits(sandbox)
  prlimit = shutil.which('prlimit')
  if not limits:
    return command, None
  if prlimit:
    return [prlimit, *(f'--{name}={soft}:{hard}' for _, name, soft, hard in limits), '--',
            *command], None

  def apply() -> None:
    for kind, _, soft, hard in limits:
      resource.setrlimit(kind, (soft, hard))
  return command, apply


# PID 1 of the trial's PID namespace: starts the trial as its only child, reaps orphans, and
# exits with the trial's status, 128 + N for death by signal N (PID 1 itself cannot die of
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
_PROBE_S = 20.0


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
    return _one_line(f'{prefix[0]}: {e}')
  if result.returncode == 0:
    return None
  return _one_line(_last_line(result.stderr) or f'{prefix[0]} exit code {result.returncode}')


def require_sandbox(sandbox: Sandbox) -> str:
  """How agent-written code will be isolated here, in words; SandboxUnavailable when the
  filesystem sandbox is required and cannot run (checked before a run starts anything)."""
  why = fs_sandbox.available()
  if why is None:
    return fs_sandbox.wrap([sys.executable], fs_sandbox.Mounts((), ()),
                           network=not sandbox.isolate_network)[1]
  if sandbox.require_filesystem:
    raise SandboxUnavailable(f'the filesystem sandbox cannot run here: {why}. Install '
                             'bubblewrap (Debian/Ubuntu: apt-get install bubblewrap), or accept '
                             'weaker isolation with [trial] filesystem_sandbox = "best_effort" '
                             'in WORKSPACE.md')
  iso = isolation(sandbox.isolate_network)
  return f'{iso.description}; NO filesystem sandbox ({why})'


def _start(argv: list[str], cwd: Path, env: dict[str, str], sandbox: Sandbox,
           mounts: fs_sandbox.Mounts) -> tuple[subprocess.Popen, Isolation]:
  """Starts argv sandboxed: bubblewrap's filesystem view (or, where the charter allows its
  absence, namespaces only), own session and process group, limits; stdout and stderr
  merged into one pipe."""
  described = require_sandbox(sandbox)
  if fs_sandbox.available() is None:
    command, words = fs_sandbox.wrap(argv, mounts, network=not sandbox.isolate_network)
    iso = Isolation((), sandbox.isolate_network, words, True)
  else:
    iso = dataclasses.replace(isolation(sandbox.isolate_network), description=described)
    setpriv = shutil.which('setpriv')  # without bwrap, this is what dies with the agent
    command = [*([setpriv, '--pdeathsig', 'KILL'] if setpriv else []), *iso.prefix, *argv]
  command, preexec = _limited(command, sandbox)
  proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True, preexec_fn=preexec)
  return proc, iso


def _bounded(argv: list[str], timeout_s: float) -> list[str]:
  """argv under coreutils' `timeout`, inside the sandbox: the trial cannot outlive its time
  limit even if nothing outside is left to enforce it. Set past the executor's own limit,
  which normally ends the trial first (with its grace period)."""
  timeout = shutil.which('timeout')
  if timeout is None:
    return argv
  return [timeout, '--signal=KILL', f'{math.ceil(timeout_s + KILL_GRACE_S + 30)}', *argv]


def _reap(proc: subprocess.Popen, iso: Isolation) -> int:
  """Waits for the trial's leader and returns the trial's own exit code."""
  return _exit_code(proc.wait(), iso)


class TreeUsage:
  """CPU time and peak resident memory of a process tree, read by the parent from /proc.

  The trial cannot change what the kernel counts for it, so these are the costs it cannot
  misreport. bwrap does not wait for the sandbox's PID 1, so the kernel's rusage of the
  leader holds none of it: the tree is sampled instead (at each poll, so up to one poll
  interval of CPU time before the end may be missed). Linux only; elsewhere it stays 0.
  """
  _CLOCK = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100

  def __init__(self, root: int):
    self.root = root
    self.seen: dict[int, tuple[int, float, float]] = {}  # pid -> (parent, own, children's)
    self.max_rss_mb = 0.0

  def sample(self) -> None:
    try:
      stats = {int(p): _proc_stat(p) for p in os.listdir('/proc') if p.isdigit()}
    except OSError:
      return
    children: dict[int, list[int]] = {}
    for pid, stat_ in stats.items():
      if stat_:
        children.setdefault(stat_[0], []).append(pid)
    todo = [self.root]
    while todo:
      pid = todo.pop()
      todo += children.get(pid, [])
      if stats.get(pid):
        parent, own, reaped = stats[pid]
        self.seen[pid] = (parent, own / self._CLOCK, reaped / self._CLOCK)
        self.max_rss_mb = max(self.max_rss_mb, _peak_rss_mb(pid))

  def totals(self) -> dict[str, float]:
    """Each process's own CPU time, plus what its reaped children used beyond what was
    seen of them directly (so a child is counted once, even one that lived between two
    samples)."""
    cpu = 0.0
    for pid, (_, own, reaped) in self.seen.items():
      seen_children = sum(o + r for p, o, r in self.seen.values() if p == pid)
      cpu += own + max(0.0, reaped - seen_children)
    return {'cpu_seconds': cpu, 'max_rss_mb': self.max_rss_mb}


def _proc_stat(pid: str) -> tuple[int, int, int] | None:
  """(parent pid, own CPU ticks, reaped children's CPU ticks) from /proc/PID/stat."""
  try:
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
  except (OSError, IndexError):
    return None
  return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def _peak_rss_mb(pid: int) -> float:
  try:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024
  except (OSError, ValueError, IndexError):
    pass
  return 0.0


def _exit_code(returncode: int, iso: Isolation) -> int:
  """The trial's own exit status: the init reports death by signal N as 128 + N."""
  if iso.pid_namespace and 128 < returncode <= 128 + 64:
    return 128 - returncode
  return returncode


def _one_line(text: str, limit: int = REASON_CHARS) -> str:
  text = ' '.join(text.split())
  return text if len(text) <= limit else text[:limit - 3] + '...'


class _CappedLog:
  """The trial's output in one file of bounded size, drained by one reader thread.

  stdout and stderr share one pipe so the log keeps the order the trial wrote in (with two
  pipes and two readers, a crash message could land before the 64 KB of stdout that preceded
  it). Past the cap, output is drained and dropped (a blocked pipe would stall the trial), but
  a rolling tail of everything is kept: the end of a flood, where the error usually is, is
  appended to the file on close and returned as log_tail.
  """

  def __init__(self, path: Path, cap: int):
    self._file = path.open('wb')
    self._cap = cap
    self._written = 0
    self._dropped = 0
    self._tail = bytearray()
    self._lock = threading.Lock()
    self._closed = False

  def write(self, data: bytes) -> None:
    with self._lock:
      if self._closed:
        return
      self._tail += data
      del self._tail[:-4 * TAIL_CHARS]
      keep = data[:max(0, self._cap - self._written)]
      if keep:
        self._file.write(keep)
        self._written += len(keep)
      if len(keep) < len(data):
        if not self._dropped:
          self._file.write(f'\n[output truncated at {self._cap} bytes]\n'.encode())
        self._dropped += len(data) - len(keep)

  def drain(self, pipe: IO[bytes]) -> threading.Thread:
    def run() -> None:
      # Ctrl-C must reach the main thread: a signal the kernel hands to this thread (while
      # the main one blocks signals around vfork) would leave Python's handler waiting.
      signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
      with pipe:
        for line in iter(functools.partial(pipe.readline, _LINE_BYTES), b''):
          self.write(line)
    thread = threading.Thread(target=run, name='trial-log', daemon=True)
    thread.start()
    return thread

  def tail(self) -> str:
    with self._lock:
      return self._tail.decode(errors='replace')[-TAIL_CHARS:]

  def close(self) -> None:
    with self._lock:
      if self._dropped:
        text = self._tail.decode(errors='replace')[-TAIL_CHARS:]
        self._file.write(f'[{self._dropped} bytes dropped; the last {len(text)} characters '
                         f'of output follow]\n{text}'.encode())
      self._closed = True
      self._file.close()


class ScoredCurve:
  """The trusted learning curve of a running trial: each validation prediction file the
  trial writes is scored here, by the parent, as soon as it is complete."""

  def __init__(self, scorer: scoring.Scorer, output: Path):
    self.scorer, self.output = scorer, output
    self.points: list[dict[str, Any]] = []

  def poll(self) -> bool:
    """Scores the steps written since the last call; True if the curve grew."""
    done = {p['step'] for p in self.points}
    new = [s for s in scoring.val_steps(self.output) if s not in done]
    for step in new:
      try:
        self.points.append(self.scorer.point(self.output, step))
      except scoring.ScoringError:
        return bool(done ^ {p['step'] for p in self.points})  # malformed: judged at the end
    self.points.sort(key=lambda p: p['step'])
    return bool(new)


def _exited(pid: int) -> bool:
  """Whether the trial's leader has exited, without reaping it: while it is an unreaped
  zombie its pid cannot be reused, so signalling its process group stays safe."""
  return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _signal_group(pid: int, sig: int) -> None:
  try:
    os.killpg(pid, sig)
  except ProcessLookupError:
    pass


def _terminate_group(pid: int) -> None:
  """SIGTERM to the whole group, KILL_GRACE_S for the leader to exit, then SIGKILL to all."""
  _signal_group(pid, signal.SIGTERM)
  deadline = time.monotonic() + KILL_GRACE_S
  try:
    while not _exited(pid) and time.monotonic() < deadline:
      time.sleep(0.05)
  except KeyboardInterrupt:
    pass  # a second Ctrl-C skips the grace period, not the kill
  _signal_group(pid, signal.SIGKILL)


def _watch(proc: subprocess.Popen, curves: ScoredCurve, usage: TreeUsage,
           on_curve: OnCurve | None, deadline: float, timeout_s: float,
           poll_s: float) -> tuple[Status, str] | None:
  """Polls until the trial exits (None) or must be stopped ((status, reason))."""
  while not _exited(proc.pid):
    usage.sample()
    if curves.poll() and on_curve is not None:
      verdict = on_curve(list(curves.points))
      if verdict:
        return 'pruned', _one_line(verdict)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      return 'timeout', f'timed out after {timeout_s:g} s'
    time.sleep(min(poll_s, remaining))
  return None


def _prepare_workdir(spec: TrialSpec) -> None:
  spec.workdir.mkdir(parents=True, exist_ok=True)
  if any(spec.workdir.iterdir()):
    raise ValueError(f'workdir {spec.workdir} is not empty: each trial needs a fresh one')
  spec.output.mkdir()


def _last_line(text: str) -> str:
  lines = [line for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else ''


def _signal_name(sig: int) -> str:
  try:
    return signal.Signals(sig).name
  except ValueError:  # e.g. a real-time signal
    return f'signal {sig}'


def _classify(spec: TrialSpec, returncode: int, tail: str) -> tuple[Status, str]:
  """Status and a one-line reason for a trial that ended by itself; 'ok' means only that it
  exited 0: what it produced is judged by `_score`."""
  errors = [line for line in tail.splitlines() if line.startswith('error: ')]
  memory_line = next((line for line in reversed(tail.splitlines())
                      if _MEMORY_SIGNS.search(line)), '')
  if returncode < 0:
    sig = -returncode
    name = _signal_name(sig)
    if sig == signal.SIGXCPU and spec.cpu_seconds:
      return 'killed', f'cpu time limit: {spec.cpu_seconds} s of CPU used (SIGXCPU)'
    if spec.memory_mb and (sig in _MEMORY_SIGNALS or memory_line):
      return 'killed', _one_line(f'memory limit: died by {name} under {spec.memory_mb} MB '
                                f'of RLIMIT_DATA {memory_line}')
    if sig == signal.SIGKILL:
      return 'killed', 'killed by SIGKILL from outside the executor (the kernel OOM killer?)'
    return 'killed', _one_line(f'died by {name}: {_last_line(tail)}')
  if spec.memory_mb and returncode != 0 and memory_line:
    return 'killed', _one_line(f'memory limit: {spec.memory_mb} MB of RLIMIT_DATA exceeded: '
                              f'{memory_line}')
  if returncode == 0:
    return 'ok', 'finished'
  if returncode == 2:
    # harness.main reports bad input as one 'error: ...' line on stderr, then exits 2.
    return 'bad_input', _one_line(errors[-1] if errors else _last_line(tail) or 'exit code 2')
  reason = (errors[-1] if errors else '') or _last_line(tail) or 'no output'
  return 'failed', _one_line(reason if returncode == 1 else f'exit code {returncode}: {reason}')


def _score(spec: TrialSpec, scorer: scoring.Scorer,
           trusted: dict[str, float]) -> tuple[Status, str, dict[str, Any] | None]:
  """The trusted side's verdict on what a finished trial wrote: the scorecard (with its
  curve, and the test scorecard when test inputs were given), written beside the trial's
  folder, never inside it."""
  seeds = list(range(spec.first_seed, spec.first_seed + spec.seeds))
  try:
    card = scoring.scorecard(scorer, spec.output, seeds=seeds, trusted=trusted,
                             code=vcs.provenance(spec.worktree))
    test = (scoring.test_scorecard(scorer, spec.output, card)
            if 'test' in scorer.targets.labels and card['status'] == 'ok' else None)
  except scoring.ScoringError as e:
    return ('invalid' if 'invariant' in str(e) else 'failed'), _one_line(str(e)), None
  sc.write_json(spec.workdir / SCORECARD, card)
  (spec.workdir / CURVES).unlink(missing_ok=True)  # written fresh, never onto a planted file
  for point in card['curve']:
    sc.append_jsonl(spec.workdir / CURVES, point)
  if test is not None:
    sc.write_json(spec.workdir / sc.TEST_SCORECARD, test)
  _write_events(spec.workdir, card)
  return card['status'], f'finished: {card["status"]}', card


def _write_events(workdir: Path, card: dict[str, Any]) -> None:
  """The trusted numbers in TensorBoard, beside the trial's own events in `output/`."""
  from harness.tb_writer import MetricsWriter  # tensorboardX: only once there is a result
  writer = MetricsWriter(workdir)
  try:
    name = card['metric']['name']
    for point in card['curve']:
      writer.scalars(point['step'], {'val/loss': sum(point['val_loss']) / len(point['val_loss']),
                                     f'val/{name}': sum(point['val_metric']) /
                                     len(point['val_metric'])})
    writer.hparams(card['config'] if isinstance(card['config'], dict) else {},
                   {'hparams/val_metric': card['val_metric']['mean'],
                    'hparams/val_loss': card['val_loss']['mean'],
                    'hparams/wall_seconds': card['trusted']['wall_seconds']})
  finally:
    writer.close()


def run_trial(spec: TrialSpec, scorer: scoring.Scorer, on_curve: OnCurve | None = None,
              poll_s: float = 0.5) -> TrialOutcome:
  """Runs the trial to its end, its timeout, or until on_curve returns a reason to prune,
  then scores what it wrote with `scorer` (which holds the labels; the trial never does).

  on_curve gets the trusted curve so far each time new points arrive; a non-empty string it
  returns stops the trial as 'pruned'. Exceptions in the parent (Ctrl-C, a failing on_curve)
  kill the trial's process group and propagate.
  """
  if poll_s <= 0:
    raise ValueError('poll_s must be positive')
  if spec.inputs is None:
    raise ValueError('a trial needs its inputs folder (harness.trial_inputs)')
  _prepare_workdir(spec)
  log_path = spec.workdir / LOG
  log = _CappedLog(log_path, spec.max_output_bytes)
  curves = ScoredCurve(scorer, spec.output)
  start = time.monotonic()
  try:
    proc, iso = _start(_bounded(spec.command(), spec.timeout_s), spec.worktree,
                       trial_env(spec), spec.sandbox, spec.mounts())
  except BaseException:
    log.close()
    raise
  reader = log.drain(proc.stdout)
  stopped: tuple[Status, str] | None = None
  finished = False
  try:
    usage = TreeUsage(proc.pid)
    stopped = _watch(proc, curves, usage, on_curve, start + spec.timeout_s, spec.timeout_s,
                     poll_s)
    finished = stopped is None
  finally:
    if finished:
      _signal_group(proc.pid, signal.SIGKILL)  # whatever the finished trial left behind
    else:
      _terminate_group(proc.pid)
    returncode = _reap(proc, iso)
    wall_seconds = time.monotonic() - start
    trusted = {**usage.totals(), 'wall_seconds': wall_seconds}
    reader.join(_READER_JOIN_S)
    log.close()
  judged_step = curves.points[-1]['step'] if curves.points else None  # what on_curve saw
  curves.poll()
  tail = log.tail()
  if stopped is not None:
    status, reason = stopped
    last_step = curves.points[-1]['step'] if curves.points else None
    if status == 'pruned':
      last_step = judged_step  # points written while the group was being killed don't count
    if status == 'timeout':
      reason += f' at step {last_step}' if last_step is not None else ' before the first eval'
    return TrialOutcome(status, None, curves.points, wall_seconds, returncode, log_path, tail,
                        reason, last_step if status == 'pruned' else None, iso.description,
                        trusted)
  status, reason = _classify(spec, returncode, tail)
  card = None
  if status == 'ok':
    status, reason, card = _score(spec, scorer, trusted)
  return TrialOutcome(status, card, card['curve'] if card else curves.points, wall_seconds,
                      returncode, log_path, tail, reason, sandbox=iso.description,
                      trusted=trusted)
