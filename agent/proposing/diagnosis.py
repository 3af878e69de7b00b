"""Reading a run the way a researcher does: symptoms, each a small pure function of the
scorecard that returns a plain sentence with the numbers it saw (or None).

The loss went non-finite, it spiked, steps are slow or memory is tight, and the mismatches
a model family has with its inputs (a 1-D signal or an image under an MLP; the kind is the
scorecard's `input_kind`, 'unknown' without one). Five symptoms name a defect of training,
read from the curves, the gradient norms and the loss relative to chance (log of the
number of outputs: what a uniform guess scores):

  step_too_large  train loss still at chance after training, flat or bouncing, with large
                  gradient norms or a blow-up (a learning rate 100x too high: 2.36 nats
                  against chance 2.30, gradient norms near 1500)
  step_too_small  train loss barely below chance after the first evaluation and falling
                  slowly and steadily ever since (a learning rate far too low)
  undertrained    too few steps: one evaluation only, the loss well below chance but not
                  near zero, or both losses still falling steeply at the end
  underfitting    both losses high and close, yet well below chance: too little capacity
  overfitting     train loss far below val loss, or val loss rising from its minimum
  noisy_end       val loss up and down between the last evaluations, while train loss
                  keeps its level: the weights wander around a minimum (remedies: an
                  EMA of the weights, a decaying schedule, a smaller or better-averaged step)

A step-size defect explains high losses by itself, so it silences the capacity verdict.
The heuristic proposer turns symptoms into remedies (a named defect's own remedy first);
the LLM prompt shows them as a second opinion.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from agent.editing import knobs

SPIKE_RATE = 0.02  # spikes per seed-step below this are the noise of a near-zero loss

# Symptom thresholds (losses in nats).
OVERFIT_RATIO = 2.0  # val loss this many times the train loss ...
OVERFIT_MIN_GAP = 0.1  # ... and this much above it
VAL_RISE = 1.1  # final val loss this multiple of its minimum: rising
UNDERFIT_LOSS = 0.5  # train loss above this (without a known chance level) ...
UNDERFIT_CHANCE = 0.2  # ... or above this fraction of chance ...
UNDERFIT_GAP_RATIO = 1.25  # ... with val loss within this multiple of it
STILL_FALLING = 0.05  # relative train-loss drop over the last evaluation interval
NOISY_SWING = 0.03  # val loss moving this fraction of its level between evaluations, both ways

# Step size and steps, with losses as fractions of chance (log num_outputs nats).
AT_CHANCE = 0.9  # train loss at or above this fraction of chance has learned ~nothing
LARGE_GRAD_NORM = 100.0  # gradient norms this large mean steps far beyond the loss's scale
BLOW_UP = 2.0  # a mean train loss over an interval this multiple of chance: it blew up
FLAT = 0.05  # relative train-loss drop over the curve's second half below this: no progress
SLOW_FLOOR = 0.5  # a steady slow fall counts while train loss is above this fraction
STEADY = 0.3  # the last interval's drop at least this fraction of the mean drop: no flattening
FITTED = 0.3  # a single point below this fraction of chance is well on: steps are no sure remedy
HEAVY_DROPOUT = 0.5  # dropout at or above this, or ...
HEAVY_DECAY = 0.1  # ... weight decay at or above this, with a high train loss: over-regularised

# Outputs per task (harness.datasets: Task.num_outputs), for scorecards that do not say.
NUM_OUTPUTS = {'mnist1d': 10, 'mnist1d_shuffled': 10, 'digits': 10, 'charlm': 256}
SLOW_STEP_MS = 50.0
HIGH_MEMORY_MB = 8192.0  # when the charter sets no memory cap
MEMORY_CAP_FRACTION = 0.8


def diagnose_nonfinite(card: Mapping[str, Any]) -> str | None:
  """The run produced NaN or infinity: nothing else in the scorecard can be trusted."""
  stability = card.get('stability') or {}
  if card.get('status') != 'diverged' and not stability.get('nonfinite'):
    return None
  step = stability.get('nonfinite_step')
  where = f' at step {step} of {card.get("steps", "?")}' if step is not None else ''
  return (f'the loss went non-finite{where} (max grad norm '
          f'{_num(_max(stability.get("max_grad_norm")))}): training diverged')


def diagnose_spikes(card: Mapping[str, Any]) -> str | None:
  """Sudden jumps of the training loss: the step size or gradients are too large at times."""
  stability = card.get('stability') or {}
  spikes = (stability.get('loss_spikes') or {}).get('total') or 0
  seeds = len(card.get('seeds') or []) or 1
  seed_steps = (card.get('steps_completed') or 0) * seeds
  if spikes <= 0 or (seed_steps and spikes / seed_steps < SPIKE_RATE):
    return None
  return (f'{spikes} loss spike(s) over {seeds} seed(s) (max grad norm '
          f'{_num(_max(stability.get("max_grad_norm")))}): training is unstable')


def diagnose_overfitting(card: Mapping[str, Any]) -> str | None:
  """Train loss far below val loss, or val loss rising from its minimum while train falls."""
  points = _curve(card)
  train, val = _final_losses(card, points)
  if not (math.isfinite(train) and math.isfinite(val)):
    return None
  gap = val > OVERFIT_RATIO * train and val - train > OVERFIT_MIN_GAP
  rising = ''
  finite = [p for p in points if math.isfinite(p[2])]
  if finite:
    best = min(finite, key=lambda p: p[2])
    if (best[0] < points[-1][0] and val > VAL_RISE * best[2] and train < best[1]):
      rising = f', val loss up from its minimum {_num(best[2])} at step {best[0]}'
  if not (gap or rising):
    return None
  return (f'train loss {_num(train)} vs val loss {_num(val)}{rising}: the '
          f'{_model_name(card)} memorises the training set (overfitting)')


def diagnose_underfitting(card: Mapping[str, Any]) -> str | None:
  """Both losses high and close together, yet well below chance: the model learned what it
  could and cannot fit the training set (at chance it learned nothing: not capacity)."""
  train, val = _final_losses(card, _curve(card))
  if not (math.isfinite(train) and math.isfinite(val)):
    return None
  chance = chance_loss(card)
  known = math.isfinite(chance)
  if (train <= (UNDERFIT_CHANCE * chance if known else UNDERFIT_LOSS)
      or val > UNDERFIT_GAP_RATIO * train or (known and train >= AT_CHANCE * chance)):
    return None
  level = f' ({train / chance:.0%} of chance {_num(chance)})' if known else ''
  return (f'train loss {_num(train)} is high and close to val loss {_num(val)}{level}: the '
          f'{_model_name(card)} underfits (too little capacity)')


def diagnose_undertrained(card: Mapping[str, Any]) -> str | None:
  """Too few steps: train and val loss both still falling over the last interval, or a
  single evaluation whose loss left chance but is nowhere near fitted (one point cannot
  show convergence, and training is the cheapest way to see more)."""
  points = [p for p in _curve(card) if math.isfinite(p[1]) and math.isfinite(p[2])]
  if len(points) == 1:
    step, train, _ = points[0]
    chance = chance_loss(card)
    if not FITTED * chance < train < AT_CHANCE * chance:
      return None
    return (f'a single evaluation, at step {step}: train loss {_num(train)} is down from '
            f'chance {_num(chance)} but the curve cannot show whether it converged: too few '
            'steps (undertrained)')
  if len(points) < 2:
    return None
  (step0, train0, val0), (step1, train1, val1) = points[-2], points[-1]
  if train0 <= 0 or (train0 - train1) / train0 <= STILL_FALLING or val1 >= val0:
    return None
  return (f'train loss still falling at the end ({_num(train0)} -> {_num(train1)} over the '
          f'last {step1 - step0} steps, val loss {_num(val0)} -> {_num(val1)}): too few steps '
          '(undertrained)')


def diagnose_over_regularised(card: Mapping[str, Any]) -> str | None:
  """Train loss high (above UNDERFIT_CHANCE of chance) under dropout or weight decay a
  researcher would call far too strong: the regulariser, not the capacity, holds the model
  back, so more width or depth would only add more to hold back."""
  train, _ = _final_losses(card, _curve(card))
  chance = chance_loss(card)
  if not (math.isfinite(train) and math.isfinite(chance) and train > UNDERFIT_CHANCE * chance):
    return None
  config = card.get('config') or {}
  dropout = _float((config.get('model') or {}).get('dropout', 0.0))
  decay = _float((config.get('optimizer') or {}).get('weight_decay', 0.0))
  strong = ([f'dropout {_num(dropout)}'] if dropout >= HEAVY_DROPOUT else []) + (
      [f'weight decay {_num(decay)}'] if decay >= HEAVY_DECAY else [])
  if not strong:
    return None
  return (f'train loss {_num(train)} stays high ({train / chance:.0%} of chance '
          f'{_num(chance)}) under {" and ".join(strong)}: the regularisation is far too strong '
          '(over-regularised)')


def diagnose_noisy_end(card: Mapping[str, Any]) -> str | None:
  """Val loss both rose and fell over the second half of training, by NOISY_SWING of its
  level or more between two evaluations, and does not end far above its minimum (that is
  overfitting): the weights wander around a minimum rather than settle into it."""
  points = [p for p in _curve(card) if math.isfinite(p[1]) and math.isfinite(p[2])]
  tail = [p[2] for p in points[len(points) // 2:]]
  if len(points) < 4 or len(tail) < 3 or min(tail) <= 0:
    return None
  moves = [b - a for a, b in zip(tail, tail[1:])]
  swing = max(abs(m) for m in moves) / min(tail)
  chance = chance_loss(card)
  if (not (any(m > 0 for m in moves) and any(m < 0 for m in moves)) or swing < NOISY_SWING
      or tail[-1] > VAL_RISE * min(p[2] for p in points)
      or (math.isfinite(chance) and points[-1][1] >= AT_CHANCE * chance)):
    return None
  schedule = ((card.get('config') or {}).get('optimizer') or {}).get('schedule')
  held = ' with the learning rate held constant' if schedule == 'constant' else ''
  return (f'val loss goes up and down over the last {len(tail)} evaluations '
          f'({", ".join(_num(v) for v in tail)}; up to {swing:.0%} between two){held}: the '
          'weights wander around a minimum instead of settling (noisy end)')


def diagnose_step_too_large(card: Mapping[str, Any]) -> str | None:
  """Train loss still at chance after training and making no progress, while the steps
  were violent (huge gradient norms, an interval whose loss blew up) or the loss bounces up
  and down: the optimiser overshoots every minimum (no NaN needed)."""
  points = [p for p in _curve(card) if math.isfinite(p[1])]
  chance = chance_loss(card)
  train = points[-1][1] if points else _float((card.get('train_loss') or {}).get('mean'))
  if not (math.isfinite(chance) and train >= AT_CHANCE * chance):
    return None
  losses = [p[1] for p in points]
  half = losses[len(losses) // 2:]
  if half and half[0] > 0 and (half[0] - train) / half[0] > FLAT:
    return None  # still learning, however slowly
  grad = _max((card.get('stability') or {}).get('max_grad_norm'))
  peak = max(losses, default=math.nan)
  bounces = any(b > a for a, b in zip(losses[1:], losses[2:]))
  signs = [f'gradient norms up to {_num(grad)}'] if grad >= LARGE_GRAD_NORM else []
  if peak >= BLOW_UP * chance:
    signs.append(f'an interval\'s mean train loss of {_num(peak)}')
  if bounces and not signs:
    signs.append('the loss rising and falling between evaluations')
  if not signs:
    return None
  return (f'train loss {_num(train)} is still near chance level ({_num(chance)}) after '
          f'{card.get("steps", "?")} steps, with {" and ".join(signs)}: the step size is too '
          f'large ({_learning_rate(card)})')


def diagnose_step_too_small(card: Mapping[str, Any]) -> str | None:
  """Train loss barely below chance at the first evaluation, then falling at every one,
  slowly and without flattening, and still far from fitted: each step moves too little."""
  points = [p for p in _curve(card) if math.isfinite(p[1])]
  chance = chance_loss(card)
  if len(points) < 3 or not math.isfinite(chance):
    return None
  losses = [p[1] for p in points]
  first, last = losses[0], losses[-1]
  drops = [a - b for a, b in zip(losses, losses[1:])]
  mean_drop = (first - last) / len(drops)
  grad = _max((card.get('stability') or {}).get('max_grad_norm'))
  if (first < AT_CHANCE * chance or last < SLOW_FLOOR * chance or min(drops) <= 0
      or drops[-1] < STEADY * mean_drop or grad >= LARGE_GRAD_NORM):
    return None
  return (f'train loss falls slowly and steadily, {_num(first)} at step {points[0][0]} to '
          f'{_num(last)} at step {points[-1][0]} ({last / chance:.0%} of chance '
          f'{_num(chance)}, gradient norms at most {_num(grad)}): the step size is too small '
          f'({_learning_rate(card)})')


def diagnose_slow(card: Mapping[str, Any]) -> str | None:
  """Slow steps: the compute dtype or the batch is where time goes."""
  p50 = _float((card.get('step_latency_ms') or {}).get('p50'))
  if not p50 > SLOW_STEP_MS:
    return None
  return f'the median step takes {p50:.0f} ms (over {SLOW_STEP_MS:.0f} ms): steps are slow'


def diagnose_memory(card: Mapping[str, Any], cap_mb: float = 0.0) -> str | None:
  """Peak memory near the charter's cap (or, without a cap, simply large)."""
  peak = _peak_memory_mb(card)
  limit = MEMORY_CAP_FRACTION * cap_mb if cap_mb > 0 else HIGH_MEMORY_MB
  if not peak > limit:
    return None
  against = f'cap {cap_mb:.0f} MB' if cap_mb > 0 else f'over {HIGH_MEMORY_MB:.0f} MB'
  return f'peak memory {peak:.0f} MB ({against}): memory is tight'


