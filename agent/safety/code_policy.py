"""A tripwire for agent-written Python: an import allow-list and a few forbidden forms.

It is not the security boundary. The boundary is the operating system around every run of
agent-written code (agent/safety/sandbox.py and agent/safety/executor.py: a filesystem sandbox,
namespaces, limits) and the out-of-process scorer: the agent, which never imports
candidate code, computes every metric from the logits a trial writes. This check fails
early with a clear reason, `path:line: what is not allowed (why)`, for honest mistakes and
for the doors a hostile proposer has been seen to try. Python has more doors than a static
check can see; it refuses what it can name and leaves the rest to the boundary.

An editable file may import only what allow_list.py allows (and the project's own editable
packages), with the names refused there refused in any spelling. On top:

- no monkeypatching: nothing rooted at an imported name is assigned, deleted or setattr'd
  (`jnp.maximum = f`, `del optax.adam`): an edit changes the code it shows, not the
  libraries the harness in its process relies on;
- modules are never values (`_j = jax`, `f(jax)`): a module is only the base of an
  attribute, so every use of it is a dotted name allow_list.resolve can follow;
- no private (`_x`, except on self and cls) or dunder name in any spelling: attribute,
  getattr's literal, a match pattern or a string constant.
"""

from __future__ import annotations

import ast
import re
from typing import Iterable, Iterator

from agent.safety.allow_list import (
    DANGEROUS_ATTRIBUTES, DYNAMIC_ATTRIBUTES, FORBIDDEN_BUILTINS, FORBIDDEN_NAMES,
    PROJECT_PACKAGES, SAFE_DUNDER_NAMES, SAFE_DUNDER_STRINGS, SAFE_DUNDERS, STDLIB,
    allowed_modules, forbidden_prefix, is_dunder, resolve)

# getattr and friends are allowed only with a literal name (checked like an attribute);
# hasattr only answers yes or no, so a computed name is harmless there.
_ATTRIBUTE_BUILTINS = ('getattr', 'setattr', 'delattr', 'hasattr')
_SETTERS = ('setattr', 'delattr')
_SELF = ('self', 'cls')
# A str.format field that walks into a dunder: '{0.__init__.__globals__}'.
_FORMAT_DUNDER = re.compile(r'\{[^{}]*[.\[]__\w+__')
_DUNDER_WORD = re.compile(r'(?<!\w)__\w+?__(?!\w)')
_FORMAT_METHODS = ('format', 'format_map')


def check_source(path: str, text: str,
                 project_packages: Iterable[str] = PROJECT_PACKAGES) -> list[str]:
  """Every violation in one file, each `path:line: what is not allowed (why)`; [] = allowed.

  The text must parse (the guard checks that first); a SyntaxError is reported as one.
  """
  try:
    tree = ast.parse(text, path)
  except SyntaxError as e:
    return [f'{path}:{e.lineno or 1}: syntax error: {e.msg}']
  checker = _Checker(path, allowed_modules(), tuple(project_packages))
  checker.check(tree)
  ordered = [problem for _, problem in sorted(checker.problems, key=lambda p: p[0])]
  return list(dict.fromkeys(ordered))


