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
import dataclasses
import functools
import io
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

import models
from harness import scorecard as sc
from harness import hosts, mesh, scoring, trial_inputs
from harness.checkpoints import Checkpointer
from harness.history import History
from harness.optimizers import TRACED, hyperparams, make_optimizer
from harness.regimen import Regimen
from harness.runners import SeedRunner, vmap_seeds
from harness.rungs import Rungs
from harness.steps import SeedKeys, build_program
from harness.tb_writer import MetricsWriter

CODE_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = 'checkpoints'
ERROR_LOG = 'error.log'  # harness.main: the traceback of a failed run
MEMBER = 'member-'  # + index: a batch member's outputs, inside the workdir
# What a run leaves in its workdir; --overwrite deletes these and nothing else.
OUTPUTS = frozenset({sc.SCORECARD, sc.TEST_SCORECARD, sc.CURVES, scoring.REPORT,
                     scoring.PROGRESS, scoring.PREDICTIONS, CHECKPOINTS, ERROR_LOG})


def is_output(name: str) -> bool:
  """Whether a workdir entry is something a run writes: a known name, an event file, or the
  temporary file of a known name's write that was interrupted."""
  temporary = name.endswith('.tmp') and name.removesuffix('.tmp').lstrip('.') in OUTPUTS
  return (name in OUTPUTS or temporary or name.startswith('events.out.tfevents.')
          or name.startswith(MEMBER))


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


@dataclasses.dataclass
class Member:
  """One set of the optimiser's traced values trained on the run's K seeds: the run itself,
  or one candidate of a batch. Its outputs go to `folder` exactly as a run alone writes them
  into its workdir (predictions, progress, report, events), so each is scored on its own."""
  index: int
  folder: Path
  config: ml_collections.ConfigDict  # the run's config with this member's values
  history: History

  def columns(self, num_seeds: int) -> slice:
    """Its rows among the run's members (candidate-major: B candidates x K seeds)."""
    return slice(self.index * num_seeds, (self.index + 1) * num_seeds)

  @property
  def hyperparams(self) -> dict[str, float]:
    return hyperparams(self.config.optimizer)


def member_configs(config: ml_collections.ConfigDict,
                   members: Sequence[Mapping[str, Any]] | None) -> list[ml_collections.ConfigDict]:
  """The config of each member: `config` with the member's values of traced keys
  ('optimizer.learning_rate': 3e-3, ...); one member, `config` itself, when none are given."""
  if members is None:
    return [config]
  if not members:
    raise ConfigError('--members lists no member')
  configs = []
  for values in members:
    if not isinstance(values, Mapping):
      raise ConfigError(f'a member is a mapping of traced config keys to values, got {values!r}')
    member = ml_collections.ConfigDict(config.to_dict())
    for path, value in values.items():
      section, _, key = str(path).partition('.')
      if section != 'optimizer' or key not in TRACED:
        raise ConfigError(f'member key {path!r} is not a traced hyperparameter; traced: '
                          f'{", ".join("optimizer." + k for k in TRACED)}')
      if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f'member {values}: optimizer hyperparameters must be finite '
                          f'numbers, got {path}={value!r}')
      member.optimizer[key] = float(value)
    try:
      hyperparams(member.optimizer)
    except ValueError as e:
      raise ConfigError(f'member {values}: {e}') from e
    configs.append(member)
  return configs


def member_folder(workdir: Path, index: int, batched: bool) -> Path:
  return workdir / f'{MEMBER}{index}' if batched else workdir


