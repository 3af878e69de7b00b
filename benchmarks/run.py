r"""Runs the benchmarks and writes BENCHMARKS.md (tables, machine, commands) and plots.

  python -m benchmarks.run [--quick] [--only=NAME[,NAME...]] [--out=BENCHMARKS.md]
      [--results_dir=benchmarks/results] [--render_only]

Benchmarks, in order: overhead, seeds, search, search_large, rigor (re-runs changes the search kept, so it
needs search results), early_stopping, batches, ray_overhead, broken; on request only:
accelerator (a smoke run on a GPU or TPU machine), workers (trials in flight), mesh (a
trial over 4 virtual devices). Each writes results_dir/NAME.json (raw numbers, the
machine, the load) and its plots; the document is then rendered from every JSON there.
Exit codes: 0 done, 2 bad input (one `error:` line).
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from absl import app, flags, logging

from benchmarks import machine, report
from harness.scorecard import json_safe

BENCHMARKS = ('overhead', 'seeds', 'search', 'search_large', 'rigor', 'early_stopping', 'batches',
              'ray_overhead', 'broken')
# Run only when named (--only): a machine this one may not be (accelerator), real agent runs
# of several minutes each (workers), virtual devices (mesh).
ON_REQUEST = ('accelerator', 'workers', 'mesh')

_QUICK = flags.DEFINE_bool('quick', False, 'Reduced sizes: under 10 minutes on 2 CPU cores.')
_ONLY = flags.DEFINE_string('only', '', f'Comma-separated subset of: {", ".join(BENCHMARKS)}.')
_OUT = flags.DEFINE_string('out', 'BENCHMARKS.md', 'The document to write.')
_RESULTS = flags.DEFINE_string('results_dir', 'benchmarks/results',
                               'Where the raw results JSON and the plots go.')
_RENDER_ONLY = flags.DEFINE_bool('render_only', False,
                                 'Rewrite the document and plots from the results JSON only.')


class UsageError(Exception):
  """Bad input: one line, exit code 2."""


def selected(only: str) -> list[str]:
  names = [n.strip() for n in only.split(',') if n.strip()]
  known = BENCHMARKS + ON_REQUEST
  unknown = [n for n in names if n not in known]
  if unknown:
    raise UsageError(f'unknown benchmark {unknown[0]!r}; known: {", ".join(known)}')
  return [n for n in known if n in names] if names else list(BENCHMARKS)


def load_results(results_dir: Path) -> dict[str, dict[str, Any]]:
  return {name: json.loads((results_dir / f'{name}.json').read_text())
          for name in BENCHMARKS + ON_REQUEST if (results_dir / f'{name}.json').exists()}


def render(out: Path, results_dir: Path, replot: bool = False) -> None:
  results = load_results(results_dir)
  modules = {name: importlib.import_module(f'benchmarks.{name}') for name in results}
  if replot:
    for name, result in results.items():
      result['plots'] = modules[name].plot(result, results_dir)
  plot_dir = os.path.relpath(results_dir.absolute(), out.absolute().parent)
  out.write_text(report.render(results, modules, plot_dir))


def write_json(path: Path, data: dict[str, Any]) -> None:
  """Keeps the order results were produced in (tables follow it), unlike a sorted dump."""
  path.write_text(json.dumps(json_safe(data), indent=1, allow_nan=False) + '\n')


def run_benchmarks(names: list[str], size: str, out: Path, results_dir: Path, command: str,
                   say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
  """Runs each benchmark at `size` ('full', 'quick' or 'toy'), saves its JSON and plots,
  then renders the document from every result in results_dir."""
  # The agent's loop starts git and import-check subprocesses from this JAX process; they
  # exec at once, so JAX's warning about forking a multithreaded process is noise here.
  warnings.filterwarnings('ignore', message=r'os\.fork\(\) was called', category=RuntimeWarning)
  results_dir.mkdir(parents=True, exist_ok=True)
  if 'rigor' in names and 'search' not in names and not (results_dir / 'search.json').exists():
    raise UsageError(f'rigor re-runs the changes the search kept and {results_dir} has no '
                     'search.json: run the search first (--only=search,rigor)')
  # Everything is imported now, so the provenance recorded is the code that runs.
  modules = {name: importlib.import_module(f'benchmarks.{name}') for name in names}
  setup = machine.describe()
  for name, module in modules.items():
    started = datetime.datetime.now(datetime.timezone.utc)
    snapshot, load = machine.cpu_snapshot(), machine.load_average()
    clock = time.perf_counter()
    say(f'[{name}] {size} size, started {started:%H:%M:%S} UTC, load {load[0]}')
    with tempfile.TemporaryDirectory(prefix=f'bench-{name}-') as work:
      data = module.run(module.SIZES[size], Path(work), say, load_results(results_dir))
    result = {'name': name, 'size': size, 'command': command,
              'started': f'{started:%Y-%m-%d %H:%M}', 'wall_seconds': time.perf_counter() - clock,
              'load': {'start': load, 'end': machine.load_average()},
              'other_cpu_share': machine.other_share(snapshot, machine.cpu_snapshot()),
              'machine': setup, 'data': data}
    result['plots'] = module.plot(result, results_dir)
    write_json(results_dir / f'{name}.json', result)
    say(f'[{name}] done in {result["wall_seconds"] / 60:.1f} min')
  render(out, results_dir)
  return load_results(results_dir)


def main(argv: list[str]) -> None:
  try:
    if len(argv) > 1:
      raise UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
    names = selected(_ONLY.value)
    out, results_dir = Path(_OUT.value), Path(_RESULTS.value)
    if _RENDER_ONLY.value:
      if not load_results(results_dir):
        raise UsageError(f'no results in {results_dir} to render')
      render(out, results_dir, replot=True)
      return
    logging.set_verbosity(logging.WARNING)  # each trial logs every evaluation and checkpoint
    start = time.perf_counter()
    say = lambda line: print(f'[{(time.perf_counter() - start) / 60:5.1f} min] {line}',
                             flush=True)
    command = 'python -m benchmarks.run ' + ' '.join(sys.argv[1:])
    run_benchmarks(names, 'quick' if _QUICK.value else 'full', out, results_dir,
                   command.strip(), say)
    say(f'wrote {out} and {results_dir}/')
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
