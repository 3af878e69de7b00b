"""Trials as Ray tasks: the executor beyond one machine (`agent.main run --executor=ray`).

The head (the agent's process, Ray's driver) ships a trial what it needs and nothing more:
its code, the worktree's commit as a `git archive` tar (no shared file system), and its inputs
folder (the training split and the inputs to predict; the labels stay in the head's Scorer).
A Ray task, placed on a node with the trial's bundle free (the charter's [trial] cpus, gpus,
tpus, memory_mb), unpacks both into a private temporary folder and runs the trial there
exactly as a local one runs (`executor.execute`: the sandbox, the scrubbed environment, the
limits, the capped log, the usage measured from outside), then returns how it ended and the
trial's folder: its log and `output/` (predictions, report, progress, TensorBoard events;
checkpoints stay on the node, the agent never reads them). The head unpacks that into the
trial's workdir and scores it with the local trial's own code (`executor.judge`), so a
verdict's inputs are computed on the head alone, which alone holds the labels.

Who runs what: the Ray worker process is the agent's trusted code; the candidate runs in
its sandboxed child, which dies with the worker (bubblewrap's --die-with-parent).

A worker that dies mid-trial (killed, out of memory, its node gone): the head runs the
trial once more on a fresh worker (Ray's own retries are off, so that the head knows) and
says so in the outcome's reason; a second death is the trial's outcome, 'failed', with the
reason. Nothing of a dead attempt reaches the head's run directory, and the loop records
only the one outcome it gets: a trial is never lost nor counted twice.

What differs from a local trial: no early pruning (the curve is scored on the head once the
trial returns, so a loser runs to its end) and no compilation cache on the workers.

`submit` and `wait` are the two halves of `run_trial`, for a loop that keeps several trials
in flight (`ray.wait` over the submitted trials' `ref`s).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import ray
import ray.exceptions

from agent import charter
from agent.judging import rungs
from agent.recording import vcs
from agent.safety import confine, executor
from agent.safety.executor import Ended, ScoredCurve, TrialOutcome, TrialSpec
from harness import scoring

RETRIES = 1  # a trial whose worker died runs once more, then fails
MAX_RETURN_BYTES = 1 << 30  # a trial's folder over this stays on its node; the trial fails
KEPT_ON_NODE = ('checkpoints',)  # folders of a trial's output that are not returned
# How Ray says the process running a task is gone (not an exception of the task's own code).
_DIED = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
         ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError)
_CACHED = 8  # code archives kept in the object store (the incumbent's and recent candidates')
# The spec's fields a worker needs; the paths are the node's own.
_NODE_PATHS = ('worktree', 'workdir', 'inputs', 'compile_cache')


@dataclasses.dataclass(frozen=True)
class Bundle:
  """What one trial asks of a node: the charter's [trial] cpus, gpus, tpus and memory_mb."""
  cpus: float
  gpus: float
  tpus: float
  memory_mb: int

  @classmethod
  def of(cls, trial: charter.Trial) -> Bundle:
    return cls(trial.cpus, trial.gpus, trial.tpus, trial.memory_mb)

  def options(self) -> dict[str, Any]:
    """Ray's task options for it."""
    return {'num_cpus': self.cpus, 'num_gpus': self.gpus, 'memory': self.memory_mb << 20,
            'resources': {'TPU': self.tpus} if self.tpus else {}}

  def fits(self, offered: Mapping[str, float]) -> bool:
    """True when a node offering these resources (Ray's names) can run the trial."""
    return self.times(offered) >= 1

  def times(self, offered: Mapping[str, float]) -> int:
    """How many such trials a node offering these resources runs at once."""
    wanted = {'CPU': self.cpus, 'GPU': self.gpus, 'TPU': self.tpus,
              'memory': float(self.memory_mb << 20)}
    counts = [math.floor(offered.get(name, 0.0) / amount + 1e-9)
              for name, amount in wanted.items() if amount]
    return min(counts) if counts else 1

  def __str__(self) -> str:
    return (f'cpus={self.cpus:g}, gpus={self.gpus:g}, tpus={self.tpus:g}, '
            f'memory_mb={self.memory_mb}')