def _setup(config: ml_collections.ConfigDict, inputs_dir: Path | None, eval_test: bool,
           seeds: list[int], members: Sequence[Mapping[str, Any]] | None):
  """Everything that can fail because the config is wrong, before any training."""
  try:
    check_train_config(config)
    configs = member_configs(config, members)
    inputs, targets = _inputs(config, inputs_dir, eval_test)
    tx = make_optimizer(config.optimizer, config.train.steps)
    build = functools.partial(models.build_model, config.model,
                              input_shape=inputs.input_shape, num_outputs=inputs.num_outputs)
    abstract_model = nnx.eval_shape(lambda: build(rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract_model)
    make_params = lambda key: nnx.state(build(rngs=nnx.Rngs(key)), nnx.Param)
    layout = mesh.layout(config.train.get('mesh', ''), len(seeds) * len(configs),
                         int(config.train.batch_size))
    regimen = Regimen.from_config(config.train, inputs.kind, inputs.input_shape)
    program = build_program(inputs.kind, inputs.input_shape, inputs.train, graphdef,
                            make_params, tx, config.train.batch_size,
                            layout.constrain_batch if layout else lambda x: x, regimen)
  except ConfigError:
    raise
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise ConfigError(str(e).splitlines()[0] if str(e) else type(e).__name__) from e
  scorer = None if targets is None else scoring.Scorer(targets, len(seeds))
  return inputs, scorer, program, configs, layout


def _save_predictions(folder: Path, name: str, logits: np.ndarray, kind: str) -> None:
  """Atomically, so a reader polling the folder never sees half a file. A language model's
  logits (positions x vocabulary per row) are stored as float16 to halve their size."""
  if kind == 'language_model':
    logits = logits.astype(np.float16)
  buffer = io.BytesIO()
  np.save(buffer, logits)  # numpy's own file writes lose the errno of a full disk
  folder = folder / scoring.PREDICTIONS
  folder.mkdir(parents=True, exist_ok=True)
  sc.write_atomically(folder / name, buffer.getbuffer())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       num_seeds: int = 1, resume: bool = False, eval_test: bool = False,
                       inputs_dir: Path | None = None, overwrite: bool = False,
                       members: Sequence[Mapping[str, Any]] | None = None,
                       rungs: Rungs | None = None) -> dict[str, Any]:
  """Trains `num_seeds` seeds (train.seed, train.seed+1, ...), writes predictions and the
  report; by hand (no `inputs_dir`) also scores them and returns the scorecard, else the
  report. `overwrite` clears an earlier run's output, once the config is known to be good.

  With `members` (a list of {traced key: value}), each member trains on the same seeds in
  the same compiled program and writes its outputs to workdir/member-<i>/, as a run alone
  would into its workdir; then {'members': [each member's result]} is returned. A member
  that diverges stops writing where a run alone would stop; the others go on. With `rungs`,
  the members it names at a rung step stop there (harness.rungs): no more training, no final
  outputs, and their result says `stopped_at`.
  """
  workdir = Path(workdir).absolute()
  # A run over several hosts: only process 0 writes the run's outputs; the others write
  # theirs into a private folder that goes at the end (checkpoints are everyone's).
  private = None if hosts.primary() else Path(tempfile.mkdtemp(prefix='harness-process-'))
  try:
    return _train(config, workdir, private or workdir, num_seeds=num_seeds, resume=resume,
                  eval_test=eval_test, inputs_dir=inputs_dir, overwrite=overwrite,
                  members=members, rungs=rungs)
  finally:
    if private is not None:
      shutil.rmtree(private, ignore_errors=True)


