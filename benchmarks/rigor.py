"""Benchmark 4: how often each acceptance rule keeps a change that does nothing, and whether
the changes the search kept hold up when re-run on fresh seeds.

False acceptance: the shipped experiment is trained on many seeds in one vmapped process,
which gives real seed-to-seed variation of its validation metric. A null edit is a
candidate with no true effect whose noise differs from the incumbent's: its per-seed
values are drawn from the same population on other seeds (an independent seed stream).
Each rule judges many resampled null pairs; the same draws, with a true gain added to the
candidate, show how often each rule keeps a real improvement (its power).

Replication: changes the agent and the autoresearch-style loop kept in benchmark 3 are
re-run, before and after, on fresh seeds; a change replicates when its mean paired gain
there is positive.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy import stats

from agent.charter import load_charter
from agent.judging import decide as decide_lib
from benchmarks import report, search, trials
from benchmarks.trials import Say
from harness.train import train_and_evaluate

RULES = ('agent: sequential test', 'strictly better, 1 seed', 'strictly better, mean of 3 seeds')
RUN_TRIALS = 12  # a run's trial budget (the charter's default): chance of >= 1 false accept
REPLICATION_FIRST_SEED = 2_000_000  # fresh: used neither in the search nor its final evaluation
REPLICATED_METHODS = ('agent', 'autoresearch')


@dataclasses.dataclass(frozen=True)
class Size:
  tasks: tuple[str, ...]
  population: int  # seeds of the shipped experiment, trained together
  null_draws: int
  power_draws: int
  effects: tuple[float, ...]  # true gains added to the candidate
  per_method: int  # kept changes re-run per method and task (a seeded sample)
  fresh_seeds: int
  train: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)


SIZES = {
    'full': Size(('mnist1d', 'digits'), 48, 20000, 4000, (0.01, 0.03, 0.05), 5, 3),
    'quick': Size(('mnist1d', 'digits'), 24, 4000, 1000, (0.01, 0.03, 0.05), 2, 3),
    'toy': Size(('mnist1d',), 12, 100, 50, (0.05,), 1, 2,
                {'mnist1d': {'steps': 30, 'eval_every': 10, 'checkpoint_every': 30}}),
}


def policy() -> decide_lib.AcceptancePolicy:
  """The shipped charter's acceptance terms (costs are unknown here, so they never bind)."""
  return decide_lib.AcceptancePolicy.of(load_charter(trials.ROOT / 'WORKSPACE.md'))


def population(task: str, size: Size, work: Path) -> list[float]:
  """Validation metric per seed of the shipped experiment, `size.population` seeds at once."""
  config = trials.load_config(trials.ROOT / search.TASKS[task].experiment)
  for key, value in size.train.get(task, {}).items():
    config.train[key] = value
  card = train_and_evaluate(config, work / f'population-{task}', num_seeds=size.population)
  return card['val_metric']['per_seed']


def judge(values: np.ndarray, draws: int, effect: float, k: int,
          rule: decide_lib.AcceptancePolicy, rng: np.random.Generator) -> dict[str, int]:
  """Acceptances of each rule over `draws` resampled pairs, and the seeds per arm the agent's
  sequential test used in all ('seeds'): its looks take the draw's seeds k at a time, distinct
  while the population has enough of them."""
  accepted = dict.fromkeys(RULES, 0) | {'seeds': 0}
  cap = rule.design.looks * k
  for _ in range(draws):
    inc, cand = values[rng.choice(len(values), 2 * cap,
                                  replace=len(values) < 2 * cap)].reshape(2, cap)
    cand = cand + effect
    for n in range(k, cap + 1, k):
      pairs = decide_lib.SeedResults(decide_lib.ArmResult(inc[:n]), decide_lib.ArmResult(cand[:n]))
      verdict = decide_lib.decide(pairs, 'max', rule)
      if not verdict.undecided:
        break
    accepted['agent: sequential test'] += verdict.accepted
    accepted['seeds'] += n
    accepted['strictly better, 1 seed'] += bool(cand[0] > inc[0])
    accepted['strictly better, mean of 3 seeds'] += bool(cand[:3].mean() > inc[:3].mean())
  return accepted


def wilson(hits: int, n: int) -> tuple[float, float]:
  """95% interval of a rate: stays inside [0, 1] and is honest at 0 hits."""
  ci = stats.binomtest(hits, n).proportion_ci(confidence_level=0.95, method='wilson')
  return float(ci.low), float(ci.high)


