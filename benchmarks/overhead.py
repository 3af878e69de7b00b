"""Benchmark 1: what the harness's training loop costs against a minimal hand-written loop.

Same model (models.build_model), data (harness.datasets), optimiser and schedule
(harness.optimizers), batch size and step count, one seed, in this process. Two hand-written
loops, both with a host-side permutation per epoch and one jitted step per batch:
`nnx.jit` on the model and an nnx.Optimizer, as the Flax guides write it, and `jax.jit` on
the split parameters and optax state (less Python per step). The harness is measured two
ways: its training loop (steps / the scorecard's train_seconds, which leaves out compile and
evaluation) and end to end (steps / wall time minus compile: evaluation, TensorBoard
scalars, checkpoints and the scorecard included). The target compares the training loop
with the faster hand-written loop.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

import models
from benchmarks import report, trials
from benchmarks.trials import Say
from harness.datasets import load_task
from harness.optimizers import make_optimizer
from harness.train import train_and_evaluate

TARGET = 0.95


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  config: str  # relative to the repository root
  steps: int
  runners: tuple[bool, ...]  # train.scan_steps values the harness is measured with


@dataclasses.dataclass(frozen=True)
class Size:
  cases: tuple[Case, ...]
  repeats: int


MLP = 'experiments/mnist1d_mlp.py'
CNN = 'benchmarks/configs/mnist1d_cnn.py'
SIZES = {
    'full': Size((Case('mnist1d MLP', MLP, 3000, (True, False)),
                  Case('mnist1d 1-D CNN', CNN, 1000, (False,))), 3),
    'quick': Size((Case('mnist1d MLP', MLP, 1000, (True, False)),
                   Case('mnist1d 1-D CNN', CNN, 200, (False,))), 1),
    'toy': Size((Case('digits MLP', 'experiments/digits_mlp.py', 40, (True,)),), 1),
}


def _config(case: Case) -> ml_collections.ConfigDict:
  config = trials.load_config(trials.ROOT / case.config)
  config.train.steps = case.steps
  return config


def harness_loop(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, float]:
  start = time.perf_counter()
  card = train_and_evaluate(config, workdir, num_seeds=1)
  wall = time.perf_counter() - start
  steps = card['steps_completed']
  return {'steps_per_second': steps / card['train_seconds'],
          'end_to_end_steps_per_second': steps / (wall - card['compile_seconds']),
          'compile_seconds': card['compile_seconds'],
          'final_train_loss': card['train_loss']['mean']}


def hand_loop(config: ml_collections.ConfigDict, style: str) -> dict[str, float]:
  """The minimal loop a user would write; the first step (compile) is timed apart."""
  task = load_task(config.dataset)
  steps, batch = int(config.train.steps), int(config.train.batch_size)
  tx = make_optimizer(config.optimizer, steps)
  model = models.build_model(config.model, input_shape=task.input_shape,
                             num_outputs=task.num_outputs, rngs=nnx.Rngs(config.train.seed))
  x_all, y_all = task.train.x, task.train.y
  per_epoch = len(y_all) // batch
  rng = np.random.default_rng(config.train.seed)

  def batches():
    for step in range(steps):
      if step % per_epoch == 0:
        perm = rng.permutation(len(y_all))
      idx = perm[(step % per_epoch) * batch:(step % per_epoch + 1) * batch]
      yield x_all[idx], y_all[idx]

  def loss_fn(m, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(m(x, train=True), y).mean()

  if style == 'nnx.jit':
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(m, opt, x, y):
      loss, grads = nnx.value_and_grad(loss_fn)(m, x, y)
      opt.update(m, grads)
      return loss
    step = lambda x, y: nnx_step(model, optimizer, x, y)
  else:
    graphdef, params = nnx.split(model)
    state = [params, tx.init(params)]

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def jax_step(p, opt_state, x, y):
      loss, grads = jax.value_and_grad(lambda q: loss_fn(nnx.merge(graphdef, q), x, y))(p)
      updates, opt_state = tx.update(grads, opt_state, p)
      return optax.apply_updates(p, updates), opt_state, loss

    def step(x, y):
      state[0], state[1], loss = jax_step(state[0], state[1], x, y)
      return loss
  feed = batches()
  start = time.perf_counter()
  jax.block_until_ready(step(*next(feed)))
  compile_seconds = time.perf_counter() - start
  tail_from = steps - min(steps, int(config.train.eval_every))  # the harness's chunk mean
  tail = []
  start = time.perf_counter()
  for i, (x, y) in enumerate(feed, start=1):
    loss = step(x, y)
    if i >= tail_from:
      tail.append(loss)
  jax.block_until_ready(tail)
  return {'steps_per_second': (steps - 1) / (time.perf_counter() - start),
          'compile_seconds': compile_seconds,
          'final_train_loss': float(np.mean(jax.device_get(tail)))}


def _loops(case: Case) -> list[str]:
  return [f'harness ({"scan" if scan else "dispatch"})' for scan in case.runners] + [
      'hand-written (jax.jit)', 'hand-written (nnx.jit)']


def run(size: Size, work: Path, say: Say, previous: dict[str, Any]) -> dict[str, Any]:
  cases = {}
  for case in size.cases:
    measured: dict[str, list[dict[str, float]]] = {name: [] for name in _loops(case)}
    for repeat in range(size.repeats):  # interleaved, so a burst of other load hits every loop
      for scan in case.runners:
        config = _config(case)
        config.train.scan_steps = scan
        name = f'harness ({"scan" if scan else "dispatch"})'
        measured[name].append(harness_loop(config, work / f'{case.name}-{scan}-{repeat}'))
      for style in ('jax.jit', 'nnx.jit'):
        measured[f'hand-written ({style})'].append(hand_loop(_config(case), style))
      say(f'[overhead] {case.name} repeat {repeat + 1}/{size.repeats}: ' + ', '.join(
          f'{n} {m[-1]["steps_per_second"]:.0f}' for n, m in measured.items()) + ' steps/s')
    shipped = f'harness ({"scan" if _config(case).train.scan_steps else "dispatch"})'
    median = {n: statistics.median(r['steps_per_second'] for r in runs)
              for n, runs in measured.items()}
    best_hand = max(v for n, v in median.items() if n.startswith('hand'))
    end_to_end = statistics.median(r['end_to_end_steps_per_second'] for r in measured[shipped])
    cases[case.name] = {'config': case.config, 'steps': case.steps, 'shipped_runner': shipped,
                        'batch_size': int(_config(case).train.batch_size), 'runs': measured,
                        'median_steps_per_second': median,
                        'ratio': median[shipped] / best_hand,
                        'end_to_end_ratio': end_to_end / best_hand}
  return {'repeats': size.repeats, 'target': TARGET, 'cases': cases}


def render(result: dict[str, Any], plots: list[str]) -> str:
  data = result['data']
  lines = [__doc__.split('\n\n', 1)[1].replace('\n', ' ').strip(), '',
           f'Median over {data["repeats"]} interleaved repeat(s); one seed. The end-to-end column '
           'includes the harness\'s fixed per-run costs, so it grows towards the training-loop '
           'column as runs get longer.', '']
  rows = []
  for name, case in data['cases'].items():
    for loop, runs in case['runs'].items():
      med = case['median_steps_per_second'][loop]
      e2e = (f'{statistics.median(r["end_to_end_steps_per_second"] for r in runs):.0f}'
             if loop.startswith('harness') else '-')
      rows.append([name, f'{case["steps"]} x {case["batch_size"]}', loop + (
          ' (as configured)' if loop == case['shipped_runner'] else ''), f'{med:.0f}', e2e,
          f'{statistics.median(r["compile_seconds"] for r in runs):.2f}',
          f'{statistics.median(r["final_train_loss"] for r in runs):.3g}'])
  lines.append(report.table(['model', 'steps x batch', 'loop', 'steps/s', 'end-to-end steps/s',
                             'compile s', 'train loss, last eval interval'], rows))
  lines += ['', report.table(['model', 'training loop / best hand-written',
                              'end to end / best hand-written'],
                             [[n, report.verdict(c['ratio'], data['target'], True),
                               report.verdict(c['end_to_end_ratio'], data['target'], True)]
                              for n, c in data['cases'].items()])]
  lines += ['', *(f'![steps per second]({p})' for p in plots)]
  return '\n'.join(lines)


def summary(result: dict[str, Any]) -> list[list[str]]:
  data = result['data']
  return [[f'1. Harness overhead, {n}', f'training-loop steps/s >= {data["target"]} x the '
           'faster hand-written loop', f'{c["ratio"]:.2f} (end to end {c["end_to_end_ratio"]:.2f})',
           report.verdict(c['ratio'], data['target'], True)] for n, c in data['cases'].items()]


def plot(result: dict[str, Any], out_dir: Path) -> list[str]:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  cases = result['data']['cases']
  fig, axes = plt.subplots(1, len(cases), figsize=(5.5 * len(cases), 3.6), squeeze=False)
  for axis, (name, case) in zip(axes[0], cases.items()):
    names = list(case['median_steps_per_second'])
    axis.barh(names, [case['median_steps_per_second'][n] for n in names],
              color=['C0' if n.startswith('harness') else 'C7' for n in names])
    axis.set_title(f'{name}: {case["steps"]} steps, batch {case["batch_size"]}')
    axis.set_xlabel('steps per second (median)')
    axis.invert_yaxis()
  fig.tight_layout()
  path = out_dir / 'overhead.png'
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return [path.name]
