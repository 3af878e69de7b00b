"""The offline proposer: diagnose the incumbent from its scorecard, then pick an edit.

It works the way a researcher reads a run. First the symptoms, each a small pure function
of the scorecard that returns a plain sentence with the numbers it saw (or None): the loss
went non-finite, it spiked, train loss sits far below val loss, both are high, train loss
was still falling when training stopped, steps are slow or memory is tight, and the
mismatches a model family has with its data (a 1-D signal or an image under an MLP). Each
symptom nominates remedies with a prior weight; a Thompson-sampling bandit, whose counts
persist across runs per task and model family, picks among them, so the rules lead and
experience corrects them. Numeric values are drawn around the incumbent from a generator
seeded by (seed, trial): a run replays exactly, and repeated tries do not walk a fixed grid.

Every edit goes through agent.editing.config_edit (or agent.editing.source_edit for model code) so that
the diff a reviewer reads is exactly the change. Only knobs in the tunable categories are
touched (never data, never train.seed), hard bounds keep values sane, and a proposal whose
resulting text equals the incumbent or an earlier trial is never made. An operator is tried
at most twice on one incumbent: a third draw of the same idea is rarely worth a trial.
Source edits come last, when every config operator is spent; after that the proposer
raises NoProposal.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import logging

from agent.editing import config_edit, knobs, source_edit
from agent.editing.config_edit import ConfigEdit, EditError, Scalar
from agent.proposing.bandit import Bandit, Prior
from agent.proposing.proposal import NoProposal, Observation, Proposal
from agent.recording.state import TrialSummary

# Hard bounds on what the proposer will write.
LR_MIN, LR_MAX = 1e-5, 1.0
MAX_WIDTH = 1024
MAX_DEPTH = 8
MAX_STEPS_FACTOR = 4  # train.steps at most this multiple of the starting value
MAX_KERNEL = 15
MIN_BATCH, MAX_BATCH = 8, 512
MAX_DROPOUT = 0.5
MAX_WEIGHT_DECAY = 0.1
MIN_CLIP = 0.05

# Search discipline.
TRIES_PER_INCUMBENT = 2  # an operator rejected this often on the current incumbent is spent
DRAWS_PER_OPERATOR = 3  # fresh random values tried before an operator counts as a duplicate
SPIKE_RATE = 0.02  # spikes per seed-step below this are the noise of a near-zero loss
PRIOR_STRENGTH = 8.0  # pseudo-trials behind a rule's prior weight
BASE_WEIGHT = 0.15  # prior weight of an applicable operator no symptom asked for
TUNABLE = frozenset({'optimization', 'regularization', 'capacity', 'architecture',
                     'efficiency', 'schedule'})

# Symptom thresholds (losses in nats).
OVERFIT_RATIO = 2.0  # val loss this many times the train loss ...
OVERFIT_MIN_GAP = 0.1  # ... and this much above it
VAL_RISE = 1.1  # final val loss this multiple of its minimum: rising
UNDERFIT_LOSS = 0.5  # train loss above this ...
UNDERFIT_GAP_RATIO = 1.25  # ... with val loss within this multiple of it
STILL_FALLING = 0.05  # relative train-loss drop over the last evaluation interval
SLOW_STEP_MS = 50.0
HIGH_MEMORY_MB = 8192.0  # when the charter sets no memory cap
MEMORY_CAP_FRACTION = 0.8

_MODELS_DIR = Path(__file__).resolve().parents[2] / 'models'
_DATASET_KINDS = {'mnist1d': 'signal', 'digits': 'image', 'charlm': 'text'}
_FAMILY_NAMES = {'mlp': 'MLP', 'cnn1d': '1-D CNN', 'cnn2d': '2-D CNN',
                 'transformer': 'transformer'}


# ----------------------------------------------------------------------------- diagnosis


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
  """Both losses high and close together: the model cannot even fit the training set."""
  train, val = _final_losses(card, _curve(card))
  if not (math.isfinite(train) and math.isfinite(val)):
    return None
  if train <= UNDERFIT_LOSS or val > UNDERFIT_GAP_RATIO * train:
    return None
  return (f'train loss {_num(train)} is high and close to val loss {_num(val)}: the '
          f'{_model_name(card)} underfits (too little capacity or too little progress)')


def diagnose_undertrained(card: Mapping[str, Any]) -> str | None:
  """Train and val loss both still falling over the last interval: stopped too early."""
  points = [p for p in _curve(card) if math.isfinite(p[1]) and math.isfinite(p[2])]
  if len(points) < 2:
    return None
  (step0, train0, val0), (step1, train1, val1) = points[-2], points[-1]
  if train0 <= 0 or (train0 - train1) / train0 <= STILL_FALLING or val1 >= val0:
    return None
  return (f'train loss still falling at the end ({_num(train0)} -> {_num(train1)} over the '
          f'last {step1 - step0} steps, val loss {_num(val0)} -> {_num(val1)}): undertrained')


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


def input_kind(dataset: str, input_shape: Sequence[int] | None = None) -> str:
  """'signal' for (L, C) inputs, 'image' for (H, W, C), else what the dataset is known as."""
  if input_shape is not None and len(input_shape) in (2, 3):
    return 'signal' if len(input_shape) == 2 else 'image'
  return _DATASET_KINDS.get(dataset, 'unknown')


def diagnose_signal_under_mlp(dataset: str, family: str,
                              input_shape: Sequence[int] | None = None) -> str | None:
  """A 1-D signal under an MLP: the model must relearn every shift of every feature."""
  if family != 'mlp' or input_kind(dataset, input_shape) != 'signal':
    return None
  return (f'{dataset} inputs are 1-D signals, but an MLP ignores their locality and '
          'translation structure; a 1-D convolution shares weights along the signal')


def diagnose_image_under_mlp(dataset: str, family: str,
                             input_shape: Sequence[int] | None = None) -> str | None:
  """An image under an MLP: no use of the 2-D neighbourhood of pixels."""
  if family != 'mlp' or input_kind(dataset, input_shape) != 'image':
    return None
  return (f'{dataset} inputs are images, but an MLP flattens away their 2-D neighbourhoods; '
          'a 2-D convolution shares weights across positions')


def diagnose_char_lm_transformer(dataset: str, family: str) -> str | None:
  """A character LM under a transformer: width, depth and step size are the known levers."""
  if family != 'transformer' or input_kind(dataset) != 'text':
    return None
  return ('a character-level language model under a small transformer: width, depth and '
          'learning rate are the levers that usually move bits per byte')


def diagnose(card: Mapping[str, Any], *, dataset: str, family: str,
             input_shape: Sequence[int] | None = None,
             memory_cap_mb: float = 0.0) -> dict[str, str]:
  """Every symptom that holds, by name; a diverged run's losses are not read further."""
  found = {'nonfinite': diagnose_nonfinite(card), 'spikes': diagnose_spikes(card)}
  if not found['nonfinite']:
    found |= {'overfitting': diagnose_overfitting(card),
              'underfitting': diagnose_underfitting(card),
              'undertrained': diagnose_undertrained(card)}
  found |= {'slow': diagnose_slow(card), 'memory': diagnose_memory(card, memory_cap_mb),
            'signal_under_mlp': diagnose_signal_under_mlp(dataset, family, input_shape),
            'image_under_mlp': diagnose_image_under_mlp(dataset, family, input_shape),
            'char_lm_transformer': diagnose_char_lm_transformer(dataset, family)}
  return {name: text for name, text in found.items() if text}