def false_acceptance(size: Size, work: Path, say: Say) -> dict[str, Any]:
  rule = policy()
  tasks = {}
  for task in size.tasks:
    values = np.asarray(population(task, size, work), dtype=float)
    rng = np.random.default_rng(0)
    rates = {}
    for effect in (0.0, *size.effects):
      draws = size.null_draws if effect == 0 else size.power_draws
      hits = judge(values, draws, effect, search.SEEDS, rule, rng)
      seeds = hits.pop('seeds') / draws
      rates[f'{effect:g}'] = {name: {'hits': h, 'draws': draws} for name, h in hits.items()}
      rates[f'{effect:g}']['agent seeds per arm'] = seeds
      say(f'[rigor] {task} true gain {effect:+g}: ' + ', '.join(
          f'{n} {h / draws:.2%}' for n, h in hits.items()) + f' (agent: {seeds:.1f} seeds)')
    tasks[task] = {'population': values.tolist(), 'seed_std': float(values.std(ddof=1)),
                   'rates': rates}
  return {'policy': dataclasses.asdict(rule.acceptance), 'tasks': tasks}  # costs never bind


def replication(size: Size, work: Path, say: Say, found: dict[str, Any]) -> dict[str, Any]:
  """Re-runs a seeded sample of the kept changes (before and after) on fresh seeds."""
  tasks = {}
  for name, task in found['data']['tasks'].items():
    ctx = search.Context.make(name, task['train'], work / f'replicate-{name}')
    if ctx.base != task['base_files']:
      raise RuntimeError(f'the {name} experiment or models changed since the search ran: '
                         're-run the search first')
    methods = {}
    for method in REPLICATED_METHODS:
      kept = [{**c, 'rep': r['rep']} for r in task['runs'] if r['method'] == method
              for c in r.get('accepted_changes', [])]
      improved = [c for c in kept if c['reason'] == 'improved']
      rng = np.random.default_rng(0)
      picked = sorted(rng.choice(len(improved), min(size.per_method, len(improved)),
                                 replace=False).tolist())
      rows = []
      for i in picked:
        change = improved[i]
        before = ctx.evaluate(change['before'], REPLICATION_FIRST_SEED, size.fresh_seeds)
        after = ctx.evaluate(change['after'], REPLICATION_FIRST_SEED, size.fresh_seeds)
        gain = trials.mean([a - b for a, b in zip(after['val'], before['val'])])
        rows.append({'rep': change['rep'], 'claimed_gain': change['claimed_gain'],
                     'fresh_gain': gain, 'replicated': gain > 0})
        say(f'[rigor] {name} {method}: claimed {change["claimed_gain"]:+.4f}, fresh '
            f'{gain:+.4f}')
      methods[method] = {'kept': len(kept), 'improved': len(improved),
                         'ties_kept': [c['reason'] for c in kept if c['reason'] != 'improved'],
                         'rerun': rows}
    tasks[name] = methods
  return {'fresh_seeds': size.fresh_seeds, 'first_seed': REPLICATION_FIRST_SEED,
          'search_size': found['size'], 'tasks': tasks}


def run(size: Size, work: Path, say: Say, previous: dict[str, Any]) -> dict[str, Any]:
  return {'false_acceptance': false_acceptance(size, work, say),
          'replication': replication(size, work, say, previous['search']),
          'run_trials': RUN_TRIALS}


def _rate(cell: dict[str, int]) -> str:
  lo, hi = wilson(cell['hits'], cell['draws'])
  return f'{cell["hits"] / cell["draws"]:.1%} [{lo:.1%}, {hi:.1%}]'


