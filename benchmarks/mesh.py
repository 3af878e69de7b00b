"""Benchmark 11: one trial over 1 vs 4 devices (`train.mesh`), on virtual CPU devices.

The same experiment and seeds train by hand (`harness.main`) in a fresh process per layout,
each with four virtual host devices (`XLA_FLAGS=--xla_force_host_platform_device_count=4`):
no mesh (one device), the seeds split over 4 devices, each batch split over 4 devices.
Reported: train and compile seconds from the scorecard, the process's wall time, and each
layout's largest relative difference from the one-device run's validation losses, at a
short horizon (where the layouts must agree within float tolerance, 1e-4) and at the
experiment's full length (where rounding differences, amplified by training, may grow to
seed-level differences: each layout is still deterministic). On a CPU the four virtual
devices share its cores, so this measures what the layout costs, not what four real
accelerators would gain.
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

from benchmarks import report
from benchmarks.trials import Say

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = 'experiments/mnist1d_mlp.py'
LAYOUTS = ('', 'seeds=4', 'data=4')
_CONFIG = """
import importlib.util
def get_config():
  spec = importlib.util.spec_from_file_location('base', {base!r})
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.train.mesh = {mesh!r}
  for key, value in {train!r}.items():
    config.train[key] = value
  return config
"""


TOLERANCE = 1e-4  # relative, on each seed's validation loss, at the short horizon
SHORT = (('steps', 100), ('eval_every', 50), ('checkpoint_every', 100))


@dataclasses.dataclass(frozen=True)
class Size:
  seeds: int
  train: tuple[tuple[str, int], ...] = ()  # the full-length runs' train.* (empty: as shipped)
  repeats: int = 1
  short: tuple[tuple[str, int], ...] = SHORT


SIZES = {
    'full': Size(4, repeats=2),
    'quick': Size(4, (('steps', 1000),)),
    'toy': Size(4, (('steps', 10), ('eval_every', 10), ('checkpoint_every', 10)),
                short=(('steps', 10), ('eval_every', 10), ('checkpoint_every', 10))),  # once
}


def _train(mesh: str, size: Size, work: Path, train: tuple[tuple[str, int], ...]
           ) -> dict[str, Any]:
  config = work / f'mesh-{mesh or "none"}-{len(train)}.py'
  config.write_text(_CONFIG.format(base=str(ROOT / EXPERIMENT), mesh=mesh, train=dict(train)))
  workdir = work / f'run-{mesh or "none"}-{time.monotonic_ns()}'
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'PYTHONPATH': str(ROOT)}
  clock = time.perf_counter()
  done = subprocess.run([sys.executable, '-m', 'harness.main', f'--config={config}',
                         f'--workdir={workdir}', f'--seeds={size.seeds}'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=3600)
  wall = time.perf_counter() - clock
  if done.returncode != 0:
    return {'mesh': mesh, 'error': (done.stderr.strip().splitlines() or ['?'])[-1]}
  card = json.loads((workdir / 'scorecard.json').read_text())
  return {'mesh': mesh, 'wall_seconds': wall, 'train_seconds': card['train_seconds'],
          'compile_seconds': card.get('compile_seconds'),
          'val_loss': card['val_loss']['per_seed'], 'val_metric': card['val_metric']['mean']}


def _differences(rows: list[dict[str, Any]]) -> None:
  """Each row's largest relative difference from the one-device run's validation losses."""
  one = next((r['val_loss'] for r in rows if r['mesh'] == '' and 'val_loss' in r), None)
  for row in rows:
    row['difference'] = (max(abs(a - b) / abs(b) for a, b in zip(row['val_loss'], one))
                         if one and 'val_loss' in row else None)


def run(size: Size, work: Path, say: Say, previous: dict[str, Any]) -> dict[str, Any]:
  del previous
  short = [_train(mesh, size, work, size.short) for mesh in LAYOUTS]
  _differences(short)
  rows = [r | {'repeat': 0} for r in short] if size.train == size.short else []
  for repeat in range(size.repeats if not rows else 0):  # alternating: load hits each
    for mesh in LAYOUTS:
      rows.append(_train(mesh, size, work, size.train) | {'repeat': repeat})
      say(f'[mesh] {mesh or "one device"}: {rows[-1].get("train_seconds", rows[-1].get("error"))}')
  _differences(rows)
  return {'experiment': EXPERIMENT, 'seeds': size.seeds, 'train': dict(size.train),
          'short': short, 'short_train': dict(size.short), 'rows': rows,
          'tolerance': TOLERANCE}


def _equal(data: dict[str, Any]) -> bool:
  return all(r['difference'] is not None and r['difference'] <= data['tolerance']
             for r in data['short'])


def _median(rows: list[dict[str, Any]], mesh: str, key: str) -> float | None:
  values = sorted(r[key] for r in rows if r['mesh'] == mesh and r.get(key) is not None)
  return values[len(values) // 2] if values else None


def render(result: dict[str, Any], plots: list[str]) -> str:
  del plots
  data = result['data']
  fmt = lambda v, f='{:.2f}': '-' if v is None else f.format(v)
  short = {r['mesh']: r for r in data['short']}
  base = _median(data['rows'], '', 'train_seconds')
  rows = []
  for mesh in LAYOUTS:
    train = _median(data['rows'], mesh, 'train_seconds')
    errors = [r['error'] for r in [*data['rows'], short[mesh]]
              if r['mesh'] == mesh and 'error' in r]
    rows.append([mesh or 'none (one device)', fmt(train),
                 fmt(train / base) if train and base else '-',
                 fmt(_median(data['rows'], mesh, 'compile_seconds')),
                 fmt(_median(data['rows'], mesh, 'wall_seconds')),
                 fmt(short[mesh].get('difference'), '{:.1e}'),
                 fmt(_median(data['rows'], mesh, 'difference'), '{:.1e}'),
                 fmt(_median(data['rows'], mesh, 'val_metric'), '{:.4f}'),
                 errors[0] if errors else ''])
  return '\n'.join([
      __doc__.split('\n\n', 1)[1].replace('\n', ' ').strip(), '',
      f'{data["experiment"]}, {data["seeds"]} seeds'
      + (f', train {data["train"]}' if data['train'] else ' (as shipped)')
      + f'; medians of {max(r["repeat"] for r in data["rows"]) + 1} run(s) per layout; '
      f'short horizon: {data["short_train"]["steps"]} steps.', '',
      report.table(['train.mesh', 'train s', 'vs one device', 'compile s', 'process wall s',
                    'val loss rel. difference, short', 'same, full length',
                    'val metric (full)', 'error'], rows), '',
      f'Equal to one device within {data["tolerance"]:g} at the short horizon: '
      f'{"yes" if _equal(data) else "NO"}.'])


def summary(result: dict[str, Any]) -> list[list[str]]:
  data = result['data']
  rows = data['rows']
  base = _median(rows, '', 'train_seconds')
  ratios = [f'{mesh} {t / base:.2f}x' for mesh in LAYOUTS[1:]
            if base and (t := _median(rows, mesh, 'train_seconds'))]
  equal = _equal(data)
  return [['11. A trial over 4 devices', f'results equal one device within '
           f'{data["tolerance"]:g} ({data["short_train"]["steps"]} steps; train time: a '
           'measurement, virtual CPU devices)', f'equal: {"yes" if equal else "NO"}; train '
           f'time {", ".join(ratios) or "-"}', 'met' if equal else 'MISSED']]


def plot(result: dict[str, Any], out_dir: Path) -> list[str]:
  del result, out_dir
  return []  # three rows of a table
