"""Trials for the benchmarks: the harness's train_and_evaluate run inside this process.

Why in process: a trial subprocess spends about 8 of its 11 s on Python, JAX and data
start-up on a 2-core CPU (benchmark 2 measures it), the same for every method; in a search
budget of a minute or two that would drown what differs between methods. `execute` keeps
the executor's contract (TrialSpec in, TrialOutcome out, `on_curve` may prune, a timeout),
so agent.loop.Loop runs on it unchanged. A trial whose harness/ or models/ differ from this
checkout's (a source edit) cannot be imported here and goes to agent.safety.executor.run_trial.

The harness has no per-evaluation callback, so pruning and timeouts hook the one call
train_and_evaluate makes after every evaluation, `harness.scorecard.append_jsonl`, for the
duration of a trial only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping
from unittest import mock

import ml_collections

from agent.editing import config_edit
from agent.judging import rungs
from agent.safety.executor import LOG, OnCurve, TrialOutcome, TrialSpec, run_batch, run_trial
from harness import scorecard, trial_inputs
from harness.datasets import load_task
from harness.scoring import Scorer
from harness.train import ConfigError, member_folder, train_and_evaluate

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ('harness', 'models')  # what a trial imports from its worktree
WORKSPACE_FILES = ('harness', 'models', 'experiments', 'WORKSPACE.md', 'pyproject.toml')
Files = dict[str, str]  # worktree-relative path -> text: what a method changed
_module_names = itertools.count()
IN_PROCESS = 'none: run inside the benchmark process (no rlimits, no network namespace)'


class _Stop(Exception):
  """Raised from the curve hook to end a trial early: pruned or out of time."""

  def __init__(self, status: str, reason: str, step: int | None):
    super().__init__(reason)
    self.status, self.reason, self.step = status, reason, step


def _code_texts(root: Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes()
          for d in CODE_DIRS for p in sorted((root / d).glob('*.py'))}


_CHECKOUT_CODE = _code_texts(ROOT)


def runs_here(worktree: Path) -> bool:
  """True when the worktree's harness/ and models/ are this process's: safe to import."""
  return Path(worktree).resolve() == ROOT or _code_texts(Path(worktree)) == _CHECKOUT_CODE


def load_config(path: Path) -> ml_collections.ConfigDict:
  """The experiment file's get_config(), loaded by path as config_flags would."""
  spec = importlib.util.spec_from_file_location(f'_bench_experiment_{next(_module_names)}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _fresh_log(workdir: Path) -> Path:
  """The trial's (empty) log in its workdir, which must be new or empty."""
  workdir.mkdir(parents=True, exist_ok=True)
  if any(workdir.iterdir()):
    raise ValueError(f'workdir {workdir} is not empty: each trial needs a fresh one')
  log_path = workdir / LOG
  log_path.touch()
  return log_path


def execute(spec: TrialSpec, scorer: Scorer | None = None,
            on_curve: OnCurve | None = None) -> TrialOutcome:
  """agent.safety.executor.run_trial's contract, run in this process when the code allows it
  (then it scores itself, with the labels it loads: benchmark trials are trusted code)."""
  if spec.overrides or not runs_here(spec.worktree):
    if scorer is None or spec.inputs is None:
      return _sandboxed(spec, on_curve)
    return run_trial(spec, scorer, on_curve=on_curve)
  workdir = Path(spec.workdir)
  log_path = _fresh_log(workdir)
  points: list[dict[str, Any]] = []
  start = time.monotonic()
  original = scorecard.append_jsonl

  def outcome(status: str, card: dict | None, reason: str, code: int | None,
              step: int | None = None) -> TrialOutcome:
    return TrialOutcome(status, card, points, time.monotonic() - start, code, log_path, '',
                        reason, step, sandbox=IN_PROCESS)

  def hook(path: Path, record: dict[str, Any]) -> None:
    original(path, record)
    if Path(path) != workdir / scorecard.CURVES:
      return
    points.append(record)
    reason = on_curve(list(points)) if on_curve else None
    if reason:
      raise _Stop('pruned', reason, record['step'])
    if time.monotonic() - start > spec.timeout_s:
      raise _Stop('timeout', f'timed out after {spec.timeout_s:.0f} s at step {record["step"]}',
                  None)

  try:
    config = load_config(spec.worktree / spec.experiment)
    config.train.seed = spec.first_seed
  except Exception as e:  # the experiment file itself is broken: the trial's bad input
    return outcome('bad_input', None, f'error: cannot load --config: {e}', 2)
  with mock.patch.object(scorecard, 'append_jsonl', hook):
    try:
      with_test = spec.eval_test or bool(spec.inputs and (spec.inputs / 'predict_test.npy').exists())
      card = train_and_evaluate(config, workdir, num_seeds=spec.seeds, eval_test=with_test)
    except _Stop as stop:
      return outcome(stop.status, None, stop.reason, None, stop.step)
    except ConfigError as e:
      return outcome('bad_input', None, f'error: {e}', 2)
    except Exception as e:  # a crash in training is the trial's outcome, as in a subprocess
      return outcome('failed', None, ' '.join(str(e).split())[:300] or type(e).__name__, 1)
  return outcome(card['status'], card, f'finished: {card["status"]}', 0)


class _InProcessRungs:
  """harness.rungs.Rungs for a batch trained here: the judge's rule applied to the members'
  curves as this process scores them (the same numbers the executor's judge would read)."""

  def __init__(self, rule: rungs.Rule, curves: dict[Path, list[dict[str, Any]]], workdir: Path):
    self.rule, self.curves, self.workdir = rule, curves, workdir
    self.steps = frozenset(rule.steps)
    self.decided: list[rungs.Rung] = []

  def stopped(self, step: int, training) -> set[int]:
    scores = {}
    for member in training:
      folder = member_folder(self.workdir, member, batched=True)
      point = next((p for p in self.curves.get(folder, []) if p['step'] == step), None)
      if point is not None:
        scores[member] = [float(v) for v in point['val_metric']]
    if self.rule.incumbent not in scores:
      return set()
    rung = self.rule.decide(step, scores)
    self.decided.append(rung)
    return self.rule.stop_training(rung)


def execute_batch(spec: TrialSpec, scorer: Scorer | None = None,
                  rule: rungs.Rule | None = None) -> list[TrialOutcome]:
  """agent.safety.executor.run_batch's contract, run in this process when the code allows
  it: one outcome per member, each with the whole batch's wall time (charge it once). A
  timeout is every member's, as in one process. With a `rule`, the rungs stop members here
  as the executor's judge would."""
  if spec.overrides or not runs_here(spec.worktree):
    return run_batch(spec, scorer, rule=rule)
  workdir = Path(spec.workdir)
  log_path = _fresh_log(workdir)
  curves: dict[Path, list[dict[str, Any]]] = {}
  start = time.monotonic()
  original = scorecard.append_jsonl
  control = _InProcessRungs(rule, curves, workdir.absolute()) if rule and spec.rungs else None

  def every(status: str, reason: str, code: int | None) -> list[TrialOutcome]:
    return [TrialOutcome(status, None, [], time.monotonic() - start, code, log_path, '', reason,
                         sandbox=IN_PROCESS) for _ in spec.members]

  def hook(path: Path, record: dict[str, Any]) -> None:
    original(path, record)
    if Path(path).name == scorecard.CURVES:
      curves.setdefault(Path(path).parent, []).append(record)
      if time.monotonic() - start > spec.timeout_s:
        raise _Stop('timeout', f'timed out after {spec.timeout_s:.0f} s at step '
                    f'{record["step"]}', None)

  try:
    config = load_config(spec.worktree / spec.experiment)
    config.train.seed = spec.first_seed
  except Exception as e:
    return every('bad_input', f'error: cannot load --config: {e}', 2)
  with mock.patch.object(scorecard, 'append_jsonl', hook):
    try:
      with_test = spec.eval_test or bool(spec.inputs and (spec.inputs / 'predict_test.npy').exists())
      cards = train_and_evaluate(config, workdir, num_seeds=spec.seeds, eval_test=with_test,
                                 members=[dict(m) for m in spec.members],
                                 rungs=control)['members']
    except _Stop as stop:
      return every(stop.status, stop.reason, None)
    except ConfigError as e:
      return every('bad_input', f'error: {e}', 2)
    except Exception as e:
      return every('failed', ' '.join(str(e).split())[:300] or type(e).__name__, 1)
  wall = time.monotonic() - start
  decided = tuple(control.decided) if control else ()
  stops = {m: rung for rung in decided for m in rung.stopped}
  outcomes = []
  for index, (values, card) in enumerate(zip(spec.members, cards, strict=True)):
    folder = member_folder(workdir.absolute(), index, batched=True)
    if 'stopped_at' in card:
      reason = (stops[index].reason(index) if index in stops else
                rule.incumbent_reason(card['stopped_at']))
      outcomes.append(TrialOutcome('pruned', None, curves.get(folder, []), wall, 0, log_path, '',
                                   reason, card['stopped_at'], rungs=decided,
                                   sandbox=IN_PROCESS))
      continue
    card['batch'] = {'size': len(spec.members), 'member': index, 'values': dict(values)}
    outcomes.append(TrialOutcome(card['status'], card, curves.get(folder, []), wall, 0, log_path,
                                 '', f'finished: {card["status"]}', rungs=decided,
                                 sandbox=IN_PROCESS))
  return outcomes


def _sandboxed(spec: TrialSpec, on_curve: OnCurve | None) -> TrialOutcome:
  """A trial whose code cannot be imported here, run as the agent runs one: inputs written
  from the experiment's data beside its workdir, scored here with the labels."""
  config = load_config(spec.worktree / spec.experiment)
  inputs, targets = trial_inputs.build(load_task(config.dataset), config.dataset.to_dict(),
                                       with_test=spec.eval_test)
  folder = spec.workdir.with_name(f'{spec.workdir.name}-inputs')
  trial_inputs.write(folder, inputs)
  return run_trial(dataclasses.replace(spec, inputs=folder, eval_test=False),
                   Scorer(targets, spec.seeds), on_curve=on_curve)


def git(repo: Path, *args: str) -> str:
  return subprocess.run(['git', '-c', 'user.name=bench', '-c', 'user.email=bench@localhost',
                         '-c', 'commit.gpgsign=false', *args], cwd=repo, check=True,
                        capture_output=True, text=True).stdout.strip()


def make_workspace(dest: Path, experiment: str, train: Mapping[str, int]) -> Path:
  """A git repository holding a copy of this checkout's code, with the experiment's train.*
  values replaced (shorter training for the search; the same for every method)."""
  dest.mkdir(parents=True)
  for name in WORKSPACE_FILES:
    source = ROOT / name
    if source.is_dir():
      shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns('__pycache__'))
    else:
      shutil.copy(source, dest / name)
  path = dest / experiment
  text = path.read_text()
  for key, value in train.items():
    text = config_edit.set_value(text, f'train.{key}', value)
  path.write_text(text)
  (dest / '.gitignore').write_text('runs/\n__pycache__/\n')
  git(dest, 'init', '--quiet', '-b', 'main')
  git(dest, 'add', '-A')
  git(dest, 'commit', '--quiet', '-m', 'benchmark workspace')
  return dest


