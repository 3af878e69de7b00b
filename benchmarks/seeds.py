"""Benchmark 2: what K seeds cost, in one process against K processes and one seed.

Each run is `python -m harness.main` as a user types it, timed from launch to exit: Python
and JAX start-up, data, compile, training, evaluation and the scorecard all count. K seeds
in one process share one compile; on CPU each seed runs its own call of that one-seed
program (a seed's result does not depend on K; a vmapped convolution would be a slow
grouped convolution on XLA:CPU), on accelerators they are one vmapped program. The target
applies to the shipped MLPs and to the 1-D CNN the agent switches to (shortened training);
the 2-D CNN is shown for context.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import report, trials
from benchmarks.trials import Say
from harness.scorecard import SCORECARD

TARGET = 2.0  # K seeds in one process cost at most this many times one seed


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  config: str
  overrides: tuple[str, ...] = ()
  targeted: bool = True  # the target applies (issue 12: the MLPs and the 1-D CNN)
  repeats: int = 1  # launches of the K-seed run (median)


@dataclasses.dataclass(frozen=True)
class Size:
  cases: tuple[Case, ...]
  k: int


def _steps(steps: int, every: int) -> tuple[str, ...]:
  return (f'--config.train.steps={steps}', f'--config.train.eval_every={every}',
          f'--config.train.checkpoint_every={steps}')


MNIST1D_MLP = Case('mnist1d MLP (shipped: 3000 steps)', 'experiments/mnist1d_mlp.py')
DIGITS_MLP = Case('digits MLP (shipped: 1000 steps)', 'experiments/digits_mlp.py')
SIZES = {
    'full': Size((dataclasses.replace(MNIST1D_MLP, repeats=3),
                  dataclasses.replace(DIGITS_MLP, repeats=3),
                  Case('mnist1d 1-D CNN, 500 steps', 'benchmarks/configs/mnist1d_cnn.py',
                       _steps(500, 100)),
                  Case('digits 2-D CNN, 100 steps', 'benchmarks/configs/digits_cnn.py',
                       _steps(100, 50), targeted=False)), 5),
    'quick': Size((MNIST1D_MLP,), 5),  # one shipped MLP: --quick must stay under 10 minutes
    'toy': Size((Case('digits MLP, 20 steps', 'experiments/digits_mlp.py', _steps(20, 10)),), 1),
}


def launch(case: Case, workdir: Path, seeds: int, first_seed: int) -> dict[str, Any]:
  """One `python -m harness.main` process; its wall time and the scorecard's split of it."""
  command = [sys.executable, '-m', 'harness.main', f'--config={case.config}',
             f'--workdir={workdir}', f'--seeds={seeds}', f'--config.train.seed={first_seed}',
             *case.overrides]
  env = {**os.environ, 'PYTHONPATH': str(trials.ROOT)}
  start = time.perf_counter()
  done = subprocess.run(command, cwd=trials.ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if done.returncode != 0:
    raise RuntimeError(f'{" ".join(command[1:])} exited {done.returncode}: '
                       f'{(done.stderr.strip().splitlines() or ["no output"])[-1]}')
  card = json.loads((workdir / SCORECARD).read_text())
  return {'wall_seconds': wall, 'train_seconds': card['train_seconds'],
          'compile_seconds': card['compile_seconds'], 'val_per_seed': card['val_metric']['per_seed']}


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
  """The run with the median wall time, and every repeat's wall time beside it."""
  ordered = sorted(runs, key=lambda r: r['wall_seconds'])
  return {**ordered[(len(ordered) - 1) // 2], 'repeat_walls': [r['wall_seconds'] for r in runs]}


def run(size: Size, work: Path, say: Say, previous: dict[str, Any]) -> dict[str, Any]:
  # Warm the page cache for the imports, so the first timed process is not the only cold one.
  subprocess.run([sys.executable, '-c', 'import jax, flax.nnx, optax, orbax.checkpoint'],
                 check=True, capture_output=True)
  cases = []
  for i, case in enumerate(size.cases):
    separate = [launch(case, work / f'{i}-separate-{s}', 1, s) for s in range(size.k)]
    one = _median(separate)
    together = _median([launch(case, work / f'{i}-together-{r}', size.k, 0)
                        for r in range(case.repeats)])
    separate_wall = sum(r['wall_seconds'] for r in separate)
    cases.append({'name': case.name, 'config': case.config, 'overrides': list(case.overrides),
                  'targeted': case.targeted, 'repeats': case.repeats, 'one': one,
                  'one_process': together,
                  'separate': separate, 'separate_wall_seconds': separate_wall,
                  'one_process_ratio': together['wall_seconds'] / one['wall_seconds'],
                  'separate_ratio': separate_wall / one['wall_seconds']})
    say(f'[seeds] {case.name}: 1 seed {one["wall_seconds"]:.1f} s, {size.k} in one process '
        f'{together["wall_seconds"]:.1f} s, {size.k} processes {separate_wall:.1f} s')
  return {'k': size.k, 'target': TARGET, 'cases': cases}


def _verdict(case: dict[str, Any], target: float) -> str:
  verdict = report.verdict(case['one_process_ratio'], target, at_least=False)
  return verdict if case['targeted'] else f'{verdict} (shown for context: no target)'


def render(result: dict[str, Any], plots: list[str]) -> str:
  data = result['data']
  k = data['k']
  lines = [__doc__.split('\n\n', 1)[1].replace('\n', ' ').strip(), '',
           f'K = {k}. "1 seed" is the median of the K single-seed processes (seeds 0 to '
           f'{k - 1}); every wall time is in the JSON. "start-up and rest" is wall time minus training and compile: Python, '
           'JAX and data start-up, evaluation, checkpoints and the scorecard.', '']
  rows = []
  for case in data['cases']:
    launches = f' (median of {case["repeats"]} launches)' if case['repeats'] > 1 else ''
    for label, run in (('1 seed', case['one']),
                       (f'{k} seeds, one process{launches}', case['one_process'])):
      rows.append([case['name'], label, f'{run["wall_seconds"]:.1f}',
                   f'{run["train_seconds"]:.1f}', f'{run["compile_seconds"]:.1f}',
                   f'{run["wall_seconds"] - run["train_seconds"] - run["compile_seconds"]:.1f}'])
    sep = case['separate']
    rows.append([case['name'], f'{k} seeds, {k} processes', f'{case["separate_wall_seconds"]:.1f}',
                 f'{sum(r["train_seconds"] for r in sep):.1f}',
                 f'{sum(r["compile_seconds"] for r in sep):.1f}',
                 f'{sum(r["wall_seconds"] - r["train_seconds"] - r["compile_seconds"] for r in sep):.1f}'])
  lines.append(report.table(['model', 'seeds', 'wall s', 'train s', 'compile s',
                             'start-up and rest s'], rows))
  lines += ['', report.table(
      ['model', f'{k} in one process / 1 seed', f'{k} processes / 1 seed', f'target: {k} seeds <= '
       f'{data["target"]:g} x 1 seed'],
      [[c['name'], f'{c["one_process_ratio"]:.2f}', f'{c["separate_ratio"]:.2f}',
        _verdict(c, data['target'])] for c in data['cases']])]
  lines += ['', *(f'![wall time per seed count]({p})' for p in plots)]
  return '\n'.join(lines)


def summary(result: dict[str, Any]) -> list[list[str]]:
  data = result['data']
  return [[f'2. Seed replication cost, {c["name"]}',
           f'{data["k"]} seeds in one process <= {data["target"]:g} x 1 seed (wall, start-up '
           'included)' + ('' if c['targeted'] else '; shown for context, no target'),
           f'{c["one_process_ratio"]:.2f} ({data["k"]} processes: {c["separate_ratio"]:.2f})',
           _verdict(c, data['target'])] for c in data['cases']]


def plot(result: dict[str, Any], out_dir: Path) -> list[str]:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  data = result['data']
  cases = data['cases']
  fig, axis = plt.subplots(figsize=(8, 0.9 + 0.9 * len(cases)))
  labels = ['1 seed', f'{data["k"]} in one process', f'{data["k"]} processes']
  for j, (label, color) in enumerate(zip(labels, ('C7', 'C0', 'C3'))):
    values = [(c['one']['wall_seconds'], c['one_process']['wall_seconds'],
               c['separate_wall_seconds'])[j] for c in cases]
    axis.barh([i + 0.27 * (j - 1) for i in range(len(cases))], values, height=0.27,
              color=color, label=label)
  axis.set_yticks(range(len(cases)), [c['name'] for c in cases])
  axis.invert_yaxis()
  axis.set_xlabel('wall seconds, start-up included')
  axis.legend()
  fig.tight_layout()
  path = out_dir / 'seeds.png'
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [path.name]