class _Checker:
  """One pass over a module's AST; imports, classes and names bound to imported things are
  collected first (imports may sit below their uses in functions)."""

  def __init__(self, path: str, allowed: tuple[str, ...], project: tuple[str, ...]):
    self.path = path
    self.allowed = allowed
    self.packages = tuple(m for m in allowed if m not in STDLIB)
    # Top-level names of the allowed modules: a chain that passes through one of them
    # (`layers.jax.config`, `m.typing.operator`) is checked from there as well.
    self.tops = frozenset(m.split('.')[0] for m in allowed) - {'__future__'}
    self.project = project
    self.package = path[:-3].split('/')[:-1] if path.endswith('.py') else []
    self.aliases: dict[str, str] = {}  # local name -> the dotted path it was imported as
    # Names and project paths bound to modules -> whether they may also be called: a
    # lowercase name imported from a project package may be a submodule or a function.
    self.modules: dict[str, bool] = {}
    self.project_modules: dict[str, bool] = {}
    self.imported: set[str] = set()  # imported names and plain aliases of them
    self.classes: set[str] = set()  # classes defined in this file
    self.problems: list[tuple[tuple[int, int], str]] = []  # (where it ends, problem)

  def fail(self, node: ast.AST, what: str) -> None:
    line = getattr(node, 'lineno', 1)
    end = (getattr(node, 'end_lineno', line) or line, getattr(node, 'end_col_offset', 0) or 0)
    self.problems.append((end, f'{self.path}:{line}: {what}'))

  def check(self, tree: ast.AST) -> None:
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        self._import(node)
      elif isinstance(node, ast.ClassDef):
        self.classes.add(node.name)
    self._collect_imported(tree)
    for node in ast.walk(tree):
      self._node(node, parents)

  # ---- imports ------------------------------------------------------------------------
  def _import(self, node: ast.Import | ast.ImportFrom) -> None:
    if isinstance(node, ast.Import):
      for alias in node.names:
        if not (self._module_ok(node, alias.name) and self._resolves(node, alias.name)):
          continue
        bound = alias.asname or alias.name.split('.')[0]
        self.aliases[bound] = alias.name if alias.asname else bound
        self.modules[bound] = False
        parts = alias.name.split('.')
        if parts[0] in self.project:
          for i in range(1, len(parts) + 1):
            self.project_modules['.'.join(parts[:i])] = False
      return
    module = self._absolute(node)
    if module is None or not self._module_ok(node, module):
      return
    for alias in node.names:
      if alias.name == '*':
        self.fail(node, f"'from {module} import *' is not allowed (names must be explicit)")
        continue
      full = f'{module}.{alias.name}'
      if not (self._name_ok(node, full) and self._resolves(node, full)
              and self._attribute_ok(node, alias.name)):
        continue
      bound = alias.asname or alias.name
      self.aliases[bound] = full
      if module.split('.')[0] in self.project:
        if (module in self.project and alias.name.islower()) or alias.name in self.tops:
          self.project_modules[full] = self.modules[bound] = True
      elif self._is_module(full):
        self.modules[bound] = False

  def _absolute(self, node: ast.ImportFrom) -> str | None:
    if not node.level:
      return node.module or ''
    if node.level > len(self.package):
      self.fail(node, 'relative import beyond the top-level package is not allowed')
      return None
    base = self.package[:len(self.package) - node.level + 1]
    return '.'.join(base + ([node.module] if node.module else []))

  def _module_ok(self, node: ast.AST, module: str) -> bool:
    top = module.split('.')[0]
    if top in self.project or module in STDLIB:
      return True
    if top in self.allowed and top not in STDLIB:
      return self._name_ok(node, module)
    self.fail(node, f"import of '{module}' is not allowed (allowed: "
              f"{', '.join((*self.project, *self.allowed))})")
    return False

  def _name_ok(self, node: ast.AST, full: str) -> bool:
    """A dotted name inside an allowed package: not private, not on the forbidden list."""
    parts = full.split('.')
    if parts[0] in self.project:
      return True
    private = next((p for p in parts[1:] if p.startswith('_')), None)
    if private is not None:
      self.fail(node, f"'{full}' is not allowed (private part '{private}')")
      return False
    forbidden = forbidden_prefix(full)
    if forbidden is not None:
      self.fail(node, f"'{forbidden}' is not allowed (file, FFI, host or global access)")
      return False
    return True

  def _resolves(self, node: ast.AST, full: str, last_only: bool = False) -> bool:
    """The real module behind each step of `full` is allowed (`enum.bltns` is builtins).

    With `last_only`, only the last step is reported: each shorter chain is its own node.
    """
    steps, refused = resolve(full, self.packages)
    if not refused or (last_only and steps != len(full.split('.')) - 1):
      return not refused
    if refused == full:
      self.fail(node, f"the module '{full}' is not allowed (outside the allow-list, or tests)")
    else:
      self.fail(node, f"'{full}' is the module '{refused}', which is not allowed")
    return False

  def _collect_imported(self, tree: ast.AST) -> None:
    """Imported names plus the names bound to a plain chain rooted at one (`L = nnx.Linear`)
    or to `type(...)`: what an assignment through them would change is not this file's."""
    bindings: list[tuple[ast.AST, ast.AST]] = []
    for node in ast.walk(tree):
      if isinstance(node, ast.Assign):
        bindings += [(target, node.value) for target in node.targets]
      elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
        bindings.append((node.target, node.value))
      elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
        bindings.append((node.target, node.iter))
    self.imported |= set(self.aliases)  # |=: a string annotation's check keeps the file's
    grew = True
    while grew:
      grew = False
      for target, value in bindings:
        if (isinstance(target, ast.Name) and target.id not in self.imported
            and self._foreign(value)):
          self.imported.add(target.id)
          grew = True

  def _foreign(self, node: ast.AST) -> bool:
    """`node` may hang from an imported name, or from a class reached through type(...)."""
    return any((isinstance(root, ast.Name) and root.id in self.imported)
               or (isinstance(root, ast.Call) and isinstance(root.func, ast.Name)
                   and root.func.id == 'type')
               for root in _roots(node))

  # ---- names, attributes, stores, strings ---------------------------------------------
  def _node(self, node: ast.AST, parents: dict[ast.AST, ast.AST]) -> None:
    if isinstance(node, ast.Name):
      self._name(node, parents)
    elif isinstance(node, ast.Attribute):
      self._attribute(node, parents)
    elif isinstance(node, ast.Subscript) and not isinstance(node.ctx, ast.Load):
      self._store(node)
    elif isinstance(node, ast.MatchClass):
      for attr in node.kwd_attrs:
        if self._attribute_ok(node, attr):
          self._private_ok(node, attr, None)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
      self._string(node)
    elif isinstance(node, ast.arg) and node.annotation is not None:
      self._annotation(node.annotation)
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
      self._annotation(node.returns)
    elif isinstance(node, ast.AnnAssign):
      self._annotation(node.annotation)

  def _name(self, node: ast.Name, parents: dict[ast.AST, ast.AST]) -> None:
    name = node.id
    if name in FORBIDDEN_BUILTINS:
      self.fail(node, f"'{name}' is not allowed ({FORBIDDEN_BUILTINS[name]})")
    elif name in _ATTRIBUTE_BUILTINS:
      self._attribute_builtin(node, parents.get(node))
    elif name.startswith('__') and name.endswith('__') and name not in SAFE_DUNDER_NAMES:
      self.fail(node, f"'{name}' is not allowed (interpreter internals)")
    elif name in _SELF and isinstance(node.ctx, ast.Store):
      self.fail(node, f"assigning to '{name}' is not allowed (it names a method's own object)")
    elif name in self.modules and isinstance(node.ctx, ast.Load):
      self._module_use(node, name, self.modules[name], parents)

  def _attribute_builtin(self, node: ast.Name, call: ast.AST | None) -> None:
    """getattr(obj, 'name') is checked like obj.name; setattr/delattr also like a store."""
    name = node.id
    literal = (isinstance(call, ast.Call) and call.func is node and len(call.args) >= 2
               and isinstance(call.args[1], ast.Constant) and isinstance(call.args[1].value, str))
    if not literal:
      if name != 'hasattr':
        self.fail(node, f"'{name}' is allowed only as a call with a literal attribute name")
      return
    target, attr = call.args[0], call.args[1].value
    if not (self._attribute_ok(node, attr) and self._private_ok(node, attr, target)):
      return
    if name in _SETTERS:
      self._patch_ok(node, target, attr, f'{name}({ast.unparse(target)}, {attr!r})')

  def _attribute(self, node: ast.Attribute, parents: dict[ast.AST, ast.AST]) -> None:
    if not (self._attribute_ok(node, node.attr)
            and self._private_ok(node, node.attr, node.value)):
      return
    if not isinstance(node.ctx, ast.Load):
      self._store(node)
    value = node.value
    if node.attr in _FORMAT_METHODS and not (isinstance(value, ast.Constant)
                                             and isinstance(value.value, str)):
      self.fail(node, f"'.{node.attr}' is allowed only on a string literal (a computed format "
                'string can reach any attribute)')
    self._chain(node, parents)

  def _attribute_ok(self, node: ast.AST, attr: str) -> bool:
    if attr.startswith('__') and attr.endswith('__') and attr not in SAFE_DUNDERS:
      self.fail(node, f"attribute '{attr}' is not allowed (interpreter internals)")
      return False
    if attr in DANGEROUS_ATTRIBUTES:
      self.fail(node, f"attribute '{attr}' is not allowed (file, process or OS access)")
      return False
    if attr in DYNAMIC_ATTRIBUTES:
      self.fail(node, f"attribute '{attr}' is not allowed (dynamic code or attribute access)")
      return False
    return True

  def _private_ok(self, node: ast.AST, attr: str, target: ast.AST | None) -> bool:
    """A private name (`_x`) is an object's own business: only self and cls reach theirs."""
    if (attr.startswith('_') and not is_dunder(attr)
        and not (isinstance(target, ast.Name) and target.id in _SELF)):
      self.fail(node, f"attribute '{attr}' is not allowed (private; only self and cls may "
                'use their own)')
      return False
    return True

  def _chain(self, node: ast.Attribute, parents: dict[ast.AST, ast.AST]) -> None:
    """Checks the dotted name a chain spells: forbidden parts, the real modules behind it,
    and a module used as a value."""
    parts = _spelled(node)
    if parts is None or any(p.startswith('_') and not is_dunder(p) for p in parts[1:]):
      return  # a private part was refused at its own node
    load = isinstance(node.ctx, ast.Load)
    imported = parts[0] in self.aliases
    if imported:
      parts = [*self.aliases[parts[0]].split('.'), *parts[1:]]
      full = '.'.join(parts)
      if parts[0] not in self.project:  # third-party or stdlib: the real modules decide
        if full in FORBIDDEN_NAMES:
          self.fail(node, f"'{full}' is not allowed (file, FFI, host or global access)")
        elif self._resolves(node, full, last_only=True) and load and self._is_module(full):
          self._module_use(node, ast.unparse(node), False, parents)
        return
      if full in self.project_modules and load:
        self._module_use(node, ast.unparse(node), self.project_modules[full], parents)
    # Through a project module, a parameter or an attribute: from each part that names an
    # allowed module on (`layers.jax.config` is `jax.config`; `layers.jax` may be jax).
    for start in (i for i, p in enumerate(parts) if p in self.tops):
      tail = '.'.join(parts[start:])
      if start == len(parts) - 1:
        if imported and load:
          self._module_use(node, ast.unparse(node), True, parents)
      elif tail in FORBIDDEN_NAMES:
        self.fail(node, f"'{tail}' is not allowed (file, FFI, host or global access)")
      else:
        self._resolves(node, tail, last_only=True)

  def _is_module(self, full: str) -> bool:
    return resolve(full, self.packages)[0] == len(full.split('.'))

  def _module_use(self, node: ast.AST, spelled: str, callable_: bool,
                  parents: dict[ast.AST, ast.AST]) -> None:
    """A module is only the base of an attribute (or, if it may be a function, called):
    never stored, passed, returned or put in a container, so no alias hides where a dotted
    name leads (`_j = jax; _j._src`)."""
    parent = parents.get(node)
    if isinstance(parent, ast.Attribute) and parent.value is node:
      return
    if callable_ and isinstance(parent, ast.Call) and parent.func is node:
      return
    if callable_:
      self.fail(node, f"'{spelled}' may be a module: use it only as the base of an attribute "
                f"('{spelled}.name') or call it")
    else:
      self.fail(node, f"'{spelled}' is a module: use it only as the base of an attribute "
                f"('{spelled}.name'), never as a value")

  def _store(self, node: ast.Attribute | ast.Subscript) -> None:
    """Assignment to or deletion of an attribute or item."""
    attr = node.attr if isinstance(node, ast.Attribute) else ''
    self._patch_ok(node, node.value, attr, ast.unparse(node))

  def _patch_ok(self, node: ast.AST, obj: ast.AST, attr: str, spelled: str) -> None:
    """No monkeypatching: nothing reached from an imported name or through type() changes,
    and a dunder is set only on this file's own classes (or self, cls)."""
    if self._foreign(obj):
      self.fail(node, f"changing '{spelled}' is not allowed (it belongs to an imported module, "
                'class or function: no monkeypatching)')
    elif not all(isinstance(root, ast.Name) for root in _roots(obj)):
      self.fail(node, f"changing '{spelled}' is not allowed (only objects reached from a name "
                'are changed: a container or call result may hold an imported class)')
    elif is_dunder(attr) and not (isinstance(obj, ast.Name) and obj.id not in self.imported
                                   and (obj.id in _SELF or obj.id in self.classes)):
      self.fail(node, f"changing '{spelled}' is not allowed (a dunder is set only on self, cls "
                'or a class defined in this file)')

  def _string(self, node: ast.Constant) -> None:
    """A dunder in a string is a dunder reached another way (getattr, attrgetter, format)."""
    if _FORMAT_DUNDER.search(node.value):
      self.fail(node, 'a format string that reaches a dunder attribute is not allowed')
      return
    unsafe = next((w for w in _DUNDER_WORD.findall(node.value)
                   if w not in SAFE_DUNDER_STRINGS), None)
    if unsafe is not None:
      self.fail(node, f"the string '{unsafe}' is not allowed (it names interpreter internals)")

  def _annotation(self, annotation: ast.AST) -> None:
    """String annotations are code to whoever evaluates them (typing.get_type_hints)."""
    for node in _strings_outside_literal(annotation):
      try:
        inner = ast.parse(node.value.strip(), mode='eval')
      except SyntaxError:
        continue  # cannot be evaluated either
      for child in ast.walk(inner):
        ast.copy_location(child, node)
      problems = len(self.problems)
      self.check(inner)
      for i in range(problems, len(self.problems)):
        end, problem = self.problems[i]
        self.problems[i] = (end, f'{problem} (in a string annotation)')