# Which operators each symptom nominates, with a prior weight in (0, 1): the chance a
# researcher would give the remedy of being accepted.
RULES: dict[str, dict[str, float]] = {
    'nonfinite': {'lr_down': 0.9, 'clip': 0.85, 'warmup': 0.7, 'normalization_layernorm': 0.5},
    'spikes': {'clip': 0.8, 'lr_down': 0.7, 'warmup': 0.6},
    'overfitting': {'wd_up': 0.6, 'dropout_up': 0.6, 'width_down': 0.4, 'depth_down': 0.35,
                    'batch_down': 0.3},
    'underfitting': {'width_up': 0.6, 'channels_up': 0.6, 'depth_up': 0.5, 'lr_up': 0.45,
                     'kernel_up': 0.4, 'normalization_layernorm': 0.4, 'residual_on': 0.35},
    'undertrained': {'steps_up': 0.7, 'lr_up': 0.5, 'schedule_cosine': 0.45, 'batch_up': 0.35},
    'slow': {'dtype_bf16': 0.6},
    'memory': {'remat_on': 0.6, 'batch_down': 0.5, 'dtype_bf16': 0.5},
    'signal_under_mlp': {'to_cnn1d': 0.95},
    'image_under_mlp': {'to_cnn2d': 0.9},
    'char_lm_transformer': {'width_up': 0.55, 'depth_up': 0.5, 'lr_up': 0.4, 'lr_down': 0.3},
}

# The purpose a symptom gives its remedies, completing the hypothesis sentence.
_WHY = {
    'nonfinite': 'so training stays finite',
    'spikes': 'to damp the loss spikes',
    'overfitting': 'to curb overfitting',
    'underfitting': 'so the model can fit the training set better',
    'undertrained': 'so training gets further before it stops',
    'slow': 'to cut step time',
    'memory': 'to cut peak memory',
    'signal_under_mlp': 'to exploit the locality and shift structure of the 1-D signal',
    'image_under_mlp': 'to exploit the 2-D structure of the images',
    'char_lm_transformer': 'to give the language model a better capacity or step size',
}


