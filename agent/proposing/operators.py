"""The heuristic's edit operators: each a named kind of change to an incumbent.

Numeric operators are one `Move` along a Dim of the declared space (agent.editing.space):
up or down by a drawn factor or increment, rounded the way a person writes values, kept
inside the Dim's bounds. Categorical operators set one knob (`Switch`), the family switches
rewrite the model section for another constructor, and the source operators change one
keyword of the model code. Each draws from the generator it is given, in a fixed order, so
a seed replays; a None is "not applicable here".
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import re
from typing import Callable, Mapping

import numpy as np

from agent.editing import knobs, source_edit, space
from agent.editing.config_edit import ConfigEdit, EditError, Scalar, literal_code


@dataclasses.dataclass(frozen=True)
class Incumbent:
  """What operators read: the experiment text, its knob values and the model family."""
  text: str
  values: Mapping[str, Scalar]
  family: str
  signature: Mapping[str, object]  # the family's constructor keys and defaults
  files: Mapping[str, str]
  start_steps: int
  families: Mapping[str, tuple[str, str]]  # the run's model registry: name -> (file, class)
  head: str = ''  # the class whose __init__ builds the family (it holds the output head)
  channels: tuple[int, ...] = (16, 32)  # a family switch draws its channel count from these
  platform: str = 'cpu'  # where the incumbent trained (its scorecard's device)
  input_kind: str = 'unknown'  # what one example is: 'signal', 'image', 'text' (scorecard's)
  # A model of one's own names knobs its own way: declared path -> its path (space.roles).
  roles: Mapping[str, str] = dataclasses.field(default_factory=dict)


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


@dataclasses.dataclass(frozen=True)
class Move:
  """One step along the Dim at `path`, strictly up or down, or None.

  The step multiplies by a factor drawn log-uniform from `by` (`uniform`: uniform), or
  with `add` adds a draw from `by` (integers for an int Dim, times `unit`); equal ends
  draw nothing. A knob at or below zero with a `start` is switched on instead: to
  `start`, or to a draw from that range, log-uniform (uniform to the nearest 1/`grid`
  with a grid), times the value the Dim's bounds scale with. `what` and `expected` may
  use {old}, {new}, {ratio} (new/old) and {model} (the family in words).
  """
  path: str
  up: bool
  by: tuple[float, float]
  what: str
  why: str
  expected: str
  add: bool = False
  unit: int = 1
  uniform: bool = False
  start: tuple[float, float] | float | None = None
  grid: int = 0
  what_on: str = ''  # the words when the knob is switched on, if they differ

  def __call__(self, inc: Incumbent, rng: np.random.Generator) -> Change | None:
    dim = space.BY_PATH[self.path]
    value = functools.partial(_current, inc)
    old = value(self.path)
    if not (_is_int(old) if dim.kind == 'int' else _is_number(old)):
      return None
    step = dim.step(value) if dim.kind == 'int' else 1
    bounds = dim.bounds(value, inc.start_steps, step)
    if bounds is None:
      return None
    on = self.start is not None and old <= 0
    new = min(bounds[1], max(bounds[0], dim.snap(
        self._start(rng, bounds, dim, value) if on else self._step(rng, old, dim), step)))
    if not (new > old if self.up or on else new < old):  # switching on always raises
      return None
    new = float(new) if dim.kind == 'float' else new
    words = dict(old=literal_code(old), new=literal_code(new), ratio=f'{new / old:.1f}'
                 if old else '', model=knobs.family_name(inc.family, inc.families, 'model'))
    return Change(_fill(self.what_on if on and self.what_on else self.what, words), self.why,
                  _fill(self.expected, words), (_edit(inc, self.path, new),))

  def _step(self, rng: np.random.Generator, old: float, dim: space.Dim) -> float:
    lo, hi = self.by
    if lo == hi:
      delta = lo
    elif self.add:
      delta = self.unit * int(rng.integers(lo, hi)) if dim.kind == 'int' else rng.uniform(lo, hi)
    else:
      delta = rng.uniform(lo, hi) if self.uniform else _log_uniform(rng, lo, hi)
    if self.add:
      return old + delta if self.up else old - delta
    return old * delta if self.up else old / delta

  def _start(self, rng: np.random.Generator, bounds: tuple[float, float], dim: space.Dim,
             value: Callable[[str], Scalar | None]) -> float:
    if not isinstance(self.start, tuple):
      return self.start
    if self.grid:
      return round(rng.uniform(*self.start) * self.grid) / self.grid
    ref = value(dim.per) if dim.per and dim.per != 'start' else 1
    return _log_uniform(rng, *self.start) * ref


@dataclasses.dataclass(frozen=True)
class Switch:
  """Sets a categorical knob the family has, unless it already holds the value."""
  path: str
  value: Scalar
  what: str
  why: str
  expected: str

  def __call__(self, inc: Incumbent, rng: np.random.Generator) -> Change | None:
    old, new = _current(inc, self.path), self.value
    choices = space.BY_PATH[self.path].choices
    if isinstance(old, bool) and isinstance(new, str) and 'none' in choices:
      new = new != 'none'  # a model's own on/off switch for it (use_norm: bool)
    if old is None or old == new or type(old) is not type(new) or not _spoken(inc, self.path, new):
      return None
    return Change(f'{self.what} ({inc.roles.get(self.path, self.path)} {literal_code(old)} -> '
                  f'{literal_code(new)})', self.why, self.expected,
                  (_edit(inc, self.path, new),))


_MORE_CAPACITY = ('lower train loss; val {metric} {better} by about 1-3{unit} if capacity was '
                  'the limit; step time up')
_LESS_CAPACITY = ('smaller train/val gap; val {metric} {better} by about 0.5-2{unit}; step time '
                  'down')


def _resize(name: str, path: str, noun: str, up: bool) -> Operator:
  """A width-like knob times (or over) 1.5-2, on multiples of 8 (and of the head count)."""
  if up:
    return Operator(name, Move(path, True, (1.5, 2.0), f'raise the {noun} {{old}} -> {{new}}',
                               'for more capacity', _MORE_CAPACITY))
  return Operator(name, Move(path, False, (1.5, 2.0), f'lower the {noun} {{old}} -> {{new}}',
                             'so the model has less room to memorise', _LESS_CAPACITY))


def _residual_on(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  depth = _current(inc, 'model.depth')
  if not (_is_int(depth) and depth >= 2):  # skips join equal widths only: needs 2+ blocks
    return None
  return Switch('model.residual', True, 'add residual connections between blocks',
                'so gradients reach the early layers directly',
                'faster optimisation of the deeper layers; val {metric} {better} by about '
                '0.5-2{unit}; cost unchanged')(inc, rng)


_AUGMENTABLE = ('signal', 'image')  # shifts and noise keep a signal's or an image's label


def _for_kinds(kinds: tuple[str, ...], build: Build) -> Build:
  """`build` where the incumbent's inputs are of these kinds; else not applicable."""
  def gated(inc: Incumbent, rng: np.random.Generator) -> Change | None:
    return build(inc, rng) if inc.input_kind in kinds else None
  return gated


