"""train_and_evaluate: K seeds in one compiled program, predictions, checkpoints, a report.

The loop alternates one compiled chunk of `train.eval_every` steps with a prediction of the
validation inputs. Training code never computes a judged metric: it writes logits
(`predictions/`) and a self-report of its costs (`report.json`), and `harness.scoring`
turns those into the scorecard where no candidate code ran. Run by hand (the user's own
code), the scorer runs in this process after each evaluation; run by the agent
(`inputs_dir`: a folder of training data and inputs, no labels), it does not, and the
agent scores the trial from outside its sandbox. The test split is predicted only when
asked (`eval_test` by hand; test inputs in `inputs_dir` for the agent's final evaluation).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import shutil
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
from harness import scoring, trial_inputs
from harness.checkpoints import Checkpointer
from harness.history import History
from harness.optimizers import make_optimizer
from harness.runners import SeedRunner, vmap_seeds
from harness.steps import SeedKeys, build_program
from harness.tb_writer import MetricsWriter

CODE_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = 'checkpoints'
ERROR_LOG = 'error.log'  # harness.main: the traceback of a failed run
# What a run leaves in its workdir; --overwrite deletes these and nothing else.
OUTPUTS = frozenset({sc.SCORECARD, sc.TEST_SCORECARD, sc.CURVES, scoring.REPORT,
                     scoring.PROGRESS, scoring.PREDICTIONS, CHECKPOINTS, ERROR_LOG})


def is_output(name: str) -> bool:
  """Whether a workdir entry is something a run writes: a known name, an event file, or the
  temporary file of a known name's write that was interrupted."""
  temporary = name.endswith('.tmp') and name.removesuffix('.tmp').lstrip('.') in OUTPUTS
  return name in OUTPUTS or temporary or name.startswith('events.out.tfevents.')


def clear_outputs(workdir: Path) -> None:
  """Deletes what an earlier run left in `workdir` (--overwrite); anything else stays."""
  for entry in workdir.iterdir():
    if not is_output(entry.name):
      continue
    if entry.is_dir() and not entry.is_symlink():
      shutil.rmtree(entry)
    else:
      entry.unlink()


class ConfigError(ValueError):
  """The config cannot describe a run (unknown name, bad value): the user's input is wrong."""


def check_train_config(config: ml_collections.ConfigDict) -> None:
  train = config.train
  if train.steps < 1 or train.batch_size < 1 or train.eval_every < 1:
    raise ConfigError('train.steps, train.batch_size and train.eval_every must be >= 1')
  if train.checkpoint_every % train.eval_every:
    raise ConfigError(f'train.checkpoint_every ({train.checkpoint_every}) must be a multiple '
                      f'of train.eval_every ({train.eval_every})')


def _inputs(config: ml_collections.ConfigDict, inputs_dir: Path | None, eval_test: bool):
  """The trial's inputs, and the scorer when this process may hold the labels (by hand)."""
  dataset = config.dataset.to_dict()
  if inputs_dir is not None:
    try:
      inputs = trial_inputs.read(inputs_dir)
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ConfigError(f'--inputs {inputs_dir} is not a folder of trial inputs: {e}') from e
    if dataset != inputs.dataset:
      raise ConfigError(f'config.dataset {dataset} differs from the data this run was given '
                        f'({inputs.dataset}); the data is not editable')
    return inputs, None
  from harness.datasets import load_task  # only by hand: a trial never reaches the loaders
  inputs, targets = trial_inputs.build(load_task(config.dataset), dataset, with_test=eval_test)
  return inputs, targets


