"""Benchmark 3: search quality at equal budget, the agent against the peers' methods.

Four methods start from the same experiment, spend the same budget (trials AND compute
seconds, whichever runs out first) and are judged the same way at the end:

- agent: the real agent.loop.Loop with the heuristic proposer and its acceptance rule
  (a sequential paired test: the screen's 3 seeds, then 3 fresh seeds a look while undecided,
  pruning on);
- autoresearch: the same proposer, one seed, keep a change if strictly better
  (karpathy/autoresearch's rule);
- random: random search over the experiment's knobs (benchmarks/space.py), 3 seeds a trial;
- tpe: Optuna's TPE sampler over the same space, 3 seeds a trial.

Every run goes through the same in-process trial runner (benchmarks/trials.py); compute
seconds are trial wall time, baseline and confirmations included. Each method's final
incumbent is evaluated once, at the end, on the same fresh seeds, on validation and test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from agent.candidate import BUDGET
from agent.charter import Charter, load_charter
from agent.editing import knobs
from agent.loop import FINAL_FIRST_SEED, BaselineError
from agent.proposing.heuristic import HeuristicProposer
from agent.proposing.proposal import NoProposal, Observation
from agent.recording import records, vcs
from agent.recording.journal import Journal
from agent.recording.state import TrialSummary
from agent.safety.executor import TrialOutcome, TrialSpec
from agent.start import Choices, UsageError, start_run
from benchmarks import report, space, trials
from benchmarks.trials import Budget, Files, Say

METHODS = ('agent', 'autoresearch', 'random', 'tpe')
SEEDS = 3  # per trial: the charter's default
FINAL_SEEDS = 3
PAPER = {'MLP': 0.68, 'CNN': 0.94, 'human': 0.96}  # Greydanus (2020), MNIST-1D test accuracy


@dataclasses.dataclass(frozen=True)
class Task:
  experiment: str
  conv_family: str


TASKS = {'mnist1d': Task('experiments/mnist1d_mlp.py', 'cnn1d'),
         'digits': Task('experiments/digits_mlp.py', 'cnn2d')}


@dataclasses.dataclass(frozen=True)
class Size:
  tasks: tuple[str, ...]
  reps: int
  trials: int
  compute_seconds: Mapping[str, float]
  train: Mapping[str, Mapping[str, int]]  # per task: the shortened train.* values
  trial_cap_fraction: float = 1 / 2
  max_seeds: int | None = None  # the charter's acceptance.max_seeds, cut for toy runs
  methods: tuple[str, ...] = METHODS


def _train(steps: int, every: int) -> dict[str, int]:
  return {'steps': steps, 'eval_every': every, 'checkpoint_every': steps}


SIZES = {
    'full': Size(('mnist1d', 'digits'), 3, 12, {'mnist1d': 60, 'digits': 30},
                 {'mnist1d': _train(600, 60), 'digits': _train(500, 50)}),
    'quick': Size(('mnist1d', 'digits'), 1, 4, {'mnist1d': 20, 'digits': 10},
                  {'mnist1d': _train(600, 60), 'digits': _train(500, 50)}),
    'toy': Size(('mnist1d',), 1, 1, {'mnist1d': 120}, {'mnist1d': _train(20, 10)},
                max_seeds=3),
}


@dataclasses.dataclass
class Context:
  """One task's shared set-up: the workspace every method starts from, the space, the judge."""
  name: str
  task: Task
  workspace: Path
  work: Path
  evaluate: trials.Evaluator
  dims: list[space.Dim]
  left_out: dict[str, str]
  base: Files
  charter: Charter

  @classmethod
  def make(cls, name: str, train: Mapping[str, int], work: Path,
           max_seeds: int | None = None) -> 'Context':
    task = TASKS[name]
    workspace = trials.make_workspace(work / 'workspace', task.experiment, train)
    scratch = trials.Scratch(workspace, work / 'eval-tree', task.experiment)
    dims, left_out = space.build(workspace / task.experiment, task.conv_family)
    charter = load_charter(workspace / 'WORKSPACE.md')
    if max_seeds:
      charter = dataclasses.replace(charter, acceptance=dataclasses.replace(
          charter.acceptance, max_seeds=max_seeds))
    return cls(name, task, workspace, work, trials.Evaluator(scratch, work / 'eval-runs'), dims,
               left_out, scratch.base, charter)


