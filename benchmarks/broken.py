"""Benchmark 8: broken starting points, each a knob a researcher would call mis-set.

The shipped MNIST-1D MLP with one knob broken (the learning rate 100x too high or 1000x too
low, far too few steps, a 2-unit bottleneck, dropout 0.9) is handed to the agent, the real
loop with the heuristic proposer on the in-process runner of benchmark 3, with training
shortened as there and a budget of 6 trials. For each: whether the diagnosis of the broken
baseline names the defect, which edit the agent tried first, and whether the run repaired
it: its final configuration, trained on fresh seeds, reaches the unbroken experiment's test
accuracy (within the charter's min_effect). The unbroken experiment's number is measured
the same way, without a search.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from agent.charter import load_charter
from agent.editing import config_edit
from agent.loop import FINAL_FIRST_SEED
from agent.proposing.diagnosis import diagnose
from benchmarks import report, search, trials
from benchmarks.trials import Budget, Say
from harness.scorecard import SCORECARD


@dataclasses.dataclass(frozen=True)
class Kind:
  """A broken start: the edits that break it, the finding that names it."""
  name: str
  edits: Mapping[str, Any]
  finding: str


KINDS = (
    Kind('learning rate 100x too high', {'optimizer.learning_rate': 1.0}, 'step_too_large'),
    Kind('learning rate 1000x too low', {'optimizer.learning_rate': 1e-5}, 'step_too_small'),
    Kind('far too few steps (1/10)', {'train.steps': 60, 'train.eval_every': 30,
                                       'train.checkpoint_every': 60}, 'undertrained'),
    Kind('a 2-unit bottleneck', {'model.width': 2}, 'underfitting'),
    Kind('dropout 0.9', {'model.dropout': 0.9}, 'over_regularised'),
)


@dataclasses.dataclass(frozen=True)
class Size:
  kinds: tuple[str, ...]
  trials: int
  compute_seconds: float  # per broken start, baseline and looks included
  train: Mapping[str, int]
  max_seeds: int | None = None


SIZES = {
    'full': Size(tuple(k.name for k in KINDS), 6, 180, search.SIZES['full'].train['mnist1d']),
    'quick': Size(tuple(k.name for k in KINDS), 3, 60, search.SIZES['quick'].train['mnist1d']),
    'toy': Size((KINDS[0].name,), 1, 60, search.SIZES['toy'].train['mnist1d'], max_seeds=3),
}


def _broken(ctx: search.Context, kind: Kind) -> None:
  """The workspace's experiment with the kind's edits, committed: the run starts there."""
  path = ctx.workspace / ctx.task.experiment
  text = path.read_text()
  for key, value in kind.edits.items():
    text = config_edit.set_value(text, key, value)
  path.write_text(text)
  trials.git(ctx.workspace, 'commit', '--quiet', '-am', f'broken: {kind.name}')


def _baseline_findings(ctx: search.Context, run_id: str) -> dict[str, str]:
  """The diagnosis of the broken baseline, from the run's own scorecard of it."""
  found = sorted((ctx.workspace / 'runs' / run_id / 'baseline').rglob(SCORECARD))
  card = json.loads(found[0].read_text())
  return diagnose(card, dataset='mnist1d', family=str(card['config']['model']['name']))