def _setup(config: ml_collections.ConfigDict, inputs_dir: Path | None, eval_test: bool,
           seeds: list[int]):
  """Everything that can fail because the config is wrong, before any training."""
  try:
    check_train_config(config)
    inputs, targets = _inputs(config, inputs_dir, eval_test)
    tx = make_optimizer(config.optimizer, config.train.steps)
    build = functools.partial(models.build_model, config.model,
                              input_shape=inputs.input_shape, num_outputs=inputs.num_outputs)
    abstract_model = nnx.eval_shape(lambda: build(rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract_model)
    make_params = lambda key: nnx.state(build(rngs=nnx.Rngs(key)), nnx.Param)
    program = build_program(inputs.kind, inputs.input_shape, inputs.train, graphdef,
                            make_params, tx, config.train.batch_size)
  except ConfigError:
    raise
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise ConfigError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
  scorer = None if targets is None else scoring.Scorer(targets, len(seeds))
  return inputs, scorer, program, SeedKeys.for_seeds(seeds)


def _save_predictions(workdir: Path, name: str, logits: np.ndarray, kind: str) -> None:
  """Atomically, so a reader polling the folder never sees half a file. A language model's
  logits (positions x vocabulary per row) are stored as float16 to halve their size."""
  if kind == 'language_model':
    logits = logits.astype(np.float16)
  buffer = io.BytesIO()
  np.save(buffer, logits)  # numpy's own file writes lose the errno of a full disk
  folder = workdir / scoring.PREDICTIONS
  folder.mkdir(exist_ok=True)
  sc.write_atomically(folder / name, buffer.getbuffer())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       num_seeds: int = 1, resume: bool = False, eval_test: bool = False,
                       inputs_dir: Path | None = None, overwrite: bool = False
                       ) -> dict[str, Any]:
  """Trains `num_seeds` seeds (train.seed, train.seed+1, ...), writes predictions and the
  report; by hand (no `inputs_dir`) also scores them and returns the scorecard, else the
  report. `overwrite` clears an earlier run's output, once the config is known to be good."""
  workdir = Path(workdir).absolute()
  seeds = [int(config.train.seed) + i for i in range(num_seeds)]
  inputs, scorer, program, keys = _setup(config, inputs_dir, eval_test, seeds)
  if overwrite:
    clear_outputs(workdir)
  ckpt = Checkpointer(workdir / CHECKPOINTS)
  runner = SeedRunner(program, keys, scan=bool(config.train.scan_steps), vmapped=vmap_seeds())
  carry = runner.init()
  history = History(num_seeds=num_seeds)
  restored_step = ckpt.latest_step() if resume else None
  if not resume and restored_step is None and ckpt.latest_step() is not None:
    raise ConfigError(f'{workdir} already holds checkpoints: pass --resume or use a new workdir')
  for final in (sc.SCORECARD, sc.TEST_SCORECARD, scoring.REPORT):
    (workdir / final).unlink(missing_ok=True)  # an earlier attempt's result is not this one's
  if restored_step is not None:
    stacked, saved = ckpt.restore(restored_step, runner.stacked(carry))
    carry = runner.members(stacked)
    history = History.from_json(saved)
    logging.info('Resumed from step %d', restored_step)
  _rewrite_curves(workdir, history, scorer)
  writer = MetricsWriter(workdir, purge_step=restored_step)
  val = inputs.predict['val']
  total = int(config.train.steps)
  every = int(config.train.eval_every)
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
      _save_predictions(workdir, scoring.val_file(history.step),
                        runner.predict(carry, val.x, val.batch_size), inputs.kind)
      point = history.record_eval()
      sc.append_jsonl(workdir / scoring.PROGRESS, point)
      writer.scalars(history.step, {'perf/step_ms': history.chunk_step_ms[-1]})
      if scorer is not None:
        _score_point(scorer, workdir, history, writer, inputs.metric_name)
      else:
        logging.info('step %d: train loss %.4f', history.step, np.mean(history.last_train_loss))
      if history.step % int(config.train.checkpoint_every) == 0 and not history.diverged:
        ckpt.save(history.step, runner.stacked(carry), history.to_json())
    for name, predict_set in inputs.predict.items():
      if name != 'val' and not history.diverged:
        _save_predictions(workdir, f'{name}.npy',
                          runner.predict(carry, predict_set.x, predict_set.batch_size),
                          inputs.kind)
    report = _report(config, inputs, seeds, history, runner.cost_info(carry),
                     jax.eval_shape(runner.stacked, carry)[0], total)
    sc.write_json(workdir / scoring.REPORT, report)
    result = report
    if scorer is not None:
      result = card = scoring.scorecard(scorer, workdir, seeds=seeds, trusted=None,
                                        code=sc.code_provenance(CODE_ROOT))
      writer.hparams(config.to_dict(), {'hparams/val_metric': card['val_metric']['mean'],
                                        'hparams/val_loss': card['val_loss']['mean'],
                                        'hparams/train_seconds': card['train_seconds']})
      sc.write_json(workdir / sc.SCORECARD, card)
      if eval_test and not history.diverged:
        sc.write_json(workdir / sc.TEST_SCORECARD, scoring.test_scorecard(scorer, workdir, card))
  except BaseException:
    with contextlib.suppress(Exception):  # the error that stopped the run is the one to report
      _close(writer, ckpt)
    raise
  _close(writer, ckpt)
  return result