class Trajectory:
  """Best-so-far (as the method itself measured it) after the baseline and after each trial,
  with the compute seconds spent by then."""

  def __init__(self, value: float, compute: float):
    self.points = [{'trial': 0, 'compute': compute, 'value': value, 'best': value,
                    'accepted': True, 'what': 'baseline'}]

  @property
  def best(self) -> float:
    return self.points[-1]['best']

  def add(self, what: str, value: float | None, accepted: bool, best: float,
          compute: float, reason: str = '') -> None:
    self.points.append({'trial': len(self.points), 'compute': compute, 'value': value,
                        'best': best, 'accepted': accepted, 'what': what, 'reason': reason})


def _value(outcome: TrialOutcome) -> float | None:
  """Mean validation metric of a finished run; None for anything that did not finish cleanly."""
  if outcome.status != 'ok' or outcome.scorecard is None:
    return None
  value = outcome.scorecard['val_metric']['mean']
  return value if value is not None and math.isfinite(value) else None


def _fmt(value: float | None) -> str:
  return 'n/a' if value is None else f'{value:.4f}'


# ------------------------------------------------------------------------------ methods


def run_agent(ctx: Context, rep: int, seed: int, budget: Budget, say: Say,
              charter: Charter | None = None, run_id: str = '') -> dict[str, Any]:
  """agent.loop.Loop started as `agent.main run` starts it, on the budgeted in-process runner."""
  def execute(spec: TrialSpec, scorer=None, on_curve=None) -> TrialOutcome:
    timeout = budget.timeout(spec.timeout_s)
    if timeout <= 0:
      return _out_of_budget(spec)
    outcome = trials.execute(dataclasses.replace(spec, timeout_s=timeout), scorer,
                             on_curve=on_curve)
    return _budget_edge(budget.charge(outcome), timeout < spec.timeout_s)

  def execute_batch(spec: TrialSpec, scorer=None, rule=None) -> list[TrialOutcome]:
    timeout = budget.timeout(spec.timeout_s)
    if timeout <= 0:
      return [_out_of_budget(spec) for _ in spec.members]
    outcomes = trials.execute_batch(dataclasses.replace(spec, timeout_s=timeout), scorer, rule)
    budget.charge(outcomes[0])  # one process: its wall time once, whatever the members
    return [_budget_edge(o, timeout < spec.timeout_s) for o in outcomes]

  compute = budget.compute_seconds if math.isfinite(budget.compute_seconds) else 0
  choices = Choices(seeds=SEEDS, budget_trials=budget.trials, budget_minutes=24 * 60,
                    budget_compute_seconds=compute)
  with start_run(ctx.workspace, charter or ctx.charter, ctx.task.experiment,
                 run_id or f'{ctx.name}-agent-{rep}', choices,
                 proposer=HeuristicProposer(seed=seed), execute=execute,
                 execute_batch=execute_batch,
                 say=lambda line: say(f'  {line}')) as loop:
    reason = loop.run()
    loop.end_session(reason)
  journal = loop.journal
  path = _agent_trajectory(journal)
  repo, commits = ctx.workspace, [loop.config.start_commit]
  verdicts = journal.read(records.Verdict)
  kept = [v for v in verdicts if v.accepted]
  commits += [v.commit for v in kept]
  files = [{p: vcs.show_file(repo, c, p) for p in ctx.base} for c in commits]
  changes = [{'before': trials.changed(ctx.base, a), 'after': trials.changed(ctx.base, b),
              'claimed_gain': v.gain, 'reason': v.reason_code}
             for a, b, v in zip(files, files[1:], kept)]
  proposals = [_digest(p.changes) for p in journal.read(records.Proposed)]
  saved = sum(v.compute_saved_seconds or 0.0 for v in verdicts)
  journal.close()
  return {'stop_reason': reason, 'points': path.points, 'final_files': files[-1],
          'accepted_changes': changes, 'proposals': proposals, 'saved_estimate': saved}