def prior(weight: float) -> Prior:
  """Beta prior with mean about `weight`, worth PRIOR_STRENGTH pseudo-trials."""
  return 1.0 + PRIOR_STRENGTH * weight, 1.0 + PRIOR_STRENGTH * (1.0 - weight)


# ----------------------------------------------------------------------------- operators


@dataclasses.dataclass(frozen=True)
class Incumbent:
  """What operators read: the experiment text, its knob values and the model family."""
  text: str
  values: Mapping[str, Scalar]
  family: str
  signature: Mapping[str, object]  # the family's constructor keys and defaults
  files: Mapping[str, str]
  start_steps: int


@dataclasses.dataclass(frozen=True)
class Change:
  """An operator's edit, with the words for it; `expected` may use {metric}, {better}, {unit}."""
  what: str
  why: str  # used when no symptom nominated the operator
  expected: str
  edits: tuple[ConfigEdit, ...] = ()
  source: tuple[str, str] | None = None  # (model file, new text) for a source edit


Build = Callable[[Incumbent, np.random.Generator], Change | None]


@dataclasses.dataclass(frozen=True)
class Operator:
  """A named kind of edit; `requires` lists symptoms of which one must hold (empty: any)."""
  name: str
  build: Build
  requires: frozenset[str] = frozenset()
  source: bool = False


OPERATORS: dict[str, Operator] = {}


def _operator(name: str, requires: Sequence[str] = (),
              source: bool = False) -> Callable[[Build], Build]:
  def register(build: Build) -> Build:
    OPERATORS[name] = Operator(name, build, frozenset(requires), source)
    return build
  return register