def diagnose_on_accelerator(card: Mapping[str, Any]) -> str | None:
  """Trained on a GPU or TPU: what pays there (bfloat16 compute on its matrix units, larger
  batches) is worth a try even when no step looks slow."""
  device = card.get('device')
  platform = str(device.get('platform', '')) if isinstance(device, Mapping) else ''
  if platform not in ('gpu', 'tpu'):
    return None
  return (f'trained on {platform.upper()} ({device.get("kind", "?")}): bfloat16 compute and '
          'larger batches usually cost less per example there')


def input_kind(card: Mapping[str, Any]) -> str:
  """What one example is, as the harness recorded it: 'signal', 'image', 'text', ..."""
  kind = card.get('input_kind')
  return kind if isinstance(kind, str) and kind else 'unknown'


def diagnose_signal_under_mlp(dataset: str, family: str, kind: str) -> str | None:
  """A 1-D signal under an MLP: the model must relearn every shift of every feature."""
  if family != 'mlp' or kind != 'signal':
    return None
  return (f'{dataset} inputs are 1-D signals, but an MLP ignores their locality and '
          'translation structure; a 1-D convolution shares weights along the signal')


def diagnose_image_under_mlp(dataset: str, family: str, kind: str) -> str | None:
  """An image under an MLP: no use of the 2-D neighbourhood of pixels."""
  if family != 'mlp' or kind != 'image':
    return None
  return (f'{dataset} inputs are images, but an MLP flattens away their 2-D neighbourhoods; '
          'a 2-D convolution shares weights across positions')