def _out_of_budget(spec: TrialSpec) -> TrialOutcome:
  return TrialOutcome(BUDGET, None, [], 0.0, None, spec.workdir / 'trial.log', '',
                      'no compute budget left to start this run')


def _budget_edge(outcome: TrialOutcome, cut: bool) -> TrialOutcome:
  """A timeout the compute budget set is the budget's edge, not the candidate's cost: the
  loop records the candidate undecided, as it does at its own minute budget's edge."""
  if not cut or outcome.status != 'timeout':
    return outcome
  return dataclasses.replace(outcome, status=BUDGET,
                             reason=f'{outcome.reason}: the compute budget\'s edge')


def _digest(changes: Mapping[str, str | None]) -> str:
  return hashlib.sha256(json.dumps(changes, sort_keys=True).encode()).hexdigest()[:12]


def _agent_trajectory(journal: Journal) -> Trajectory:
  """Per trial: compute spent (screen and confirmation runs) and the incumbent after it."""
  stored = journal.records()
  baseline = next(r.body for r in stored if isinstance(r.body, records.Baseline))
  compute = baseline.wall_seconds
  path = Trajectory(trials.mean(baseline.arm.per_seed), compute)
  for n in sorted({r.trial for r in stored if r.trial is not None}):
    mine = [r.body for r in stored if r.trial == n]
    compute += sum(b.wall_seconds for b in mine
                   if isinstance(b, (records.TrialFinished, records.ConfirmFinished)))
    verdict = next((b for b in mine if isinstance(b, (records.Verdict, records.GuardRejected))),
                   None)
    if verdict is None:
      continue
    operator = next((b.operator for b in mine if isinstance(b, records.Proposed)), '?')
    candidate = getattr(verdict, 'candidate', None)
    value = trials.mean(candidate.per_seed) if candidate and candidate.per_seed else None
    path.add(operator, value, verdict.accepted, value if verdict.accepted else path.best,
             compute, verdict.reason_code)
  return path


def run_autoresearch(ctx: Context, rep: int, seed: int, budget: Budget,
                     say: Say) -> dict[str, Any]:
  """The same proposer; one seed; keep if strictly better, else roll back (no noise model)."""
  scratch = trials.Scratch(ctx.workspace, ctx.work / f'auto-{rep}', ctx.task.experiment)
  runs = ctx.work / f'auto-{rep}-runs'
  proposer = HeuristicProposer(seed=seed)
  incumbent = dict(scratch.base)
  first = budget.charge(scratch.run(incumbent, runs, seeds=1, first_seed=0,
                                    timeout_s=budget.timeout(3600)))
  card, best = first.scorecard, _value(first)
  if best is None:
    raise RuntimeError(f'the baseline did not run: {first.status}: {first.reason}')
  path = Trajectory(best, budget.spent)
  history: list[TrialSummary] = []
  changes, reason = [], 'trial budget spent'
  for trial in range(1, budget.trials + 1):
    if budget.left() <= 0:
      reason = 'compute budget spent'
      break
    scratch.write(incumbent)
    observation = Observation(
        charter=ctx.charter, experiment=ctx.task.experiment, files=incumbent,
        knobs=knobs.inventory(scratch.root / ctx.task.experiment), scorecard=card,
        direction='max', history=list(history), trial=trial)
    try:
      proposal = proposer.propose(observation)
    except NoProposal as e:
      reason = f'the proposer has nothing left to try ({e})'
      break
    candidate = {**incumbent, **{p: t for p, t in proposal.changes.items() if t is not None}}
    outcome = budget.charge(scratch.run(candidate, runs, seeds=1, first_seed=0,
                                        timeout_s=budget.timeout(3600)))
    value = _value(outcome)
    accepted = value is not None and value > best
    gain = None if value is None else value - best
    code = 'improved' if accepted else outcome.status if value is None else 'not_better'
    history.append(TrialSummary(trial, proposal.operator, proposal.hypothesis, accepted, code,
                                gain, dict(proposal.changes)))
    proposer.learn(proposal, accepted, gain)
    say(f'  [trial {trial}] {proposal.operator}: {_fmt(value)} vs {best:.4f} -> '
        f'{"kept" if accepted else "rolled back"} ({budget.spent:.0f}/'
        f'{budget.compute_seconds:.0f} s)')
    if accepted:
      changes.append({'before': trials.changed(ctx.base, incumbent),
                      'after': trials.changed(ctx.base, candidate), 'claimed_gain': gain,
                      'reason': 'improved'})
      incumbent, card, best = candidate, outcome.scorecard, value
    path.add(proposal.operator, value, accepted, best, budget.spent, code)
  return {'stop_reason': reason, 'points': path.points, 'final_files': incumbent,
          'accepted_changes': changes}


