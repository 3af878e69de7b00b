"""Benchmark 10: candidates decided per wall-minute with W trials in flight (`--workers`),
locally and on a local Ray cluster (`--executor=ray`).

Each configuration is a real agent run (`agent.main run`, heuristic proposer, the charter's
sandbox) on its own fresh workspace holding this checkout's code, the same experiment, the
same minute budget and patience high enough that only the budget ends it; the final
evaluation is off (it is the same for every W). Counted from the journal: candidates decided
(verdicts) per minute between the baseline's end and the session's end, the trials' own
wall seconds summed over that time (how many ran at once, on average), kept changes and the
best validation metric reached. On a 2-core machine W = 2 runs two trials side by side on
the cores one trial would otherwise use alone (XLA spreads a trial over every core), so the
ratio says what overlapping the loop's own work (start-up, scoring, git, waiting on a
trial's end) buys, not what more hardware buys.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import report, trials
from benchmarks.trials import Say

EXPERIMENT = 'experiments/mnist1d_mlp.py'
RUN_ID = 'workers'


@dataclasses.dataclass(frozen=True)
class Size:
  minutes: float  # per configuration
  configurations: tuple[tuple[str, int], ...]  # (executor, workers)
  train: tuple[tuple[str, int], ...] = ()  # train.* values for every configuration


_ALL = (('local', 1), ('local', 2), ('ray', 1), ('ray', 2))
SIZES = {
    'full': Size(6.0, _ALL),
    'quick': Size(3.0, _ALL),
    'toy': Size(2.5, (('local', 2),), (('steps', 60), ('eval_every', 20),
                                       ('checkpoint_every', 60))),
}


def _workspace(dest: Path, size: Size) -> Path:
  repo = trials.make_workspace(dest, EXPERIMENT, dict(size.train))
  charter = repo / 'WORKSPACE.md'
  text = re.sub(r'(?m)^patience = \d+', 'patience = 1000', charter.read_text())
  charter.write_text(text)
  trials.git(repo, 'commit', '--quiet', '-am', 'only the budget ends the run')
  return repo


def _time(ts: str) -> float:
  return datetime.datetime.fromisoformat(ts).timestamp()


def _measure(repo: Path) -> dict[str, Any]:
  from agent.recording import records
  from agent.recording.journal import Journal
  from agent.recording.records import mean_of
  with Journal.open(repo / 'runs' / RUN_ID / 'journal.sqlite') as journal:
    start = journal.last(records.Baseline)
    end = journal.last(records.SessionEnded)
    verdicts = journal.records(records.Verdict)
    finished = journal.records(records.TrialFinished)
    minutes = (_time(end.ts) - _time(start.ts)) / 60
    baseline = mean_of(start.body.arm.per_seed)
    best = max([baseline] + [mean_of(v.body.candidate.per_seed) for v in verdicts
                             if v.body.accepted and v.body.candidate])
    return {'minutes': minutes, 'decided': len(verdicts),
            'per_minute': len(verdicts) / minutes if minutes > 0 else 0.0,
            'kept': sum(v.body.accepted for v in verdicts),
            'in_flight': sum(f.body.wall_seconds for f in finished) / 60 / minutes
            if minutes > 0 else 0.0,
            'baseline': baseline, 'best': best,
            'reasons': sorted({v.body.reason_code for v in verdicts}),
            'stop': end.body.reason}


def run(size: Size, work: Path, say: Say, previous: dict[str, Any]) -> dict[str, Any]:
  del previous
  rows = []
  for executor, workers in size.configurations:
    repo = _workspace(work / f'{executor}-{workers}', size)
    clock = time.perf_counter()
    done = subprocess.run(
        [sys.executable, '-m', 'agent.main', 'run', f'--workspace={repo}',
         f'--experiment={EXPERIMENT}', '--proposer=heuristic', f'--workers={workers}',
         f'--executor={executor}', f'--budget_minutes={size.minutes}', '--budget_trials=1000',
         '--nofinal_eval', f'--run_id={RUN_ID}'],
        cwd=trials.ROOT, capture_output=True, text=True, timeout=size.minutes * 60 * 3 + 600)
    row = {'executor': executor, 'workers': workers, 'exit': done.returncode,
           'wall_seconds': time.perf_counter() - clock}
    if done.returncode == 0:
      verify = subprocess.run([sys.executable, '-m', 'agent.main', 'verify',
                               f'--workspace={repo}', f'--run_id={RUN_ID}'], cwd=trials.ROOT,
                              capture_output=True, text=True, timeout=600)
      row |= _measure(repo) | {'verified': verify.returncode == 0}
    else:
      row['error'] = (done.stderr.strip().splitlines() or ['?'])[-1]
    say(f'[workers] {executor} W={workers}: {row.get("decided", "-")} decided in '
        f'{row.get("minutes", 0):.1f} min ({row.get("error", "ok")})')
    rows.append(row)
  return {'experiment': EXPERIMENT, 'minutes': size.minutes, 'train': dict(size.train),
          'rows': rows}


def _ratio(rows: list[dict[str, Any]], executor: str) -> float | None:
  rate = {r['workers']: r.get('per_minute') for r in rows if r['executor'] == executor}
  return rate[2] / rate[1] if rate.get(1) and rate.get(2) else None


def render(result: dict[str, Any], plots: list[str]) -> str:
  del plots
  data = result['data']
  fmt = lambda v, f='{:.2f}': '-' if v is None else f.format(v)
  rows = [[r['executor'], r['workers'], r['exit'], fmt(r.get('minutes'), '{:.1f}'),
           r.get('decided', '-'), fmt(r.get('per_minute')), fmt(r.get('in_flight')),
           r.get('kept', '-'), fmt(r.get('baseline'), '{:.4f}'), fmt(r.get('best'), '{:.4f}'),
           {True: 'yes', False: 'NO', None: '-'}[r.get('verified')],
           r.get('error', ', '.join(r.get('reasons', [])))]
          for r in data['rows']]
  ratios = [f'{executor}: W=2 / W=1 = {fmt(_ratio(data["rows"], executor))}'
            for executor in ('local', 'ray')]
  return '\n'.join([
      __doc__.split('\n\n', 1)[1].replace('\n', ' ').strip(), '',
      f'{data["experiment"]}, {data["minutes"]:g} minutes per configuration'
      + (f', train {data["train"]}' if data['train'] else ' (as shipped)') + '.', '',
      report.table(['executor', 'W', 'exit', 'minutes', 'decided', 'per minute',
                    'trials in flight (mean)', 'kept', 'baseline val', 'best val', 'verify',
                    'verdict reasons'], rows), '',
      'Candidates decided per minute, ' + '; '.join(ratios) + '.'])


def summary(result: dict[str, Any]) -> list[list[str]]:
  rows = result['data']['rows']
  return [['10. Trials in flight', 'candidates decided per wall-minute, W = 2 over W = 1 '
           '(no target: a measurement)', '; '.join(
               f'{e} {r:.2f}x' for e in ('local', 'ray') if (r := _ratio(rows, e))) or '-',
           '-']]


def plot(result: dict[str, Any], out_dir: Path) -> list[str]:
  del result, out_dir
  return []  # four rows of a table
