"""BENCHMARKS.md from the results JSON: tables, the machine, the commands, the targets.

Rendering reads only benchmarks/results/*.json, so the document can be regenerated
(`--render_only`) without re-running anything, and every number in it has a raw source.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any, Callable, Sequence

TITLES = {
    'overhead': '1. Harness overhead',
    'seeds': '2. Seed replication cost',
    'search': '3. Search quality at equal budget',
    'search_large': '3b. Search at a larger budget',
    'rigor': '4. Rigor: false acceptances and replication',
    'early_stopping': '5. Early stopping',
    'batches': '6. Candidates per CPU-minute',
    'ray_overhead': '7. Ray overhead per trial',
    'broken': '8. Broken starting points',
    'accelerator': '9. Accelerator smoke run',
    'workers': '10. Trials in flight',
    'mesh': '11. A trial over several devices',
}
SHARED_MACHINE = 0.05  # other processes' share of the cores above which the run says so


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def pct(x: float | None, signed: bool = False) -> str:
  if x is None:
    return 'n/a'
  return f'{100 * x:+.1f}%' if signed else f'{100 * x:.1f}%'


def spread(values: Sequence[float | None], fmt: str = '{:.3g}', as_pct: bool = False,
           signed: bool = False) -> str:
  """'median [min, max]' over repetitions, or the single value when there is one."""
  known = [v for v in values if v is not None and not math.isnan(v)]
  if not known:
    return 'n/a'
  show: Callable[[float], str] = (lambda v: pct(v, signed)) if as_pct else fmt.format
  middle = show(statistics.median(known))
  if len(known) == 1:
    return middle
  return f'{middle} [{show(min(known))}, {show(max(known))}]'


def verdict(value: float, target: float, at_least: bool, fmt: str = '{:.2f}') -> str:
  """'met: 0.97 >= 0.95' or 'missed: 0.81 < 0.95', plainly."""
  met = value >= target if at_least else value <= target
  sign = ('>=' if met else '<') if at_least else ('<=' if met else '>')
  return f'{"met" if met else "missed"}: {fmt.format(value)} {sign} {fmt.format(target)}'


def _code(code: dict[str, Any]) -> str:
  dirty = ' with uncommitted changes in the checkout' if code['dirty'] else ''
  return f'commit {(code["commit"] or "?")[:12]}{dirty}'


def _machine(results: dict[str, dict[str, Any]]) -> str:
  first = next(iter(results.values()))['machine']
  versions = ', '.join(f'{k} {v}' for k, v in first['versions'].items())
  code = first['code']
  rows = [['CPU', first['cpu']], ['cores', f'{first["cores"]} ({first["usable_cores"]} usable)'],
          ['RAM', f'{first["ram_gib"]} GiB'], ['accelerator', first['accelerator']],
          ['OS', first['os']], ['Python', first['python']], ['packages', versions],
          ['code', _code(code)]]
  differ = []
  for key in first:
    seen: dict[str, list[str]] = {}
    for name, r in results.items():
      value = r['machine'][key]
      words = _code(value) if key == 'code' else json.dumps(value, sort_keys=True)
      seen.setdefault(words, []).append(TITLES[name].split('.')[0])
    if len(seen) > 1:
      differ.append(f'{key}: ' + '; '.join(f'{words} in sections {", ".join(names)}'
                                           for words, names in seen.items()))
  note = ('' if not differ else '\n\nNot the same for every section (each section\'s JSON '
          'records its own): ' + ' / '.join(differ) + '.')
  return table(['', ''], rows) + note


def _runs(results: dict[str, dict[str, Any]]) -> str:
  rows, shared = [], []
  for name, r in results.items():
    share = r['other_cpu_share']
    rows.append([TITLES[name], r['size'], f'`{r["command"]}`', r['started'],
                 f'{r["wall_seconds"] / 60:.1f} min', pct(share),
                 f'{r["load"]["start"][0]} -> {r["load"]["end"][0]}'])
    if share is not None and share > SHARED_MACHINE:
      shared.append(f'{TITLES[name]} ({pct(share)})')
  text = table(['benchmark', 'size', 'command', 'started (UTC)', 'wall',
                'other processes\' CPU', '1-min load start -> end'], rows)
  if shared:
    text += ('\n\nOther work shared the machine during: ' + ', '.join(shared) + ' (the share of '
             'all cores that processes other than the benchmark kept busy, from /proc/stat). '
             'Wall-clock numbers in those sections are slower than on an idle machine; ratios '
             'measured within one section are affected less.')
  return text


def render(results: dict[str, dict[str, Any]], modules: dict[str, Any], plot_dir: str) -> str:
  """The whole document; `results` in benchmark order, `plot_dir` relative to the document."""
  summary = [row for name, r in results.items() for row in modules[name].summary(r)]
  sizes = sorted({r['size'] for r in results.values()})
  size_note = ('' if sizes == ['full'] else
               f'\n\n**These results are from a `{"`/`".join(sizes)}` run: reduced sizes, '
               'not the reference numbers.**')
  parts = [
      '# Benchmarks',
      '',
      'The harness and the research agent measured against the peers\' methods, side by side, '
      'on one machine. Everything below is generated by `python -m benchmarks.run` from the '
      'raw results in `benchmarks/results/*.json` (plots beside them); `--quick` runs reduced '
      'sizes, `--only NAME` one benchmark, `--render_only` rewrites this file from the JSON. '
      'Benchmarks are not tests; `tests/test_benchmarks.py` runs each at toy size so they '
      f'cannot rot.{size_note}',
      '', '## Targets', '', table(['benchmark', 'target', 'measured', 'verdict'], summary),
      '', '## Machine', '', _machine(results),
      '', '## Runs', '', _runs(results),
  ]
  for name, r in results.items():
    links = [f'{plot_dir}/{p}' for p in r.get('plots', [])]
    parts += ['', f'## {TITLES[name]}', '', modules[name].render(r, links)]
  return '\n'.join(parts) + '\n'
