"""Every judged number, computed from a trial's predictions where no candidate code runs.

The trial (untrusted: it imported candidate code) writes logits for the inputs it was given
(`harness.trial_inputs`) and a self-report of its costs. This module, run by the agent or by
`harness.main` on the user's own code, holds the labels and turns predictions into metrics:
the loss and the metric are recomputed here from normalised logits, so an accuracy above 1 or
a loss below 0 is impossible by construction; shapes, dtypes and file kinds are checked before
anything is read; the task's invariants are probed (a prediction must not depend on the other
rows of its batch; a language model's prediction at position t must not depend on bytes after
t). A trial can still report whatever it likes about its own costs: those numbers are kept,
labelled as reported, beside what the trusted side measured (`trusted`), and the acceptance
rule weighs the larger of the two.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

from harness import scorecard as sc
from harness.trial_inputs import Probe, Targets

PREDICTIONS = 'predictions'
REPORT = 'report.json'
PROGRESS = 'progress.jsonl'
LN2 = math.log(2.0)
MAX_PROBE_DIFF = 0.05  # in probability: float noise is ~1e-6 (f32) to ~1e-2 (bf16)
_VAL_FILE = re.compile(r'val-(\d{1,9})\.npy')
_REPORT_BYTES = 4 << 20


class ScoringError(ValueError):
  """The trial's output cannot be scored: missing, malformed, or an invariant is broken."""


def open_regular(path: Path, limit: int):
  """Opens a file the trial wrote without following a symlink it may have planted: neither
  the file nor its folder may be one (the folder above is the trusted side's)."""
  try:
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
  except OSError as e:
    raise ScoringError(f'{path.parent.name}/ cannot be opened as a plain folder: '
                       f'{e.strerror}') from None
  try:
    fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, 'O_NONBLOCK', 0),
                 dir_fd=folder)
  except FileNotFoundError:
    raise ScoringError(f'{path.name} is missing') from None
  except OSError as e:
    raise ScoringError(f'{path.name} cannot be opened: {e.strerror}') from None
  finally:
    os.close(folder)
  info = os.fstat(fd)
  if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
    os.close(fd)
    raise ScoringError(f'{path.name} is not a regular file of at most {limit} bytes')
  return os.fdopen(fd, 'rb')


def load_predictions(path: Path, shape: tuple[int, ...]) -> np.ndarray:
  """A float array of exactly `shape`, or ScoringError; never unpickles anything."""
  limit = 8 * math.prod(shape) + 4096
  with open_regular(path, limit) as f:
    try:
      array = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      raise ScoringError(f'{path.name} is not a readable .npy array: {e}') from None
  if not isinstance(array, np.ndarray) or array.dtype.kind != 'f' or array.shape != shape:
    raise ScoringError(f'{path.name} holds {getattr(array, "dtype", "?")} '
                       f'{getattr(array, "shape", "?")}; expected float {shape}')
  return array