def run(size: Size, work: Path, say: Say, previous: dict[str, Any]) -> dict[str, Any]:
  del previous
  unbroken = None
  rows = []
  for i, kind in enumerate(k for k in KINDS if k.name in size.kinds):
    ctx = search.Context.make('mnist1d', size.train, work / f'kind-{i}', size.max_seeds)
    if unbroken is None:
      unbroken = ctx.evaluate(ctx.base, FINAL_FIRST_SEED, search.FINAL_SEEDS, test=True)
    _broken(ctx, kind)
    start = ctx.evaluate(trials.tracked_files(ctx.workspace, ctx.task.experiment),
                         FINAL_FIRST_SEED, search.FINAL_SEEDS, test=True)
    say(f'[broken] {kind.name}: {size.trials} trials, {size.compute_seconds:.0f} compute s')
    run_id = f'broken-{i}'
    budget = Budget(size.trials, size.compute_seconds, size.compute_seconds / 2)
    result = search.run_agent(ctx, 0, 0, budget, say, run_id=run_id)
    final = ctx.evaluate(result['final_files'], FINAL_FIRST_SEED, search.FINAL_SEEDS, test=True)
    findings = _baseline_findings(ctx, run_id)
    points = result['points'][1:]
    rows.append({'kind': kind.name, 'edits': dict(kind.edits), 'finding': kind.finding,
                 'named': kind.finding in findings, 'findings': sorted(findings),
                 'first': points[0]['what'] if points else None,
                 'kept': [p['what'] for p in points if p['accepted']],
                 'trials': len(points), 'compute': result['points'][-1]['compute'],
                 'start': start, 'final': final, 'stop_reason': result['stop_reason']})
    say(f'[broken] {kind.name}: named {rows[-1]["named"]}, first {rows[-1]["first"]}, kept '
        f'{rows[-1]["kept"]}, test {trials.mean(start["test"]):.4f} -> '
        f'{trials.mean(final["test"]):.4f}')
  return {'train': dict(size.train), 'trials': size.trials,
          'compute_seconds': size.compute_seconds, 'min_effect': _min_effect(),
          'unbroken': unbroken, 'rows': rows}


def _min_effect() -> float:
  """The shipped charter's min_effect: how close to the unbroken test accuracy counts as
  repaired."""
  return load_charter(trials.ROOT / 'WORKSPACE.md').acceptance.min_effect


def _repaired(row: dict[str, Any], data: dict[str, Any]) -> bool:
  return (trials.mean(row['final']['test'])
          >= trials.mean(data['unbroken']['test']) - data['min_effect'])


def render(result: dict[str, Any], plots: list[str]) -> str:
  del plots
  data = result['data']
  train = data['train']
  lines = [__doc__.split('\n\n', 1)[1].replace('\n', ' ').strip(), '',
           f'Training {train["steps"]} steps evaluated every {train["eval_every"]} (as in '
           f'benchmark 3), {data["trials"]} trials and {data["compute_seconds"]:.0f} compute '
           f'seconds per broken start; unbroken experiment, no search: test '
           f'{report.pct(trials.mean(data["unbroken"]["test"]))}.', '']
  rows = [[r['kind'], r['finding'], 'yes' if r['named'] else 'no (' + (
              ', '.join(r['findings']) or 'nothing') + ')',
           r['first'] or '-', ', '.join(r['kept']) or 'nothing',
           report.pct(trials.mean(r['start']['test'])),
           report.pct(trials.mean(r['final']['test'])),
           'yes' if _repaired(r, data) else 'no', r['stop_reason']] for r in data['rows']]
  lines.append(report.table(['broken start', 'defect', 'named by the diagnosis',
                             'first trial', 'kept', 'test, broken', 'test, final',
                             'repaired', 'stopped'], rows))
  return '\n'.join(lines)


def summary(result: dict[str, Any]) -> list[list[str]]:
  data = result['data']
  rows = data['rows']
  named = sum(r['named'] for r in rows)
  repaired = sum(_repaired(r, data) for r in rows)
  verdict = ('met' if named == repaired == len(rows) else
             f'missed: {len(rows) - named} not named, {len(rows) - repaired} not repaired')
  return [['8. Broken starting points', 'the diagnosis names and the agent repairs every one',
           f'named {named}/{len(rows)}, repaired {repaired}/{len(rows)} (within '
           f'{100 * data["min_effect"]:.0f} points of the unbroken '
           f'{report.pct(trials.mean(data["unbroken"]["test"]))} test)', verdict]]


def plot(result: dict[str, Any], out_dir: Path) -> list[str]:
  del result, out_dir
  return []  # a table says it: one row per broken start