def _train(config: ml_collections.ConfigDict, workdir: Path, outputs: Path, *, num_seeds: int,
           resume: bool, eval_test: bool, inputs_dir: Path | None, overwrite: bool,
           members: Sequence[Mapping[str, Any]] | None, rungs: Rungs | None) -> dict[str, Any]:
  """train_and_evaluate with its outputs in `outputs` (the workdir, or another host's
  private folder) and its checkpoints in the workdir."""
  seeds = [int(config.train.seed) + i for i in range(num_seeds)]
  inputs, scorer, program, configs, layout = _setup(config, inputs_dir, eval_test, seeds,
                                                    members)
  if rungs is not None and jax.process_count() > 1:
    raise ConfigError('--rungs is for a run in one process: the hosts could read different '
                      'answers and train different members')
  if overwrite and hosts.primary():
    clear_outputs(workdir)
  hosts.barrier('outputs cleared')  # no process looks for checkpoints before that
  batched = members is not None
  group = [Member(i, member_folder(outputs, i, batched), c, History(num_seeds=num_seeds))
           for i, c in enumerate(configs)]
  ckpt = Checkpointer(workdir / CHECKPOINTS)
  values = {k: [m.hyperparams[k] for m in group for _ in seeds] for k in TRACED}
  keys = SeedKeys.for_seeds(seeds * len(group), int(config.train.get('stream', 0)))
  runner = SeedRunner(program, keys, values,
                      scan=bool(config.train.scan_steps), vmapped=vmap_seeds(),
                      layout=layout)
  carry = runner.init()
  restored_step = ckpt.latest_step() if resume else None
  if not resume and restored_step is None and ckpt.latest_step() is not None:
    raise ConfigError(f'{workdir} already holds checkpoints: pass --resume or use a new workdir')
  for member in group:
    for final in (sc.SCORECARD, sc.TEST_SCORECARD, scoring.REPORT):
      (member.folder / final).unlink(missing_ok=True)  # an earlier attempt's is not this one's
  step = 0
  if restored_step is not None:
    stacked, saved = ckpt.restore(restored_step, runner.stacked(carry))
    carry = runner.members(stacked)
    for member, history in zip(group, saved['members'], strict=True):
      member.history = History.from_json(history)
    step = restored_step
    logging.info('Resumed from step %d', restored_step)
  for member in group:
    _rewrite_curves(member.folder, member.history, scorer)
  writers = [MetricsWriter(m.folder, purge_step=restored_step) for m in group]
  val = inputs.predict['val']
  total = int(config.train.steps)
  every = int(config.train.eval_every)
  live = lambda: [m for m in group if not m.history.diverged and m.history.step < total
                  and m.history.stopped_at is None]
  try:
    while live():
      training = live()
      length = min(every, total - step)
      compile_before = runner.compile_seconds
      start = time.perf_counter()
      active = _active(training, len(group), num_seeds)
      carry, (losses, grad_norms) = runner(carry, step, length, active)
      seconds = time.perf_counter() - start - (runner.compile_seconds - compile_before)
      logits = runner.predict(carry, val.x, val.batch_size, active)
      step += length
      for member in training:
        columns = member.columns(num_seeds)
        _record(member, writers[member.index], losses[:, columns], grad_norms[:, columns],
                seconds, runner.compile_seconds - compile_before)
        _save_predictions(member.folder, scoring.val_file(step), logits[columns], inputs.kind)
        sc.append_jsonl(member.folder / scoring.PROGRESS, member.history.record_eval())
        writers[member.index].scalars(step, {'perf/step_ms': member.history.chunk_step_ms[-1]})
        if scorer is not None:
          _score_point(scorer, member, writers[member.index], inputs.metric_name)
        else:
          logging.info('%sstep %d: train loss %.4f', _label(member, batched), step,
                       np.mean(member.history.last_train_loss))
      if rungs is not None and step in rungs.steps and batched:
        _stop_at_rung(rungs, step, [m for m in training if not m.history.diverged])
      if (step % int(config.train.checkpoint_every) == 0
          and not all(m.history.diverged for m in group)):
        ckpt.save(step, runner.stacked(carry), {'members': [m.history.to_json() for m in group]})
    results = _finish(runner, carry, group, inputs, seeds, scorer, writers, eval_test, total)
  except BaseException:
    with contextlib.suppress(Exception):  # the error that stopped the run is the one to report
      _close(writers, ckpt)
    raise
  _close(writers, ckpt)
  return {'members': results} if batched else results[0]


def _record(member: Member, writer: MetricsWriter, losses: np.ndarray, grad_norms: np.ndarray,
            seconds: float, compile_seconds: float) -> None:
  """One chunk into a member's history and events. Its time is the whole chunk's: members
  train together, so each reports what the group cost."""
  history = member.history
  history.compile_seconds += compile_seconds
  first_step = history.step
  history.record_chunk(losses, grad_norms, seconds)
  for t in range(losses.shape[0]):
    writer.scalars(first_step + t + 1, {'train/loss': float(np.mean(losses[t])),
                                        'train/grad_norm': float(np.mean(grad_norms[t]))})