def read_report(folder: Path) -> dict[str, Any]:
  """The trial's self-report (untrusted, bounded); {} when absent or unreadable."""
  try:
    with open_regular(folder / REPORT, _REPORT_BYTES) as f:
      report = sc.json.loads(f.read())
  except (ScoringError, ValueError):
    return {}
  return report if isinstance(report, dict) else {}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  with np.errstate(invalid='ignore', over='ignore'):
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def score(kind: str, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-seed loss (nats) and metric from logits (K, N, [T,] V) and integer labels (N, [T]).

  The metric is accuracy for classification and bits per byte for the language model.
  Non-finite logits give NaN for that seed (a diverged trial), never an exception.
  """
  losses, metrics = [], []
  for seed_logits in logits:  # one seed at a time: LM logits are large in float64
    logp = _log_softmax(seed_logits)
    nll = -np.take_along_axis(logp, labels[..., None].astype(np.int64), axis=-1)[..., 0]
    finite = bool(np.isfinite(logp).all())
    loss = float(nll.mean()) if finite else math.nan
    losses.append(loss)
    if kind == 'language_model':
      metrics.append(loss / LN2)
    else:
      metrics.append(float((seed_logits.argmax(-1) == labels).mean()) if finite else math.nan)
  return np.asarray(losses), np.asarray(metrics)


def probe_violation(name: str, probe: Probe, probe_logits: np.ndarray,
                    val_logits: np.ndarray) -> str | None:
  """Why the probe's predictions differ from the validation predictions they copy; None if
  they agree within MAX_PROBE_DIFF in probability."""
  expected = val_logits[:, probe.val_index]
  p_probe, p_val = np.exp(_log_softmax(probe_logits)), np.exp(_log_softmax(expected))
  diff = np.abs(p_probe - p_val)
  if probe.keep is not None:  # positions at or after keep[j] saw other bytes: not compared
    positions = np.arange(diff.shape[2])[None, :, None]
    diff = np.where(positions < probe.keep[:, None, None], diff, 0.0)
  worst = float(np.nanmax(diff)) if np.isfinite(diff).any() else math.inf
  if worst <= MAX_PROBE_DIFF:
    return None
  what = ('a prediction at position t changed when only the bytes after t changed (the model '
          'reads ahead)' if name == 'probe_causal' else
          'a prediction changed when the same row was predicted in another batch (it depends '
          'on the other rows)')
  return f'invariant broken ({name}): {what}; largest probability change {worst:.3g}'


def val_steps(folder: Path) -> list[int]:
  """Steps for which the trial has written validation predictions, in order."""
  try:
    if not stat.S_ISDIR(os.lstat(folder / PREDICTIONS).st_mode):
      return []  # a symlink the trial planted: never followed
    names = os.listdir(folder / PREDICTIONS)
  except OSError:
    return []
  return sorted(int(m.group(1)) for n in names if (m := _VAL_FILE.fullmatch(n)))


def val_file(step: int) -> str:
  return f'val-{step:09d}.npy'


@dataclasses.dataclass
class Scorer:
  """Scores one trial's predictions against labels it alone holds."""
  targets: Targets
  num_seeds: int

  def shape(self, name: str) -> tuple[int, ...]:
    rows = (self.targets.labels['val'].shape if name.startswith('probe') else
            self.targets.labels[name].shape)
    if name.startswith('probe'):
      rows = (self.targets.probes[name].val_index.size,) + rows[1:]
    return (self.num_seeds, *rows, self.targets.num_outputs)

  def point(self, folder: Path, step: int) -> dict[str, Any]:
    """One curve point: per-seed validation loss and metric at `step`."""
    logits = load_predictions(folder / PREDICTIONS / val_file(step), self.shape('val'))
    loss, metric = score(self.targets.kind, logits, self.targets.labels['val'])
    return {'step': step, 'val_loss': loss.tolist(), 'val_metric': metric.tolist()}

  def curve(self, folder: Path, max_step: int) -> list[dict[str, Any]]:
    return [self.point(folder, s) for s in val_steps(folder) if 0 < s <= max_step]

  def violations(self, folder: Path, final_step: int) -> list[str]:
    """Every broken invariant, checked on the final validation predictions."""
    val = load_predictions(folder / PREDICTIONS / val_file(final_step), self.shape('val'))
    found = []
    for name, probe in self.targets.probes.items():
      logits = load_predictions(folder / PREDICTIONS / f'{name}.npy', self.shape(name))
      violation = probe_violation(name, probe, logits, val)
      if violation:
        found.append(violation)
    return found

  def test(self, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    logits = load_predictions(folder / PREDICTIONS / 'test.npy', self.shape('test'))
    return score(self.targets.kind, logits, self.targets.labels['test'])


def scorecard(scorer: Scorer, folder: Path, *, seeds: list[int],
              trusted: dict[str, Any] | None, code: dict[str, Any]) -> dict[str, Any]:
  """The scorecard of a finished trial: judged numbers from here, costs as reported (and as
  measured by the trusted side, `trusted`), provenance. Raises ScoringError when there is
  nothing to score or an invariant is broken."""
  report = read_report(folder)
  steps = _int(report.get('steps_completed'))
  if steps is None or val_steps(folder)[-1:] != [steps]:
    raise ScoringError(f'no validation predictions for the last step the trial reports '
                       f'({steps})')
  curve = scorer.curve(folder, steps)
  reported_loss = {p.get('step'): p.get('train_loss') for p in report.get('curve', [])
                   if isinstance(p, dict)}
  for point in curve:
    point['train_loss'] = _floats(reported_loss.get(point['step']), len(seeds))
  last, t = curve[-1], scorer.targets
  nonfinite = bool(report.get('nonfinite')) or not np.isfinite(last['val_metric']).all()
  if not nonfinite:
    violations = scorer.violations(folder, steps)
    if violations:
      raise ScoringError('; '.join(violations))
  card = {
      'status': 'diverged' if nonfinite else 'ok',
      'task': t.name,
      'input_shape': list(t.input_shape),
      'input_kind': t.input_kind,
      'metric': {'name': t.metric_name, 'direction': t.metric_direction},
      'seeds': seeds,
      'val_metric': sc.summarize(last['val_metric']),
      'val_loss': sc.summarize(last['val_loss']),
      'train_loss': sc.summarize(_floats(report.get('train_loss'), len(seeds))),
      'steps': _int(report.get('steps')),
      'steps_completed': steps,
      **_reported_costs(report, len(seeds)),
      'curve': curve,
      'data': {'fingerprints': t.fingerprints},
      'config': report.get('config', {}),
      'code': code,
      'versions': report.get('versions', {}),
      'device': report.get('device', {}),
      'trusted': trusted,
      'scored_by': 'harness.scoring, in a process that never imported candidate code; '
                   'costs, config, versions and device are as the trial reported them',
  }
  card['stability']['nonfinite'] = nonfinite
  return card


def test_scorecard(scorer: Scorer, folder: Path, card: dict[str, Any]) -> dict[str, Any]:
  loss, metric = scorer.test(folder)
  return {'task': card['task'], 'metric': card['metric'], 'seeds': card['seeds'],
          'test_metric': sc.summarize(metric), 'test_loss': sc.summarize(loss),
          'data': card['data'], 'code': card['code']}


def _reported_costs(report: dict[str, Any], n_seeds: int) -> dict[str, Any]:
  """The trial's cost and stability numbers, each forced to its type (or NaN / None)."""
  part = lambda key: report.get(key) if isinstance(report.get(key), dict) else {}
  latency, memory, stability = part('step_latency_ms'), part('memory'), part('stability')
  compiled = memory.get('compiled_bytes') if isinstance(memory.get('compiled_bytes'), dict) else {}
  spikes = stability.get('loss_spikes') if isinstance(stability.get('loss_spikes'), dict) else {}
  grad = stability.get('max_grad_norm') if isinstance(stability.get('max_grad_norm'), dict) else {}
  return {
      'train_seconds': _number(report.get('train_seconds')),
      'compile_seconds': _number(report.get('compile_seconds')),
      'step_latency_ms': {'p50': _number(latency.get('p50')), 'p95': _number(latency.get('p95')),
                          'measured_over': 'chunks of train.eval_every steps, all seeds'},
      'examples_per_second': _number(report.get('examples_per_second')),
      'memory': {'compiled_bytes': {k: _int(v) for k, v in compiled.items() if isinstance(k, str)},
                 'max_rss_mb': _number(memory.get('max_rss_mb')),
                 'device_peak_bytes': _int(memory.get('device_peak_bytes'))},
      'flops_per_step': _number(report.get('flops_per_step')),
      'flops_per_step_per_seed': _number(report.get('flops_per_step_per_seed')),
      'param_count': _int(report.get('param_count')),
      'stability': {'nonfinite_step': _int(stability.get('nonfinite_step')),
                    'max_grad_norm': {'per_seed': _floats(grad.get('per_seed'), n_seeds)},
                    'loss_spikes': {'total': _int(spikes.get('total'))}},
  }


def _number(value: Any) -> float:
  return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (
      math.nan)


def _int(value: Any) -> int | None:
  return value if isinstance(value, int) and not isinstance(value, bool) else None


def _floats(values: Any, n: int) -> list[float]:
  if isinstance(values, list) and len(values) == n:
    return [_number(v) for v in values]
  return [math.nan] * n
