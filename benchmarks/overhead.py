"""Benchmark 1: what the harness's training loop costs against a minimal hand-written loop.

Same model (models.build_model), data (harness.datasets), optimiser and schedule
(harness.optimizers), batch size and step count, one seed, in this process. Two hand-written
loops, both with a host-side copy of each epoch's permutation and one jitted step per batch:
`nnx.jit` on the model and an nnx.Optimizer, as the Flax guides write it, and `jax.jit` on
the split parameters and optax state (less Python per step). The harness is measured two
ways: its training loop (steps / the scorecard's train_seconds, which leaves out compile and
evaluation) and end to end (steps / wall time minus compile: evaluation, TensorBoard
scalars, checkpoints and the scorecard included). The target compares the training loop
with the faster hand-written loop.

Equal work: the hand-written loops start from the harness's initial parameters for the seed
and read the harness's batches in the harness's order (its epoch permutation, keyed by the
seed's data key), with its loss (mean softmax cross-entropy, harness.steps.train_loss),
dtype and optimiser; the configs have no dropout. Evidence per loop: how many first steps
its per-step train loss matches the harness's (as configured; TensorBoard's train/loss)
within 0.1%, and the validation loss of its final parameters, scored alike
(harness.scoring.score). Where two programs round differently, Adam at a constant 1e-2
amplifies it until the trajectories part, and from then on the final losses are different
draws of the same work: while the harness vmapped a seed axis of size 1 on CPU, the loops
parted after about 430 (MLP) and 120 (CNN) steps, and a loss spike in its last eval
interval put the MLP harness's mean train loss at 0.034 against the hand loop's 0.0002.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import struct
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
from harness import scoring
from harness.datasets import load_task
from harness.optimizers import make_optimizer
from harness.steps import SeedKeys, make_sampler, train_loss
from harness.train import train_and_evaluate

TARGET = 0.95
LOCKSTEP_RTOL = 1e-3  # per-step losses this close count as the same step


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


def harness_loop(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
  start = time.perf_counter()
  card = train_and_evaluate(config, workdir, num_seeds=1)
  wall = time.perf_counter() - start
  steps = card['steps_completed']
  return {'steps_per_second': steps / card['train_seconds'],
          'end_to_end_steps_per_second': steps / (wall - card['compile_seconds']),
          'compile_seconds': card['compile_seconds'],
          'final_train_loss': card['train_loss']['mean'],
          'val_loss': card['val_loss']['mean'],
          'losses': _logged_losses(workdir)}


def _logged_losses(workdir: Path) -> list[float]:
  """The harness's per-step train/loss from its TensorBoard event file (TFRecord framing:
  length, its CRC, the Event, its CRC)."""
  from tensorboardX.proto import event_pb2
  losses: dict[int, float] = {}
  for path in sorted(workdir.glob('events.out.tfevents.*')):
    data, at = path.read_bytes(), 0
    while at < len(data):
      (length,) = struct.unpack_from('<Q', data, at)
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 16 + length
      for value in event.summary.value:
        if value.tag == 'train/loss':
          losses[event.step] = value.simple_value
  return [losses[step] for step in sorted(losses)]


def hand_loop(config: ml_collections.ConfigDict, style: str) -> dict[str, Any]:
  """The minimal loop a user would write, doing the harness's work (see the module's
  docstring); the first step (compile) is timed apart."""
  task = load_task(config.dataset)
  steps, batch = int(config.train.steps), int(config.train.batch_size)
  tx = make_optimizer(config.optimizer, steps)
  keys = SeedKeys.for_seeds([int(config.train.seed)])
  model = models.build_model(config.model, input_shape=task.input_shape,
                             num_outputs=task.num_outputs, rngs=nnx.Rngs(keys.init[0]))
  x_all, y_all = task.train.x, task.train.y
  sampler = make_sampler(task.kind, task.input_shape, x_all, y_all, batch)
  epoch_order = jax.jit(functools.partial(sampler.epoch_state, keys.data[0]))
  per_epoch = sampler.steps_per_epoch

  def batches():
    for step in range(steps):
      if step % per_epoch == 0:
        perm = np.asarray(epoch_order(step))
      idx = perm[(step % per_epoch) * batch:(step % per_epoch + 1) * batch]
      yield x_all[idx], y_all[idx]

  def loss_fn(m, x, y):
    return train_loss(m(x, train=True), y)

  if style == 'nnx.jit':
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(m, opt, x, y):
      loss, grads = nnx.value_and_grad(loss_fn)(m, x, y)
      opt.update(m, grads)
      return loss
    step = lambda x, y: nnx_step(model, optimizer, x, y)
    trained = lambda: model
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
    trained = lambda: nnx.merge(graphdef, state[0])
  feed = batches()
  start = time.perf_counter()
  losses = [jax.block_until_ready(step(*next(feed)))]
  compile_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for x, y in feed:
    losses.append(step(x, y))
  jax.block_until_ready(losses)
  steps_per_second = (steps - 1) / (time.perf_counter() - start)
  losses = np.asarray(jax.device_get(losses), np.float64).tolist()
  logits = np.asarray(trained()(task.val.x, train=False), np.float32)
  val_loss, _ = scoring.score(task.kind, logits[None], task.val.y)
  return {'steps_per_second': steps_per_second, 'compile_seconds': compile_seconds,
          'final_train_loss': float(np.mean(losses[-min(steps, int(config.train.eval_every)):])),
          'val_loss': float(val_loss[0]), 'losses': losses}


def lockstep(losses: list[float], reference: list[float]) -> int:
  """How many first steps two per-step loss curves agree within LOCKSTEP_RTOL."""
  a, b = np.asarray(losses), np.asarray(reference)
  n = min(len(a), len(b))
  apart = np.abs(a[:n] - b[:n]) > LOCKSTEP_RTOL * np.abs(b[:n])
  return int(np.argmax(apart)) if apart.any() else n


def _loops(case: Case) -> list[str]:
  return [f'harness ({"scan" if scan else "dispatch"})' for scan in case.runners] + [
      'hand-written (jax.jit)', 'hand-written (nnx.jit)']


def _shipped(case: Case) -> str:
  return f'harness ({"scan" if _config(case).train.scan_steps else "dispatch"})'


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
      shipped_run = measured[_shipped(case)][-1]
      for runs in measured.values():  # the curves are long: keep the evidence, not them
        runs[-1]['lockstep_steps'] = lockstep(runs[-1]['losses'], shipped_run['losses'])
      for runs in measured.values():
        del runs[-1]['losses']
      say(f'[overhead] {case.name} repeat {repeat + 1}/{size.repeats}: ' + ', '.join(
          f'{n} {m[-1]["steps_per_second"]:.0f}' for n, m in measured.items()) + ' steps/s')
    shipped = _shipped(case)
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
  paragraphs = [p.replace('\n', ' ').strip() for p in __doc__.split('\n\n')[1:]]
  lines = [line for p in paragraphs for line in (p, '')]
  lines += [f'Median over {data["repeats"]} interleaved repeat(s); one seed. The end-to-end '
            'column includes the harness\'s fixed per-run costs, so it grows towards the '
            'training-loop column as runs get longer. Lock-step: per-step train loss within '
            f'{LOCKSTEP_RTOL:g} (relative) of the harness as configured, counted from step 1.', '']
  rows = []
  for name, case in data['cases'].items():
    for loop, runs in case['runs'].items():
      med = case['median_steps_per_second'][loop]
      e2e = (f'{statistics.median(r["end_to_end_steps_per_second"] for r in runs):.0f}'
             if loop.startswith('harness') else '-')
      together = ('reference' if loop == case['shipped_runner'] else
                  f'{statistics.median(r["lockstep_steps"] for r in runs):.0f} of {case["steps"]}')
      rows.append([name, f'{case["steps"]} x {case["batch_size"]}', loop + (
          ' (as configured)' if loop == case['shipped_runner'] else ''), f'{med:.0f}', e2e,
          f'{statistics.median(r["compile_seconds"] for r in runs):.2f}', together,
          f'{statistics.median(r["final_train_loss"] for r in runs):.3g}',
          f'{statistics.median(r["val_loss"] for r in runs):.3g}'])
  lines.append(report.table(['model', 'steps x batch', 'loop', 'steps/s', 'end-to-end steps/s',
                             'compile s', 'first steps in lock-step with the harness',
                             'train loss, last eval interval', 'val loss, end'], rows))
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
