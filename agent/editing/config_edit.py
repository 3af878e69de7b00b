"""Typed key-path edits of ml_collections config files, written back with libcst.

The agent changes an experiment the way a person would, one `config.a.b = v` line at a
time, keeping comments, blank lines and quoting as they were, so that the diff a reviewer
reads is exactly the change. Edits are typed: a float knob takes a number, not a string,
so a proposer's slip fails here with a message instead of deep inside a training run.
"""

import ast
import dataclasses
import math
from typing import Literal

import libcst as cst

Scalar = bool | int | float | str | None
_MISSING = object()  # the old value was not a literal (e.g. a ConfigDict() call)


class EditError(ValueError):
  """An edit that cannot be applied; the message is one line."""


@dataclasses.dataclass(frozen=True)
class ConfigEdit:
  """One typed edit of a config key path such as 'optimizer.learning_rate'; `after` places
  an 'add' after that path instead of at the end of the section."""
  path: str
  value: Scalar = None
  op: Literal['set', 'add', 'remove'] = 'set'
  after: str | None = None


def set_value(source: str, path: str, value: Scalar) -> str:
  """Replaces the literal of the existing `config.<path> = ...` line."""
  module = parse_module(source)
  _section_of(path)
  stmt = _statement(module, path)
  assign = stmt.body[0]
  old = literal_value(assign.value)
  new = _typed(path, old, value)
  if old is not _MISSING and type(old) is type(new) and old == new:
    return source
  old_code = module.code_for_node(assign.value)
  code = literal_code(new, quote_of(assign.value) or dominant_quote(module),
                      prefer_sci='e' in old_code.lower() and isinstance(old, float))
  new_stmt = stmt.with_changes(body=[assign.with_changes(value=cst.parse_expression(code))])
  return checked_code(module.deep_replace(stmt, new_stmt))


def add_value(source: str, path: str, value: Scalar, after: str | None = None) -> str:
  """Inserts `config.<path> = value` after the section's last line, or after `after`."""
  module = parse_module(source)
  section = _section_of(path)
  assignments = config_assignments(module)
  if any(p == path for p, _ in assignments):
    raise EditError(f"'{path}' is already set; use op='set'")
  if after is not None:
    if after != section and not after.startswith(section + '.'):
      raise EditError(f"cannot add '{path}' after '{after}': not in section '{section}'")
    anchor = _statement(module, after)
  else:
    in_section = [s for p, s in assignments
                  if p == section or p.startswith(section + '.')]
    if not in_section:
      raise EditError(f"no section '{section}' in get_config(); cannot add '{path}'")
    anchor = in_section[-1]
  code = literal_code(_typed(path, _MISSING, value), dominant_quote(module))
  new_stmt = cst.parse_statement(f'config.{path} = {code}\n')
  block = get_config(module).body
  body = list(block.body)
  body.insert(body.index(anchor) + 1, new_stmt)
  return checked_code(module.deep_replace(block, block.with_changes(body=body)))


def remove_value(source: str, path: str) -> str:
  """Deletes the `config.<path> = ...` line; blank lines and comments above it move down."""
  module = parse_module(source)
  _section_of(path)
  stmt = _statement(module, path)
  block = get_config(module).body
  body = list(block.body)
  i = body.index(stmt)
  if i + 1 < len(body):
    following = body[i + 1]
    leading = _collapse_blank(list(stmt.leading_lines) + list(following.leading_lines))
    body[i + 1] = following.with_changes(leading_lines=leading)
  del body[i]
  return checked_code(module.deep_replace(block, block.with_changes(body=body)))


def apply_edits(source: str, edits: list[ConfigEdit]) -> str:
  """Applies the edits in order; the first one that fails raises EditError."""
  for edit in edits:
    if edit.op == 'set':
      source = set_value(source, edit.path, edit.value)
    elif edit.op == 'add':
      source = add_value(source, edit.path, edit.value, edit.after)
    elif edit.op == 'remove':
      source = remove_value(source, edit.path)
    else:
      raise EditError(f"unknown edit op {edit.op!r} for '{edit.path}'; use set, add or remove")
  return source


def parse_module(source: str) -> cst.Module:
  """libcst parse whose syntax errors become a one-line EditError."""
  try:
    return cst.parse_module(source)
  except cst.ParserSyntaxError as e:
    message = ' '.join(e.message.split())
    raise EditError(f'source does not parse at line {e.raw_line}: {message}') from e


def get_config(module: cst.Module) -> cst.FunctionDef:
  """The module's top-level get_config() definition, with an indented body."""
  for stmt in module.body:
    if (isinstance(stmt, cst.FunctionDef) and stmt.name.value == 'get_config'
        and isinstance(stmt.body, cst.IndentedBlock)):
      return stmt
  raise EditError('no top-level get_config() function')