def _roots(node: ast.AST) -> Iterator[ast.AST]:
  """What a chain may hang from: `jnp` for `jnp.linalg.norm`, `a` for `a[0].b`, both `a`
  and `b` for `(a or b).c`. A call's result is its own root: what it returns is not known."""
  if isinstance(node, (ast.Attribute, ast.Subscript, ast.NamedExpr)):
    yield from _roots(node.value)
  elif isinstance(node, ast.IfExp):
    yield from _roots(node.body)
    yield from _roots(node.orelse)
  elif isinstance(node, ast.BoolOp):
    for value in node.values:
      yield from _roots(value)
  else:
    yield node


def _spelled(node: ast.Attribute) -> list[str] | None:
  """`np.random.normal` -> ['np', 'random', 'normal']; None unless rooted at a name."""
  parts: list[str] = []
  current: ast.AST = node
  while isinstance(current, ast.Attribute):
    parts.append(current.attr)
    current = current.value
  if not isinstance(current, ast.Name):
    return None
  return [current.id, *reversed(parts)]



def _strings_outside_literal(node: ast.AST) -> Iterator[ast.Constant]:
  """String constants of an annotation, except the values inside Literal[...]."""
  if isinstance(node, ast.Subscript):
    target = node.value
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, 'id', '')
    if name == 'Literal':
      return
  if isinstance(node, ast.Constant) and isinstance(node.value, str):
    yield node
    return
  for child in ast.iter_child_nodes(node):
    yield from _strings_outside_literal(child)