def _close(writer: MetricsWriter, ckpt: Checkpointer) -> None:
  """Flushes the events and waits for pending checkpoint saves, each even if the other fails
  (a full disk): a process must not exit mid-write."""
  try:
    writer.close()
  finally:
    ckpt.close()


def _score_point(scorer: scoring.Scorer, workdir: Path, history: History,
                 writer: MetricsWriter, metric_name: str) -> None:
  """By hand only: the evaluation just written, scored at once for the curve and the log."""
  point = scorer.point(workdir, history.step)
  point['train_loss'] = list(history.last_train_loss)
  sc.append_jsonl(workdir / sc.CURVES, point)
  writer.scalars(history.step, {'val/loss': float(np.mean(point['val_loss'])),
                                f'val/{metric_name}': float(np.mean(point['val_metric']))})
  logging.info('step %d: train loss %.4f, val %s %.4f', history.step,
               np.mean(history.last_train_loss), metric_name, np.mean(point['val_metric']))


def _rewrite_curves(workdir: Path, history: History, scorer: scoring.Scorer | None) -> None:
  """The progress and curve files mirror the history: a resumed run drops points past its
  checkpoint (and a fresh run, the predictions of an earlier attempt in the same folder)."""
  workdir.mkdir(parents=True, exist_ok=True)
  for stale in scoring.val_steps(workdir):
    if stale > history.step:
      (workdir / scoring.PREDICTIONS / scoring.val_file(stale)).unlink()
  for name, point_of in ((scoring.PROGRESS, lambda p: p),
                         (sc.CURVES, lambda p: {**scorer.point(workdir, p['step']), **p})):
    path = workdir / name
    path.unlink(missing_ok=True)
    if name == sc.CURVES and scorer is None:
      continue
    for point in history.curve:
      sc.append_jsonl(path, point_of(point))


def _param_count(params) -> int:
  """Parameters of one seed's model (params carry a leading seed axis)."""
  return int(sum(np.prod(leaf.shape[1:]) for leaf in jax.tree.leaves(params)))


def _report(config, inputs: trial_inputs.Inputs, seeds: list[int], history: History,
            cost_info: dict[str, Any], params, total_steps: int) -> dict[str, Any]:
  """What the training process says about itself: costs, stability, config, versions.

  Untrusted when candidate code ran here: the scorer keeps these numbers labelled as
  reported, beside what the trusted side measured.
  """
  examples = history.step * config.train.batch_size * len(seeds)
  flops = cost_info.get('flops_per_step', math.nan)
  return {
      'task': inputs.name,
      'seeds': seeds,
      'train_loss': history.last_train_loss,
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
      'param_count': _param_count(params),
      'nonfinite': history.diverged,
      'stability': {'nonfinite_step': history.nonfinite_step,
                    'max_grad_norm': sc.summarize(history.max_grad_norm),
                    'loss_spikes': {'per_seed': history.loss_spikes,
                                    'total': int(sum(history.loss_spikes))}},
      'curve': history.curve,
      'config': config.to_dict(),
      'versions': sc.library_versions(),
      'device': sc.device_info(),
  }