def _finish(runner: SeedRunner, carry, group: list[Member], inputs: trial_inputs.Inputs,
            seeds: list[int], scorer: scoring.Scorer | None, writers: list[MetricsWriter],
            eval_test: bool, total: int) -> list[dict[str, Any]]:
  """After training: the other prediction sets, each member's report and (by hand) its
  scorecard; returns each member's scorecard (by hand) or report."""
  num_seeds = len(seeds)
  finished = [m for m in group if m.history.stopped_at is None]
  for name, predict_set in inputs.predict.items():
    if name == 'val' or all(m.history.diverged for m in finished):
      continue
    logits = runner.predict(carry, predict_set.x, predict_set.batch_size,
                            _active(finished, len(group), num_seeds))
    for member in finished:
      if not member.history.diverged:
        _save_predictions(member.folder, f'{name}.npy', logits[member.columns(num_seeds)],
                          inputs.kind)
  cost_info = runner.cost_info(carry)
  params = jax.eval_shape(runner.stacked, carry)[0]
  results = []
  for member in group:
    if member.history.stopped_at is not None:
      results.append({'stopped_at': member.history.stopped_at})
      continue
    report = _report(member.config, inputs, seeds, member.history, cost_info, params, total,
                     share=1 / len(group))
    sc.write_json(member.folder / scoring.REPORT, report)
    results.append(report)
    if scorer is not None:
      results[-1] = card = scoring.scorecard(scorer, member.folder, seeds=seeds, trusted=None,
                                        code=sc.code_provenance(CODE_ROOT))
      writers[member.index].hparams(
          member.config.to_dict(), {'hparams/val_metric': card['val_metric']['mean'],
                                    'hparams/val_loss': card['val_loss']['mean'],
                                    'hparams/train_seconds': card['train_seconds']})
      sc.write_json(member.folder / sc.SCORECARD, card)
      if eval_test and not member.history.diverged:
        sc.write_json(member.folder / sc.TEST_SCORECARD,
                      scoring.test_scorecard(scorer, member.folder, card))
  return results


def _active(members: Sequence[Member], size: int, num_seeds: int) -> np.ndarray:
  """The member columns to compute (candidate-major, as `Member.columns`)."""
  active = np.zeros(size * num_seeds, bool)
  for member in members:
    active[member.columns(num_seeds)] = True
  return active


def _stop_at_rung(rungs: Rungs, step: int, training: Sequence[Member]) -> None:
  """Asks who stops at this rung and stops them (they keep what they wrote so far)."""
  stopped = rungs.stopped(step, [m.index for m in training])
  for member in training:
    if member.index in stopped:
      member.history.stopped_at = step
      logging.info('member %d: stopped at the rung at step %d', member.index, step)


def _label(member: Member, batched: bool) -> str:
  return f'member {member.index}: ' if batched else ''


def _close(writers: list[MetricsWriter], ckpt: Checkpointer) -> None:
  """Flushes the events and waits for pending checkpoint saves, each even if another fails
  (a full disk): a process must not exit mid-write."""
  try:
    for writer in writers:
      writer.close()
  finally:
    ckpt.close()


def _score_point(scorer: scoring.Scorer, member: Member, writer: MetricsWriter,
                 metric_name: str) -> None:
  """By hand only: the evaluation just written, scored at once for the curve and the log."""
  history = member.history
  point = scorer.point(member.folder, history.step)
  point['train_loss'] = list(history.last_train_loss)
  sc.append_jsonl(member.folder / sc.CURVES, point)
  writer.scalars(history.step, {'val/loss': float(np.mean(point['val_loss'])),
                                f'val/{metric_name}': float(np.mean(point['val_metric']))})
  logging.info('%sstep %d: train loss %.4f, val %s %.4f',
               _label(member, member.folder.name.startswith(MEMBER)), history.step,
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
            cost_info: dict[str, Any], params, total_steps: int,
            share: float = 1.0) -> dict[str, Any]:
  """What the training process says about itself: costs, stability, config, versions.
  Times are the whole run's; FLOPs this member's `share` of all members'.

  Untrusted when candidate code ran here: the scorer keeps these numbers labelled as
  reported, beside what the trusted side measured.
  """
  examples = history.step * config.train.batch_size * len(seeds)
  flops = cost_info.get('flops_per_step', math.nan) * share
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