def diagnose_char_lm_transformer(family: str, kind: str) -> str | None:
  """A character LM under a transformer: width, depth and step size are the known levers."""
  if family != 'transformer' or kind != 'text':
    return None
  return ('a character-level language model under a small transformer: width, depth and '
          'learning rate are the levers that usually move bits per byte')


def diagnose(card: Mapping[str, Any], *, dataset: str, family: str,
             memory_cap_mb: float = 0.0) -> dict[str, str]:
  """Every symptom that holds, by name; a diverged run's losses are not read further, and a
  step size defect leaves capacity unjudged."""
  kind = input_kind(card)
  found = {'nonfinite': diagnose_nonfinite(card), 'spikes': diagnose_spikes(card)}
  if not found['nonfinite']:
    step = {'step_too_large': diagnose_step_too_large(card),
            'step_too_small': diagnose_step_too_small(card)}
    found |= step | {'overfitting': diagnose_overfitting(card),
                     'underfitting': None if any(step.values()) else diagnose_underfitting(card),
                     'undertrained': diagnose_undertrained(card),
                     'over_regularised': diagnose_over_regularised(card),
                     'noisy_end': None if any(step.values()) else diagnose_noisy_end(card)}
  found |= {'slow': diagnose_slow(card), 'memory': diagnose_memory(card, memory_cap_mb),
            'on_accelerator': diagnose_on_accelerator(card),
            'signal_under_mlp': diagnose_signal_under_mlp(dataset, family, kind),
            'image_under_mlp': diagnose_image_under_mlp(dataset, family, kind),
            'char_lm_transformer': diagnose_char_lm_transformer(family, kind)}
  return {name: text for name, text in found.items() if text}