def _augment_shift(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  """Random shifts of each training example: 2-4 positions of a 1-D signal, one pixel of
  an image (a digit moved by more leaves its 8x8 frame)."""
  start = (2, 4) if inc.input_kind == 'signal' else 1
  return Move('train.augment_shift', True, (1, 2), 'widen the random shifts of training '
              'examples {old} -> {new} positions', 'so the model learns features wherever they sit',
              'smaller train/val gap; val {metric} {better} by about 1-3{unit} if position '
              'varies in the data; train time about the same', add=True, start=start,
              grid=1 if isinstance(start, tuple) else 0,
              what_on='shift each training example by a random offset in [-{new}, {new}] '
              'positions (train.augment_shift)')(inc, rng)


def _ema(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  """Switches the weights' EMA on, averaging over a horizon (1 / (1 - decay)) of a 10th to
  a 40th of the training steps: long enough to average the noise of single steps, short
  enough to track the end of training."""
  old, steps = _current(inc, 'train.ema_decay'), _current(inc, 'train.steps')
  if not (_is_number(old) and old == 0 and _is_int(steps)):
    return None
  horizon = max(10.0, steps / _log_uniform(rng, 10.0, 40.0))
  dim = space.BY_PATH['train.ema_decay']
  decay = float(min(dim.high, max(0.9, round(1.0 - 1.0 / horizon, 3))))
  return Change(f'evaluate an exponential moving average of the weights (train.ema_decay '
                f'{literal_code(old)} -> {literal_code(decay)}, about the last '
                f'{1 / (1 - decay):.0f} steps)',
                'so the evaluated weights average out the noise of single steps',
                'val loss lower and steadier between evaluations; val {metric} {better} by '
                'about 0.5-1{unit}; train time about the same',
                (_edit(inc, 'train.ema_decay', decay),))


def _batch_with_lr(up: bool) -> Build:
  """The batch size doubled (or halved) and the learning rate scaled with it: by the batch
  ratio for SGD (the linear scaling rule), by its square root for adaptive optimisers,
  whose steps are already normalised by the gradient's scale. One idea, one trial: a
  batch moved alone changes the effective step size as well."""
  def build(inc: Incumbent, rng: np.random.Generator) -> Change | None:
    move = Move('train.batch_size', up, (2.0, 2.0), '', '', '')(inc, rng)
    lr, name = _current(inc, 'optimizer.learning_rate'), _current(inc, 'optimizer.name')
    if move is None or not _is_number(lr) or lr <= 0:
      return None
    old, new = _current(inc, 'train.batch_size'), move.edits[0].value
    ratio = new / old
    dim = space.BY_PATH['optimizer.learning_rate']
    rate = dim.snap(lr * (ratio if name == 'sgd' else math.sqrt(ratio)))
    if not dim.low <= rate <= dim.high or rate == lr:
      return None
    rule = 'linearly, for SGD' if name == 'sgd' else 'by its square root, for an adaptive optimiser'
    return Change(f'{"raise" if up else "lower"} the batch size {old} -> {new} and scale the '
                  f'learning rate with it {literal_code(lr)} -> {literal_code(rate)} '
                  f'({rule})',
                  'so each step sees more examples with less gradient noise' if up else
                  'for noisier gradients that regularise, at the same step size per example',
                  ('smoother, lower train loss; val {metric} {better} if training was '
                   'noise-limited; step time up, examples/s up') if up else
                  ('smaller train/val gap; val {metric} about the same or {better}; step '
                   'time down'),
                  (*move.edits, _edit(inc, 'optimizer.learning_rate', rate)))
  return build


def _warmup_cosine(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  """A linear warmup over 2-8% of the steps, then a cosine decay to zero: the usual
  shape, set in one edit (the schedule and the warmup are judged together)."""
  schedule, warmup = _current(inc, 'optimizer.schedule'), _current(inc, 'optimizer.warmup_steps')
  steps = _current(inc, 'train.steps')
  if not (isinstance(schedule, str) and _is_int(warmup) and _is_int(steps)):
    return None
  if schedule == 'cosine' and warmup > 0:
    return None
  new = warmup if warmup > 0 else max(1, int(round(steps * rng.uniform(0.02, 0.08))))
  edits = [_edit(inc, 'optimizer.schedule', 'cosine')] if schedule != 'cosine' else []
  if new != warmup:
    edits.append(_edit(inc, 'optimizer.warmup_steps', new))
  return Change(f'warm up the learning rate over {new} steps, then anneal it with a cosine '
                f'schedule (was {schedule}, {warmup} warmup steps)',
                'so the first steps are gentle and the last ones refine',
                'no early loss spikes and lower final losses; val {metric} {better} by about '
                '0.5-2{unit}; train time unchanged', tuple(edits))


def _family_switch(target: str, expected: str) -> Build:
  """model.name -> target, with the model keys replaced by the target's constructor keys.

  Structural keys both families share (activation, dropout, dtype, ...) keep the
  incumbent's values; capacity keys take the target's defaults, except channels (16 or
  32, or what `inc.channels` allows), kernel size 5 and flatten pooling, which suit small
  signals and images.
  """
  def build(inc: Incumbent, rng: np.random.Generator) -> Change | None:
    signature = constructor(inc.files, inc.families, target)[1]
    if inc.family == target or not signature:
      return None
    present = [p.partition('.')[2] for p in inc.values if p.startswith('model.')]
    chosen = {'channels': int(rng.choice(list(inc.channels))), 'kernel_size': 5,
              'pooling': 'flatten'}
    edits = [ConfigEdit('model.name', target)]
    if inc.platform == 'cpu' and inc.values.get('train.scan_steps') is True:
      edits.append(ConfigEdit('train.scan_steps', False))  # XLA:CPU: convs in loops ~10x slower
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
    shape = ', '.join(f'{k} {literal_code(values[k])}' for k in (
        'depth', 'channels', 'kernel_size', 'pooling') if k in values)
    return Change(f'switch the model from '
                  f'{knobs.family_name(inc.family, inc.families, inc.family)} to '
                  f'{knobs.family_name(target, inc.families, target)} ({shape})',
                  'for the inductive bias the data has', expected, tuple(edits))
  return build


# Hidden-layer blocks the He-init operator knows, with the layer that feeds the activation.
_HIDDEN_LAYERS = {'DenseBlock': 'Linear', 'ConvBlock': 'Conv'}
_RELU_LIKE = ('relu', 'gelu', 'silu', 'elu')


def _init_he(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  path, text = _model_file(inc)
  if text is None or _current(inc, 'model.activation') not in _RELU_LIKE:
    return None
  block = next((b for b in _HIDDEN_LAYERS if re.search(rf'^class {b}\b', text, re.M)), None)
  callee = _HIDDEN_LAYERS.get(block or '')
  if block is None and _unseen(inc):  # its first class, not the head's, with layers
    block, callee = next(((c, layer) for c, layer, _ in _layer_calls(text) if c != inc.head),
                         (None, None))
  if block is None:
    return None
  new = source_edit.replace_call_keyword(text, block, callee, 'kernel_init',
                                         'nnx.initializers.he_normal()')
  return Change(f'initialise the hidden {callee} layers of {block} in {path} He-normal '
                '(kernel_init) instead of LeCun-normal',
                'so ReLU-like activations keep their variance from layer to layer',
                'faster early training; val {metric} {better} by up to about 1 point; cost '
                'unchanged', source=(path, new))


def _head_zero_init(inc: Incumbent, rng: np.random.Generator) -> Change | None:
  path, text = _model_file(inc)
  if text is None or (inc.head, 'Linear', 1) not in _layer_calls(text):
    return None  # no head, or its class has other Linear layers (an input projection)
  new = source_edit.replace_call_keyword(text, inc.head, 'Linear', 'kernel_init',
                                         'nnx.initializers.zeros_init()')
  return Change(f'zero-initialise the output head of {inc.head} in {path}',
                'so training starts from uniform predictions instead of random confident ones',
                'smoother start and slightly lower final loss; val {metric} {better} by up '
                'to about 1 point; cost unchanged', source=(path, new))


# In this order: the bandit draws for its candidates in it, so a seed replays only with it.
OPERATORS: dict[str, Operator] = {op.name: op for op in (
    Operator('lr_up', Move(
        'optimizer.learning_rate', True, (1.5, 3.0), 'raise the learning rate {old} -> {new}',
        'so each step makes more progress', 'lower final train loss; val {metric} {better} '
        'if the run was step-limited; train time unchanged')),
    Operator('lr_down', Move(
        'optimizer.learning_rate', False, (1.5, 3.0), 'lower the learning rate {old} -> {new}',
        'for smaller, steadier steps', 'steadier loss and a lower final val loss; val '
        '{metric} {better} by about 0.5-2{unit} if the step size was too large; train time '
        'unchanged')),
    Operator('lr_cut', Move(
        'optimizer.learning_rate', False, (10.0, 100.0), 'cut the learning rate {old} -> {new}',
        'so the steps stop overshooting', 'train loss leaves chance level; val {metric} '
        '{better} by far if the step size was the defect; train time unchanged'),
        requires=frozenset({'step_too_large'})),
    Operator('lr_boost', Move(
        'optimizer.learning_rate', True, (10.0, 100.0),
        'boost the learning rate {old} -> {new}', 'so each step moves the weights far enough',
        'train loss falls much faster; val {metric} {better} by far if the step size was the '
        'defect; train time unchanged'), requires=frozenset({'step_too_small'})),
    Operator('warmup', Move(
        'optimizer.warmup_steps', True, (1.5, 3), 'lengthen the warmup {old} -> {new} steps',
        'so the first steps do not blow up the freshly initialised weights',
        'no early loss spikes; val {metric} about the same or slightly {better}; train time '
        'unchanged', uniform=True, start=(0.02, 0.08), what_on='add {new} warmup steps')),
    Operator('schedule_cosine', Switch(
        'optimizer.schedule', 'cosine', 'anneal the learning rate with a cosine schedule',
        'so late steps refine instead of bouncing around the minimum',
        'lower final losses; val {metric} {better} by about 0.5-2{unit}; train time '
        'unchanged')),
    Operator('schedule_linear', Switch(
        'optimizer.schedule', 'linear', 'decay the learning rate linearly to zero',
        'so late steps refine instead of bouncing around the minimum',
        'lower final losses; val {metric} {better} by about 0.5-2{unit}; train time '
        'unchanged')),
    Operator('schedule_constant', Switch(
        'optimizer.schedule', 'constant', 'hold the learning rate constant after warmup',
        'so the last steps still make progress instead of decaying to nothing',
        'lower final train loss if training stopped early; val {metric} {better} by about '
        '0.5-1{unit}; train time unchanged')),
    Operator('warmup_cosine', _warmup_cosine),
    Operator('ema', _ema),
    Operator('clip', Move(
        'optimizer.grad_clip_norm', False, (2.0, 4.0),
        'tighten gradient clipping {old} -> {new}',
        'so a rare huge gradient cannot throw the weights off', 'no loss spikes or '
        'divergence; val {metric} unchanged or {better}; train time unchanged',
        start=(0.5, 2.0), what_on='clip gradients at global norm {new}')),
    Operator('wd_up', Move(
        'optimizer.weight_decay', True, (3.0, 10.0), 'raise weight decay {old} -> {new}',
        'to keep the weights small and the function smoother', 'smaller train/val gap; val '
        '{metric} {better} by about 1-3{unit}; train time unchanged', start=1e-4)),
    Operator('dropout_cut', Move(
        'model.dropout', False, (3.0, 9.0), 'cut dropout {old} -> {new}',
        'so most units take part in every step again', 'train loss falls far below its '
        'level; val {metric} {better} by far if dropout held the model back; train time '
        'about the same'), requires=frozenset({'over_regularised'})),
    Operator('wd_cut', Move(
        'optimizer.weight_decay', False, (10.0, 100.0), 'cut weight decay {old} -> {new}',
        'so the weights can grow as large as the task needs', 'train loss falls far below '
        'its level; val {metric} {better} by far if weight decay held the model back; train '
        'time unchanged'), requires=frozenset({'over_regularised'})),
    Operator('dropout_up', Move(
        'model.dropout', True, (0.05, 0.15), 'raise dropout {old} -> {new}',
        'so units cannot co-adapt to memorise examples', 'higher train loss, smaller '
        'train/val gap; val {metric} {better} by about 1-3{unit}; train time about the same',
        add=True, start=(0.1, 0.25), grid=20)),
    Operator('label_smoothing', _for_kinds(_AUGMENTABLE, Move(
        'train.label_smoothing', True, (0.05, 0.1), 'raise label smoothing {old} -> {new}',
        'so the model stops pushing its logits towards overconfident certainty',
        'lower, steadier val loss; val {metric} {better} by about 0.5-1{unit}; train time '
        'unchanged', add=True, start=(0.05, 0.15), grid=20,
        what_on='smooth the training labels by {new} (train.label_smoothing)'))),
    Operator('augment_shift', _for_kinds(_AUGMENTABLE, _augment_shift)),
    Operator('augment_noise', _for_kinds(_AUGMENTABLE, Move(
        'train.augment_noise', True, (1.5, 2.0), 'raise the input noise {old} -> {new}',
        'so the model cannot rely on exact input values',
        'smaller train/val gap; val {metric} {better} by about 0.5-2{unit}; train time about '
        'the same', start=(0.05, 0.25),
        what_on='add Gaussian noise of std {new} to training inputs (train.augment_noise)'))),
    _resize('width_up', 'model.width', 'width', up=True),
    _resize('width_down', 'model.width', 'width', up=False),
    _resize('channels_up', 'model.channels', 'channel count', up=True),
    _resize('channels_down', 'model.channels', 'channel count', up=False),
    Operator('depth_up', Move(
        'model.depth', True, (1, 3), 'deepen the {model} {old} -> {new} layers',
        'for more capacity and more composed features', 'lower train loss; val {metric} '
        '{better} by about 1-3{unit} if capacity was the limit; train time up by about the '
        'depth ratio', add=True)),
    Operator('depth_down', Move(
        'model.depth', False, (1, 1), 'make the {model} shallower {old} -> {new} layers',
        'so it has less room to memorise', 'smaller train/val gap; val {metric} {better} by '
        'about 0.5-2{unit}; train time down', add=True)),
    Operator('steps_up', Move(
        'train.steps', True, (1.5, 2.0), 'train longer {old} -> {new} steps',
        'so the model converges', 'lower final losses; val {metric} {better} by about '
        '1-3{unit}; train time up about {ratio}x')),
    Operator('batch_up', Move(
        'train.batch_size', True, (1.5, 2.0), 'raise the batch size {old} -> {new}',
        'so each step sees more examples with less gradient noise', 'smoother, lower train '
        'loss; val {metric} {better} if training was noise-limited; step time up, '
        'examples/s up')),
    Operator('batch_down', Move(
        'train.batch_size', False, (1.5, 2.0), 'lower the batch size {old} -> {new}',
        'for noisier gradients that regularise and less memory per step', 'smaller '
        'train/val gap and lower peak memory; val {metric} about the same or {better}; step '
        'time down')),
    Operator('batch_lr_up', _batch_with_lr(up=True)),
    Operator('batch_lr_down', _batch_with_lr(up=False)),
    Operator('normalization_layernorm', Switch(
        'model.normalization', 'layernorm', 'add layer normalisation to every block',
        'so activations stay well scaled whatever the learning rate', 'faster, steadier '
        'training; val {metric} {better} by about 0.5-2{unit}; step time up slightly')),
    Operator('residual_on', _residual_on),
    Operator('activation_gelu', Switch(
        'model.activation', 'gelu', 'use GELU activations', 'so no unit dies at zero '
        'gradient', 'val {metric} about the same or slightly {better}; step time up '
        'slightly')),
    Operator('kernel_up', Move(  # odd stays odd: 'SAME' padding is centred
        'model.kernel_size', True, (1, 3), 'widen the convolution kernels {old} -> {new}',
        'for a larger receptive field', 'val {metric} {better} by about 0.5-2{unit} if '
        'patterns are wider than the kernel; step time up about the kernel ratio', add=True,
        unit=2)),
    Operator('pooling_max', Switch(
        'model.pooling', 'max', 'pool the last feature map with a global max',
        'so the head sees whether a feature occurred, not where, with far fewer weights',
        'smaller train/val gap; val {metric} {better} by about 0.5-2{unit} if position '
        'does not matter; step time down slightly')),
    Operator('pooling_mean', Switch(
        'model.pooling', 'mean', 'pool the last feature map with a global mean',
        'so the head sees how much of each feature occurred, with far fewer weights',
        'smaller train/val gap; val {metric} {better} by about 0.5-2{unit} if position '
        'does not matter; step time down slightly')),
    Operator('downsample', Move(
        'model.downsample', True, (1, 1), 'max-pool between blocks, window {old} -> {new}',
        'so each block sees a wider stretch of the input at a fraction of the positions',
        'val {metric} {better} by about 0.5-2{unit} if patterns are wider than the '
        'receptive field; step time down', add=True)),
    Operator('dtype_bf16', Switch(
        'model.dtype', 'bfloat16', 'compute in bfloat16 (parameters stay float32)',
        'to halve activation memory and use faster matrix units', 'step time and peak '
        'memory down by up to 2x on accelerators; val {metric} within noise'),
        requires=frozenset({'slow', 'memory', 'on_accelerator'})),
    Operator('remat_on', Switch(
        'model.remat', True, 'recompute block activations in the backward pass',
        'to trade compute for memory', 'peak memory down; step time up by about 20-30%; val '
        '{metric} unchanged (same numbers)'), requires=frozenset({'memory'})),
    Operator('to_cnn1d', _family_switch('cnn1d', (
        'val {metric} {better} by 10+{unit} (on MNIST-1D small CNNs reach 85%+ where an MLP '
        'stalls near 65%); step time up about 2-3x')),
        requires=frozenset({'signal_under_mlp'})),
    Operator('to_cnn2d', _family_switch('cnn2d', (
        'val {metric} {better} by 2-5{unit}; step time up about 2-3x')),
        requires=frozenset({'image_under_mlp'})),
    Operator('init_he', _init_he, source=True),
    Operator('head_zero_init', _head_zero_init, source=True),
)}


# ----------------------------------------------------------------------------- helpers


def _unseen(inc: Incumbent) -> bool:
  """Whether the incumbent's model is one of the user's own, not a family this checkout
  ships (whose names and blocks the operators know)."""
  where = inc.families.get(inc.family)
  return where is not None and where not in knobs.checkout_families().values()


@functools.lru_cache(maxsize=32)
def _layer_calls(text: str) -> tuple[tuple[str, str, int], ...]:
  """(class, layer, calls) for each class of a model file that calls nnx.Linear or nnx.Conv
  (by those names), in file order; () for a file that does not parse."""
  try:
    module = ast.parse(text)
  except SyntaxError:
    return ()
  found = []
  for cls in (n for n in module.body if isinstance(n, ast.ClassDef)):
    calls = [c.func for c in ast.walk(cls) if isinstance(c, ast.Call)]
    for layer in ('Linear', 'Conv'):
      count = sum(1 for f in calls if (f.attr if isinstance(f, ast.Attribute) else
                                        getattr(f, 'id', None)) == layer)
      if count:
        found.append((cls.name, layer, count))
  return tuple(found)


def run_families(files: Mapping[str, str]) -> dict[str, tuple[str, str]]:
  """The run's model registry (models/__init__.py as observed, else the checkout's)."""
  registry = files.get(f'models/{knobs.REGISTRY}')
  try:
    return knobs.families(registry) if registry is not None else knobs.checkout_families()
  except knobs.KnobError:
    return {}


def constructor(files: Mapping[str, str], families: Mapping[str, tuple[str, str]],
                family: str) -> tuple[str, dict[str, object]]:
  """(class whose __init__ builds the family, its keys and defaults), read from the observed
  model file (else the checkout's); ('', {}) when unknown or unreadable."""
  if family not in families:
    return '', {}
  filename, class_name = families[family]
  text = files.get(f'models/{filename}')
  if text is None:
    try:
      text = (knobs.MODELS_DIR / filename).read_text(encoding='utf-8')
    except OSError:
      return '', {}
  owner, signature = _constructor(text, class_name)
  return owner, dict(signature)


@functools.lru_cache(maxsize=32)
def _constructor(text: str, class_name: str) -> tuple[str, tuple[tuple[str, object], ...]]:
  try:
    owner, signature = knobs.constructor(text, class_name, class_name)
  except (knobs.KnobError, EditError):
    return '', ()
  return owner, tuple(signature.items())


def _model_file(inc: Incumbent) -> tuple[str, str | None]:
  """(path, text) of the family's source file as observed; text None if not editable here."""
  if inc.family not in inc.families:
    return '', None
  path = f'models/{inc.families[inc.family][0]}'
  return path, inc.files.get(path)


def _current(inc: Incumbent, path: str) -> Scalar | None:
  """The knob's value (under the model's own name for it, `inc.roles`): the config's, else
  for a model key the constructor's literal default, else the harness's default for a key a
  config may leave out (space.Dim.default)."""
  dim = space.BY_PATH.get(path)
  path = inc.roles.get(path, path)
  if path in inc.values:
    return inc.values[path]
  section, _, key = path.rpartition('.')
  default = inc.signature.get(key) if section == 'model' else dim and dim.default
  return default if isinstance(default, (bool, int, float, str)) else None


def _edit(inc: Incumbent, path: str, value: Scalar) -> ConfigEdit:
  """Set the line if the experiment has it; add it (a model key left at its default) if not;
  under the model's own name for it (`inc.roles`)."""
  path = inc.roles.get(path, path)
  return ConfigEdit(path, value, op='set' if path in inc.values else 'add')


def _spoken(inc: Incumbent, path: str, value: Scalar) -> bool:
  """A string a model knob is set to must appear as a literal in the observed model source
  ('gelu' in an activation table): a model of one's own may know other names than ours."""
  if not (path.startswith('model.') and isinstance(value, str) and _unseen(inc)):
    return True
  texts = [text for path, text in inc.files.items() if path.startswith('models/')]
  return not texts or any(f"'{value}'" in t or f'"{value}"' in t for t in texts)


def _fill(template: str, words: Mapping[str, str]) -> str:
  """The template with `words` in; {metric}, {better} and {unit} are left for the proposal."""
  return template.format(**words, metric='{metric}', better='{better}', unit='{unit}')


def _is_number(value: object) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
  return math.exp(rng.uniform(math.log(lo), math.log(hi)))
