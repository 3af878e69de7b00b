"""Accelerator smoke run: the harness and a short agent run on whatever device JAX sees.

Prepared for a GPU box or a TPU VM (after `jax[cuda12]` or `jax[tpu]` is installed, README
"On a GPU or TPU machine"): `python -m benchmarks.run --only=accelerator`. It is not in the
default list, since on a CPU-only machine it measures nothing new. Each experiment trains by
hand (`harness.main`, as a user runs it: seeds vmapped on an accelerator) and reports its
device, compile and step times, device peak memory and validation metric; then the agent
runs a few trials on a clone of this checkout (`agent.main run`, the sandbox as the charter
says) and `verify` checks the run. Every number comes from the processes' own scorecards and
journal; the device is named as JAX names it.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.trials import Say

ROOT = Path(__file__).resolve().parent.parent
AGENT_EXPERIMENT = 'experiments/mnist1d_mlp.py'
RUN_ID = 'accelerator-smoke'
_DEVICE = ('import json, jax; d = jax.devices(); print(json.dumps({"platform": d[0].platform, '
           '"kind": d[0].device_kind, "count": len(d), "jax": jax.__version__}))')


@dataclasses.dataclass(frozen=True)
class Size:
  experiments: tuple[str, ...]
  seeds: int
  trials: int  # of the agent; 0: the harness alone
  overrides: tuple[str, ...] = ()
  timeout_s: float = 1800


SIZES = {
    'full': Size(('experiments/mnist1d_mlp.py', 'experiments/digits_mlp.py',
                  'experiments/charlm_transformer.py'), seeds=3, trials=2),
    'quick': Size(('experiments/mnist1d_mlp.py',), seeds=3, trials=2),
    'toy': Size(('experiments/mnist1d_mlp.py',), seeds=1, trials=0, overrides=(
        '--config.train.steps=20', '--config.train.eval_every=10',
        '--config.train.checkpoint_every=20', '--config.optimizer.warmup_steps=2')),
}


def _python(args: list[str], timeout_s: float, cwd: Path = ROOT) -> tuple[int, str, float]:
  clock = time.perf_counter()
  done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                        timeout=timeout_s)
  return done.returncode, (done.stdout + done.stderr)[-2000:], time.perf_counter() - clock


def _harness(experiment: str, size: Size, work: Path) -> dict[str, Any]:
  workdir = work / Path(experiment).stem
  code, tail, wall = _python(['-m', 'harness.main', f'--config={experiment}',
                              f'--workdir={workdir}', f'--seeds={size.seeds}',
                              *size.overrides], size.timeout_s)
  row: dict[str, Any] = {'experiment': experiment, 'exit': code, 'wall_seconds': wall}
  if code != 0:
    return row | {'error': tail.strip().splitlines()[-1] if tail.strip() else '?'}
  card = json.loads((workdir / 'scorecard.json').read_text())
  peak = (card.get('memory') or {}).get('device_peak_bytes')
  return row | {
      'device': card.get('device'), 'metric': card['metric']['name'],
      'val_metric': card['val_metric']['mean'], 'train_seconds': card['train_seconds'],
      'compile_seconds': card.get('compile_seconds'),
      'step_ms_p50': (card.get('step_latency_ms') or {}).get('p50'),
      'device_peak_mb': peak / 2**20 if peak else None,
      'host_rss_mb': (card.get('memory') or {}).get('max_rss_mb')}


def _agent(size: Size, work: Path) -> dict[str, Any]:
  from agent.recording import records
  from agent.recording.journal import Journal
  repo = work / 'workspace'
  subprocess.run(['git', 'clone', '-q', str(ROOT), str(repo)], check=True)
  code, tail, wall = _python(['-m', 'agent.main', 'run', f'--workspace={repo}',
                              f'--experiment={AGENT_EXPERIMENT}', '--proposer=heuristic',
                              f'--budget_trials={size.trials}', '--budget_minutes=20',
                              f'--run_id={RUN_ID}'], size.timeout_s * 2)
  result: dict[str, Any] = {'exit': code, 'wall_seconds': wall, 'tail': tail[-600:]}
  journal_path = repo / 'runs' / RUN_ID / 'journal.sqlite'
  if journal_path.exists():
    with Journal.open(journal_path) as journal:
      proposed = {r.trial: r.body for r in journal.records(records.Proposed)}
      result['trials'] = [
          {'trial': r.trial, 'operator': proposed[r.trial].operator if r.trial in proposed
           else '?', 'verdict': r.body.reason_code, 'accepted': r.body.accepted}
          for r in journal.records(records.Verdict)]
      result['trial_seconds'] = [r.body.wall_seconds
                                 for r in journal.records(records.TrialFinished)]
  verify, verify_tail, _ = _python(['-m', 'agent.main', 'verify', f'--workspace={repo}',
                                    f'--run_id={RUN_ID}'], 600)
  return result | {'verify_exit': verify, 'verify': verify_tail.strip().splitlines()[-1:]}


def run(size: Size, work: Path, say: Say, previous: dict[str, Any]) -> dict[str, Any]:
  del previous
  code, out, _ = _python(['-c', _DEVICE], 300)
  device = json.loads(out.strip().splitlines()[-1]) if code == 0 else {'error': out[-300:]}
  say(f'[accelerator] JAX sees {device}')
  rows = []
  for experiment in size.experiments:
    rows.append(_harness(experiment, size, work))
    say(f'[accelerator] {experiment}: {rows[-1].get("val_metric", rows[-1].get("error"))}')
  agent = _agent(size, work) if size.trials else None
  return {'device': device, 'seeds': size.seeds, 'harness': rows, 'agent': agent}


def render(result: dict[str, Any], plots: list[str]) -> str:
  del plots
  data = result['data']
  device = data['device']
  fmt = lambda v, f='{:.2f}': '-' if v is None else f.format(v)
  rows = [[r['experiment'], r['exit'], fmt(r.get('val_metric'), '{:.4f}'),
           fmt(r['wall_seconds'], '{:.1f}'), fmt(r.get('compile_seconds'), '{:.1f}'),
           fmt(r.get('train_seconds'), '{:.1f}'), fmt(r.get('step_ms_p50')),
           fmt(r.get('device_peak_mb'), '{:.0f}'), fmt(r.get('host_rss_mb'), '{:.0f}')]
          for r in data['harness']]
  parts = [__doc__.split('\n\n', 1)[1].replace('\n', ' ').strip(), '',
           f'Device: {device.get("count", "?")} x {device.get("kind", "?")} '
           f'({device.get("platform", "?")}), jax {device.get("jax", "?")}; '
           f'{data["seeds"]} seeds per run.', '',
           report.table(['experiment', 'exit', 'val metric', 'wall s', 'compile s',
                         'train s', 'step ms (p50)', 'device peak MB', 'host RSS MB'], rows)]
  agent = data['agent']
  if agent:
    trials = '; '.join(f'{t["trial"]} {t["operator"]}: {t["verdict"]}'
                       for t in agent.get('trials', [])) or 'none recorded'
    parts += ['', f'Agent ({AGENT_EXPERIMENT}, heuristic): exit {agent["exit"]} in '
              f'{agent["wall_seconds"]:.0f} s; trials: {trials}; trial seconds '
              f'{", ".join(f"{s:.1f}" for s in agent.get("trial_seconds", []))}; verify exit '
              f'{agent["verify_exit"]} ({" ".join(agent["verify"])}).']
  return '\n'.join(parts)


def summary(result: dict[str, Any]) -> list[list[str]]:
  data = result['data']
  ran = all(r['exit'] == 0 for r in data['harness'])
  agent = data['agent']
  if agent:
    ran = ran and agent['exit'] == 0 and agent['verify_exit'] == 0
  device = data['device']
  accelerator = device.get('platform') in ('gpu', 'tpu')
  return [['9. Accelerator smoke run',
           'the harness and 2 agent trials run and verify on the accelerator',
           f'{device.get("kind", "?")} ({device.get("platform", "?")})'
           + ('' if accelerator else ': no accelerator, nothing measured'),
           ('met' if ran else 'MISSED') if accelerator else '-']]


def plot(result: dict[str, Any], out_dir: Path) -> list[str]:
  del result, out_dir
  return []  # a table of one run per experiment
