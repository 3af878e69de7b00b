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
import statistics
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
  max_seeds: int | None = None  # the charter's acceptance.max_seeds, cut for toy runs


SIZES = {
    'full': Size('mnist1d', (0, 1), 5, search.SIZES['full'].train['mnist1d']),
    'quick': Size('mnist1d', (0,), 2, search.SIZES['quick'].train['mnist1d']),
    'toy': Size('mnist1d', (0,), 1, search.SIZES['toy'].train['mnist1d'], max_seeds=3),
}


def run(size: Size, work: Path, say: Say, previous: dict[str, Any]) -> dict[str, Any]:
  ctx = search.Context.make(size.task, size.train, work / size.task, size.max_seeds)
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


def _trial_seconds(points: list[dict[str, Any]]) -> list[float]:
  """Compute each trial took (its screen and any confirmation runs)."""
  return [b['compute'] - a['compute'] for a, b in zip(points, points[1:])]


def _differences(pair: dict[str, Any]) -> list[dict[str, Any]]:
  """The trials whose verdicts differ with and without pruning, with what each run spent."""
  on, off = pair['on']['points'], pair['off']['points']
  seconds = zip(_trial_seconds(on), _trial_seconds(off))
  return [{'trial': a['trial'], 'with': a['reason'], 'without': b['reason'], 'kept': b['accepted'],
           'seconds_with': sa, 'seconds_without': sb}
          for a, b, (sa, sb) in zip(on[1:], off[1:], seconds) if a['reason'] != b['reason']]


def _test_gap(pairs: list[dict[str, Any]]) -> tuple[float, float]:
  """Mean final test with pruning minus without, and its standard error (per-seed spread)."""
  on = [v for p in pairs for v in p['on']['final']['test']]
  off = [v for p in pairs for v in p['off']['final']['test']]
  se = math.sqrt(statistics.variance(on) / len(on) + statistics.variance(off) / len(off))
  return trials.mean(on) - trials.mean(off), se


def _totals(pairs: list[dict[str, Any]]) -> tuple[float, float, float, float]:
  """Compute of the trials whose verdicts differ, with and without pruning; all compute."""
  differ = [d for p in pairs for d in _differences(p)]
  return (sum(d['seconds_with'] for d in differ), sum(d['seconds_without'] for d in differ),
          sum(p['on']['compute'] for p in pairs), sum(p['off']['compute'] for p in pairs))


def render(result: dict[str, Any], plots: list[str]) -> str:
  data = result['data']
  train = data['train']
  pairs = data['pairs']
  lines = [__doc__.split('\n\n', 1)[1].replace('\n', ' ').strip(), '',
           f'Task {data["task"]}, {data["trials"]} trials per run, training {train["steps"]} '
           f'steps evaluated every {train["eval_every"]} (as in benchmark 3). The proposer '
           'makes the same proposals in both runs while their verdicts agree; where a verdict '
           'differs, the table shows what each run spent on that trial. Total compute also '
           'differs by run-to-run timing noise, which a pair with no pruned trial measures.', '']
  rows = []
  for p in pairs:
    on, off = p['on'], p['off']
    differ = _differences(p)
    rows.append([p['master_seed'], on['pruned'],
                 '; '.join(f'trial {d["trial"]}: {d["with"]} {d["seconds_with"]:.0f} s / '
                           f'{d["without"]} {d["seconds_without"]:.0f} s' for d in differ) or 'none',
                 f'{on["compute"]:.0f} / {off["compute"]:.0f}',
                 f'{on["saved_estimate"]:.0f}', 'yes' if p['same_proposals'] else 'no',
                 'identical' if p['same_final'] else 'different',
                 f'{report.pct(trials.mean(on["final"]["test"]))} / '
                 f'{report.pct(trials.mean(off["final"]["test"]))}'])
  lines.append(report.table(['master seed', 'trials pruned',
                             'verdicts that differ: with / without pruning',
                             'all compute s, with / without', 'loop\'s estimate of saved s',
                             'same proposals', 'final configuration', 'final test, with / without'],
                            rows))
  spent_on, spent_off, total_on, total_off = _totals(pairs)
  gap, se = _test_gap(pairs)
  lines += ['', f'Where pruning changed a verdict, those trials cost {spent_on:.0f} s with pruning '
            f'and {spent_off:.0f} s without: {spent_off - spent_on:.0f} s saved, '
            f'{(spent_off - spent_on) / total_off:.0%} of all compute without pruning (all '
            f'compute, noise included: {total_on:.0f} s against {total_off:.0f} s). Final test '
            f'with pruning minus without: {100 * gap:+.1f} points (standard error '
            f'{100 * se:.1f}).']
  lines += ['', *(f'![compute with and without pruning]({p})' for p in plots)]
  return '\n'.join(lines)


def summary(result: dict[str, Any]) -> list[list[str]]:
  pairs = result['data']['pairs']
  spent_on, spent_off, _, total_off = _totals(pairs)
  gap, se = _test_gap(pairs)
  lost = [f'seed {p["master_seed"]} trial {d["trial"]}, kept as {d["without"]}' for p in pairs
          for d in _differences(p) if d['with'] == 'pruned' and d['kept']]
  equal = abs(gap) <= 2 * se
  verdict = ('equal final quality (within 2 standard errors)' if equal
             else 'final quality differs')
  if lost:
    verdict += '; pruning stopped a candidate the rule kept without it (' + ', '.join(lost) + ')'
  return [['5. Early stopping', 'compute saved at equal final quality',
           f'{spent_off - spent_on:.0f} s saved ({(spent_off - spent_on) / total_off:.0%} of '
           f'compute); final test {100 * gap:+.1f} points (se {100 * se:.1f})', verdict]]


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