def tracked_files(root: Path, experiment: str) -> Files:
  """What a method may change: the experiment file and the model sources."""
  files = {experiment: (root / experiment).read_text()}
  for path in sorted((root / 'models').glob('*.py')):
    files[str(path.relative_to(root))] = path.read_text()
  return files


def changed(base: Files, files: Files) -> Files:
  """Only the files that differ from the base: what the results JSON keeps."""
  return {path: text for path, text in files.items() if base.get(path) != text}


@dataclasses.dataclass
class Budget:
  """Trials and compute seconds (trial wall time, baseline and confirmations included);
  a method stops at whichever runs out first. No run may take more than what is left, nor
  (the baseline, a method's first run, excepted) more than `trial_cap` seconds, so that
  no method sinks its budget into one candidate."""
  trials: int
  compute_seconds: float
  trial_cap: float
  spent: float = 0.0

  def left(self) -> float:
    return self.compute_seconds - self.spent

  def timeout(self, asked: float) -> float:
    return min(asked, self.left()) if self.spent == 0 else min(asked, self.trial_cap,
                                                                 self.left())

  def charge(self, outcome: TrialOutcome) -> TrialOutcome:
    self.spent += outcome.wall_seconds
    return outcome


class Scratch:
  """A worktree the non-git methods write candidate files into before each run."""

  def __init__(self, workspace: Path, dest: Path, experiment: str):
    shutil.copytree(workspace, dest, ignore=shutil.ignore_patterns('.git', 'runs'))
    self.root, self.experiment = dest, experiment
    self.base = tracked_files(dest, experiment)
    self._runs = itertools.count()

  def write(self, files: Files) -> None:
    for path, text in {**self.base, **files}.items():
      (self.root / path).write_text(text)

  def run(self, files: Files, workdirs: Path, *, seeds: int, first_seed: int, timeout_s: float,
          eval_test: bool = False, on_curve: OnCurve | None = None) -> TrialOutcome:
    self.write(files)
    if timeout_s <= 0:
      return TrialOutcome('timeout', None, [], 0.0, None, workdirs / LOG, '',
                          'no compute budget left to start this run')
    spec = TrialSpec(worktree=self.root, experiment=self.experiment,
                     workdir=workdirs / f'run-{next(self._runs)}', seeds=seeds,
                     first_seed=first_seed, timeout_s=timeout_s, eval_test=eval_test)
    return execute(spec, on_curve=on_curve)


