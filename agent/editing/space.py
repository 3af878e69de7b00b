"""The search space: every config knob the agent knows, its category, and where it may move.

One declaration read by the knob inventory (categories), the heuristic's numeric operator
(bounds, scale, rounding), the LLM prompt (the ranges it is shown) and the benchmarks'
random and TPE baselines (the neighbourhood they sample). A Dim without a kind is known
and categorised but never searched (seeds, bookkeeping, the optimiser's name).

Some bounds depend on other knobs: warmup is at most a quarter of the steps (`per`), steps
at most four times what the run started with (`per='start'`), and a transformer's width a
multiple of its head count (`multiple_of`). A `default` is the value the harness assumes
for a key a config may leave out (the training extras of harness/regimen.py, all off), so
an operator can add the line to an experiment that lacks it. `traced` marks the knobs the
harness keeps out of the compiled program (harness.optimizers.TRACED): candidates that
differ only in them train together in one program (agent.editing.batching).

A model of the user's own names its knobs its own way; ALIASES says which declared knob
each of its names plays (`hidden` a width, `blocks` a depth), and `roles` maps them for one
model, so the same Dims bound and step its knobs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterable

from agent.editing.config_edit import Scalar, literal_code

CATEGORIES = ('optimization', 'regularization', 'capacity', 'architecture', 'efficiency',
              'schedule', 'data', 'other')
CONV = frozenset({'cnn1d', 'cnn2d'})


@dataclasses.dataclass(frozen=True)
class Dim:
  """One config knob; `kind` '' is known but never searched."""
  path: str
  category: str
  kind: str = ''  # 'float' | 'int' | 'choice' | ''
  low: float = 0.0
  high: float = 0.0
  scale: str = 'linear'  # 'log' | 'linear'
  choices: tuple[Scalar, ...] = ()
  digits: int = 2  # floats: significant digits (log scale) or decimals (linear)
  multiple: int = 1  # ints are multiples of this ...
  multiple_of: str = ''  # ... and of this knob's value, where the family has it
  per: str = ''  # low and high are multiples of this knob's value ('start': the run's own)
  families: frozenset[str] = frozenset()  # empty: every family
  traced: bool = False
  near: float = 0.0  # a search without judgement looks within [start / near, start * near]
  sample: tuple[float, float] | None = None  # ... or within this range (else the bounds)
  default: Scalar | None = None  # what the harness assumes when a config leaves it out

  @property
  def key(self) -> str:
    return self.path.rpartition('.')[2]

  @property
  def searched(self) -> bool:
    return bool(self.kind)

  def applies(self, family: str) -> bool:
    return not self.families or family in self.families

  def step(self, value: Callable[[str], Scalar | None]) -> int:
    """The multiple an int takes: `multiple`, and the value of `multiple_of` if positive."""
    other = value(self.multiple_of) if self.multiple_of else None
    return math.lcm(self.multiple, other if _is_int(other) and other > 0 else 1)

  def bounds(self, value: Callable[[str], Scalar | None], start: Scalar | None = None,
             step: int = 1) -> tuple[float, float] | None:
    """(low, high) given the knobs' values (and the run's starting value of this one); an
    int's on multiples of `step`. None when the value they scale with is unknown."""
    ref = 1 if not self.per else start if self.per == 'start' else value(self.per)
    if not _is_number(ref):
      return None
    low, high = self.low * ref, self.high * ref
    if self.kind == 'int':
      return int(-(-low // step) * step), int(high // step * step)
    return low, high

  def snap(self, x: float, step: int = 1) -> Scalar:
    """A value a person would write: 2 significant digits (log), 2 decimals (linear), or
    the nearest multiple of `step` (at least `step`)."""
    if self.kind == 'int':
      return max(step, int(round(x / step)) * step)
    if self.scale == 'log':
      return float(f'{x:.{self.digits}g}')
    return round(x, self.digits)

  def describe(self) -> str:
    """The range in words, e.g. '[1e-05, 1] log' or 'relu, gelu (mlp only)'."""
    where = f' ({", ".join(sorted(self.families))} only)' if self.families else ''
    if self.kind == 'choice':
      return ', '.join(literal_code(c) for c in self.choices) + where
    per = {'': '', 'start': ' x the run\'s first value'}.get(self.per, f' x {self.per}')
    scale = (',' if per else '') + ' log' if self.scale == 'log' else ''
    step = ' and '.join(([str(self.multiple)] if self.multiple > 1 else [])
                        + ([self.multiple_of] if self.multiple_of else []))
    return (f'[{self.low:g}, {self.high:g}]{per}{scale}' + (f', step {step}' if step else '')
            + where)


def _fixed(category: str, *paths: str) -> tuple[Dim, ...]:
  return tuple(Dim(path, category) for path in paths)


_TRACED = {'traced': True}

DIMS: tuple[Dim, ...] = (
    Dim('optimizer.learning_rate', 'optimization', 'float', 1e-5, 1.0, 'log', near=10,
        **_TRACED),
    Dim('optimizer.schedule', 'optimization', 'choice',
        choices=('constant', 'cosine', 'linear')),
    Dim('optimizer.warmup_steps', 'optimization', 'int', 0, 0.25, per='train.steps'),
    Dim('optimizer.grad_clip_norm', 'optimization', 'float', 0.05, math.inf, 'log',
        **_TRACED),
    *_fixed('optimization', 'optimizer.name', 'optimizer.momentum', 'optimizer.b1',
            'optimizer.b2', 'optimizer.eps'),
    Dim('train.ema_decay', 'optimization', 'float', 0.0, 0.9999, digits=4,
        sample=(0.9, 0.999), default=0.0),
    Dim('optimizer.weight_decay', 'regularization', 'float', 1e-6, 0.1, 'log', **_TRACED),
    Dim('model.dropout', 'regularization', 'float', 0.0, 0.5),
    Dim('train.label_smoothing', 'regularization', 'float', 0.0, 0.3, default=0.0),
    Dim('train.augment_shift', 'regularization', 'int', 0, 8, default=0),
    Dim('train.augment_noise', 'regularization', 'float', 0.0, 1.0, sample=(0.0, 0.3),
        default=0.0),
    Dim('model.width', 'capacity', 'int', 8, 1024, 'log', multiple=8,
        multiple_of='model.num_heads', families=frozenset({'mlp', 'transformer'}), near=4),
    Dim('model.channels', 'capacity', 'int', 8, 1024, 'log', multiple=8, families=CONV,
        sample=(8, 64)),
    Dim('model.depth', 'capacity', 'int', 1, 8, sample=(1, 4)),
    Dim('model.kernel_size', 'capacity', 'int', 1, 15, families=CONV),
    *_fixed('capacity', 'model.num_heads', 'model.mlp_ratio'),
    Dim('model.activation', 'architecture', 'choice', choices=('relu', 'gelu')),
    Dim('model.normalization', 'architecture', 'choice', choices=('none', 'layernorm')),
    Dim('model.residual', 'architecture', 'choice', choices=(False, True),
        families=frozenset({'mlp'}) | CONV),
    Dim('model.pooling', 'architecture', 'choice', choices=('flatten', 'mean', 'max'),
        families=CONV),
    Dim('model.downsample', 'architecture', 'int', 1, 4, families=CONV),
    Dim('model.name', 'architecture'),  # a family switch is its own operator
    Dim('model.dtype', 'efficiency', 'choice', choices=('float32', 'bfloat16')),
    Dim('model.remat', 'efficiency', 'choice', choices=(False, True)),
    Dim('train.batch_size', 'efficiency', 'int', 8, 512, 'log', multiple=8, near=4),
    *_fixed('efficiency', 'train.scan_steps'),
    Dim('train.steps', 'schedule', 'int', 1, 4, 'log', multiple_of='train.eval_every',
        per='start'),
    *_fixed('schedule', 'train.eval_every', 'train.checkpoint_every', 'train.log_every'),
)

BY_PATH = {d.path: d for d in DIMS}
TRACED = tuple(d.path for d in DIMS if d.traced)
# Knobs are matched by key as well, wherever a config puts them; `name` only by path.
_BY_KEY = {d.key: d for d in DIMS if d.key != 'name'}

# What a model of the user's own may call a model knob declared above: a residual MLP's
# `hidden` is a width and its `blocks` a depth. Matched as whole `model.<key>` names, and
# only where the model has no key of the declared name (`roles`).
ALIASES: dict[str, tuple[str, ...]] = {
    'model.width': ('hidden', 'hidden_dim', 'hidden_size', 'hidden_units', 'units',
                    'features', 'num_features', 'd_model', 'embed_dim', 'dim', 'mlp_dim',
                    'n_embd'),
    'model.channels': ('filters', 'num_filters', 'num_channels', 'base_channels'),
    'model.depth': ('blocks', 'num_blocks', 'n_blocks', 'layers', 'num_layers', 'n_layers',
                    'n_layer'),
    'model.dropout': ('dropout_rate', 'drop_rate', 'p_drop', 'dropout_prob', 'drop'),
    'model.activation': ('act', 'act_fn', 'activation_fn', 'nonlinearity'),
    'model.normalization': ('norm', 'use_norm', 'layer_norm', 'layernorm', 'use_layernorm',
                            'use_layer_norm', 'normalize'),
    'model.residual': ('skip', 'use_skip', 'skips', 'use_residual', 'residuals'),
}
_BY_ALIAS = {alias: BY_PATH[path] for path, names in ALIASES.items() for alias in names}


def dim(path: str) -> Dim | None:
  """The knob's declaration: by path, else by key (a `name` only by path), else for a
  `model.<key>` by the names a model of one's own gives it (ALIASES)."""
  section, _, key = path.rpartition('.')
  found = BY_PATH.get(path) or _BY_KEY.get(key)
  return found or (_BY_ALIAS.get(key) if section == 'model' else None)


def roles(model_keys: Iterable[str]) -> dict[str, str]:
  """Declared model path -> the model's own path for it, for a model that names a knob its
  own way ({'model.width': 'model.hidden'}); the first of several names wins, and a model
  that has the declared key itself keeps it."""
  keys = list(model_keys)
  found: dict[str, str] = {}
  for key in keys:
    declared = _BY_ALIAS.get(key)
    if declared and declared.key not in keys and declared.path not in found:
      found[declared.path] = f'model.{key}'
  return found


def _is_int(value: object) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)
