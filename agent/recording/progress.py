"""Where a running run is, in one line: trial i/N, the phase, budgets spent, the
incumbent's metric and an ETA; read by watching files, never by hooking the loop.

What it reads: the journal (records appended as the run goes), through a read-only
connection, so it can never write one; `RunState.replay` of it for budgets and the
incumbent (the numbers `status` prints); the heartbeat; and the newest trial folder's
`output/progress.jsonl` (the trial's own steps done: untrusted, shown only, never judged).

The stage (baseline, proposing, checking, screen, confirm, elsewhere, transfer, deciding,
final) follows from the journal's records in order, so a watcher that polls rarely still
passes through each one; within a run of a trial the part (compile, step s/S, evaluation)
is read off its folder when polled, and so are the runs a record does not announce (more
seeds, elsewhere, the transfer check's: `transfer: <experiment>, <arm>`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import sqlite3
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, TextIO

from agent.editing import knobs
from agent.recording import records
from agent.recording.journal import Journal, Record
from agent.recording.state import HEARTBEAT_S, RunState, heartbeat_of
from agent.untrusted import one_line
from harness.scorecard import SCORECARD
from harness.scoring import PROGRESS, REPORT

OnTrialEnd = Callable[[Journal, Path], object]
OUTPUT = 'output'  # a run's own folder inside its workdir (the executor's name for it)
POLL_S = 0.5
_FRESH_S = 3 * HEARTBEAT_S  # a session silent for longer is not running


def open_read_only(path: Path) -> Journal:
  """The journal through a connection that cannot write (the watcher's guarantee); made in
  one thread, used by the watcher's, one at a time."""
  connection = sqlite3.connect(f'file:{path}?mode=ro', uri=True, isolation_level=None,
                               check_same_thread=False)
  return Journal(connection, path)


def _seconds(iso: str) -> float:
  return datetime.datetime.fromisoformat(iso).timestamp()


@dataclasses.dataclass(frozen=True)
class Stage:
  """Where the loop is, from the journal: the trial and what it is doing."""
  trial: int  # 0 before the first trial
  name: str  # baseline, proposing, checking, screen, confirm, elsewhere, deciding, final, ...
  folder: str = ''  # the workdir being run, relative to the run's folder ('' for none)


class Stages:
  """The stage after each record, walked in order: what a record says the loop does next."""

  def __init__(self, budget_trials: int):
    self.budget_trials = budget_trials
    self.stage = Stage(0, 'starting')
    self.baseline = False

  def see(self, record: Record) -> Stage:
    body, trial, before = record.body, record.trial, self.stage
    if isinstance(body, (records.RunStarted, records.SessionStarted)):
      self.stage = (Stage(before.trial, 'starting') if self.baseline else
                    Stage(0, 'baseline', 'baseline'))
    elif isinstance(body, records.Baseline):
      self.baseline, self.stage = True, self._next(1)
    elif isinstance(body, records.TRIAL_ENDS):
      self.stage = self._next(trial + 1)
    elif isinstance(body, records.Proposed):
      self.stage = Stage(trial, 'checking')
    elif isinstance(body, records.TrialStarted):
      self.stage = Stage(trial, 'screen', f'trials/{trial}/screen')
    elif isinstance(body, (records.TrialFinished, records.ConfirmFinished)):
      self.stage = Stage(trial, 'deciding')
    elif isinstance(body, records.FinalEval):
      self.stage = Stage(before.trial, 'finishing')
    elif isinstance(body, records.RunFinished):
      self.stage = Stage(before.trial, 'finished')
    elif isinstance(body, records.SessionEnded):
      self.stage = Stage(before.trial, 'stopped')
    elif isinstance(body, records.BaselineFailed):
      self.stage = Stage(0, 'baseline failed')
    return self.stage

  def _next(self, trial: int) -> Stage:
    if trial > self.budget_trials:
      return Stage(self.budget_trials, 'stopping')
    return Stage(trial, 'proposing')


def _newest(run_dir: Path, stage: Stage) -> Stage:
  """The stage refined by the folders a trial's later runs create before any record says
  so: the confirmation, runs elsewhere, the final evaluation."""
  if stage.name == 'deciding' and stage.trial:
    base = run_dir / 'trials' / str(stage.trial)
    since = _mtime(base / 'screen')  # the incumbent's looks are shared by every trial
    runs = [(f, 'candidate') for f in (base / 'confirm_candidate').glob('*')] + [
        (f, 'incumbent') for f in (run_dir / 'confirm_incumbent').glob('*/*')
        if _mtime(f) >= since]
    running = [(f, who) for f, who in runs if f.is_dir() and not (f / SCORECARD).exists()]
    if running:
      folder, who = max(running, key=lambda run: _mtime(run[0]))
      return Stage(stage.trial, f'more seeds, {who} from seed {folder.name}',
                   str(folder.relative_to(run_dir)))
    for folder in sorted((base / 'elsewhere').glob('*/*'), key=_mtime, reverse=True)[:1]:
      if not (folder / SCORECARD).exists():
        return Stage(stage.trial, f'elsewhere {folder.parent.name}',
                     str(folder.relative_to(run_dir)))
    running = _transfer_run(run_dir, base / 'transfer', ('incumbent', 'candidate'))
    if running:
      return Stage(stage.trial, f'transfer: {running.parent.name}, {running.name}',
                   str(running.relative_to(run_dir)))
  if stage.name in ('proposing', 'stopping'):
    running = _transfer_run(run_dir, run_dir / 'transfer_baseline', ('',))
    if running:  # the start commit on each transfer experiment, before the first trial
      return Stage(stage.trial, f'transfer baseline: {running.name}',
                   str(running.relative_to(run_dir)))
  if stage.name in ('proposing', 'stopping') and (run_dir / 'final').is_dir():
    for name in ('final', 'baseline'):
      folder = run_dir / 'final' / name
      if folder.is_dir() and not (folder / SCORECARD).exists():
        return Stage(stage.trial, f'final evaluation ({name})', f'final/{name}')
    running = _transfer_run(run_dir, run_dir / 'final' / 'transfer', ('baseline', 'final'))
    if running:
      return Stage(stage.trial, f'final evaluation ({running.name}), transfer: '
                   f'{running.parent.name}', str(running.relative_to(run_dir)))
  return stage


def _transfer_run(run_dir: Path, folder: Path, arms: tuple[str, ...]) -> Path | None:
  """The newest transfer run in flight under `folder` (agent.transfer's layout:
  `<experiment's stem>/<arm>`, or `<stem>` where `arms` is ('',)), if any."""
  runs = [f for arm in arms for f in folder.glob(f'*/{arm}'.rstrip('/'))
          if '.' not in f.name and f.is_dir() and not (f / SCORECARD).exists()]
  return max(runs, key=_mtime) if runs else None


def _mtime(path: Path) -> float:
  try:
    return path.stat().st_mtime
  except OSError:
    return 0.0


def _tail(path: Path, limit: int = 4096) -> str:
  """The last `limit` bytes of a file the trial wrote, read from this (unsandboxed) process:
  never through a link, never from a pipe or device (a link to /dev/zero would never end),
  never more than `limit` bytes whatever the file's size; '' when it is none of that."""
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
  except OSError:
    return ''
  try:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
      return ''
    os.lseek(fd, max(0, info.st_size - limit), os.SEEK_SET)
    return os.read(fd, limit).decode('utf-8', 'replace')
  finally:
    os.close(fd)


def _steps_done(output: Path) -> int | None:
  """The last step a run's own progress file reports (the slowest member of a batch);
  None before its first evaluation."""
  files = [output / PROGRESS, *sorted(output.glob(f'member-*/{PROGRESS}'))]
  done = []
  for path in files:
    for line in reversed(_tail(path).splitlines()):
      try:
        step = json.loads(line).get('step')
      except (ValueError, AttributeError):
        continue
      if isinstance(step, int) and not isinstance(step, bool):
        done.append(step)
        break
  return min(done) if done else None


def part(run_dir: Path, stage: Stage, total: int | None) -> tuple[str, str]:
  """What the stage's run is doing: (kind, words), kind one of compile, train, evaluation."""
  if not stage.folder:
    return '', ''
  workdir = run_dir / stage.folder
  output = workdir / OUTPUT
  if (output / REPORT).exists() or any(output.glob(f'member-*/{REPORT}')):
    return 'evaluation', 'evaluation'
  done = _steps_done(output)
  if done is None:
    return ('compile', 'compile') if workdir.exists() else ('', '')
  return 'train', f'step {done}/{total}' if total and done <= total else f'step {done}'


@dataclasses.dataclass(frozen=True)
class Progress:
  """One look at a run: everything the line shows."""
  run_id: str
  stage: Stage
  part: tuple[str, str]  # (kind, words) of the stage's run
  trials_done: int
  budget_trials: int
  elapsed_s: float
  budget_minutes: float
  compute_s: float
  budget_compute_s: float
  tokens: int
  budget_tokens: int
  metric: str
  incumbent: float | None
  remaining_s: float | None  # an upper estimate of the run's time left
  running: bool

  @property
  def key(self) -> tuple:
    """What changes the phase (a plain line is printed only when this changes)."""
    return (self.stage, self.part[0], self.running)

  def line(self) -> str:
    stage = self.stage
    trial = (f'trial {stage.trial}/{self.budget_trials}' if stage.trial else 'baseline'
             if stage.name == 'baseline' else f'trials {self.trials_done}/{self.budget_trials}')
    phase = stage.name if stage.name != 'baseline' else 'run'
    phase += f': {self.part[1]}' if self.part[1] else ''
    budget = [f'{_minutes(self.elapsed_s)}/{self.budget_minutes:g} min']
    if self.budget_compute_s:
      budget.append(f'compute {self.compute_s:.0f}/{self.budget_compute_s:.0f} s')
    else:
      budget.append(f'compute {self.compute_s:.0f} s')
    if self.tokens or self.budget_tokens:
      budget.append(f'tokens {self.tokens}/{self.budget_tokens or "unlimited"}')
    incumbent = 'n/a' if self.incumbent is None else f'{self.incumbent:.4f}'
    words = [f'[{one_line(self.run_id)}] {trial} {phase}', ', '.join(budget),
             f'incumbent {one_line(self.metric)} {incumbent}']
    if self.running and self.remaining_s is not None:
      end = datetime.datetime.now() + datetime.timedelta(seconds=self.remaining_s)
      words.append(f'ETA {end:%H:%M} (<= {_minutes(self.remaining_s)} min left)')
    elif not self.running:
      words.append('not running')
    return ' | '.join(words)


def _minutes(seconds: float) -> str:
  return f'{seconds / 60:.1f}'


class Watcher:
  """Follows one run's folder: `look()` reads what changed since the last look."""

  def __init__(self, run_dir: Path, journal_name: str):
    self.run_dir = run_dir
    self.journal = open_read_only(run_dir / journal_name)
    self.seq = 0
    self.walk: Stages | None = None
    self.state: RunState | None = None
    self.stages: list[Stage] = []  # every stage the records passed through since last look
    self._steps: dict[str, int | None] = {}

  def look(self, now: float | None = None, live: bool | None = None) -> Progress | None:
    """The run now (None before its first record); `live` forces the running flag (the
    agent's own watcher), else it comes from the heartbeat."""
    now = time.time() if now is None else now
    new = [r for r in self.journal.records() if r.seq > self.seq]
    if new or self.state is None:
      try:
        self.state = RunState.replay(self.journal)
      except ValueError:
        return None
      self.walk = self.walk or Stages(self.state.config.budget_trials)
      self.stages += [self.walk.see(record) for record in new]
      self.seq = new[-1].seq if new else self.seq
    state, walked = self.state, self.walk.stage
    stage = _newest(self.run_dir, walked)
    total = self._total(stage, state)
    config = state.config
    last = self._last_sign(now)
    running = (now - last < _FRESH_S) if live is None else live
    running = running and walked.name not in ('finished', 'stopped', 'baseline failed')
    elapsed = state.elapsed_before + (max(0.0, now - last) if running else 0.0)
    incumbent = None if state.incumbent is None else records.mean_of(
        list(state.incumbent.per_seed))
    return Progress(
        run_id=config.run_id, stage=stage, part=part(self.run_dir, stage, total),
        trials_done=state.trials_done, budget_trials=config.budget_trials, elapsed_s=elapsed,
        budget_minutes=config.budget_minutes, compute_s=state.compute_seconds,
        budget_compute_s=config.budget_compute_seconds, tokens=state.tokens,
        budget_tokens=config.budget_tokens, metric=self._metric(state),
        incumbent=incumbent if incumbent == incumbent else None,
        remaining_s=_remaining(state, elapsed, self._baseline_wall()), running=running)

  def _last_sign(self, now: float) -> float:
    """When the open session last showed life: its last record or its heartbeat."""
    head = self.journal.head()
    last = _seconds(head.ts) if head else 0.0
    beat = heartbeat_of(self.run_dir)
    if isinstance(beat.get('time'), str):
      try:
        last = max(last, _seconds(beat['time']))
      except ValueError:
        pass
    return min(last, now)

  def _metric(self, state: RunState) -> str:
    if state.incumbent is None:
      return 'metric'
    try:
      card = json.loads((Path(state.incumbent.workdir) / SCORECARD).read_text())
      return str(card['metric']['name'])
    except (OSError, ValueError, KeyError, TypeError):
      return 'metric'

  def _baseline_wall(self) -> float:
    baseline = self.journal.latest(records.Baseline)
    return baseline.wall_seconds if baseline else 0.0

  def _total(self, stage: Stage, state: RunState) -> int | None:
    """Steps the stage's run trains: the candidate's experiment says (read statically, as
    the loop does), else the incumbent's."""
    default = state.incumbent.steps if state.incumbent else None
    if 'transfer' in stage.name:  # another experiment's steps: not known from here
      return None
    if stage.name not in ('screen', 'baseline') and not stage.name.startswith('more seeds'):
      return default
    if stage.folder in self._steps:
      return self._steps[stage.folder]
    steps = default
    if 'incumbent' not in stage.folder:
      try:
        found = [k.value for k in knobs.inventory(self.run_dir / 'worktree' /
                                                  state.config.experiment)
                 if k.path == 'train.steps']
        steps = int(found[0]) if found else default
      except (OSError, ValueError, TypeError, knobs.KnobError):
        pass
    self._steps[stage.folder] = steps
    return steps

  def close(self) -> None:
    self.journal.close()


def _remaining(state: RunState, elapsed: float, baseline_wall: float) -> float | None:
  """An upper estimate of the run's time left: the first budget to run out, at the pace
  of the trials so far, plus the final evaluation (about two baselines)."""
  config = state.config
  if state.finished:
    return 0.0
  left = [max(0.0, config.budget_minutes * 60 - elapsed)]
  if config.budget_compute_seconds:
    left.append(max(0.0, config.budget_compute_seconds - state.compute_seconds))
  pace = elapsed / state.trials_done if state.trials_done else baseline_wall
  if pace:
    left.append(pace * max(0, config.budget_trials - state.trials_done))
  return min(left) + 2 * baseline_wall


class Display:
  """Shows progress: one live line redrawn in place on a terminal (rich), plain lines on
  phase changes otherwise (logs, CI and tests read those)."""

  def __init__(self, stream: TextIO | None = None):
    self.stream = stream or sys.stdout
    self.live = None
    self._trial: int | None = None
    self._shown: set[tuple] = set()  # the current trial's phases already printed
    if self.stream.isatty():
      from rich.console import Console
      from rich.live import Live
      self.live = Live('', console=Console(file=self.stream), auto_refresh=False,
                       transient=True, redirect_stdout=True, redirect_stderr=True)
      self.live.start()

  def show(self, progress: Progress) -> None:
    if self.live is not None:
      from rich.text import Text
      self.live.update(Text(progress.line(), no_wrap=True, overflow='ellipsis'), refresh=True)
    elif progress.key not in self._shown:  # a phase a trial returns to is not re-printed
      print(progress.line(), file=self.stream, flush=True)
    if progress.stage.trial != self._trial:
      self._trial, self._shown = progress.stage.trial, set()
    self._shown.add(progress.key)

  def close(self) -> None:
    if self.live is not None:
      self.live.stop()


class Observer:
  """A thread in the agent's process that watches its run: shows progress and writes the
  TensorBoard view after each trial's end and when stopped. It reads; it never writes the
  journal, and a failure of its own ends it, never the run."""

  def __init__(self, run_dir: Path, journal_name: str, *, display: Display | None = None,
               on_trial_end: OnTrialEnd | None = None, poll_s: float = POLL_S):
    self.watcher = Watcher(run_dir, journal_name)
    self.display = display or Display()
    self.on_trial_end, self.poll_s = on_trial_end, poll_s
    self._stop = threading.Event()
    self._ends = 0
    self._thread = threading.Thread(target=self._run, name='progress', daemon=True)
    self._thread.start()

  def _run(self) -> None:
    import signal
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # main's Ctrl-C
    while True:
      stopping = self._stop.wait(self.poll_s)
      try:
        self._look()
      except Exception as e:  # shown once; the run goes on without its progress line
        print(f'progress: stopped: {one_line(str(e))}', file=sys.stderr)
        return
      if stopping:
        return

  def _look(self) -> None:
    progress = self.watcher.look(live=not self._stop.is_set())
    stages = self.watcher.stages
    self.watcher.stages = []
    if progress is None:
      return
    for stage in stages[:-1]:  # stages passed between two looks still get their line
      if self.display.live is None:
        self.display.show(dataclasses.replace(progress, stage=stage, part=('', '')))
    self.display.show(progress)
    ends = self.watcher.state.trials_done if self.watcher.state else 0
    if self.on_trial_end and (ends != self._ends or self._stop.is_set()):
      self._ends = ends
      try:
        self.on_trial_end(self.watcher.journal, self.watcher.run_dir)
      except Exception as e:  # the view is a convenience: the run and its line go on
        print(f'warning: the TensorBoard view was not written: {one_line(str(e))}',
              file=sys.stderr)

  def stop(self) -> None:
    """Stops after one last look (the view written once more); idempotent."""
    self._stop.set()
    self._thread.join()
    self.display.close()
    self.watcher.close()


@contextlib.contextmanager
def watching(run_dir: Path, journal_name: str,
             on_trial_end: OnTrialEnd | None = None) -> Iterator[Observer]:
  """An `Observer` of the run for the length of a `with` block."""
  observer = Observer(run_dir, journal_name, on_trial_end=on_trial_end)
  try:
    yield observer
  finally:
    observer.stop()


def status_line(run_dir: Path, journal_name: str) -> str | None:
  """The progress line of a run that is running now (its session shows life), else None."""
  watcher = Watcher(run_dir, journal_name)
  try:
    now = watcher.look()
  finally:
    watcher.close()
  return now.line() if now is not None and now.running else None
