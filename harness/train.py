"""train_and_evaluate: K seeds in one compiled program, curves, checkpoints, scorecard.

The loop alternates one compiled chunk of `train.eval_every` steps with a host-side
evaluation on the validation split. The test split is evaluated only when asked
(`eval_test`), after training, and written to its own file.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

import models
from harness import scorecard as sc
from harness.checkpoints import Checkpointer
from harness.datasets import Task, load_task
from harness.history import History
from harness.optimizers import make_optimizer
from harness.runners import ChunkRunner
from harness.steps import Program, SeedKeys, build_program, eval_batches
from harness.tb_writer import MetricsWriter

CODE_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
  """The config cannot describe a run (unknown name, bad value): the user's input is wrong."""


def check_train_config(config: ml_collections.ConfigDict) -> None:
  train = config.train
  if train.steps < 1 or train.batch_size < 1 or train.eval_every < 1:
    raise ConfigError('train.steps, train.batch_size and train.eval_every must be >= 1')
  if train.checkpoint_every % train.eval_every:
    raise ConfigError(f'train.checkpoint_every ({train.checkpoint_every}) must be a multiple '
                      f'of train.eval_every ({train.eval_every})')


def _setup(config: ml_collections.ConfigDict, seeds: list[int]):
  """Everything that can fail because the config is wrong, before any training."""
  try:
    check_train_config(config)
    task = load_task(config.dataset)
    tx = make_optimizer(config.optimizer, config.train.steps)
    build = functools.partial(models.build_model, config.model,
                              input_shape=task.input_shape, num_outputs=task.num_outputs)
    abstract_model = nnx.eval_shape(lambda: build(rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract_model)
    make_params = lambda key: nnx.state(build(rngs=nnx.Rngs(key)), nnx.Param)
    program = build_program(task, graphdef, make_params, tx, config.train.batch_size)
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise ConfigError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
  keys = SeedKeys.for_seeds(seeds)
  return task, program, keys


def _evaluate(program: Program, params, batches) -> tuple[np.ndarray, np.ndarray]:
  loss, metric = program.evaluate(params, *batches)
  return np.asarray(loss), np.asarray(metric)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       num_seeds: int = 1, resume: bool = False,
                       eval_test: bool = False) -> dict[str, Any]:
  """Trains `num_seeds` seeds (train.seed, train.seed+1, ...) and writes the scorecard."""
  workdir = Path(workdir).absolute()
  seeds = [int(config.train.seed) + i for i in range(num_seeds)]
  task, program, keys = _setup(config, seeds)
  ckpt = Checkpointer(workdir / 'checkpoints')
  carry = jax.jit(program.init)(keys.init)
  history = History(num_seeds=num_seeds)
  restored_step = ckpt.latest_step() if resume else None
  if not resume and restored_step is None and ckpt.latest_step() is not None:
    raise ConfigError(f'{workdir} already holds checkpoints: pass --resume or use a new workdir')
  if restored_step is not None:
    carry, saved = ckpt.restore(restored_step, carry)
    history = History.from_json(saved)
    logging.info('Resumed from step %d', restored_step)
  _rewrite_curves(workdir, history)
  writer = MetricsWriter(workdir, purge_step=restored_step)
  val_batches = eval_batches(task, 'val')
  total = int(config.train.steps)
  every = int(config.train.eval_every)
  runner = ChunkRunner(program, keys, scan=bool(config.train.scan_steps))
  try:
    while history.step < total and not history.diverged:
      length = min(every, total - history.step)
      compile_before = runner.compile_seconds
      start = time.perf_counter()
      carry, (losses, grad_norms) = runner(carry, history.step, length)
      history.compile_seconds += runner.compile_seconds - compile_before
      seconds = time.perf_counter() - start - (runner.compile_seconds - compile_before)
      history.record_chunk(losses, grad_norms, seconds)
      first_step = history.step - length
      for t in range(length):
        writer.scalars(first_step + t + 1, {'train/loss': float(np.mean(losses[t])),
                                            'train/grad_norm': float(np.mean(grad_norms[t]))})
      val_loss, val_metric = _evaluate(program, carry[0], val_batches)
      point = history.record_eval(val_loss, val_metric)
      sc.append_jsonl(workdir / sc.CURVES, point)
      writer.scalars(history.step, {'val/loss': float(np.mean(val_loss)),
                                    f'val/{task.metric_name}': float(np.mean(val_metric)),
                                    'perf/step_ms': history.chunk_step_ms[-1]})
      logging.info('step %d: train loss %.4f, val %s %.4f', history.step,
                   np.mean(history.last_train_loss), task.metric_name, np.mean(val_metric))
      if history.step % int(config.train.checkpoint_every) == 0 and not history.diverged:
        ckpt.save(history.step, carry, history.to_json())
    card = _scorecard(config, task, seeds, history, runner.cost_info, carry, total)
    writer.hparams(config.to_dict(), {'hparams/val_metric': card['val_metric']['mean'],
                                      'hparams/val_loss': card['val_loss']['mean'],
                                      'hparams/train_seconds': card['train_seconds']})
    sc.write_json(workdir / sc.SCORECARD, card)
    if eval_test and not history.diverged:
      _write_test_scorecard(workdir, program, carry, task, seeds)
  finally:
    writer.close()
    ckpt.close()
  return card


