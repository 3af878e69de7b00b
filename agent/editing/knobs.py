"""The observe step: which knobs an experiment has, and what a model family accepts.

Both are read from source with libcst rather than by importing it: the files are the
agent's own edits, so reading them must not run them, and the line numbers and comments
("# used by sgd only") are what a proposer needs to reason about a knob.
"""

import dataclasses
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from agent.editing import config_edit

Scalar = bool | int | float | str

# config.model.name -> (file under models/, class); mirrors models.MODELS.
FAMILIES: dict[str, tuple[str, str]] = {
    'mlp': ('mlp.py', 'MLP'),
    'cnn1d': ('cnn.py', 'CNN1D'),
    'cnn2d': ('cnn.py', 'CNN2D'),
    'transformer': ('transformer.py', 'Transformer'),
}

# Constructor arguments models.build_model fills in itself; they are not config keys.
HARNESS_SUPPLIED = frozenset({'input_shape', 'num_outputs', 'rngs'})

CATEGORIES = ('optimization', 'regularization', 'capacity', 'architecture', 'efficiency',
              'schedule', 'data', 'other')

_CATEGORY_OF_KEY = {
    **dict.fromkeys(('learning_rate', 'schedule', 'warmup_steps', 'momentum',
                     'grad_clip_norm', 'b1', 'b2', 'eps'), 'optimization'),
    **dict.fromkeys(('weight_decay', 'dropout', 'label_smoothing'), 'regularization'),
    **dict.fromkeys(('width', 'depth', 'channels', 'num_heads', 'mlp_ratio', 'kernel_size'),
                    'capacity'),
    **dict.fromkeys(('activation', 'normalization', 'residual', 'pooling'), 'architecture'),
    **dict.fromkeys(('dtype', 'remat', 'batch_size', 'scan_steps'), 'efficiency'),
    **dict.fromkeys(('steps', 'eval_every', 'checkpoint_every', 'log_every'), 'schedule'),
}


class KnobError(ValueError):
  """An experiment or model source the observe step cannot read; one-line message."""


@dataclasses.dataclass(frozen=True)
class Knob:
  """One `config.<section>.<key> = <literal>` line of an experiment's get_config()."""
  path: str
  value: Scalar
  kind: str  # 'float' | 'int' | 'bool' | 'str'
  line: int
  comment: str | None = None
  category: str = 'other'

  @property
  def section(self) -> str:
    return self.path.rpartition('.')[0]

  @property
  def key(self) -> str:
    return self.path.rpartition('.')[2]


@dataclasses.dataclass(frozen=True)
class Expr:
  """A constructor default that is not a literal, kept as its source code."""
  code: str


class _Required:
  """Marker for a constructor parameter without a default."""

  def __repr__(self) -> str:
    return 'REQUIRED'


REQUIRED = _Required()


def categorize(path: str) -> str:
  """The proposer's category of a knob path; seeds and unknown keys are 'other'.

  'other' is deliberately not tunable by category: train.seed in particular must not be
  searched, since seeds are what the paired comparison holds fixed.
  """
  section, _, key = path.rpartition('.')
  if section == 'dataset' or section.startswith('dataset.'):
    return 'data'
  if key == 'name':
    return {'model': 'architecture', 'optimizer': 'optimization'}.get(section, 'other')
  return _CATEGORY_OF_KEY.get(key, 'other')


def inventory(config_path: str | Path) -> list[Knob]:
  """Every scalar-literal knob of the experiment file, in file order.

  Section lines (`config.x = ml_collections.ConfigDict()`) and non-scalar values are
  not knobs and are skipped.
  """
  module = config_edit.parse_module(_read(config_path))
  positions = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
  knobs = []
  for path, stmt in config_edit.config_assignments(module):
    value = config_edit.literal_value(stmt.body[0].value)
    if '.' not in path or type(value) not in (bool, int, float, str):
      continue
    comment = stmt.trailing_whitespace.comment
    knobs.append(Knob(
        path=path, value=value, kind=type(value).__name__, line=positions[stmt].start.line,
        comment=comment.value.lstrip('#').strip() if comment else None,
        category=categorize(path)))
  return knobs


def model_signature(models_dir: str | Path, family: str) -> dict[str, object]:
  """Constructor parameters of a family's class (config keys) and their defaults.

  Harness-supplied arguments are left out; a parameter without a default maps to
  REQUIRED and a non-literal default to Expr(code). An `__init__` inherited from a base
  class defined in the same file (CNN1D from ConvNet) is followed.
  """
  if family not in FAMILIES:
    raise KnobError(f'unknown model family {family!r}; known: {", ".join(FAMILIES)}')
  filename, class_name = FAMILIES[family]
  path = Path(models_dir) / filename
  module = config_edit.parse_module(_read(path))
  init = _find_init(module, class_name, path)
  return {p.name.value: _default(module, p) for p in _init_params(init)
          if p.name.value not in HARNESS_SUPPLIED}


def _read(path: str | Path) -> str:
  try:
    return Path(path).read_text(encoding='utf-8')
  except OSError as e:
    raise KnobError(f'cannot read {path}: {e.strerror}') from e


def _find_init(module: cst.Module, class_name: str, path: Path) -> cst.FunctionDef:
  """The __init__ of the class, or of the nearest base class defined in the same module."""
  classes = {s.name.value: s for s in module.body if isinstance(s, cst.ClassDef)}
  name, seen = class_name, set()
  while name in classes and name not in seen:
    seen.add(name)
    cls = classes[name]
    for stmt in cls.body.body:
      if isinstance(stmt, cst.FunctionDef) and stmt.name.value == '__init__':
        return stmt
    bases = [b.value for b in cls.bases if isinstance(b.value, cst.Name)]
    name = bases[0].value if bases else ''
  if class_name not in classes:
    raise KnobError(f'{path}: no class {class_name}')
  raise KnobError(f'{path}: class {class_name} has no __init__ in this file')


def _init_params(init: cst.FunctionDef) -> list[cst.Param]:
  params = init.params
  every = [*params.posonly_params, *params.params, *params.kwonly_params]
  return [p for p in every if p.name.value != 'self']


def _default(module: cst.Module, param: cst.Param) -> object:
  if param.default is None:
    return REQUIRED
  value = config_edit.literal_value(param.default)
  return value if config_edit.is_literal(value) else Expr(module.code_for_node(param.default))
