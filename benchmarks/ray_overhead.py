"""Benchmark 7: what running a trial as a Ray task costs over running it locally.

The same trial (the same commit, inputs and seeds) runs alternately through the local
executor (`executor.run_trial`) and through the Ray executor on a local Ray cluster
(`--executor=ray`: the commit and the inputs shipped to a worker, the trial run there in the
same sandbox, its folder returned and scored on the head). Times are the head's, from the
call to the scored outcome, split into the trial process's own time (the same command in
the same sandbox either way) and the rest: Ray's overhead per trial is what the rest adds
(shipping the commit and the inputs, scheduling, returning the folder, unpacking, scoring).
The trial's own time is also shown: on a shared machine it varies with the load more than
by anything Ray adds. The cluster's start and the first Ray trial (a fresh worker imports
the agent) are shown apart: a run pays them once. Neither side uses a compilation cache
(Ray workers have none yet). The journal's appends per second bound the design's trials per
head (docs/scale_out.md).
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import ml_collections

from agent.charter import Trial
from agent.recording.journal import Journal
from agent.safety.executor import TrialSpec, run_trial
from benchmarks import report, trials
from benchmarks.trials import Say
from harness import scoring, trial_inputs

TARGET_S = 1.0  # Ray's overhead per trial, at most, over a local trial
ROOT = Path(__file__).resolve().parent.parent
LIMITS = Trial(memory_mb=0, filesystem_sandbox='best_effort')  # bubblewrap where it runs


@dataclasses.dataclass(frozen=True)
class Size:
  config: str
  name: str
  repeats: int  # trials each way, after the first Ray trial
  seeds: int = 2
  overrides: tuple[str, ...] = ()
  appends: int = 2000  # journal records timed
  first: bool = True  # a first Ray trial apart (a fresh worker), not counted in the medians


_TINY = ('--config.train.steps=20', '--config.train.eval_every=10',
         '--config.train.checkpoint_every=20')
SIZES = {
    'full': Size('experiments/mnist1d_mlp.py', 'mnist1d MLP (shipped: 3000 steps)', 5),
    'quick': Size('experiments/digits_mlp.py', 'digits MLP, 20 steps', 3, overrides=_TINY),
    'toy': Size('experiments/digits_mlp.py', 'digits MLP, 20 steps', 1, overrides=_TINY,
                appends=200, first=False),
}


def _committed_copy(folder: Path) -> Path:
  """This checkout's trial code (harness, models, experiments) as one commit: a Ray trial
  ships a commit."""
  for package in ('harness', 'models', 'experiments'):
    shutil.copytree(ROOT / package, folder / package,
                    ignore=shutil.ignore_patterns('__pycache__'))
  git = lambda *args: subprocess.run(['git', '-c', 'user.name=b', '-c', 'user.email=b@b', *args],
                                     cwd=folder, check=True, capture_output=True)
  git('init', '-q')
  git('add', '-A')
  git('commit', '-q', '-m', 'the code under test')
  return folder


def _timed(run: Any, spec: TrialSpec, scorer: scoring.Scorer) -> dict[str, Any]:
  clock = time.perf_counter()
  outcome = run(spec, scorer)
  if outcome.status != 'ok':
    raise RuntimeError(f'{spec.workdir.name}: {outcome.status}: {outcome.reason}')
  head = time.perf_counter() - clock
  return {'head_seconds': head, 'trial_seconds': outcome.wall_seconds,
          'outside_seconds': head - outcome.wall_seconds,
          'val_per_seed': outcome.scorecard['val_metric']['per_seed']}


def journal_appends_per_second(folder: Path, count: int) -> float:
  """Records of a trial's typical size appended (each one committed, hash-chained)."""
  journal = Journal.open(folder / 'journal.sqlite')
  payload = {'status': 'ok', 'reason': 'finished: ok', 'metric': 0.9,
             'per_seed': [0.9] * 6, 'workdir': 'trials/12/screen', 'wall_seconds': 12.5}
  clock = time.perf_counter()
  for i in range(count):
    journal.append('arm', payload, trial=i)
  seconds = time.perf_counter() - clock
  journal.close()
  return count / seconds