def config_assignments(module: cst.Module) -> list[tuple[str, cst.SimpleStatementLine]]:
  """(dotted path, statement) of each `config.x[.y] = ...` line directly in get_config()."""
  found = []
  for stmt in get_config(module).body.body:
    if (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
        and isinstance(stmt.body[0], cst.Assign) and len(stmt.body[0].targets) == 1):
      path = _dotted_path(stmt.body[0].targets[0].target)
      if path:
        found.append((path, stmt))
  return found


def literal_value(expr: cst.BaseExpression) -> object:
  """The Python value of a literal expression, or _MISSING for anything else."""
  try:
    return ast.literal_eval(cst.Module(body=[]).code_for_node(expr).strip())
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    return _MISSING


def is_literal(value: object) -> bool:
  """False for the marker literal_value returns for non-literal expressions."""
  return value is not _MISSING


def literal_code(value: Scalar, quote: str = "'", prefer_sci: bool = False) -> str:
  """Python source for a scalar: floats in the shorter of repr and 3e-3 form."""
  if value is None or isinstance(value, (bool, int)):
    return repr(value)
  if isinstance(value, float):
    return _float_code(value, prefer_sci)
  if isinstance(value, str):
    return _string_code(value, quote)
  raise EditError(f'cannot write {type(value).__name__} value {value!r}; use bool, int, float, '
                  'str or None')


def quote_of(expr: cst.BaseExpression) -> str | None:
  """The quote character of a plain string literal, None for anything else."""
  return expr.quote[0] if isinstance(expr, cst.SimpleString) else None


def dominant_quote(module: cst.Module) -> str:
  """The quote the file mostly uses for one-line strings (docstrings do not count)."""
  counts = {"'": 0, '"': 0}

  class Counter(cst.CSTVisitor):
    def visit_SimpleString(self, node: cst.SimpleString) -> None:
      if len(node.quote) == 1:
        counts[node.quote] += 1

  module.visit(Counter())
  return '"' if counts['"'] > counts["'"] else "'"


def _dotted_path(target: cst.BaseExpression) -> str | None:
  """'a.b' for the expression `config.a.b`, None for anything else."""
  names = []
  while isinstance(target, cst.Attribute):
    names.append(target.attr.value)
    target = target.value
  if isinstance(target, cst.Name) and target.value == 'config' and names:
    return '.'.join(reversed(names))
  return None


def _statement(module: cst.Module, path: str) -> cst.SimpleStatementLine:
  matches = [s for p, s in config_assignments(module) if p == path]
  if not matches:
    raise EditError(f"unknown config path '{path}': no `config.{path} = ...` in get_config()")
  if len(matches) > 1:
    raise EditError(f"'{path}' is assigned {len(matches)} times in get_config(); edit by hand")
  return matches[0]


def _section_of(path: str) -> str:
  section, _, key = path.rpartition('.')
  if not section or not key:
    raise EditError(f"'{path}' is not a key path like 'optimizer.learning_rate'")
  return section


def _typed(path: str, old: object, new: object) -> Scalar:
  """The new value checked against the old literal's type; an int widens to a float knob."""
  if not isinstance(new, (bool, int, float, str, type(None))):
    raise EditError(f"'{path}': cannot write {type(new).__name__} value; use bool, int, float, "
                    'str or None')
  if old is _MISSING or old is None:
    return new
  if type(old) is float and type(new) is int:
    return float(new)
  if type(old) is not type(new):
    raise EditError(f"'{path}' holds {type(old).__name__} values, not {type(new).__name__} {new!r}")
  return new


def _float_code(x: float, prefer_sci: bool) -> str:
  if not math.isfinite(x):
    raise EditError(f'{x!r} has no Python literal; use a finite number')
  plain = repr(x)
  if x == 0 or abs(x) >= 1:
    return plain
  digits = next(p for p in range(17) if float(f'{x:.{p}e}') == x)
  mantissa, exponent = f'{x:.{digits}e}'.split('e')
  sci = f'{mantissa}e{int(exponent)}'
  shorter = len(sci) < len(plain) or (len(sci) == len(plain) and prefer_sci)
  return sci if shorter else plain


def _string_code(s: str, quote: str) -> str:
  """repr(s), switched to double quotes when the file uses them and s allows it."""
  code = repr(s)
  if quote == '"' and code[0] == "'" and '"' not in s:
    code = '"' + code[1:-1].replace("\\'", "'") + '"'
  return code


def _collapse_blank(lines: list[cst.EmptyLine]) -> list[cst.EmptyLine]:
  """Drops a blank line that directly follows another, so a removal leaves no double gap."""
  kept: list[cst.EmptyLine] = []
  for line in lines:
    blank = line.comment is None
    if not (blank and kept and kept[-1].comment is None):
      kept.append(line)
  return kept


def checked_code(module: cst.Module) -> str:
  """The edited code, checked to still compile (a keyword after **kwargs, say, would not)."""
  code = module.code
  try:
    compile(code, '<edited>', 'exec', dont_inherit=True)
  except SyntaxError as e:
    raise EditError(f'edit produced invalid Python: {e.msg} (line {e.lineno})') from e
  return code