def num_outputs(card: Mapping[str, Any]) -> int | None:
  """The model head's size: the scorecard's, else the task's known count; None if unknown."""
  count = card.get('num_outputs', NUM_OUTPUTS.get(str(card.get('task'))))
  return count if isinstance(count, int) and not isinstance(count, bool) and count > 1 else None


def chance_loss(card: Mapping[str, Any]) -> float:
  """The loss of a uniform prediction, log(num_outputs) nats; NaN when unknown."""
  count = num_outputs(card)
  return math.log(count) if count else math.nan


def headline(card: Mapping[str, Any]) -> str:
  """The incumbent in one phrase: its validation metric and final losses."""
  metric = (card.get('metric') or {}).get('name', 'metric')
  train, val = _final_losses(card, _curve(card))
  return (f'val {metric} {_num(_float((card.get("val_metric") or {}).get("mean")))} '
          f'(val loss {_num(val)}, train loss {_num(train)})')


# ----------------------------------------------------------------------------- helpers


def _curve(card: Mapping[str, Any]) -> list[tuple[int, float, float]]:
  """(step, mean train loss, mean val loss) per evaluation, NaN where unknown."""
  return [(int(p.get('step', 0)), _mean(p.get('train_loss')), _mean(p.get('val_loss')))
          for p in card.get('curve') or []]