def splits_seeds(files: Files, experiment: str) -> bool:
  """Whether to evaluate seeds one process-run at a time: for a 2-D CNN, which XLA:CPU runs
  vmapped as a grouped convolution 5-20x slower than separate runs (benchmark 2); a 1-D CNN
  loses less to vmap than a compile per seed costs."""
  module = config_edit.parse_module(files[experiment])
  for path, stmt in config_edit.config_assignments(module):
    if path == 'model.name':
      return config_edit.literal_value(stmt.body[0].value) == 'cnn2d'
  return False


class Evaluator:
  """Evaluation outside any method's budget: K seeds, validation and (optionally) test.

  The K seeds run vmapped in one run, or one at a time for a 2-D CNN (`splits_seeds`);
  both give each seed the same initialisation and data order.
  Results are cached by (files, seeds): a configuration is evaluated once.
  """

  def __init__(self, scratch: Scratch, workdirs: Path):
    self.scratch, self.workdirs = scratch, workdirs
    self.cache: dict[str, dict[str, Any]] = {}

  def __call__(self, files: Files, first_seed: int, seeds: int,
               test: bool = False) -> dict[str, Any]:
    key = hashlib.sha256(json.dumps([changed(self.scratch.base, files), first_seed, seeds,
                                     test], sort_keys=True).encode()).hexdigest()
    if key not in self.cache:
      groups = ([(s, 1) for s in range(first_seed, first_seed + seeds)]
                if splits_seeds({**self.scratch.base, **files}, self.scratch.experiment)
                else [(first_seed, seeds)])
      val: list[float] = []
      tests: list[float] = []
      for first, k in groups:
        outcome = self.scratch.run(files, self.workdirs, seeds=k, first_seed=first,
                                   timeout_s=3600, eval_test=test)
        if outcome.status not in ('ok', 'diverged'):
          raise RuntimeError(f'evaluation run {outcome.status}: {outcome.reason}')
        val += _finite(outcome.scorecard['val_metric']['per_seed'])
        if test and outcome.status == 'ok':
          card = scorecard.read_json(outcome.log_path.parent / scorecard.TEST_SCORECARD)
          tests += _finite(card['test_metric']['per_seed'])
        elif test:  # a diverged run writes no test scorecard: its seeds score nothing
          tests += [math.nan] * k
      self.cache[key] = {'val': val, 'test': tests or None}
    return self.cache[key]


def _finite(values: list[float | None]) -> list[float]:
  """Per-seed values with JSON's null (a non-finite metric) back as NaN."""
  return [math.nan if v is None else v for v in values]


def mean(values: list[float]) -> float:
  """NaN if any seed is NaN: a configuration that diverged on some seed has no mean."""
  return sum(values) / len(values)


Say = Callable[[str], None]