@_operator('lr_up')
def _lr_up(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  got = _scale(inc, rng, 'optimizer.learning_rate', up=True, lo=LR_MIN, hi=LR_MAX, snap=_sig)
  return got and Change(
      f'raise the learning rate {_show(got[0])} -> {_show(got[1])}',
      'so each step makes more progress',
      'lower final train loss; val {metric} {better} if the run was step-limited; '
      'train time unchanged', (_edit(inc, 'optimizer.learning_rate', got[1]),))


@_operator('lr_down')
def _lr_down(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  got = _scale(inc, rng, 'optimizer.learning_rate', up=False, lo=LR_MIN, hi=LR_MAX, snap=_sig)
  return got and Change(
      f'lower the learning rate {_show(got[0])} -> {_show(got[1])}',
      'for smaller, steadier steps',
      'steadier loss and a lower final val loss; val {metric} {better} by about 0.5-2{unit} '
      'if the step size was too large; train time unchanged',
      (_edit(inc, 'optimizer.learning_rate', got[1]),))


@_operator('warmup')
def _warmup(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  old, steps = inc.values.get('optimizer.warmup_steps'), inc.values.get('train.steps')
  if not (_is_int(old) and _is_int(steps)):
    return None
  raw = _log_uniform(rng, 0.02, 0.08) * steps if old == 0 else old * rng.uniform(1.5, 3)
  new = min(steps // 4, max(1, round(raw)))
  if new <= old:
    return None
  what = (f'add {new} warmup steps' if old == 0
          else f'lengthen the warmup {old} -> {new} steps')
  return Change(what, 'so the first steps do not blow up the freshly initialised weights',
                'no early loss spikes; val {metric} about the same or slightly {better}; '
                'train time unchanged', (_edit(inc, 'optimizer.warmup_steps', new),))


@_operator('schedule_cosine')
def _schedule_cosine(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  return _switch(inc, 'optimizer.schedule', 'cosine', 'anneal the learning rate with a cosine '
                 'schedule', 'so late steps refine instead of bouncing around the minimum',
                 'lower final losses; val {metric} {better} by about 0.5-2{unit}; train time '
                 'unchanged')


@_operator('clip')
def _clip(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  old = _current(inc, 'optimizer.grad_clip_norm')
  if not _is_number(old):
    return None
  if old <= 0:
    new = _sig(_log_uniform(rng, 0.5, 2.0))
    what = f'clip gradients at global norm {_show(new)}'
  else:
    new = max(MIN_CLIP, _sig(old / _log_uniform(rng, 2.0, 4.0)))
    what = f'tighten gradient clipping {_show(old)} -> {_show(new)}'
  if old > 0 and new >= old:
    return None
  return Change(what, 'so a rare huge gradient cannot throw the weights off',
                'no loss spikes or divergence; val {metric} unchanged or {better}; '
                'train time unchanged', (_edit(inc, 'optimizer.grad_clip_norm', float(new)),))


@_operator('wd_up')
def _wd_up(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  old = _current(inc, 'optimizer.weight_decay')
  if not _is_number(old):
    return None
  new = 1e-4 if old <= 0 else min(MAX_WEIGHT_DECAY, _sig(old * _log_uniform(rng, 3.0, 10.0)))
  if new <= old:
    return None
  return Change(f'raise weight decay {_show(old)} -> {_show(new)}',
                'to keep the weights small and the function smoother',
                'smaller train/val gap; val {metric} {better} by about 1-3{unit}; train '
                'time unchanged', (_edit(inc, 'optimizer.weight_decay', float(new)),))


@_operator('dropout_up')
def _dropout_up(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  old = _current(inc, 'model.dropout')
  if not _is_number(old):
    return None
  new = (round(rng.uniform(0.1, 0.25) * 20) / 20 if old <= 0
         else min(MAX_DROPOUT, round(old + rng.uniform(0.05, 0.15), 2)))
  if new <= old:
    return None
  return Change(f'raise dropout {_show(old)} -> {_show(new)}',
                'so units cannot co-adapt to memorise examples',
                'higher train loss, smaller train/val gap; val {metric} {better} by about '
                '1-3{unit}; train time about the same', (_edit(inc, 'model.dropout', float(new)),))


@_operator('width_up')
def _width_up(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  return _resize(inc, rng, 'model.width', 'width', up=True, hi=MAX_WIDTH)


@_operator('width_down')
def _width_down(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  return _resize(inc, rng, 'model.width', 'width', up=False, hi=MAX_WIDTH)


@_operator('channels_up')
def _channels_up(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  return _resize(inc, rng, 'model.channels', 'channel count', up=True, hi=MAX_WIDTH)


@_operator('depth_up')
def _depth_up(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  old = _current(inc, 'model.depth')
  if not _is_int(old):
    return None
  new = min(MAX_DEPTH, old + int(rng.integers(1, 3)))
  return (None if new <= old else Change(
      f'deepen the {_FAMILY_NAMES.get(inc.family, "model")} {old} -> {new} layers',
      'for more capacity and more composed features',
      'lower train loss; val {metric} {better} by about 1-3{unit} if capacity was the '
      'limit; train time up by about the depth ratio', (_edit(inc, 'model.depth', new),)))


@_operator('depth_down')
def _depth_down(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  old = _current(inc, 'model.depth')
  if not _is_int(old) or old <= 1:
    return None
  return Change(f'make the {_FAMILY_NAMES.get(inc.family, "model")} shallower {old} -> '
                f'{old - 1} layers', 'so it has less room to memorise',
                'smaller train/val gap; val {metric} {better} by about 0.5-2{unit}; train '
                'time down', (_edit(inc, 'model.depth', old - 1),))


@_operator('steps_up')
def _steps_up(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  every = inc.values.get('train.eval_every')
  multiple = every if _is_int(every) and every > 0 else 1  # whole evaluation chunks
  cap = MAX_STEPS_FACTOR * inc.start_steps // multiple * multiple
  got = _scale(inc, rng, 'train.steps', up=True, lo=1, hi=cap,
               snap=functools.partial(_round_to, multiple=multiple), factors=(1.5, 2.0))
  return got and Change(
      f'train longer {got[0]} -> {got[1]} steps', 'so the model converges',
      'lower final losses; val {metric} {better} by about 1-3{unit}; train time up '
      f'about {got[1] / got[0]:.1f}x', (_edit(inc, 'train.steps', got[1]),))


@_operator('batch_up')
def _batch_up(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  got = _scale(inc, rng, 'train.batch_size', up=True, lo=MIN_BATCH, hi=MAX_BATCH,
               snap=_round_to, factors=(1.5, 2.0))
  return got and Change(
      f'raise the batch size {got[0]} -> {got[1]}',
      'so each step sees more examples with less gradient noise',
      'smoother, lower train loss; val {metric} {better} if training was noise-limited; '
      'step time up, examples/s up', (_edit(inc, 'train.batch_size', got[1]),))


@_operator('batch_down')
def _batch_down(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  got = _scale(inc, rng, 'train.batch_size', up=False, lo=MIN_BATCH, hi=MAX_BATCH,
               snap=_round_to, factors=(1.5, 2.0))
  return got and Change(
      f'lower the batch size {got[0]} -> {got[1]}',
      'for noisier gradients that regularise and less memory per step',
      'smaller train/val gap and lower peak memory; val {metric} about the same or '
      '{better}; step time down', (_edit(inc, 'train.batch_size', got[1]),))


@_operator('normalization_layernorm')
def _normalization_layernorm(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  return _switch(inc, 'model.normalization', 'layernorm', 'add layer normalisation to every '
                 'block', 'so activations stay well scaled whatever the learning rate',
                 'faster, steadier training; val {metric} {better} by about 0.5-2{unit}; step '
                 'time up slightly')


@_operator('residual_on')
def _residual_on(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  depth = _current(inc, 'model.depth')
  if not (_is_int(depth) and depth >= 2):  # skips join equal widths only: needs 2+ blocks
    return None
  return _switch(inc, 'model.residual', True, 'add residual connections between blocks',
                 'so gradients reach the early layers directly',
                 'faster optimisation of the deeper layers; val {metric} {better} by about '
                 '0.5-2{unit}; cost unchanged')


@_operator('activation_gelu')
def _activation_gelu(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  return _switch(inc, 'model.activation', 'gelu', 'use GELU activations',
                 'so no unit dies at zero gradient', 'val {metric} about the same or slightly '
                 '{better}; step time up slightly')


@_operator('kernel_up')
def _kernel_up(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  old = _current(inc, 'model.kernel_size')
  if not _is_int(old):
    return None
  new = min(MAX_KERNEL, old + 2 * int(rng.integers(1, 3)))  # odd stays odd: 'SAME' is centred
  return (None if new <= old else Change(
      f'widen the convolution kernels {old} -> {new}', 'for a larger receptive field',
      'val {metric} {better} by about 0.5-2{unit} if patterns are wider than the kernel; '
      'step time up about the kernel ratio', (_edit(inc, 'model.kernel_size', new),)))


@_operator('dtype_bf16', requires=('slow', 'memory'))
def _dtype_bf16(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  return _switch(inc, 'model.dtype', 'bfloat16', 'compute in bfloat16 (parameters stay '
                 'float32)', 'to halve activation memory and use faster matrix units',
                 'step time and peak memory down by up to 2x on accelerators; val {metric} '
                 'within noise')


@_operator('remat_on', requires=('memory',))
def _remat_on(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  return _switch(inc, 'model.remat', True, 'recompute block activations in the backward pass',
                 'to trade compute for memory', 'peak memory down; step time up by about '
                 '20-30%; val {metric} unchanged (same numbers)')


@_operator('to_cnn1d', requires=('signal_under_mlp',))
def _to_cnn1d(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  return _family_switch(inc, rng, 'cnn1d', 'val {metric} {better} by 10+{unit} (on MNIST-1D '
                        'small CNNs reach 85%+ where an MLP stalls near 65%); step time up '
                        'about 2-3x')


@_operator('to_cnn2d', requires=('image_under_mlp',))
def _to_cnn2d(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  return _family_switch(inc, rng, 'cnn2d', 'val {metric} {better} by 2-5{unit}; step time '
                        'up about 2-3x')


# Where the source operators edit each family: the class holding the output head, and
# (block class, layer callee) of the hidden layers that feed a ReLU-like activation.
_HEAD_CLASS = {'mlp': 'MLP', 'cnn1d': 'ConvNet', 'cnn2d': 'ConvNet', 'transformer': 'Transformer'}
_HIDDEN_LAYERS = {'mlp': ('DenseBlock', 'Linear'), 'cnn1d': ('ConvBlock', 'Conv'),
                  'cnn2d': ('ConvBlock', 'Conv')}
_RELU_LIKE = ('relu', 'gelu', 'silu', 'elu')


@_operator('init_he', source=True)
def _init_he(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  path, text = _model_file(inc)
  if (text is None or inc.family not in _HIDDEN_LAYERS
      or _current(inc, 'model.activation') not in _RELU_LIKE):
    return None
  block, callee = _HIDDEN_LAYERS[inc.family]
  new = source_edit.replace_call_keyword(text, block, callee, 'kernel_init',
                                         'nnx.initializers.he_normal()')
  return Change(f'initialise the hidden {callee} layers of {block} in {path} He-normal '
                '(kernel_init) instead of LeCun-normal',
                'so ReLU-like activations keep their variance from layer to layer',
                'faster early training; val {metric} {better} by up to about 1 point; cost '
                'unchanged', source=(path, new))


@_operator('head_zero_init', source=True)
def _head_zero_init(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  path, text = _model_file(inc)
  if text is None or inc.family not in _HEAD_CLASS:
    return None
  top = _HEAD_CLASS[inc.family]
  new = source_edit.replace_call_keyword(text, top, 'Linear', 'kernel_init',
                                         'nnx.initializers.zeros_init()')
  return Change(f'zero-initialise the output head of {top} in {path}',
                'so training starts from uniform predictions instead of random confident ones',
                'smoother start and slightly lower final loss; val {metric} {better} by up '
                'to about 1 point; cost unchanged', source=(path, new))


def _scale(inc: Incumbent, rng: np.random.Generator, path: str, *, up: bool, lo: float,
           hi: float, snap: Callable[[float], Any],
           factors: tuple[float, float] = (1.5, 3.0)) -> tuple[Any, Any] | None:
  """(old, new): the knob times a log-uniform factor (or divided, going down), snapped
  and clamped; None when the knob is absent or the bound leaves no room to move."""
  old = _current(inc, path)
  if not _is_number(old):
    return None
  factor = _log_uniform(rng, *factors)
  new = min(hi, max(lo, snap(old * factor if up else old / factor)))
  return (old, new) if (new > old if up else new < old) else None


def _resize(inc: Incumbent, rng: np.random.Generator, path: str, noun: str, *, up: bool,
            hi: int) -> Change | None:
  """A width-like knob times (or over) 1.5-2, a multiple of 8 (and of the head count)."""
  heads = _current(inc, 'model.num_heads') if inc.family == 'transformer' else 1
  multiple = math.lcm(8, heads if _is_int(heads) and heads > 0 else 1)
  snap = functools.partial(_round_to, multiple=multiple)
  got = _scale(inc, rng, path, up=up, lo=multiple, hi=hi - hi % multiple, snap=snap,
               factors=(1.5, 2.0))
  if not got:
    return None
  if up:
    return Change(f'raise the {noun} {got[0]} -> {got[1]}', 'for more capacity',
                  'lower train loss; val {metric} {better} by about 1-3{unit} if capacity '
                  'was the limit; step time up', (_edit(inc, path, got[1]),))
  return Change(f'lower the {noun} {got[0]} -> {got[1]}', 'so the model has less room to '
                'memorise', 'smaller train/val gap; val {metric} {better} by about 0.5-2{unit}; '
                'step time down', (_edit(inc, path, got[1]),))


def _switch(inc: Incumbent, path: str, value: Scalar, what: str, why: str,
            expected: str) -> Change | None:
  """Sets a categorical knob the family has, unless it already holds the value."""
  old = _current(inc, path)
  if old is None or old == value or type(old) is not type(value):
    return None
  return Change(f'{what} ({path} {_show(old)} -> {_show(value)})', why, expected,
                (_edit(inc, path, value),))


def _family_switch(inc: Incumbent, rng: np.random.Generator, target: str,
                   expected: str) -> Change | None:
  """model.name -> target, with the model keys replaced by the target's constructor keys.

  Structural keys both families share (activation, dropout, dtype, ...) keep the
  incumbent's values; capacity keys take the target's defaults, except channels (16 or
  32), kernel size 5 and flatten pooling, which suit small signals and images.
  """
  signature = _signature(inc.files, target)
  if inc.family == target or not signature:
    return None
  present = [p.partition('.')[2] for p in inc.values if p.startswith('model.')]
  chosen = {'channels': int(rng.choice([16, 32])), 'kernel_size': 5, 'pooling': 'flatten'}
  edits = [ConfigEdit('model.name', target)]
  if inc.values.get('train.scan_steps') is True:  # XLA:CPU runs convs inside loops ~10x slower
    edits.append(ConfigEdit('train.scan_steps', False))
  edits += [ConfigEdit(f'model.{k}', op='remove') for k in present
            if k != 'name' and k not in signature]
  after, values = 'model.name', {}
  for key, default in signature.items():
    path = f'model.{key}'
    if key in chosen:
      value = chosen[key]
    elif key in present and knobs.categorize(path) != 'capacity':
      after = path
      continue
    elif default is knobs.REQUIRED:
      return None
    elif isinstance(default, knobs.Expr):
      continue  # not writable as a literal; the constructor's own default applies
    else:
      value = default
    values[key] = value
    edits.append(ConfigEdit(path, value) if key in present
                 else ConfigEdit(path, value, op='add', after=after))
    after = path
  shape = ', '.join(f'{k} {_show(values[k])}' for k in ('depth', 'channels', 'kernel_size',
                                                        'pooling') if k in values)
  return Change(f'switch the model from {_FAMILY_NAMES.get(inc.family, inc.family)} to '
                f'{_FAMILY_NAMES[target]} ({shape})', 'for the inductive bias the data has',
                expected, tuple(edits))


# ----------------------------------------------------------------------------- proposer


class HeuristicProposer:
  """Rule-based, bandit-steered proposer; no LLM, no network."""
  name = 'heuristic'

  def __init__(self, stats_path: Path | None = None, seed: int = 0):
    self.stats_path = Path(stats_path) if stats_path is not None else None
    self.seed = seed
    self.bandit = Bandit.load(self.stats_path) if self.stats_path else Bandit()
    self._contexts: dict[tuple, str] = {}  # proposal key -> bandit context it was chosen in
    self._context = ''
    self._first_steps: dict[str, int] = {}

  def propose(self, observation: Observation) -> Proposal:
    """The bandit's pick among the symptoms' remedies that make a change not yet tried."""
    inc = self._incumbent(observation)
    dataset = str(inc.values.get('dataset.name', observation.scorecard.get('task', '?')))
    findings = diagnose(observation.scorecard, dataset=dataset, family=inc.family,
                        input_shape=observation.scorecard.get('input_shape'),
                        memory_cap_mb=observation.charter.tradeoffs.max_memory_mb)
    self._context = f'{dataset}/{inc.family}'
    rng = np.random.default_rng([self.seed, observation.trial])
    weights = _weights(findings)
    tried = _tried_texts(observation)
    uses = _uses_on_incumbent(observation.history)
    # Remedies the diagnosis nominates come first, then other config edits, then source
    # edits: a researcher acts on what the curves say before trying things at random.
    tiers = ((False, True), (False, False), (True, None))
    for source, nominated in tiers:
      pool = [op.name for op in OPERATORS.values() if op.source == source
              and uses[op.name] < TRIES_PER_INCUMBENT
              and (not op.requires or op.requires & findings.keys())
              and (nominated is None or (op.name in weights) == nominated)]
      while pool:
        name = self.bandit.choose(pool, rng, context=self._context,
                                  priors={n: prior(weights.get(n, BASE_WEIGHT)) for n in pool})
        made = _make(OPERATORS[name], inc, rng, tried, observation.experiment)
        if made:
          proposal = _proposal(name, *made, findings, observation)
          self._contexts[_key(proposal)] = self._context
          return proposal
        pool.remove(name)
    raise NoProposal(f'every applicable operator for {self._context} has been tried on the '
                     'current incumbent')

  def learn(self, proposal: Proposal, accepted: bool, gain: float | None) -> None:
    """Counts the verdict (accepted or not; `gain` is not used) in the context the operator
    was chosen in, and saves the stats."""
    context = self._contexts.pop(_key(proposal), self._context)
    self.bandit.update(proposal.operator, accepted, context=context)
    if self.stats_path:
      try:
        self.bandit.save(self.stats_path)
      except OSError as e:  # lost statistics are not worth a lost run
        logging.warning('Cannot save proposer stats to %s: %s', self.stats_path, e.strerror)

  def _incumbent(self, observation: Observation) -> Incumbent:
    if observation.experiment not in observation.files:
      raise ValueError(f'observation.files lacks the experiment {observation.experiment}')
    values = {k.path: k.value for k in observation.knobs}
    family = str(values.get('model.name', ''))
    steps = values.get('train.steps')
    start = 0
    if _is_int(steps):
      first = self._first_steps.setdefault(observation.experiment, steps)
      earlier = [_steps_in(t.changes.get(observation.experiment)) for t in observation.history]
      start = min([first, steps, *(s for s in earlier if s)])
    return Incumbent(observation.files[observation.experiment], values, family,
                     _signature(observation.files, family), observation.files, start)


def _proposal(name: str, change: Change, changes: dict[str, str], findings: Mapping[str, str],
              observation: Observation) -> Proposal:
  """The words around an edit: the symptoms that nominated it first, then the others."""
  card = observation.scorecard
  reasons = sorted((f for f in findings if name in RULES[f]), key=lambda f: -RULES[f][name])
  metric = (card.get('metric') or {}).get('name', 'metric')
  train, val = _final_losses(card, _curve(card))
  headline = (f'val {metric} {_num(_float((card.get("val_metric") or {}).get("mean")))} '
              f'(val loss {_num(val)}, train loss {_num(train)})')
  others = [findings[f] for f in findings if f not in reasons]
  if not reasons:
    others.append(f'no symptom points at a specific remedy, so {name} is exploration')
  better = 'up' if observation.direction == 'max' else 'down'
  return Proposal(
      operator=name, diagnosis='; '.join([headline, *(findings[f] for f in reasons), *others]),
      hypothesis=f'{change.what} {_WHY[reasons[0]] if reasons else change.why}',
      expected_effect=change.expected.format(
          metric=metric, better=better, unit=' points' if metric == 'accuracy' else '%'),
      changes=changes)


def _make(op: Operator, inc: Incumbent, rng: np.random.Generator,
          tried: Mapping[str, set[str]], experiment: str) -> tuple[Change, dict[str, str]] | None:
  """The operator's first draw whose result is new, or None (inapplicable or duplicate)."""
  for _ in range(DRAWS_PER_OPERATOR):
    try:
      change = op.build(inc, rng)
      changes = change and _render(change, inc, experiment)
    except EditError:
      return None
    if not changes:
      return None
    if any(text not in tried.get(path, ()) for path, text in changes.items()):
      return change, changes
  return None


def _render(change: Change, inc: Incumbent, experiment: str) -> dict[str, str] | None:
  """The changed files' full texts; None if an edit touches a knob outside TUNABLE."""
  if change.source:
    return {change.source[0]: change.source[1]}
  if any(knobs.categorize(e.path) not in TUNABLE for e in change.edits):
    return None
  return {experiment: _apply_edits(inc.text, change.edits)}


@functools.lru_cache(maxsize=512)
def _apply_edits(text: str, edits: tuple[ConfigEdit, ...]) -> str:
  """Memoised: a deterministic operator is re-rendered on every later proposal, and libcst
  edits cost tens of milliseconds each."""
  return config_edit.apply_edits(text, list(edits))


def _tried_texts(observation: Observation) -> dict[str, set[str]]:
  """Per path, every text a proposal must not reproduce: the incumbent's and earlier trials'."""
  tried: dict[str, set[str]] = collections.defaultdict(set)
  for path, text in observation.files.items():
    tried[path].add(text)
  for trial in observation.history:
    for path, text in trial.changes.items():
      if text is not None:
        tried[path].add(text)
  return tried


def _uses_on_incumbent(history: Sequence[TrialSummary]) -> collections.Counter[str]:
  """How often each operator was tried since the last accepted trial (the incumbent's)."""
  since = list(history)
  for i, trial in enumerate(history):
    if trial.accepted:
      since = list(history[i + 1:])
  return collections.Counter(t.operator for t in since)


def _weights(findings: Mapping[str, str]) -> dict[str, float]:
  """Each operator's strongest nomination among the symptoms found."""
  weights: dict[str, float] = {}
  for finding in findings:
    for op, weight in RULES[finding].items():
      weights[op] = max(weights.get(op, 0.0), weight)
  return weights


def _key(proposal: Proposal) -> tuple:
  return proposal.operator, tuple(sorted(proposal.changes.items(), key=lambda kv: kv[0]))


# ----------------------------------------------------------------------------- helpers


def _signature(files: Mapping[str, str], family: str) -> dict[str, object]:
  """The family's constructor keys, read from the observed model file (else the checkout's)."""
  if family not in knobs.FAMILIES:
    return {}
  filename = knobs.FAMILIES[family][0]
  text = files.get(f'models/{filename}')
  if text is None:
    try:
      text = (_MODELS_DIR / filename).read_text(encoding='utf-8')
    except OSError:
      return {}
  return dict(_signature_of(family, filename, text))


@functools.lru_cache(maxsize=32)
def _signature_of(family: str, filename: str, text: str) -> tuple[tuple[str, object], ...]:
  with tempfile.TemporaryDirectory() as tmp:
    (Path(tmp) / filename).write_text(text, encoding='utf-8')
    try:
      return tuple(knobs.model_signature(tmp, family).items())
    except (knobs.KnobError, EditError):
      return ()


@functools.lru_cache(maxsize=256)
def _steps_in(text: str | None) -> int | None:
  """train.steps of an experiment text, if it has a literal one."""
  if text is None:
    return None
  try:
    module = config_edit.parse_module(text)
    for path, stmt in config_edit.config_assignments(module):
      if path == 'train.steps':
        value = config_edit.literal_value(stmt.body[0].value)
        return value if _is_int(value) else None
  except EditError:
    return None
  return None


def _model_file(inc: Incumbent) -> tuple[str, str | None]:
  """(path, text) of the family's source file as observed; text None if not editable here."""
  if inc.family not in knobs.FAMILIES:
    return '', None
  path = f'models/{knobs.FAMILIES[inc.family][0]}'
  return path, inc.files.get(path)


def _current(inc: Incumbent, path: str) -> Scalar | None:
  """The knob's value: the config's, else for a model key the constructor's literal default."""
  if path in inc.values:
    return inc.values[path]
  section, _, key = path.rpartition('.')
  default = inc.signature.get(key) if section == 'model' else None
  return default if isinstance(default, (bool, int, float, str)) else None


def _edit(inc: Incumbent, path: str, value: Scalar) -> ConfigEdit:
  """Set the line if the experiment has it; add it (a model key left at its default) if not."""
  return ConfigEdit(path, value, op='set' if path in inc.values else 'add')


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


def _model_name(card: Mapping[str, Any]) -> str:
  family = ((card.get('config') or {}).get('model') or {}).get('name')
  return _FAMILY_NAMES.get(family, 'model')


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


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _num(x: float) -> str:
  return f'{x:.3g}' if math.isfinite(x) else 'n/a'


def _show(value: Scalar) -> str:
  """A value as the config file writes it (1e-4, not 0.0001)."""
  return config_edit.literal_code(value)


def _sig(x: float) -> float:
  """Two significant digits: values a person would write, and a finite search space."""
  return float(f'{x:.2g}')


def _round_to(x: float, multiple: int = 8) -> int:
  return max(multiple, int(round(x / multiple)) * multiple)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
  return math.exp(rng.uniform(math.log(lo), math.log(hi)))
