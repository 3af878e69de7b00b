"""Benchmark 4: how often each acceptance rule keeps a change that does nothing, and whether
the changes the search kept hold up when re-run on fresh seeds.

False acceptance: the shipped experiment is trained on many seeds in one vmapped process,
which gives real seed-to-seed variation of its validation metric. Two null edits, candidates
with no true effect: the simulated null draws the candidate's per-seed values from the same
population on other seeds (an independent seed stream, so nothing is paired); the real null
is the experiment trained again on the same seeds with `train.stream = 1` (each seed keeps
its initialisation and gets another data order), paired seed by seed with the incumbent as
the loop pairs them, each pair's arms swapped at random (the two streams are exchangeable,
so the null holds exactly). Each rule judges many resampled candidates look by look, as the
loop does, in runs of 12 whose later candidates are judged against the run's pooled noise of
the earlier ones; the same draws, with a true gain added to the candidate, show how often
each rule keeps a real improvement (its power).

Replication: changes the agent and the autoresearch-style loop kept in benchmark 3 are
re-run, before and after, on fresh seeds; a change replicates when its mean paired gain
there is positive.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from scipy import stats

from agent.charter import load_charter
from agent.judging import decide as decide_lib
from agent.judging.noise import RunNoise
from benchmarks import report, search, trials
from benchmarks.trials import Say
from harness.train import train_and_evaluate

RULES = ('agent: sequential test', 'strictly better, 1 seed', 'strictly better, mean of 3 seeds')
RUN_TRIALS = 12  # a run's trial budget (the charter's default): chance of >= 1 false accept
REPLICATION_FIRST_SEED = 2_000_000  # fresh: used neither in the search nor its final evaluation
REPLICATED_METHODS = ('agent', 'autoresearch')
NULL_STREAM = 1  # the real null's train.stream: the same seeds' inits, another data order
Draw = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]  # (incumbent, candidate)


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


def population(task: str, size: Size, work: Path, stream: int = 0) -> list[float]:
  """Validation metric per seed of the shipped experiment, `size.population` seeds at once,
  on the seeds' own data order (stream 0) or another (`train.stream`)."""
  config = trials.load_config(trials.ROOT / search.TASKS[task].experiment)
  for key, value in size.train.get(task, {}).items():
    config.train[key] = value
  if stream:
    config.train.stream = stream
  folder = work / (f'population-{task}' + (f'-stream{stream}' if stream else ''))
  card = train_and_evaluate(config, folder, num_seeds=size.population)
  return card['val_metric']['per_seed']


def independent(values: np.ndarray) -> Draw:
  """The simulated null: both arms drawn from one population, distinct seeds while it has
  enough of them."""
  def draw(rng: np.random.Generator, cap: int) -> tuple[np.ndarray, np.ndarray]:
    inc, cand = values[rng.choice(len(values), 2 * cap,
                                  replace=len(values) < 2 * cap)].reshape(2, cap)
    return inc, cand
  return draw


def paired(incumbent: np.ndarray, candidate: np.ndarray) -> Draw:
  """The real null: `cap` of the seeds, each with its two runs (stream 0 and NULL_STREAM),
  which is the incumbent swapped at random: exchangeable streams make the null exact, and
  a chance offset among the population's pairs does not become a true effect."""
  def draw(rng: np.random.Generator, cap: int) -> tuple[np.ndarray, np.ndarray]:
    seeds = rng.choice(len(incumbent), cap, replace=len(incumbent) < cap)
    swap = rng.random(cap) < 0.5
    a, b = incumbent[seeds], candidate[seeds]
    return np.where(swap, b, a), np.where(swap, a, b)
  return draw


def judge(draw: Draw, draws: int, effect: float, k: int,
          rule: decide_lib.AcceptancePolicy, rng: np.random.Generator) -> dict[str, int]:
  """Acceptances of each rule over `draws` resampled candidates, and the seeds per arm the
  agent's sequential test used in all ('seeds'): its looks take the draw's seeds k at a time,
  against the pooled noise of the earlier candidates of its run of RUN_TRIALS (as the loop's
  agent.judging.noise gives it)."""
  accepted = dict.fromkeys(RULES, 0) | {'seeds': 0}
  cap = rule.design.looks * k
  noise = RunNoise()
  for index in range(draws):
    if index % RUN_TRIALS == 0:
      noise = RunNoise()  # a new run: no earlier comparisons
    inc, cand = draw(rng, cap)
    cand = cand + effect
    for n in range(k, cap + 1, k):
      pairs = decide_lib.SeedResults(decide_lib.ArmResult(inc[:n]), decide_lib.ArmResult(cand[:n]))
      verdict = decide_lib.decide(pairs, 'max', rule, pooled_variance=noise.variance)
      if not verdict.undecided:
        break
    noise = noise.seen([(inc[:n], cand[:n])])
    accepted['agent: sequential test'] += verdict.accepted
    accepted['seeds'] += n
    accepted['strictly better, 1 seed'] += bool(cand[0] > inc[0])
    accepted['strictly better, mean of 3 seeds'] += bool(cand[:3].mean() > inc[:3].mean())
  return accepted


def wilson(hits: int, n: int) -> tuple[float, float]:
  """95% interval of a rate: stays inside [0, 1] and is honest at 0 hits."""
  ci = stats.binomtest(hits, n).proportion_ci(confidence_level=0.95, method='wilson')
  return float(ci.low), float(ci.high)


