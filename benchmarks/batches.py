"""Benchmark 6: candidates screened per CPU-minute, each in its own process or together.

A screen arm is what the agent runs to judge one candidate: the experiment on 3 seeds. Before
batching each candidate was its own `python -m harness.main` process, paying Python, JAX and
data start-up and a compile each time; candidates that differ only in traced values (the
learning rate here) now train together in one process (`--members`), one compiled program
for all. Both ways are timed here side by side on the same candidates, as a user types them;
CPU seconds are the processes' user + system time (all threads), from the kernel. The
one-per-process runs use today's harness (the traced hyperparameters of a run alone cost
nothing measurable), and the batched members' validation results are checked equal to them.
In the agent a batch runs the incumbent's code, which earlier trials of the run compiled
into the workspace's JAX compilation cache; the candidates that ran alone each had their own
code (their own cache folder, cold). The last column is that: the batch again after one run
of the incumbent filled a cache (its cost not counted).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import report, trials
from benchmarks.trials import Say
from harness.scorecard import SCORECARD

TARGET = 4.0  # candidates per CPU-minute, batched / one per process
SEEDS = 3
LEARNING_RATES = (2e-3, 3e-3, 5e-3, 7e-3, 1.5e-2, 2e-2, 3e-2, 5e-2)  # around the shipped 1e-2
INCUMBENT_LR = 1e-2


@dataclasses.dataclass(frozen=True)
class Size:
  config: str
  name: str
  batches: tuple[int, ...]
  seeds: int = SEEDS
  overrides: tuple[str, ...] = ()


SIZES = {
    'full': Size('experiments/mnist1d_mlp.py', 'mnist1d MLP (shipped: 3000 steps)', (4, 8)),
    'quick': Size('experiments/mnist1d_mlp.py', 'mnist1d MLP (shipped: 3000 steps)', (4,)),
    'toy': Size('experiments/digits_mlp.py', 'digits MLP, 20 steps', (2,), 2,
                ('--config.train.steps=20', '--config.train.eval_every=10',
                 '--config.train.checkpoint_every=20')),
}


def launch(size: Size, workdir: Path, members: list[float],
           cache: Path | None = None) -> dict[str, Any]:
  """One process training these learning rates (alone when one, else as members), with a
  JAX compilation cache in `cache` if given."""
  lr = ([f'--config.optimizer.learning_rate={members[0]}'] if len(members) == 1 else
        [f'--members={json.dumps([{"optimizer.learning_rate": v} for v in members])}'])
  command = [sys.executable, '-m', 'harness.main', f'--config={size.config}',
             f'--workdir={workdir}', f'--seeds={size.seeds}', *size.overrides, *lr]
  env = {**os.environ, 'PYTHONPATH': str(trials.ROOT)}
  if cache is not None:
    env |= {'JAX_COMPILATION_CACHE_DIR': str(cache),
            'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  done = subprocess.run(command, cwd=trials.ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if done.returncode != 0:
    raise RuntimeError(f'{" ".join(command[1:])} exited {done.returncode}: '
                       f'{(done.stderr.strip().splitlines() or ["no output"])[-1]}')
  folders = [workdir] if len(members) == 1 else [workdir / f'member-{i}'
                                                  for i in range(len(members))]
  cards = [json.loads((f / SCORECARD).read_text()) for f in folders]
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return {'wall_seconds': wall, 'cpu_seconds': cpu, 'train_seconds': cards[0]['train_seconds'],
          'val_per_seed': [c['val_metric']['per_seed'] for c in cards]}


def run(size: Size, work: Path, say: Say, previous: dict[str, Any]) -> dict[str, Any]:
  subprocess.run([sys.executable, '-c', 'import jax, flax.nnx, optax'], check=True,
                 capture_output=True)  # warm the page cache: no launch is the only cold one
  rows = []
  for b in size.batches:
    rates = list(LEARNING_RATES[:b])
    alone = [launch(size, work / f'{b}-alone-{i}', [lr]) for i, lr in enumerate(rates)]
    together = launch(size, work / f'{b}-batch', rates)
    launch(size, work / f'{b}-incumbent', [INCUMBENT_LR], cache=work / f'{b}-cache')
    warm = launch(size, work / f'{b}-batch-warm', rates, cache=work / f'{b}-cache')
    cpu_alone = sum(r['cpu_seconds'] for r in alone)
    wall_alone = sum(r['wall_seconds'] for r in alone)
    rows.append({
        'candidates': b, 'alone': alone, 'batch': together, 'batch_warm': warm,
        'cpu_alone': cpu_alone, 'wall_alone': wall_alone,
        'per_cpu_minute_alone': 60 * b / cpu_alone,
        'per_cpu_minute_batch': 60 * b / together['cpu_seconds'],
        'per_cpu_minute_warm': 60 * b / warm['cpu_seconds'],
        'cpu_ratio': cpu_alone / together['cpu_seconds'],
        'cpu_ratio_warm': cpu_alone / warm['cpu_seconds'],
        'wall_ratio': wall_alone / together['wall_seconds'],
        'identical': ([r['val_per_seed'][0] for r in alone] == together['val_per_seed']
                      == warm['val_per_seed'])})
    say(f'[batches] {b} candidates: alone {cpu_alone:.0f} CPU s / {wall_alone:.0f} s wall, '
        f'together {together["cpu_seconds"]:.0f} CPU s / {together["wall_seconds"]:.0f} s, '
        f'warm cache {warm["cpu_seconds"]:.0f} CPU s')
  return {'name': size.name, 'config': size.config, 'seeds': size.seeds, 'target': TARGET,
          'rows': rows}


def render(result: dict[str, Any], plots: list[str]) -> str:
  data = result['data']
  lines = [__doc__.split('\n\n', 1)[1].replace('\n', ' ').strip(), '',
           f'{data["name"]}, {data["seeds"]} seeds per candidate, learning rates '
           f'{", ".join(f"{v:g}" for v in LEARNING_RATES)} (the first B).', '']
  rows = [[r['candidates'], f'{r["cpu_alone"]:.0f}', f'{r["batch"]["cpu_seconds"]:.0f}',
           f'{r["batch_warm"]["cpu_seconds"]:.0f}', f'{r["per_cpu_minute_alone"]:.1f}',
           f'{r["per_cpu_minute_batch"]:.1f}', f'{r["per_cpu_minute_warm"]:.1f}',
           f'{r["cpu_ratio"]:.2f}', f'{r["cpu_ratio_warm"]:.2f}',
           f'{r["wall_alone"]:.0f} / {r["batch"]["wall_seconds"]:.0f}',
           'yes' if r['identical'] else 'NO',
           report.verdict(r['cpu_ratio_warm'], data['target'], at_least=True)]
          for r in data['rows']]
  lines.append(report.table(
      ['candidates', 'CPU s, one process each', 'CPU s, one batch', 'CPU s, batch, warm cache',
       'per CPU-min: alone', 'batched', 'batched, warm', 'batched / alone',
       'batched warm / alone', 'wall s alone / batched', 'same val results',
       f'target (as the agent runs it) >= {data["target"]:g}x'], rows))
  lines += ['', *(f'![CPU seconds per candidate]({p})' for p in plots)]
  return '\n'.join(lines)


def summary(result: dict[str, Any]) -> list[list[str]]:
  data = result['data']
  return [[f'6. Candidates per CPU-minute, {r["candidates"]} candidates',
           f'batched, as the agent runs it (incumbent\'s compilation cache warm) >= '
           f'{data["target"]:g} x one process per candidate ({data["name"]}, '
           f'{data["seeds"]} seeds)',
           f'{r["cpu_ratio_warm"]:.2f} ({r["per_cpu_minute_alone"]:.1f} -> '
           f'{r["per_cpu_minute_warm"]:.1f} per CPU-minute; cold cache {r["cpu_ratio"]:.2f})',
           report.verdict(r['cpu_ratio_warm'], data['target'], at_least=True)]
          for r in data['rows']]


def plot(result: dict[str, Any], out_dir: Path) -> list[str]:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = result['data']['rows']
  fig, axis = plt.subplots(figsize=(7, 1.2 + 0.8 * len(rows)))
  for j, (key, label, color) in enumerate((('alone', 'one process each', 'C3'),
                                            ('batch', 'one batch', 'C0'))):
    values = [(r['cpu_alone'] if key == 'alone' else r['batch']['cpu_seconds'])
              / r['candidates'] for r in rows]
    axis.barh([i + 0.35 * (j - 0.5) for i in range(len(rows))], values, height=0.35,
              color=color, label=label)
  axis.set_yticks(range(len(rows)), [f'{r["candidates"]} candidates' for r in rows])
  axis.invert_yaxis()
  axis.set_xlabel('CPU seconds per candidate (3 seeds each), start-up included')
  axis.legend()
  fig.tight_layout()
  path = out_dir / 'batches.png'
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [path.name]