def _space_search(ctx: Context, rep: int, budget: Budget, say: Say, label: str,
                  ask, tell) -> dict[str, Any]:
  """Random search and TPE: a baseline, then sampled configurations on 3 seeds each."""
  scratch = trials.Scratch(ctx.workspace, ctx.work / f'{label}-{rep}', ctx.task.experiment)
  runs = ctx.work / f'{label}-{rep}-runs'
  text = scratch.base[ctx.task.experiment]
  first = budget.charge(scratch.run({}, runs, seeds=SEEDS, first_seed=0,
                                    timeout_s=budget.timeout(3600)))
  best = _value(first)
  if best is None:
    raise RuntimeError(f'the baseline did not run: {first.status}: {first.reason}')
  path = Trajectory(best, budget.spent)
  incumbent: Files = dict(scratch.base)
  changes, reason = [], 'trial budget spent'
  for trial in range(1, budget.trials + 1):
    if budget.left() <= 0:
      reason = 'compute budget spent'
      break
    handle, params = ask()
    candidate = {**scratch.base, ctx.task.experiment: space.render(text, params)}
    outcome = budget.charge(scratch.run(candidate, runs, seeds=SEEDS, first_seed=0,
                                        timeout_s=budget.timeout(3600)))
    value = _value(outcome)
    tell(handle, value)
    accepted = value is not None and value > best
    what = str(params[space.FAMILY])
    say(f'  [trial {trial}] {what} ({outcome.status}): {_fmt(value)} (best '
        f'{max(best, value or best):.4f}, '
        f'{budget.spent:.0f}/{budget.compute_seconds:.0f} s)')
    if accepted:
      changes.append({'before': trials.changed(ctx.base, incumbent),
                      'after': trials.changed(ctx.base, candidate), 'claimed_gain': value - best,
                      'reason': 'improved'})
      incumbent, best = candidate, value
    path.add(what, value, accepted, best, budget.spent,
             'improved' if accepted else outcome.status if value is None else 'not_better')
  return {'stop_reason': reason, 'points': path.points, 'final_files': incumbent,
          'accepted_changes': changes}


def run_random(ctx: Context, rep: int, seed: int, budget: Budget, say: Say) -> dict[str, Any]:
  rng = np.random.default_rng(seed)
  return _space_search(ctx, rep, budget, say, 'random',
                       lambda: (None, space.sample(ctx.dims, rng)), lambda handle, value: None)