def rates(draw: Draw, size: Size, rule: decide_lib.AcceptancePolicy, label: str,
          say: Say) -> dict[str, Any]:
  """Each rule's acceptances at a true gain of 0 and of each of size.effects."""
  rng = np.random.default_rng(0)
  found = {}
  for effect in (0.0, *size.effects):
    draws = size.null_draws if effect == 0 else size.power_draws
    hits = judge(draw, draws, effect, search.SEEDS, rule, rng)
    seeds = hits.pop('seeds') / draws
    found[f'{effect:g}'] = {name: {'hits': h, 'draws': draws} for name, h in hits.items()}
    found[f'{effect:g}']['agent seeds per arm'] = seeds
    say(f'[rigor] {label} true gain {effect:+g}: ' + ', '.join(
        f'{n} {h / draws:.2%}' for n, h in hits.items()) + f' (agent: {seeds:.1f} seeds)')
  return found


def false_acceptance(size: Size, work: Path, say: Say) -> dict[str, Any]:
  rule = policy()
  tasks = {}
  for task in size.tasks:
    values = np.asarray(population(task, size, work), dtype=float)
    other = np.asarray(population(task, size, work, NULL_STREAM), dtype=float)
    gains = other - values
    tasks[task] = {'population': values.tolist(), 'seed_std': float(values.std(ddof=1)),
                   'rates': rates(independent(values), size, rule, f'{task} simulated', say),
                   'real': {'stream': NULL_STREAM, 'population': other.tolist(),
                            'paired_std': float(gains.std(ddof=1)),
                            'rates': rates(paired(values, other), size, rule,
                                           f'{task} real paired', say)}}
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


def _rule_table(found: dict[str, Any], run_trials: int) -> str:
  """Each rule's false acceptance and power; the agent's mean seeds per arm in brackets."""
  null = found['0']
  effects = [e for e in found if e != '0']
  rows = []
  for rule in RULES:
    rate = null[rule]['hits'] / null[rule]['draws']
    seeds = lambda e: f' [{found[e]["agent seeds per arm"]:.1f}]' if rule == RULES[0] else ''
    rows.append([rule, _rate(null[rule]) + seeds('0'), f'{1 - (1 - rate) ** run_trials:.1%}',
                 *(f'{found[e][rule]["hits"] / found[e][rule]["draws"]:.1%}' + seeds(e)
                   for e in effects)])
  return report.table(
      ['rule', f'false acceptance (null edit, {null[RULES[0]]["draws"]} draws)',
       f'P(>= 1 false acceptance in {run_trials} trials)',
       *(f'kept: true gain +{100 * float(e):g} points' for e in effects)], rows)


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
           'interval; the agent\'s mean seeds spent per candidate (in each arm) in brackets.']
  for task, t in fa['tasks'].items():
    lines += ['', f'### {task}: shipped experiment, {len(t["population"])} seeds, seed-to-seed '
              f'std {100 * t["seed_std"]:.2f} points', '',
              'Simulated null (an independent seed stream, nothing paired):', '',
              _rule_table(t['rates'], data['run_trials'])]
    if 'real' in t:  # results from before the real null have none
      real = t['real']
      lines += ['', f'Real paired null (the same seeds with train.stream = {real["stream"]}: '
                'each init kept, another data order; the paired gains\' std '
                f'{100 * real["paired_std"]:.2f} points):', '',
                _rule_table(real['rates'], data['run_trials'])]
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
  terms = data['false_acceptance']['policy']
  for task, t in data['false_acceptance']['tasks'].items():
    null = t['rates']['0']
    rate = lambda rule: null[rule]['hits'] / null[rule]['draws']
    rows.append([f'4. Rigor, {task}', 'false acceptance of null edits: the agent\'s rule '
                 'below keep-if-strictly-better',
                 f'agent {rate(RULES[0]):.2%} vs strictly better (1 seed) {rate(RULES[1]):.1%}',
                 'met' if rate(RULES[0]) < rate(RULES[1]) else 'missed'])
    for name, found in (('simulated', t['rates']), ('real paired', t.get('real', {}).get('rates'))):
      if found and '0.03' in found:
        cell = lambda e: found[e][RULES[0]]['hits'] / found[e][RULES[0]]['draws']
        met = cell('0') <= terms['false_accept'] and cell('0.03') >= terms['power']
        rows.append([f'4. Rigor, {task}', f'{name} null: false acceptance <= '
                     f'{terms["false_accept"]:.0%}, power >= {terms["power"]:.0%} at +3 points',
                     f'{cell("0"):.2%}, {cell("0.03"):.1%} ({found["0"]["agent seeds per arm"]:.1f}'
                     f' and {found["0.03"]["agent seeds per arm"]:.1f} seeds per candidate)',
                     'met' if met else 'missed'])
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
    for null, style in (('rates', '-'), ('real', '--')):
      found = t['rates'] if null == 'rates' else t.get('real', {}).get('rates')
      for color, rule in enumerate(RULES if found else ()):
        axis.plot([100 * float(e) for e in effects],
                  [100 * found[e][rule]['hits'] / found[e][rule]['draws'] for e in effects],
                  style, marker='o', color=f'C{color}',
                  label=rule + (' (real paired null)' if null == 'real' else ''))
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