def _final_losses(card: Mapping[str, Any],
                  points: list[tuple[int, float, float]]) -> tuple[float, float]:
  """(train, val) at the end: the last curve point, else the scorecard's summaries."""
  if points:
    return points[-1][1], points[-1][2]
  return (_float((card.get('train_loss') or {}).get('mean')),
          _float((card.get('val_loss') or {}).get('mean')))


def _peak_memory_mb(card: Mapping[str, Any]) -> float:
  memory = card.get('memory') or {}
  peak = memory.get('device_peak_bytes')
  if peak is None:
    peak = (memory.get('compiled_bytes') or {}).get('peak')
  return _float(peak) / 2**20


def _learning_rate(card: Mapping[str, Any]) -> str:
  rate = ((card.get('config') or {}).get('optimizer') or {}).get('learning_rate')
  return f'learning rate {_num(_float(rate))}' if _is_number(rate) else 'learning rate unknown'


def _model_name(card: Mapping[str, Any]) -> str:
  family = ((card.get('config') or {}).get('model') or {}).get('name')
  return knobs.family_name(str(family), knobs.checkout_families(), 'model')


def _mean(values: Any) -> float:
  """Mean of the finite entries of a per-seed list (JSON null is NaN); NaN if none."""
  finite = [v for v in map(_float, values or []) if math.isfinite(v)]
  return sum(finite) / len(finite) if finite else math.nan


def _max(summary: Any) -> float:
  finite = [v for v in map(_float, (summary or {}).get('per_seed') or []) if math.isfinite(v)]
  return max(finite) if finite else math.nan


def _float(value: Any) -> float:
  return float(value) if _is_number(value) else math.nan


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(x: float) -> str:
  return f'{x:.3g}' if math.isfinite(x) else 'n/a'