def tpe_startup_trials(trials_budget: int) -> int:
  """Optuna's default of 10 random start-up trials would leave TPE nothing to do in a
  12-trial budget; a quarter of the budget (at least 2) is a common small-budget setting."""
  return max(2, trials_budget // 4)


def run_tpe(ctx: Context, rep: int, seed: int, budget: Budget, say: Say) -> dict[str, Any]:
  import optuna
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  sampler = optuna.samplers.TPESampler(seed=seed,
                                       n_startup_trials=tpe_startup_trials(budget.trials))
  study = optuna.create_study(direction='maximize', sampler=sampler)

  def ask():
    trial = study.ask()
    return trial, space.suggest(ctx.dims, trial)

  def tell(trial, value: float | None) -> None:
    if value is None:
      study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
      study.tell(trial, value)
  return _space_search(ctx, rep, budget, say, 'tpe', ask, tell)


RUNNERS = {'agent': run_agent, 'autoresearch': run_autoresearch, 'random': run_random,
           'tpe': run_tpe}


# ------------------------------------------------------------------------------ benchmark


def run(size: Size, work: Path, say: Say, previous: dict[str, Any]) -> dict[str, Any]:
  tasks = {}
  for name in size.tasks:
    ctx = Context.make(name, size.train[name], work / name, size.max_seeds)
    compute = size.compute_seconds[name]
    baseline = ctx.evaluate(ctx.base, FINAL_FIRST_SEED, FINAL_SEEDS, test=True)
    runs = []
    for rep in range(size.reps):
      for method in size.methods:
        say(f'[search] {name} rep {rep + 1}/{size.reps} {method}: budget {size.trials} trials, '
            f'{compute:.0f} compute s')
        budget = Budget(size.trials, compute, compute * size.trial_cap_fraction)
        try:  # one broken method-run must not sink the rest
          result = RUNNERS[method](ctx, rep, rep, budget, say)
        except (BaselineError, RuntimeError, UsageError) as e:
          say(f'[search] {name} {method} rep {rep + 1} FAILED: {e}')
          runs.append({'method': method, 'rep': rep, 'master_seed': rep, 'error': str(e)})
          continue
        final = ctx.evaluate(result.pop('final_files'), FINAL_FIRST_SEED, FINAL_SEEDS, test=True)
        points = result['points']
        runs.append({'method': method, 'rep': rep, 'master_seed': rep,
                     'trials_used': len(points) - 1, 'compute_used': points[-1]['compute'],
                     'best_val': points[-1]['best'], 'final': final, **result})
        say(f'[search] {name} {method} rep {rep + 1}: own best {points[-1]["best"]:.4f}, fresh '
            f'val {trials.mean(final["val"]):.4f}, test {trials.mean(final["test"]):.4f} '
            f'({result["stop_reason"]})')
    tasks[name] = {
        'experiment': ctx.task.experiment, 'train': dict(size.train[name]),
        'budget': {'trials': size.trials, 'compute_seconds': compute,
                   'trial_cap_seconds': compute * size.trial_cap_fraction},
        'space': {d.path: d.describe() for d in ctx.dims}, 'left_out': ctx.left_out,
        'base_files': ctx.base, 'baseline': baseline, 'runs': runs}
  return {'seeds': SEEDS, 'final_seeds': FINAL_SEEDS, 'final_first_seed': FINAL_FIRST_SEED,
          'tpe_startup_trials': tpe_startup_trials(size.trials), 'tasks': tasks}


# ------------------------------------------------------------------------------ report


def _per_method(task: dict[str, Any], method: str) -> list[dict[str, Any]]:
  """The method's finished runs (a run that failed is listed under the table instead)."""
  return [r for r in task['runs'] if r['method'] == method and 'error' not in r]


def _stops(runs: list[dict[str, Any]]) -> str:
  """Why the runs ended, grouped: 'compute budget spent (60/60 s)' counts as the budget."""
  reasons: dict[str, list[str]] = {}
  for r in runs:
    reason = r.get('stop_reason') or f'FAILED: {r["error"]}'
    reason = reason.split(' (')[0] if reason.startswith('compute budget') else reason
    reasons.setdefault(reason, []).append(f'{r["method"]} rep {r["rep"] + 1}')
  if len(reasons) == 1:
    return f'Every run ended the same way: {next(iter(reasons))}.'
  return 'Why runs ended: ' + '; '.join(f'{why}: {", ".join(who)}'
                                         for why, who in reasons.items()) + '.'


def _trial_words(point: dict[str, Any]) -> str:
  reason = f' ({point["reason"]})' if point.get('reason') else ''
  if not reason and point['value'] is None and not point['what'].endswith(')'):
    reason = ' (no result)'
  value = '' if point['value'] is None else f' {100 * point["value"]:.1f}'
  return f'{point["what"]}{reason}{value}'


def _trials_words(task: dict[str, Any]) -> str:
  """Each run's trials in order, so a reader can see where a budget went."""
  lines = [f'- {r["method"]} rep {r["rep"] + 1}: '
           + (', '.join(_trial_words(p) for p in r['points'][1:]) or 'no trial')
           for r in task['runs'] if 'error' not in r]
  return 'Trials, in order (validation % where the trial produced one):\n\n' + '\n'.join(lines)


def _unfinished(run: dict[str, Any]) -> int:
  """Trials that produced no number: cut at the per-run cap or by the budget, failed, or
  (agent) stopped by the guard; pruned candidates were judged, so they do not count."""
  return sum(p['value'] is None and p.get('reason') != 'pruned' for p in run['points'][1:])


def render(result: dict[str, Any], plots: list[str]) -> str:
  data = result['data']
  return '\n'.join(_intro(data) + task_tables(data, plots))


def _intro(data: dict[str, Any]) -> list[str]:
  return [
      'Each method starts from the shipped experiment and spends the same budget: a number of '
      'trials and a number of compute seconds (trial wall time, baseline and confirmation runs '
      'included), stopping at whichever runs out first; no single run may take more than '
      'half of the compute budget. Training is shortened for the search (the same for every '
      'method, see the table). Every run is the harness\'s `train_and_evaluate` in one process '
      '(no subprocess start-up), on training seeds 0-2 (autoresearch: seed 0). Repetitions '
      'differ in the method\'s master seed (proposer, sampler). At the end each method\'s '
      f'final configuration is trained once more on {data["final_seeds"]} fresh seeds '
      f'({data["final_first_seed"]}...) and scored on validation and, once, on test.',
      '',
      '- **agent**: `agent.loop.Loop` with the heuristic proposer and the charter\'s acceptance '
      'rule (a sequential paired test: the screen\'s 3 seeds, then 3 fresh seeds a look while '
      'undecided, up to the charter\'s max_seeds; pruning on; learning-rate sweeps of 4 '
      'trained together and halved at 1/4 and 1/2 of training against the incumbent trained '
      'alongside; patience 6 tries, a batch counting once).',
      '- **autoresearch**: the same proposer, 1 seed, keep if strictly better (karpathy/'
      'autoresearch\'s rule).',
      '- **random**: random search over the knobs below, 3 seeds per trial, mean validation.',
      f'- **tpe**: Optuna TPE over the same knobs, 3 seeds per trial '
      f'({data["tpe_startup_trials"]} random start-up trials).',
      '',
      '"Own best" is the best validation each method saw during its search, measured its own '
      'way (1 or 3 seeds, selected as the maximum, so optimistic); "fresh" numbers are the '
      'final configuration re-trained on the fresh seeds. "Trials without a result" ran into '
      'the per-run cap or the end of the budget (or failed) and taught the method nothing. '
      'Cells: median [min, max] over repetitions.',
  ]


def task_tables(data: dict[str, Any], plots: list[str]) -> list[str]:
  """Per task: the budget, the methods' table, why runs ended, their trials, the plot."""
  lines = []
  for name, task in data['tasks'].items():
    budget = task['budget']
    train = task['train']
    base = task['baseline']
    lines += ['', f'### {name} (`{task["experiment"]}`)', '',
              f'Budget per method: {budget["trials"]} trials or {budget["compute_seconds"]:.0f} '
              f'compute seconds (one run at most {budget["trial_cap_seconds"]:.0f} s); training '
              f'{train["steps"]} steps, evaluated every {train["eval_every"]}.', '']
    rows = [['start (no search)', '-', '-', '-', report.pct(trials.mean(base['val'])),
             report.pct(trials.mean(base['test'])), '-', '-', '-']]
    for method in METHODS:
      runs = _per_method(task, method)
      if not runs:
        continue
      fresh_val = [trials.mean(r['final']['val']) for r in runs]
      rows.append([
          method, report.spread([r['trials_used'] for r in runs], '{:.0f}'),
          report.spread([r['compute_used'] for r in runs], '{:.0f}'),
          report.spread([r['best_val'] for r in runs], as_pct=True),
          report.spread(fresh_val, as_pct=True),
          report.spread([trials.mean(r['final']['test']) for r in runs], as_pct=True),
          report.spread([r['best_val'] - v for r, v in zip(runs, fresh_val)], as_pct=True,
                        signed=True),
          report.spread([len(r['accepted_changes']) for r in runs], '{:.0f}'),
          report.spread([_unfinished(r) for r in runs], '{:.0f}')])
    if name == 'mnist1d':
      rows.append(['MNIST-1D paper (Greydanus 2020), test, full training', '-', '-', '-', '-',
                   ', '.join(f'{k} {v:.0%}' for k, v in PAPER.items()), '-', '-', '-'])
    lines += [report.table(['method', 'trials', 'compute s', 'own best val', 'fresh val',
                            'fresh test', 'own - fresh', 'changes kept',
                            'trials without a result'], rows)]
    lines += ['', _stops(task['runs']), '', _trials_words(task)]
    left_out: dict[str, list[str]] = {}
    for path, why in task['left_out'].items():
      left_out.setdefault(why, []).append(f'`{path}`')
    lines += ['', 'Searched knobs (random, TPE): ' + '; '.join(
        f'`{p}` {d}' for p, d in task['space'].items()) + '. Left out: ' + '; '.join(
        f'{", ".join(paths)} ({why})' for why, paths in left_out.items()) + '.']
    lines += ['', *(f'![best-so-far on {name}]({p})' for p in plots if name in p)]
  return lines


def summary(result: dict[str, Any]) -> list[list[str]]:
  rows = []
  for name, task in result['data']['tasks'].items():
    tests = {m: report.spread([trials.mean(r['final']['test']) for r in _per_method(task, m)],
                              as_pct=True) for m in METHODS if _per_method(task, m)}
    medians = {m: statistics.median(trials.mean(r['final']['test'])
                                    for r in _per_method(task, m))
               for m in ('agent', 'autoresearch') if _per_method(task, m)}
    verdict = '-' if len(medians) < 2 else report.verdict(
        medians['agent'], medians['autoresearch'], at_least=True, fmt='{:.1%}')
    rows.append([f'3. Search quality, {name}',
                 "the agent's median final test >= the autoresearch-style loop's",
                 'final test: ' + '; '.join(f'{m} {v}' for m, v in tests.items()), verdict])
  return rows


def plot(result: dict[str, Any], out_dir: Path, prefix: str = 'search') -> list[str]:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  colors = dict(zip(METHODS, ('C3', 'C1', 'C0', 'C2')))
  styles = dict(zip(METHODS, ('-', '--', '-.', ':')))
  paths = []
  for name, task in result['data']['tasks'].items():
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, x_key, label in ((axes[0], 'trial', 'trials'),
                               (axes[1], 'compute', 'compute seconds')):
      for z, method in enumerate(reversed(METHODS)):  # the agent drawn last, on top
        for i, run in enumerate(_per_method(task, method)):
          xs = [p[x_key] for p in run['points']]
          ys = [100 * p['best'] for p in run['points']]
          axis.step(xs, ys, where='post', color=colors[method], linestyle=styles[method],
                    alpha=0.85, linewidth=1.8, zorder=z, label=method if i == 0 else None)
      if name == 'mnist1d':
        for k, v in PAPER.items():
          axis.axhline(100 * v, color='grey', linestyle=':', linewidth=1)
          axis.text(axis.get_xlim()[1], 100 * v, f' paper {k} (test)', va='center',
                    fontsize=7, color='grey')
      axis.set_xlabel(label)
      axis.grid(alpha=0.3)
    axes[0].set_ylabel('best validation accuracy so far (%)')
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].legend(handles[::-1], labels[::-1])
    fig.suptitle(f'{name}: best-so-far, each repetition (method\'s own measure)')
    fig.tight_layout()
    path = out_dir / f'{prefix}_{name}.png'
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path.name)
  return paths