def run(size: Size, work: Path, say: Say, previous: dict[str, Any]) -> dict[str, Any]:
  del previous
  from agent.safety.ray_executor import RayExecutor
  from harness.datasets import load_task
  dataset = trials.load_config(ROOT / size.config).dataset.to_dict()
  inputs, targets = trial_inputs.build(load_task(ml_collections.ConfigDict(dataset)), dataset)
  trial_inputs.write(work / 'inputs', inputs)
  worktree = _committed_copy(work / 'wt')
  scorer = scoring.Scorer(targets, size.seeds)
  spec = lambda name: TrialSpec(worktree, size.config, work / name, seeds=size.seeds,
                                first_seed=0, timeout_s=1800, limits=LIMITS,
                                inputs=work / 'inputs', overrides=size.overrides)
  clock = time.perf_counter()
  ray = RayExecutor(LIMITS)
  cluster_start = time.perf_counter() - clock
  try:
    first = _timed(ray.run_trial, spec('ray-first'), scorer) if size.first else None
    local, remote = [], []
    for i in range(size.repeats):  # alternately, so that a change in load hits both
      local.append(_timed(run_trial, spec(f'local-{i}'), scorer))
      remote.append(_timed(ray.run_trial, spec(f'ray-{i}'), scorer))
      say(f'[ray_overhead] {i + 1}/{size.repeats}: local {local[-1]["head_seconds"]:.2f} s, '
          f'ray {remote[-1]["head_seconds"]:.2f} s')
  finally:
    ray.close()
  median = lambda rows, key: statistics.median(r[key] for r in rows)
  return {
      'name': size.name, 'config': size.config, 'seeds': size.seeds, 'target': TARGET_S,
      'cluster_start_seconds': cluster_start, 'first': first, 'local': local, 'ray': remote,
      'overhead_seconds': median(remote, 'head_seconds') - median(local, 'head_seconds'),
      'outside_overhead_seconds': (median(remote, 'outside_seconds')
                                   - median(local, 'outside_seconds')),
      'same_results': all(r['val_per_seed'] == local[0]['val_per_seed']
                          for r in [*([first] if first else []), *local, *remote]),
      'journal_appends_per_second': journal_appends_per_second(work, size.appends)}


def render(result: dict[str, Any], plots: list[str]) -> str:
  del plots
  data = result['data']
  spread = lambda rows, key: report.spread([r[key] for r in rows], '{:.2f}')
  rows = [[way, len(data[key]), spread(data[key], 'head_seconds'),
           spread(data[key], 'trial_seconds'), spread(data[key], 'outside_seconds')]
          for way, key in (('local', 'local'), ('Ray task', 'ray'))]
  if data['first']:
    rows.append(['Ray task, the first (fresh worker)', 1] + [
        f'{data["first"][key]:.2f}' for key in ('head_seconds', 'trial_seconds',
                                                'outside_seconds')])
  return '\n'.join([
      __doc__.split('\n\n', 1)[1].replace('\n', ' ').strip(), '',
      f'{data["name"]}, {data["seeds"]} seeds per trial; the local Ray cluster started in '
      f'{data["cluster_start_seconds"]:.1f} s; the same validation results every way: '
      f'{"yes" if data["same_results"] else "NO"}.', '',
      report.table(['how', 'trials', 'seconds per trial, head (median [min, max])',
                    'the trial process itself', 'the rest (shipping, scheduling, scoring)'],
                   rows), '',
      f'Overhead per trial, outside the trial process: '
      f'{data["outside_overhead_seconds"]:+.2f} s ('
      f'{report.verdict(data["outside_overhead_seconds"], data["target"], at_least=False)} s); '
      f'the head\'s medians differ by {data["overhead_seconds"]:+.2f} s, the trial process\'s '
      f'own time included. '
      f'Journal appends: {data["journal_appends_per_second"]:.0f} per second '
      f'(SQLite, one commit each).'])


def summary(result: dict[str, Any]) -> list[list[str]]:
  data = result['data']
  return [['7. Ray overhead per trial',
           f'a trial as a Ray task (local cluster) <= {data["target"]:g} s over a local trial, '
           f'outside the trial process ({data["name"]}, {data["seeds"]} seeds)',
           f'{data["outside_overhead_seconds"]:+.2f} s (head medians, trial process '
           f'included: {data["overhead_seconds"]:+.2f} s)',
           report.verdict(data['outside_overhead_seconds'], data['target'], at_least=False)]]


def plot(result: dict[str, Any], out_dir: Path) -> list[str]:
  del result, out_dir
  return []  # one number and a table: nothing a plot would add