def render(result: dict[str, Any], plots: list[str]) -> str:
  data = result['data']
  fa, rep = data['false_acceptance'], data['replication']
  p = fa['policy']
  lines = [__doc__.split('\n\n', 1)[1].replace('\n', ' ').strip(), '',
           f'Rule terms (the shipped charter): false_accept {p["false_accept"]}, power '
           f'{p["power"]} at min_effect {p["min_effect"]}, at most {p["max_seeds"]} seeds per '
           'arm, looked at 3 by 3 (the first 3 are the screen). Rates with a 95% Wilson '
           'interval; the agent\'s mean seeds per arm in brackets.']
  for task, t in fa['tasks'].items():
    null = t['rates']['0']
    effects = [e for e in t['rates'] if e != '0']
    lines += ['', f'### {task}: shipped experiment, {len(t["population"])} seeds, seed-to-seed '
              f'std {100 * t["seed_std"]:.2f} points', '']
    rows = []
    for rule in RULES:
      rate = null[rule]['hits'] / null[rule]['draws']
      seeds = lambda e: (f' [{t["rates"][e]["agent seeds per arm"]:.1f}]'
                         if rule == RULES[0] else '')
      rows.append([rule, _rate(null[rule]) + seeds('0'),
                   f'{1 - (1 - rate) ** data["run_trials"]:.1%}',
                   *(f'{t["rates"][e][rule]["hits"] / t["rates"][e][rule]["draws"]:.1%}'
                     + seeds(e) for e in effects)])
    lines.append(report.table(
        ['rule', f'false acceptance (null edit, {null[RULES[0]]["draws"]} draws)',
         f'P(>= 1 false acceptance in {data["run_trials"]} trials)',
         *(f'kept: true gain +{100 * float(e):g} points' for e in effects)], rows))
  lines += ['', f'### Replication of kept changes on {rep["fresh_seeds"]} fresh seeds '
            f'({rep["first_seed"]}...)', '',
            f'From the benchmark 3 run ({rep["search_size"]} size): a seeded sample of the '
            'changes kept for a gain (not the ties the agent keeps for speed or simplicity, '
            'listed after the table), each re-run before and after.', '']
  rows, ties = [], []
  for task, methods in rep['tasks'].items():
    for method, m in methods.items():
      rerun = m['rerun']
      hits = sum(r['replicated'] for r in rerun)
      rows.append([task, method, m['improved'], len(rerun),
                   f'{hits}/{len(rerun)}' if rerun else '-',
                   report.spread([r['claimed_gain'] for r in rerun], as_pct=True, signed=True),
                   report.spread([r['fresh_gain'] for r in rerun], as_pct=True, signed=True)])
      if m['ties_kept']:
        ties.append(f'{task} {method}: {", ".join(m["ties_kept"])}')
  lines.append(report.table(['task', 'method', 'kept for a gain', 're-run', 'replicated',
                             'claimed gain', 'fresh gain'], rows))
  if ties:
    lines += ['', 'Kept as ties (not re-run): ' + '; '.join(ties) + '.']
  lines += ['', *(f'![acceptance rate against true gain]({p})' for p in plots)]
  return '\n'.join(lines)


def summary(result: dict[str, Any]) -> list[list[str]]:
  data = result['data']
  rows = []
  for task, t in data['false_acceptance']['tasks'].items():
    null = t['rates']['0']
    rate = lambda rule: null[rule]['hits'] / null[rule]['draws']
    rows.append([f'4. Rigor, {task}', 'false acceptance of null edits: the agent\'s rule '
                 'below keep-if-strictly-better',
                 f'agent {rate(RULES[0]):.2%} vs strictly better (1 seed) {rate(RULES[1]):.1%}',
                 'met' if rate(RULES[0]) < rate(RULES[1]) else 'missed'])
  for task, methods in data['replication']['tasks'].items():
    cells = []
    for method, m in methods.items():
      hits = sum(r['replicated'] for r in m['rerun'])
      cells.append(f'{method} {hits}/{len(m["rerun"])}')
    rows.append([f'4. Rigor, {task}', 'kept changes replicate on fresh seeds',
                 '; '.join(cells), '-'])
  return rows


def plot(result: dict[str, Any], out_dir: Path) -> list[str]:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  tasks = result['data']['false_acceptance']['tasks']
  fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False)
  for axis, (task, t) in zip(axes[0], tasks.items()):
    effects = list(t['rates'])
    for rule in RULES:
      axis.plot([100 * float(e) for e in effects],
                [100 * t['rates'][e][rule]['hits'] / t['rates'][e][rule]['draws']
                 for e in effects], marker='o', label=rule)
    axis.set_title(f'{task} (seed std {100 * t["seed_std"]:.1f} points)')
    axis.set_xlabel('true gain of the candidate (points)')
    axis.set_ylabel('kept (%)')
    axis.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  path = out_dir / 'rigor.png'
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [path.name]