@dataclasses.dataclass
class Submitted:
  """A trial in flight: its spec, its task, and why earlier attempts ended (dead workers)."""
  spec: TrialSpec
  ref: ray.ObjectRef
  started: float
  deaths: list[str] = dataclasses.field(default_factory=list)


class RayExecutor:
  """`run_trial` / `run_batch` on a Ray cluster: the Loop's `execute` and `execute_batch`.

  Connects to the cluster at `address`, or starts a local one (`num_cpus`: its CPUs, by
  default the machine's) when there is none; refuses a charter whose bundle no node offers.
  """

  def __init__(self, trial: charter.Trial, address: str | None = None, *,
               num_cpus: int | None = None, poll_s: float = 0.5):
    self.poll_s = poll_s
    self._owns_ray = not ray.is_initialized()
    if self._owns_ray:
      ray.init(address=address, num_cpus=None if address else num_cpus,
               include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
               configure_logging=False, runtime_env=_runtime_env() if address else None)
    self._task = ray.remote(max_retries=0)(_trial_task)  # retries are the head's (`wait`)
    self._code: dict[str, ray.ObjectRef] = {}  # commit -> its archive
    self._inputs: dict[tuple, ray.ObjectRef] = {}  # the folder's listing -> its archive
    self.bundle = Bundle.of(trial)
    self.check(self.bundle)

  def capacity(self) -> int:
    """Trials the cluster's live nodes run at once (the default --workers under Ray)."""
    return sum(self.bundle.times(node['Resources']) for node in ray.nodes() if node['Alive'])

  def check(self, bundle: Bundle) -> None:
    """Raises ValueError when no live node of the cluster offers the bundle."""
    offered = [node['Resources'] for node in ray.nodes() if node['Alive']]
    if not any(bundle.fits(resources) for resources in offered):
      nodes = '; '.join(', '.join(f'{k}={v:g}' for k, v in sorted(r.items())
                                  if k in ('CPU', 'GPU', 'TPU', 'memory')) for r in offered)
      raise ValueError(f'no node of the Ray cluster offers a trial\'s [trial] bundle '
                       f'({bundle}); its nodes offer: {nodes or "none"}')

  def close(self) -> None:
    """Ends the local cluster this executor started (not one it connected to)."""
    self._code.clear()
    self._inputs.clear()
    if self._owns_ray:
      ray.shutdown()

  # ---- the two halves ---------------------------------------------------------------------
  def submit(self, spec: TrialSpec) -> Submitted:
    """Starts the trial on the cluster; the caller's mistakes raise here, as locally."""
    if spec.inputs is None:
      raise ValueError('a trial needs its inputs folder (harness.trial_inputs)')
    executor.prepare_workdir(spec)
    return Submitted(spec, self._start(spec), time.monotonic())

  def wait(self, submitted: Submitted) -> Ended:
    """Blocks until the trial has ended and its folder is in its workdir; a dead worker's
    trial runs once more. An exception here (Ctrl-C) cancels the task, which stops the
    trial's sandbox on its node, and propagates."""
    while True:
      try:
        ended, folder = ray.get(submitted.ref)
        break
      except _DIED as e:
        submitted.deaths.append(confine.one_line(f'{type(e).__name__}: {e}'))
        if len(submitted.deaths) > RETRIES:
          return self._died(submitted)
        submitted.ref = self._start(submitted.spec)
      except BaseException:
        ray.cancel(submitted.ref)
        raise
    if isinstance(folder, str):  # too large to return: its log tail only
      (submitted.spec.workdir / executor.LOG).write_text(ended.tail)
      return dataclasses.replace(ended, stopped=('failed', folder))
    _unpack(folder, submitted.spec.workdir)
    return ended

  # ---- the Loop's executor ----------------------------------------------------------------
  def run_trial(self, spec: TrialSpec, scorer: scoring.Scorer, on_curve: Any = None,
                poll_s: float = 0.5) -> TrialOutcome:
    """`executor.run_trial` on the cluster; `on_curve` is not called (no early pruning)."""
    del on_curve, poll_s  # the worker polls at self.poll_s; the curve is scored at the end
    if spec.members:
      raise ValueError('a trial of several members runs with run_batch')
    submitted = self.submit(spec)
    ended = self.wait(submitted)
    curves = ScoredCurve(scorer, spec.output)
    curves.poll()
    return _noted(executor.judge(spec, scorer, curves, ended), submitted)

  def run_batch(self, spec: TrialSpec, scorer: scoring.Scorer, poll_s: float = 0.5,
                rule: rungs.Rule | None = None) -> list[TrialOutcome]:
    """`executor.run_batch` on the cluster: one outcome per member, in order. The head
    cannot answer a node's trial at its rungs, so every member trains to the end there and
    the rungs are decided afterwards from the same predictions (the verdicts are the same,
    the compute is not saved)."""
    del poll_s
    if not spec.members:
      raise ValueError('run_batch needs members')
    submitted = self.submit(dataclasses.replace(spec, rungs=()))
    ended = self.wait(submitted)
    return [_noted(o, submitted) for o in executor.judge_batch(spec, scorer, ended, rule)]

  # ---- shipping ---------------------------------------------------------------------------
  def _start(self, spec: TrialSpec) -> ray.ObjectRef:
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)
              if f.name not in _NODE_PATHS}
    task = self._task.options(**Bundle.of(spec.limits).options())
    return task.remote(self._code_ref(spec.worktree), self._inputs_ref(spec.inputs), fields,
                       self.poll_s)

  def _code_ref(self, worktree: Path) -> ray.ObjectRef:
    commit, archive = code_archive(worktree)
    if commit not in self._code:
      while len(self._code) >= _CACHED:
        self._code.pop(next(iter(self._code)))
      self._code[commit] = ray.put(archive)
    return self._code[commit]

  def _inputs_ref(self, folder: Path) -> ray.ObjectRef:
    key = (str(folder), *((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                          for p in sorted(folder.rglob('*')) if p.is_file()))
    if key not in self._inputs:
      self._inputs = {k: v for k, v in self._inputs.items() if k[0] != key[0]}
      self._inputs[key] = ray.put(_pack(folder, limit=None))
    return self._inputs[key]

  def _died(self, submitted: Submitted) -> Ended:
    """The outcome of a trial whose workers died each time: 'failed', and a log that says so."""
    reason = (f'the Ray worker running the trial died {len(submitted.deaths)} times; last: '
              f'{submitted.deaths[-1]}')
    (submitted.spec.workdir / executor.LOG).write_text(reason + '\n')
    wall = time.monotonic() - submitted.started
    return Ended(('failed', confine.one_line(reason)), None, wall,
                 {'wall_seconds': wall}, reason, '', None)


def code_archive(worktree: Path) -> tuple[str, bytes]:
  """The commit checked out at worktree and its files (`git archive`): what a node runs. A
  worktree with uncommitted changes to tracked files is refused: they would not be shipped."""
  code = vcs.provenance(worktree)
  if code['commit'] is None:
    raise ValueError(f'{worktree} is not a git worktree: a Ray trial ships a commit')
  if code['dirty']:
    raise ValueError(f'{worktree} has uncommitted changes: a Ray trial ships its commit only')
  result = subprocess.run(['git', '--no-pager', 'archive', '--format=tar', str(code['commit'])],
                          cwd=worktree, env=vcs.git_environment(worktree), capture_output=True)
  if result.returncode:
    raise vcs.VcsError(f'git archive failed in {worktree}: '
                       f'{result.stderr.decode(errors="replace")}')
  return str(code['commit']), result.stdout


def _runtime_env() -> dict[str, Any]:
  """What a remote cluster's workers need of this checkout: the agent's and the harness's
  code (the trial's own code comes with each trial)."""
  import agent
  import harness
  return {'py_modules': [str(Path(m.__file__).parent) for m in (agent, harness)]}


def _noted(outcome: TrialOutcome, submitted: Submitted) -> TrialOutcome:
  """The outcome, its reason saying that a worker died under an earlier attempt."""
  if not submitted.deaths or outcome.reason.startswith('the Ray worker'):
    return outcome
  return dataclasses.replace(outcome, reason=f'{outcome.reason} (run again after its Ray '
                                             f'worker died: {submitted.deaths[0]})')


# ---- on the node ------------------------------------------------------------------------------

class _Unscored(ScoredCurve):
  """A worker's stand-in for the curve: the node holds no labels, the head scores."""

  def __init__(self) -> None:
    super().__init__(None, Path())  # type: ignore[arg-type]

  def poll(self) -> bool:
    return False


def _trial_task(code: bytes, inputs: bytes, fields: dict[str, Any],
                poll_s: float) -> tuple[Ended, bytes | str]:
  """The Ray task: the trial in a private folder of the node, as locally; returns how it
  ended and its folder (or why the folder stays here)."""
  # what the trial left that cannot be removed stays: never an error of the task
  with tempfile.TemporaryDirectory(prefix='agent-ray-trial-',
                                   ignore_cleanup_errors=True) as folder:
    root = Path(folder)
    _unpack(code, root / 'worktree')
    _unpack(inputs, root / 'inputs')
    spec = TrialSpec(worktree=root / 'worktree', workdir=root / 'trial', inputs=root / 'inputs',
                     **fields)
    ended = executor.execute(spec, _Unscored(), None, poll_s)
    return ended, _pack(spec.workdir, limit=MAX_RETURN_BYTES, skip=(executor.OUTPUT,))


def _pack(folder: Path, limit: int | None, skip: tuple[str, ...] = ()) -> bytes | str:
  """The regular files and folders under `folder` as a tar (never a link, a FIFO or a device:
  a trial may have left them; nor what cannot be read); folders named KEPT_ON_NODE inside
  `skip` (e.g. output/) are left out. Over `limit` bytes: a one-line reason instead."""
  kept = {folder / s / k for s in skip for k in KEPT_ON_NODE}
  files: list[Path] = []
  for top, dirs, names in os.walk(folder):
    here = Path(top)
    dirs[:] = [d for d in dirs if here / d not in kept and (here / d).is_dir()
               and not (here / d).is_symlink()]
    files += [here / n for n in names if (here / n).is_file() and not (here / n).is_symlink()]
  size = sum(f.stat().st_size for f in files)
  if limit is not None and size > limit:
    return f'its output ({size >> 20} MB) is over the {limit >> 20} MB a Ray trial may return'
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w') as archive:
    for path in files:
      try:
        # no link followed, no FIFO waited on: only what is a regular file when opened
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW), 'rb') as data:
          info = archive.gettarinfo(fileobj=data, arcname=str(path.relative_to(folder)))
          if info.isfile():
            archive.addfile(info, data)
      except OSError:
        continue
  return buffer.getvalue()


def _unpack(data: bytes, dest: Path) -> None:
  """Extracts regular files and folders only, never outside dest (tarfile's data filter);
  anything else is skipped."""
  def regular(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    if not (member.isfile() or member.isdir()):
      return None
    try:
      return tarfile.data_filter(member, path)
    except tarfile.FilterError:
      return None

  dest.mkdir(parents=True, exist_ok=True)
  with tarfile.open(fileobj=io.BytesIO(data)) as archive:
    archive.extractall(dest, filter=regular)