def _rewrite_curves(workdir: Path, history: History) -> None:
  """The curve file mirrors the history: a resumed run drops points past its checkpoint."""
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / sc.CURVES
  path.unlink(missing_ok=True)
  for point in history.curve:
    sc.append_jsonl(path, point)


def _param_count(params) -> int:
  """Parameters of one seed's model (params carry a leading seed axis)."""
  return int(sum(np.prod(leaf.shape[1:]) for leaf in jax.tree.leaves(params)))


def _scorecard(config, task: Task, seeds: list[int], history: History,
               cost_info: dict[str, Any], carry, total_steps: int) -> dict[str, Any]:
  last = history.curve[-1] if history.curve else {}
  nan_list = [math.nan] * len(seeds)
  examples = history.step * config.train.batch_size * len(seeds)
  flops = cost_info.get('flops_per_step', math.nan)
  return {
      'status': 'diverged' if history.diverged else 'ok',
      'task': task.name,
      'metric': {'name': task.metric_name, 'direction': task.metric_direction},
      'seeds': seeds,
      'val_metric': sc.summarize(last.get('val_metric', nan_list)),
      'val_loss': sc.summarize(last.get('val_loss', nan_list)),
      'train_loss': sc.summarize(history.last_train_loss),
      'steps': total_steps,
      'steps_completed': history.step,
      'train_seconds': history.train_seconds,
      'compile_seconds': history.compile_seconds,
      'step_latency_ms': {'p50': sc.percentile(history.chunk_step_ms, 50),
                          'p95': sc.percentile(history.chunk_step_ms, 95),
                          'measured_over': 'chunks of train.eval_every steps, all seeds'},
      'examples_per_second': examples / history.train_seconds if history.train_seconds else 0.0,
      'memory': {'compiled_bytes': cost_info.get('compiled_bytes'),
                 'max_rss_mb': sc.max_rss_mb(), 'device_peak_bytes': sc.device_peak_bytes()},
      'flops_per_step': flops,
      'flops_per_step_per_seed': flops / len(seeds),
      'param_count': _param_count(carry[0]),
      'stability': {'nonfinite': history.diverged, 'nonfinite_step': history.nonfinite_step,
                    'max_grad_norm': sc.summarize(history.max_grad_norm),
                    'loss_spikes': {'per_seed': history.loss_spikes,
                                    'total': int(sum(history.loss_spikes))}},
      'curve': history.curve,
      'data': {'fingerprints': task.fingerprints()},
      'config': config.to_dict(),
      'code': sc.code_provenance(CODE_ROOT),
      'versions': sc.library_versions(),
      'device': sc.device_info(),
  }


def _write_test_scorecard(workdir: Path, program: Program, carry, task: Task,
                          seeds: list[int]) -> None:
  """The only place the test split is read for scoring: its own step and its own file."""
  loss, metric = _evaluate(program, carry[0], eval_batches(task, 'test'))
  sc.write_json(workdir / sc.TEST_SCORECARD, {
      'task': task.name, 'metric': {'name': task.metric_name,
                                    'direction': task.metric_direction},
      'seeds': seeds, 'test_metric': sc.summarize(metric), 'test_loss': sc.summarize(loss),
      'data': {'fingerprints': task.fingerprints()},
      'code': sc.code_provenance(CODE_ROOT)})
