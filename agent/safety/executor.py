"""Runs one trial (`python -m harness.main ...`) as a sandboxed, bounded subprocess.

Why a subprocess and not a call: the trial runs code the agent wrote. In its own process
group it can be stopped as a whole (timeout, pruning, Ctrl-C in the parent) with nothing left
behind; with a scrubbed environment it never sees the parent's API keys or proxies; with
rlimits a runaway trial fails alone instead of taking the machine down; with a capped log a
print loop cannot fill the disk (all of it `agent.safety.confine`). A trial's own failure is
an outcome, never an exception: `run_trial` raises only for the caller's mistakes.

Judged from outside: the trial writes predictions and a self-report into its `output/`
folder, the only place it may write; this process (which never imports candidate code)
scores them with `harness.scoring`, measures the trial's wall time, CPU time and peak RSS
itself (`agent.safety.monitor.TreeUsage`), and writes the scorecard beside `output/`, never
inside it.

Filesystem: everything runs inside bubblewrap (`agent.safety.sandbox`): the worktree and inputs
read-only, `output/` writable, a private /tmp, nothing else of the machine's files but the
system and the Python installation, the data's sources hidden. Where bwrap cannot run and
the charter allows it (`filesystem_sandbox = "best_effort"`), namespaces are all there is,
and each outcome's `sandbox` says so.

Compilation cache: given the workspace's cache folder (`compile_cache`), a trial gets JAX's
persistent compilation cache in one sub-folder of it, its own code's (`code_cache`), mounted
writable; it cannot see any other sub-folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from agent import charter
from agent.recording import vcs
from agent.judging import rungs as rungs_lib
from agent.safety import confine, installed, monitor, rung_judge
from agent.safety import sandbox as fs_sandbox
from harness import scorecard as sc
from harness import scoring
from harness.datasets import source_paths
from harness.scorecard import CURVES, SCORECARD

Status = Literal['ok', 'diverged', 'failed', 'bad_input', 'timeout', 'pruned', 'killed',
                 'invalid', 'budget']  # budget: a timeout the run's budget set (its edge)
OnCurve = Callable[[list[dict[str, Any]]], str | None]

LOG = 'trial.log'
OUTPUT = 'output'  # the trial's own folder inside its workdir: the only place it may write
NO_LIMITS = charter.Trial(memory_mb=0)  # the charter's [trial] bounds with every cap off
_MEMORY_SIGNS = re.compile(r"MemoryError|bad_alloc|Cannot allocate memory|Unable to allocate|"
                           r"can't start new thread|RESOURCE_EXHAUSTED|[Oo]ut of memory")
_MEMORY_SIGNALS = (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS)


@dataclasses.dataclass(frozen=True)
class TrialSpec:
  """What to run, and within the charter's [trial] bounds (`limits`, 0 = no cap); the
  timeout is the caller's (the charter's cut to what the budget has left)."""
  worktree: Path
  experiment: str  # config file, relative to the worktree
  workdir: Path  # outside the worktree; must be absent or empty
  seeds: int
  first_seed: int
  timeout_s: float
  eval_test: bool = False
  overrides: tuple[str, ...] = ()  # '--config.a.b=v'
  limits: charter.Trial = NO_LIMITS
  max_output_bytes: int = 1_000_000
  inputs: Path | None = None  # the trial's data (harness.trial_inputs), mounted read-only
  compile_cache: Path | None = None  # the workspace's JAX compilation cache (`code_cache`)
  # candidates trained together (harness.main --members): each one's traced values
  members: tuple[Mapping[str, float], ...] = ()
  rungs: tuple[int, ...] = ()  # a batch's rung steps, where the judge may stop members

  def __post_init__(self) -> None:
    worktree, workdir = Path(self.worktree).absolute(), Path(self.workdir).absolute()
    object.__setattr__(self, 'worktree', worktree)
    object.__setattr__(self, 'workdir', workdir)
    object.__setattr__(self, 'overrides', tuple(self.overrides))
    for name in ('inputs', 'compile_cache'):
      if getattr(self, name) is not None:
        object.__setattr__(self, name, Path(getattr(self, name)).absolute())
    if Path(self.experiment).is_absolute():
      raise ValueError(f'experiment must be relative to the worktree: {self.experiment}')
    if workdir.resolve().is_relative_to(worktree.resolve()):
      raise ValueError(f'workdir {workdir} lies inside the worktree {worktree}')
    if self.compile_cache and self.compile_cache.resolve().is_relative_to(worktree.resolve()):
      raise ValueError(f'compile_cache {self.compile_cache} lies inside the worktree {worktree}')
    if self.seeds < 1 or self.timeout_s <= 0 or self.max_output_bytes < 1:
      raise ValueError('seeds, timeout_s and max_output_bytes must be positive')
    if min(self.limits.memory_mb, self.limits.cpu_minutes, self.limits.max_processes) < 0:
      raise ValueError('memory_mb, cpu_minutes and max_processes must be >= 0')
    bad = [o for o in self.overrides if not o.startswith('--config.')]
    if bad:
      raise ValueError(f'overrides must look like --config.a.b=v: {bad}')
    object.__setattr__(self, 'members', tuple(dict(m) for m in self.members))
    object.__setattr__(self, 'rungs', tuple(int(s) for s in self.rungs))
    if self.rungs and len(self.members) < 2:
      raise ValueError('rungs rank the members of a batch: they need at least two')
    if not all(isinstance(k, str) and isinstance(v, float) for m in self.members
               for k, v in m.items()):
      raise ValueError(f'members map config keys to floats: {self.members}')

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
            *(['--eval_test'] if self.eval_test else []),
            *([f'--members={json.dumps(self.members)}'] if self.members else []),
            *([f'--rungs={",".join(map(str, self.rungs))}', f'--rung_dir={self.answers}']
              if self.rungs else [])]

  @property
  def answers(self) -> Path:
    """Where the judge answers at the rungs (rung_judge): beside output/, read-only inside."""
    return self.workdir / rung_judge.RUNGS

  def member(self, index: int) -> tuple[Path, Path]:
    """A member's (output folder, trusted folder): where the trial writes its predictions,
    and where its scorecard goes (`workdir/member-<i>`, beside `output/`, never inside)."""
    name = f'member-{index}'
    return self.output / name, self.workdir / name

  def mounts(self, cache: Path | None = None) -> fs_sandbox.Mounts:
    """What the trial sees: its code read-only, its inputs read-only, its output (and its
    code's compilation cache folder, `code_cache`) writable."""
    read_only = (self.worktree, *([self.inputs] if self.inputs else []),
                 *([self.answers] if self.rungs else []), *installed.read_only())
    writable = (self.output, *([cache] if cache else []))
    return fs_sandbox.Mounts(read_only, writable, source_paths(), chdir=self.worktree)


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
  rungs: tuple[rungs_lib.Rung, ...] = ()  # a batch's rungs, the same on every member's


def trial_env(spec: TrialSpec, parent: Mapping[str, str] = os.environ,
              cache: Path | None = None) -> dict[str, str]:
  """The trial's whole environment: an allow-list, never the parent's environment minus a few;
  with `cache`, JAX's persistent compilation cache there, for every program (JAX's default
  keeps only those that took over a second to compile). `harness` is the installed one
  unless the worktree carries its own (agent.safety.installed)."""
  env = confine.env_for(spec.worktree, parent)
  env['PYTHONPATH'] = installed.pythonpath(spec.worktree)
  if cache is not None:
    env |= {'JAX_COMPILATION_CACHE_DIR': str(cache),
            'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  return env


def code_cache(spec: TrialSpec) -> Path | None:
  """The trial's own folder in the workspace's compilation cache, or None for no cache.

  A cache entry is a compiled program that JAX loads and runs, and the trial may write any
  bytes into the folder it is given; so a folder belongs to one code, the git tree of a
  worktree that holds exactly that tree, and a trial sees only its own code's. A later trial
  of the same code reads what it could have written itself; no trial of other code (the
  incumbent's confirmation included) and not the agent ever reads it. No cache without the
  filesystem sandbox, which alone hides the other folders, nor for a worktree with changes
  or untracked files (no tree names its code).
  """
  if spec.compile_cache is None or fs_sandbox.available() is not None:
    return None
  tree = vcs.clean_tree(spec.worktree)
  if tree is None:
    return None
  folder = spec.compile_cache / tree
  folder.mkdir(parents=True, exist_ok=True)
  return folder


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


def _watch(proc: subprocess.Popen, curves: ScoredCurve, usage: monitor.TreeUsage,
           on_curve: OnCurve | None, deadline: float, timeout_s: float,
           poll_s: float) -> tuple[Status, str] | None:
  """Polls until the trial exits (None) or must be stopped ((status, reason))."""
  while not confine.exited(proc.pid):
    usage.sample()
    if curves.poll() and on_curve is not None:
      verdict = on_curve(list(curves.points))
      if verdict:
        return 'pruned', confine.one_line(verdict)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      return 'timeout', f'timed out after {timeout_s:g} s'
    confine.sleep_until_exit(proc.pid, min(poll_s, remaining))
  return None


def prepare_workdir(spec: TrialSpec) -> None:
  spec.workdir.mkdir(parents=True, exist_ok=True)
  if any(spec.workdir.iterdir()):
    raise ValueError(f'workdir {spec.workdir} is not empty: each trial needs a fresh one')
  spec.output.mkdir()
  if spec.rungs:
    spec.answers.mkdir()


def _classify(spec: TrialSpec, returncode: int, tail: str) -> tuple[Status, str]:
  """Status and a one-line reason for a trial that ended by itself; 'ok' means only that it
  exited 0: what it produced is judged by `_score`."""
  errors = [line for line in tail.splitlines() if line.startswith('error: ')]
  memory_line = next((line for line in reversed(tail.splitlines())
                      if _MEMORY_SIGNS.search(line)), '')
  memory_mb, cpu_seconds = spec.limits.memory_mb, confine.cpu_seconds(spec.limits)
  if returncode < 0:
    sig = -returncode
    name = confine.signal_name(sig)
    if sig == signal.SIGXCPU and cpu_seconds:
      return 'killed', f'cpu time limit: {cpu_seconds} s of CPU used (SIGXCPU)'
    if memory_mb and (sig in _MEMORY_SIGNALS or memory_line):
      return 'killed', confine.one_line(f'memory limit: died by {name} under {memory_mb} MB '
                                        f'of RLIMIT_DATA {memory_line}')
    if sig == signal.SIGKILL:
      return 'killed', 'killed by SIGKILL from outside the executor (the kernel OOM killer?)'
    return 'killed', confine.one_line(f'died by {name}: {confine.last_line(tail)}')
  if memory_mb and returncode != 0 and memory_line:
    return 'killed', confine.one_line(f'memory limit: {memory_mb} MB of RLIMIT_DATA exceeded: '
                                      f'{memory_line}')
  if returncode == 0:
    return 'ok', 'finished'
  if returncode == 2:
    # harness.main reports bad input as one 'error: ...' line on stderr, then exits 2.
    return 'bad_input', confine.one_line(errors[-1] if errors else
                                         confine.last_line(tail) or 'exit code 2')
  reason = (errors[-1] if errors else '') or confine.last_line(tail) or 'no output'
  return 'failed', confine.one_line(reason if returncode == 1 else
                                    f'exit code {returncode}: {reason}')


def _score(spec: TrialSpec, scorer: scoring.Scorer, trusted: dict[str, float],
           output: Path | None = None, folder: Path | None = None,
           batch: dict[str, Any] | None = None) -> tuple[Status, str, dict[str, Any] | None]:
  """The trusted side's verdict on what a finished trial wrote into `output` (the trial's
  folder, or a member's in it): the scorecard (with its curve, and the test scorecard when
  test inputs were given), written into `folder` beside the trial's, never inside it."""
  output, folder = output or spec.output, folder or spec.workdir
  seeds = list(range(spec.first_seed, spec.first_seed + spec.seeds))
  try:
    card = scoring.scorecard(scorer, output, seeds=seeds, trusted=trusted,
                             code=vcs.provenance(spec.worktree))
    test = (scoring.test_scorecard(scorer, output, card)
            if 'test' in scorer.targets.labels and card['status'] == 'ok' else None)
  except scoring.ScoringError as e:
    return ('invalid' if 'invariant' in str(e) else 'failed'), confine.one_line(str(e)), None
  if batch is not None:
    card['batch'] = batch
  folder.mkdir(exist_ok=True)
  sc.write_json(folder / SCORECARD, card)
  (folder / CURVES).unlink(missing_ok=True)  # written fresh, never onto a planted file
  for point in card['curve']:
    sc.append_jsonl(folder / CURVES, point)
  if test is not None:
    sc.write_json(folder / sc.TEST_SCORECARD, test)
  _write_events(folder, card)
  return card['status'], f'finished: {card["status"]}', card


def _write_events(workdir: Path, card: dict[str, Any]) -> None:
  """The trusted numbers in TensorBoard, beside the trial's own events in `output/`."""
  from agent.recording import tb_view  # tensorboardX: only once there is a result
  tb_view.trial_events(workdir, card)


@dataclasses.dataclass(frozen=True)
class Ended:
  """How the trial's process ended, as the parent saw it: what `execute` hands to `judge`
  (a Ray worker runs the one and returns this to the head, which does the other)."""
  stopped: tuple[Status, str] | None  # why the parent stopped it; None: it exited by itself
  returncode: int | None
  wall_seconds: float
  trusted: dict[str, float]
  tail: str
  sandbox: str
  judged_step: int | None  # the last step on_curve saw


def execute(spec: TrialSpec, curves: ScoredCurve, on_curve: OnCurve | None,
            poll_s: float) -> Ended:
  """The running half of a trial: starts it in its sandbox and waits for its end, its timeout
  or a prune; `judge` is the scoring half."""
  if poll_s <= 0:
    raise ValueError('poll_s must be positive')
  if spec.inputs is None:
    raise ValueError('a trial needs its inputs folder (harness.trial_inputs)')
  prepare_workdir(spec)
  log = monitor.CappedLog(spec.workdir / LOG, spec.max_output_bytes)
  start = time.monotonic()
  try:
    cache = code_cache(spec)
    proc, iso = confine.start(confine.bounded(spec.command(), spec.timeout_s), spec.worktree,
                              trial_env(spec, cache=cache), spec.limits, spec.mounts(cache))
  except BaseException:
    log.close()
    raise
  reader = log.drain(proc.stdout)
  stopped: tuple[Status, str] | None = None
  finished = False
  try:
    usage = monitor.TreeUsage(proc.pid)
    stopped = _watch(proc, curves, usage, on_curve, start + spec.timeout_s, spec.timeout_s,
                     poll_s)
    finished = stopped is None
  finally:
    if finished:
      confine.signal_group(proc.pid, signal.SIGKILL)  # whatever the finished trial left behind
    else:
      confine.terminate_group(proc.pid)
    returncode = confine.reap(proc, iso)
    wall_seconds = time.monotonic() - start
    trusted = {**usage.totals(), 'wall_seconds': wall_seconds}
    reader.join(monitor.READER_JOIN_S)
    log.close()
  judged_step = curves.points[-1]['step'] if curves.points else None  # what on_curve saw
  curves.poll()
  return Ended(stopped, returncode, wall_seconds, trusted, log.tail(), iso.description,
                judged_step)


def run_trial(spec: TrialSpec, scorer: scoring.Scorer, on_curve: OnCurve | None = None,
              poll_s: float = 0.5) -> TrialOutcome:
  """Runs the trial to its end, its timeout, or until on_curve returns a reason to prune,
  then scores what it wrote with `scorer` (which holds the labels; the trial never does).

  on_curve gets the trusted curve so far each time new points arrive; a non-empty string it
  returns stops the trial as 'pruned'. Exceptions in the parent (Ctrl-C, a failing on_curve)
  kill the trial's process group and propagate.
  """
  if spec.members:
    raise ValueError('a trial of several members runs with run_batch')
  curves = ScoredCurve(scorer, spec.output)
  return judge(spec, scorer, curves, execute(spec, curves, on_curve, poll_s))


def judge(spec: TrialSpec, scorer: scoring.Scorer, curves: ScoredCurve,
          ended: Ended) -> TrialOutcome:
  """The scoring half of a trial, on the trusted side: its outcome from how it ended and what
  it wrote into `spec.output` (`curves` polled up to its end)."""
  log_path = spec.workdir / LOG
  if ended.stopped is not None:
    status, reason = ended.stopped
    last_step = curves.points[-1]['step'] if curves.points else None
    if status == 'pruned':
      last_step = ended.judged_step  # points written while the group was being killed don't count
    if status == 'timeout':
      reason += f' at step {last_step}' if last_step is not None else ' before the first eval'
    return TrialOutcome(status, None, curves.points, ended.wall_seconds, ended.returncode,
                        log_path, ended.tail, reason,
                        last_step if status == 'pruned' else None, sandbox=ended.sandbox,
                        trusted=ended.trusted)
  status, reason = _classify(spec, ended.returncode, ended.tail)
  card = None
  if status == 'ok':
    status, reason, card = _score(spec, scorer, ended.trusted)
  return TrialOutcome(status, card, card['curve'] if card else curves.points, ended.wall_seconds,
                      ended.returncode, log_path, ended.tail, reason, sandbox=ended.sandbox,
                      trusted=ended.trusted)


def run_batch(spec: TrialSpec, scorer: scoring.Scorer, poll_s: float = 0.5,
              rule: rungs_lib.Rule | None = None) -> list[TrialOutcome]:
  """Runs a trial of several members (`spec.members`) and scores each member's outputs as a
  trial of its own: one outcome per member, in order. The process's end (a timeout, a crash)
  is every member's; a finished process's members are judged one by one. Each member's
  scorecard says it trained in a batch (`batch`: size, index, values), and its wall time is
  the whole process's. With a `rule` and `spec.rungs`, the rungs are judged as the batch runs
  and the members they stop stop training; `judge_batch` decides them again at the end."""
  if not spec.members:
    raise ValueError('run_batch needs members')
  curves = ScoredCurve(scorer, spec.member(0)[0])
  if rule is not None and spec.rungs:
    curves = rung_judge.RungWatch(curves, rule, spec.output, spec.answers,
                                  lambda m: spec.member(m)[0], scorer)
  return judge_batch(spec, scorer, execute(spec, curves, None, poll_s), rule)


def judge_batch(spec: TrialSpec, scorer: scoring.Scorer, ended: Ended,
                rule: rungs_lib.Rule | None = None) -> list[TrialOutcome]:
  """`judge` for a trial of several members: one outcome per member, in order. With a
  `rule`, a member a rung stopped is 'pruned' there (decided from its predictions on disk,
  whatever the trial did after), the incumbent trained alongside is 'pruned' after the last
  rung, and every outcome carries the rungs."""
  log_path = spec.workdir / LOG
  if ended.stopped is not None:
    status, reason = ended.stopped
  else:
    status, reason = _classify(spec, ended.returncode, ended.tail)
  decided = (rung_judge.decide_rungs(rule, lambda m: spec.member(m)[0], len(spec.members), scorer)
             if rule is not None and status == 'ok' else [])
  stops = {m: rung for rung in decided for m in rung.stopped}
  if decided:
    stops.setdefault(rule.incumbent, decided[-1])
  outcomes = []
  for index, values in enumerate(spec.members):
    card = None
    member_status, member_reason, at = status, reason, None
    if index in stops:
      at = stops[index].step
      member_status, member_reason = 'pruned', (
          stops[index].reason(index) if index != rule.incumbent else rule.incumbent_reason(at))
    elif ended.stopped is None and status == 'ok':
      output, folder = spec.member(index)
      batch = {'size': len(spec.members), 'member': index, 'values': values}
      member_status, member_reason, card = _score(spec, scorer, ended.trusted, output, folder,
                                                  batch)
    outcomes.append(TrialOutcome(member_status, card, card['curve'] if card else [],
                                 ended.wall_seconds, ended.returncode, log_path, ended.tail,
                                 member_reason, pruned_at_step=at, rungs=tuple(decided),
                                 sandbox=ended.sandbox, trusted=ended.trusted))
  return outcomes
