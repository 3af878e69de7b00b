"""The observe step: which knobs an experiment has, and what a model family accepts.

Both are read from source with libcst rather than by importing it: the files are the
agent's own edits, so reading them must not run them, and the line numbers and comments
("# used by sgd only") are what a proposer needs to reason about a knob.
"""

import ast
import dataclasses
import functools
import re
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from agent.editing import config_edit, space

Scalar = bool | int | float | str

# The model registry, the one list of families: its MODELS dict names each family's class,
# and its `from models.<file> import <Class>` lines say where the class lives.
REGISTRY = '__init__.py'
# The agent's own checkout of models/: read where a run's files do not include one.
MODELS_DIR = Path(__file__).resolve().parents[2] / 'models'

# Constructor arguments models.build_model fills in itself; they are not config keys.
HARNESS_SUPPLIED = frozenset({'input_shape', 'num_outputs', 'rngs'})


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
  """The proposer's category of a knob path (agent.editing.space); seeds, unknown keys 'other'.

  'other' is deliberately not tunable by category: train.seed in particular must not be
  searched, since seeds are what the paired comparison holds fixed.
  """
  section = path.rpartition('.')[0]
  if section == 'dataset' or section.startswith('dataset.'):
    return 'data'
  dim = space.dim(path)
  return dim.category if dim else 'other'


def families(registry: str) -> dict[str, tuple[str, str]]:
  """config.model.name -> (file under models/, class), read from the registry's text."""
  return dict(_families(registry))


def checkout_families() -> dict[str, tuple[str, str]]:
  return families(_read(MODELS_DIR / REGISTRY))


def family_name(family: str, known: dict[str, tuple[str, str]], default: str) -> str:
  """A family in words, from its class name: an acronym stays ('MLP'), a dimension suffix
  is spelled out ('CNN1D': '1-D CNN'), a word is lower-cased ('Transformer')."""
  if family not in known:
    return default
  name = known[family][1]
  spatial = re.fullmatch(r'([A-Z]+)(\d)D', name)
  if spatial:
    return f'{spatial[2]}-D {spatial[1]}'
  return name if name.isupper() else name.lower()


@functools.lru_cache(maxsize=32)
def _families(registry: str) -> tuple[tuple[str, tuple[str, str]], ...]:
  try:
    module = ast.parse(registry)
  except SyntaxError as e:
    raise KnobError(f'models/{REGISTRY} line {e.lineno}: {e.msg}') from e
  where = {}
  for node in module.body:
    if isinstance(node, ast.ImportFrom) and node.module:
      package, _, name = node.module.rpartition('.')
      if (node.level, package) in ((0, 'models'), (1, '')):
        where |= {a.asname or a.name: (f'{name}.py', a.name) for a in node.names}
  for node in module.body:
    if isinstance(node, ast.Assign):
      target = node.targets[0]
    elif isinstance(node, ast.AnnAssign):
      target = node.target
    else:
      continue
    if isinstance(target, ast.Name) and target.id == 'MODELS' and isinstance(node.value,
                                                                             ast.Dict):
      return tuple((k.value, where[v.id]) for k, v in zip(node.value.keys, node.value.values)
                   if isinstance(k, ast.Constant) and isinstance(k.value, str)
                   and isinstance(v, ast.Name) and v.id in where)
  raise KnobError(f'models/{REGISTRY} has no MODELS dict')


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
  """Constructor parameters of a family's class (config keys) and their defaults."""
  known = families(_read(Path(models_dir) / REGISTRY))
  if family not in known:
    raise KnobError(f'unknown model family {family!r}; known: {", ".join(known)}')
  filename, class_name = known[family]
  path = Path(models_dir) / filename
  return constructor(_read(path), class_name, str(path))[1]


def constructor(text: str, class_name: str, where: str) -> tuple[str, dict[str, object]]:
  """(the class whose `__init__` builds `class_name`, its parameters and their defaults).

  Harness-supplied arguments are left out; a parameter without a default maps to
  REQUIRED and a non-literal default to Expr(code). An `__init__` inherited from a base
  class defined in the same file (CNN1D from ConvNet) is followed.
  """
  module = config_edit.parse_module(text)
  owner, init = _find_init(module, class_name, where)
  return owner, {p.name.value: _default(module, p) for p in _init_params(init)
                 if p.name.value not in HARNESS_SUPPLIED}


def _read(path: str | Path) -> str:
  try:
    return Path(path).read_text(encoding='utf-8')
  except OSError as e:
    raise KnobError(f'cannot read {path}: {e.strerror}') from e


def _find_init(module: cst.Module, class_name: str, path: str) -> tuple[str, cst.FunctionDef]:
  """(class, its __init__): the class's own, or the nearest base class's in the module."""
  classes = {s.name.value: s for s in module.body if isinstance(s, cst.ClassDef)}
  name, seen = class_name, set()
  while name in classes and name not in seen:
    seen.add(name)
    cls = classes[name]
    for stmt in cls.body.body:
      if isinstance(stmt, cst.FunctionDef) and stmt.name.value == '__init__':
        return name, stmt
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
