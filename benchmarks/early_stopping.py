"""Benchmark 5: compute saved by stopping clearly losing candidates, at equal final quality.

The agent runs twice per master seed with the same proposer seed, trial budget and no
compute cap: once with the charter's pruning (a candidate trailing the incumbent by more
than 3 noise standard errors at two evaluations past 30% of training is stopped) and once
without. Compute seconds are measured, not estimated; the final configurations are
evaluated on the same fresh seeds and the test split.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

from agent.loop import FINAL_FIRST_SEED
from benchmarks import report, search, trials
from benchmarks.trials import Budget, Say


@dataclasses.dataclass(frozen=True)
class Size:
  task: str
  seeds: tuple[int, ...]  # master seeds of the proposer
  trials: int
  train: Mapping[str, int]


SIZES = {
    'full': Size('mnist1d', (0, 1), 5, search.SIZES['full'].train['mnist1d']),
    'quick': Size('mnist1d', (0,), 2, search.SIZES['quick'].train['mnist1d']),
    'toy': Size('mnist1d', (0,), 1, search.SIZES['toy'].train['mnist1d']),
}


def run(size: Size, work: Path, say: Say, previous: dict[str, Any]) -> dict[str, Any]:
  ctx = search.Context.make(size.task, size.train, work / size.task)
  pairs = []
  for seed in size.seeds:
    pair: dict[str, Any] = {'master_seed': seed}
    for label, enabled in (('on', True), ('off', False)):
      say(f'[early_stopping] {size.task} master seed {seed}, pruning {label}: '
          f'{size.trials} trials')
      charter = dataclasses.replace(
          ctx.charter, pruning=dataclasses.replace(ctx.charter.pruning, enabled=enabled))
      result = search.run_agent(ctx, seed, seed, Budget(size.trials, math.inf, math.inf), say,
                                charter=charter, run_id=f'pruning-{label}-{seed}')
      points = result['points']
      final = ctx.evaluate(result['final_files'], FINAL_FIRST_SEED, search.FINAL_SEEDS,
                           test=True)
      pair[label] = {'compute': points[-1]['compute'], 'trials': len(points) - 1,
                     'pruned': sum(p['reason'] == 'pruned' for p in points[1:]),
                     'saved_estimate': result['saved_estimate'],
                     'proposals': result['proposals'], 'points': points,
                     'final_files': trials.changed(ctx.base, result['final_files']),
                     'final': final}
    pair['same_proposals'] = pair['on']['proposals'] == pair['off']['proposals']
    pair['same_final'] = pair['on']['final_files'] == pair['off']['final_files']
    pairs.append(pair)
    say(f'[early_stopping] seed {seed}: compute {pair["on"]["compute"]:.0f} s with pruning, '
        f'{pair["off"]["compute"]:.0f} s without; same final configuration: '
        f'{pair["same_final"]}')
  return {'task': size.task, 'trials': size.trials, 'train': dict(size.train), 'pairs': pairs}


def _saved(pairs: list[dict[str, Any]]) -> float:
  on, off = (sum(p[k]['compute'] for p in pairs) for k in ('on', 'off'))
  return 1 - on / off


def render(result: dict[str, Any], plots: list[str]) -> str:
  data = result['data']
  train = data['train']
  lines = [__doc__.split('\n\n', 1)[1].replace('\n', ' ').strip(), '',
           f'Task {data["task"]}, {data["trials"]} trials per run, training {train["steps"]} '
           f'steps evaluated every {train["eval_every"]} (as in benchmark 3).', '']
  rows = []
  for p in data['pairs']:
    on, off = p['on'], p['off']
    rows.append([p['master_seed'], f'{on["compute"]:.0f}', f'{off["compute"]:.0f}',
                 f'{off["compute"] - on["compute"]:+.1f} ({1 - on["compute"] / off["compute"]:+.0%})',
                 f'{on["saved_estimate"]:.0f}', on['pruned'],
                 'yes' if p['same_proposals'] else 'no',
                 'identical' if p['same_final'] else 'different',
                 f'{report.pct(trials.mean(on["final"]["test"]))} / '
                 f'{report.pct(trials.mean(off["final"]["test"]))}'])
  lines.append(report.table(['master seed', 'compute s, pruning on', 'off', 'saved s',
                             'loop\'s own estimate of saved s', 'trials pruned',
                             'same proposals', 'final configuration',
                             'final test, on / off'], rows))
  lines += ['', f'Compute saved over all runs: {_saved(data["pairs"]):.0%}.']
  lines += ['', *(f'![compute with and without pruning]({p})' for p in plots)]
  return '\n'.join(lines)


def summary(result: dict[str, Any]) -> list[list[str]]:
  pairs = result['data']['pairs']
  same = sum(p['same_final'] for p in pairs)
  on = trials.mean([trials.mean(p['on']['final']['test']) for p in pairs])
  off = trials.mean([trials.mean(p['off']['final']['test']) for p in pairs])
  return [['5. Early stopping', 'compute saved at equal final quality',
           f'saved {_saved(pairs):.0%} of compute; final test {report.pct(on)} with pruning, '
           f'{report.pct(off)} without; identical final configuration in {same}/{len(pairs)}',
           'equal quality' if same == len(pairs) else 'quality differs: see section 5']]


def plot(result: dict[str, Any], out_dir: Path) -> list[str]:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  pairs = result['data']['pairs']
  fig, axis = plt.subplots(figsize=(6, 3.5))
  for p in pairs:
    for label, style in (('on', '-'), ('off', '--')):
      points = p[label]['points']
      axis.step([q['compute'] for q in points], [100 * q['best'] for q in points], where='post',
                linestyle=style, label=f'seed {p["master_seed"]}, pruning {label}')
  axis.set_xlabel('compute seconds')
  axis.set_ylabel('incumbent validation accuracy (%)')
  axis.grid(alpha=0.3)
  axis.legend(fontsize=8)
  fig.tight_layout()
  path = out_dir / 'early_stopping.png'
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [path.name]
