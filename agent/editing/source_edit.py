"""libcst transforms of Flax NNX model source: the edits a config key cannot express.

Scoped to one class so that changing, say, `kernel_init=` of the MLP's `nnx.Linear`
calls cannot touch another family's layers in a shared file, and written back with
libcst so that everything the edit does not concern stays byte-for-byte the same.
"""

import libcst as cst

from agent.editing.config_edit import (
                                       EditError, Scalar, checked_code, dominant_quote, literal_code, parse_module)


def set_default(source: str, class_name: str, param: str, value: Scalar) -> str:
  """Changes the default of one `__init__` parameter of the class."""
  module = parse_module(source)
  init = _init_of(_class(module, class_name), class_name)
  params = init.params
  for p in (*params.posonly_params, *params.params, *params.kwonly_params):
    if p.name.value == param:
      if p.default is None:
        raise EditError(f'{class_name}.__init__ parameter {param!r} has no default to change')
      code = literal_code(value, dominant_quote(module))
      return checked_code(module.deep_replace(p.default, cst.parse_expression(code)))
  raise EditError(f'{class_name}.__init__ has no parameter {param!r}')


def replace_call_keyword(source: str, class_name: str, callee: str, keyword: str,
                         value_code: str) -> str:
  """Sets `keyword=value_code` on every call in the class whose dotted callee ends with
  `callee` (at a dot boundary), replacing the keyword where present, adding it otherwise."""
  if not keyword.isidentifier():
    raise EditError(f'{keyword!r} is not a keyword argument name')
  try:
    value = cst.parse_expression(value_code)
  except cst.ParserSyntaxError as e:
    raise EditError(f'value {value_code!r} does not parse: {" ".join(e.message.split())}') from e
  module = parse_module(source)
  cls = _class(module, class_name)
  rewriter = _KeywordRewriter(callee, keyword, value)
  new_cls = cls.visit(rewriter)
  if not rewriter.calls:
    raise EditError(f'no call to {callee}(...) in class {class_name}')
  return checked_code(module.deep_replace(cls, new_cls))


class _KeywordRewriter(cst.CSTTransformer):
  """Sets one keyword argument on the calls whose callee matches; counts them."""

  def __init__(self, callee: str, keyword: str, value: cst.BaseExpression):
    super().__init__()
    self.callee, self.keyword, self.value = callee, keyword, value
    self.calls = 0

  def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.Call:
    name = _dotted_name(updated.func)
    if name is None or not (name == self.callee or name.endswith('.' + self.callee)):
      return updated
    self.calls += 1
    args = list(updated.args)
    for i, arg in enumerate(args):
      if arg.keyword is not None and arg.keyword.value == self.keyword:
        args[i] = arg.with_changes(value=self.value)
        return updated.with_changes(args=args)
    return updated.with_changes(args=_append_keyword(updated, args, self.keyword, self.value))


def _append_keyword(call: cst.Call, args: list[cst.Arg], keyword: str,
                    value: cst.BaseExpression) -> list[cst.Arg]:
  """Adds the argument last; in a call laid out one argument per line with a trailing
  comma, the new line takes the old last line's comma (and so the closing paren's
  indentation) while the old last argument gets the separator its neighbours use."""
  new = cst.Arg(value=value, keyword=cst.Name(keyword),
                equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(''),
                                      whitespace_after=cst.SimpleWhitespace('')))
  if not args:
    return [new]
  last = args[-1]
  if isinstance(last.comma, cst.Comma):
    separator = (args[-2].comma if len(args) > 1 and isinstance(args[-2].comma, cst.Comma)
                 else cst.Comma(whitespace_after=call.whitespace_before_args))
    return [*args[:-1], last.with_changes(comma=separator), new.with_changes(comma=last.comma)]
  return [*args, new]


def _class(module: cst.Module, class_name: str) -> cst.ClassDef:
  found = [s for s in module.body if isinstance(s, cst.ClassDef) and s.name.value == class_name]
  if not found:
    raise EditError(f'no top-level class {class_name}')
  return found[-1]


def _init_of(cls: cst.ClassDef, class_name: str) -> cst.FunctionDef:
  for stmt in cls.body.body:
    if isinstance(stmt, cst.FunctionDef) and stmt.name.value == '__init__':
      return stmt
  raise EditError(f'class {class_name} defines no __init__ of its own')


def _dotted_name(node: cst.BaseExpression) -> str | None:
  """'nnx.Linear' for `nnx.Linear`, None for callees that are not plain names."""
  if isinstance(node, cst.Name):
    return node.value
  if isinstance(node, cst.Attribute):
    base = _dotted_name(node.value)
    return f'{base}.{node.attr.value}' if base else None
  return None
