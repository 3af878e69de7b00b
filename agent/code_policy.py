"""What agent-written Python may use: an allow-list of imports and a few forbidden forms.

Models and experiment configs need arithmetic, arrays and Flax, never processes, sockets,
files, FFI or dynamic code. So the editable files may import only the modules below (the
project's own editable packages included); everything else (os, subprocess, socket, urllib,
ctypes, importlib, harness.datasets with its test split, sklearn, a package that is not a
dependency) is refused by name. Inside the allowed packages, the parts that do file I/O, FFI,
host callbacks or global configuration are refused, as are the builtins and dunder
attributes that reach code or namespaces dynamically (eval, open, __import__, __globals__,
__subclasses__, getattr with a computed name).

This is a tripwire with clear reasons, checked before anything runs, not a proof: Python
offers many doors and a static check sees only the spelled ones. The boundary is the
executor's sandbox (scrubbed environment, limits, no network, namespaces); this check keeps
the honest mistakes and the obvious escapes from ever reaching it.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from typing import Iterable, Iterator

# Standard-library modules a model or config may import, exactly these names.
STDLIB = frozenset({'__future__', 'abc', 'collections', 'collections.abc', 'dataclasses',
                    'enum', 'functools', 'itertools', 'math', 'numbers', 'typing'})
# Third-party packages (and their public submodules) that are dependencies of the project;
# optional ones count only where installed, so "no new dependencies" holds.
PACKAGES = ('numpy', 'jax', 'flax', 'optax', 'ml_collections')
OPTIONAL_PACKAGES = ('einops',)
PROJECT_PACKAGES = ('models', 'experiments')

# Parts of the allowed packages that reach files, FFI, the host, the network or global state.
FORBIDDEN_NAMES = frozenset({
    'numpy.lib', 'numpy.ctypeslib', 'numpy.f2py', 'numpy.distutils', 'numpy.testing',
    'numpy.core', 'numpy.rec', 'numpy.memmap', 'numpy.DataSource', 'numpy.load',
    'numpy.save', 'numpy.savez', 'numpy.savez_compressed', 'numpy.savetxt', 'numpy.loadtxt',
    'numpy.genfromtxt', 'numpy.fromfile', 'numpy.fromregex',
    'jax.ffi', 'jax.extend', 'jax.profiler', 'jax.distributed', 'jax.config', 'jax.monitoring',
    'jax.export', 'jax.pure_callback', 'jax.debug.callback', 'jax.experimental.io_callback',
    'jax.experimental.host_callback', 'jax.experimental.compilation_cache',
    'jax.experimental.serialize_executable', 'jax.experimental.jax2tf',
    'jax.experimental.colocated_python', 'jax.experimental.multihost_utils',
    'jax.numpy.load', 'jax.numpy.save', 'jax.numpy.savez', 'jax.numpy.fromfile',
    'flax.io', 'flax.training', 'flax.metrics', 'flax.serialization',
    'ml_collections.config_flags',
    'typing.get_type_hints', 'typing.ForwardRef', 'typing.evaluate_forward_ref',
})
# Builtins that open files, run or compile code, or expose namespaces.
FORBIDDEN_BUILTINS = {
    'open': 'file access', 'eval': 'dynamic code', 'exec': 'dynamic code',
    'compile': 'dynamic code', '__import__': 'dynamic import', 'globals': 'namespace access',
    'locals': 'namespace access', 'vars': 'namespace access', 'breakpoint': 'debugger',
    'input': 'reads stdin', 'help': 'interactive help', 'license': 'reads files',
    'credits': 'reads files', 'copyright': 'reads files',
}
# Attribute names refused on any object: modules that reach the OS, and file I/O methods
# (np.load, arr.tofile, arr.dump, arr.ctypes, ...), however the object was obtained.
DANGEROUS_ATTRIBUTES = frozenset({
    'os', 'sys', 'subprocess', 'builtins', 'socket', 'importlib', 'ctypes', 'ctypeslib',
    'shutil', 'pathlib', 'pickle', 'marshal', 'inspect', 'posix', 'pty', 'runpy', 'types',
    'multiprocessing', 'urllib', 'http', 'requests', 'linecache', 'tokenize', 'fileinput',
    'tempfile', 'glob', 'mmap', 'fcntl', 'zipimport', 'pkgutil', 'gc', 'codecs', 'io',
    'load', 'save', 'savez', 'savez_compressed', 'savetxt', 'loadtxt', 'genfromtxt',
    'fromfile', 'tofile', 'fromregex', 'memmap', 'open_memmap', 'DataSource', 'dump',
})
# Dunder attributes that are ordinary protocol; every other one (__globals__, __class__,
# __subclasses__, __dict__, __code__, __builtins__, ...) is how sandbox escapes start.
SAFE_DUNDERS = frozenset({
    '__init__', '__call__', '__name__', '__qualname__', '__doc__', '__post_init__',
    '__repr__', '__str__', '__len__', '__iter__', '__next__', '__getitem__', '__contains__',
    '__eq__', '__ne__', '__lt__', '__le__', '__gt__', '__ge__', '__hash__', '__bool__',
    '__add__', '__sub__', '__mul__', '__truediv__', '__matmul__', '__neg__',
    '__enter__', '__exit__',
})
SAFE_DUNDER_NAMES = frozenset({'__name__', '__doc__'})
_ATTRIBUTE_BUILTINS = ('getattr', 'setattr', 'delattr')
# A str.format field that walks into a dunder: '{0.__init__.__globals__}'.
_FORMAT_DUNDER = re.compile(r'\{[^{}]*[.\[]__\w+__')


def allowed_modules() -> tuple[str, ...]:
  """The import allow-list (without the project's packages), packages first."""
  optional = tuple(p for p in OPTIONAL_PACKAGES if importlib.util.find_spec(p) is not None)
  return PACKAGES + optional + tuple(sorted(STDLIB))


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
  return [problem for _, problem in sorted(checker.problems, key=lambda p: p[0])]


class _Checker:
  """One pass over a module's AST; import aliases are collected first (imports may sit
  below their uses in functions)."""

  def __init__(self, path: str, allowed: tuple[str, ...], project: tuple[str, ...]):
    self.path = path
    self.allowed = allowed
    self.project = project
    self.package = path[:-3].split('/')[:-1] if path.endswith('.py') else []
    self.aliases: dict[str, str] = {}  # local name -> the dotted module path it stands for
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
    for node in ast.walk(tree):
      self._node(node, parents)

  # ---- imports ------------------------------------------------------------------------
  def _import(self, node: ast.Import | ast.ImportFrom) -> None:
    if isinstance(node, ast.Import):
      for alias in node.names:
        if self._module_ok(node, alias.name):
          bound = alias.asname or alias.name.split('.')[0]
          self.aliases[bound] = alias.name if alias.asname else bound
      return
    module = self._absolute(node)
    if module is None or not self._module_ok(node, module):
      return
    for alias in node.names:
      if alias.name == '*':
        self.fail(node, f"'from {module} import *' is not allowed (names must be explicit)")
        continue
      full = f'{module}.{alias.name}'
      if self._name_ok(node, full) and self._attribute_ok(node, alias.name):
        self.aliases[alias.asname or alias.name] = full

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
    for i in range(2, len(parts) + 1):
      if '.'.join(parts[:i]) in FORBIDDEN_NAMES:
        self.fail(node, f"'{'.'.join(parts[:i])}' is not allowed (file, FFI, host or global "
                  'access)')
        return False
    return True

  # ---- names and attributes -----------------------------------------------------------
  def _node(self, node: ast.AST, parents: dict[ast.AST, ast.AST]) -> None:
    if isinstance(node, ast.Name):
      self._name(node, parents)
    elif isinstance(node, ast.Attribute):
      if self._attribute_ok(node, node.attr):
        dotted = self._dotted(node)
        if dotted is not None:
          self._name_ok(node, dotted)
    elif isinstance(node, ast.MatchClass):
      for attr in node.kwd_attrs:
        self._attribute_ok(node, attr)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
      if _FORMAT_DUNDER.search(node.value):
        self.fail(node, 'a format string that reaches a dunder attribute is not allowed')
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
      call = parents.get(node)
      literal = (isinstance(call, ast.Call) and call.func is node and len(call.args) >= 2
                 and isinstance(call.args[1], ast.Constant)
                 and isinstance(call.args[1].value, str))
      if not literal:
        self.fail(node, f"'{name}' is allowed only as a call with a literal attribute name")
      else:
        self._attribute_ok(node, call.args[1].value)
    elif name.startswith('__') and name.endswith('__') and name not in SAFE_DUNDER_NAMES:
      self.fail(node, f"'{name}' is not allowed (interpreter internals)")

  def _attribute_ok(self, node: ast.AST, attr: str) -> bool:
    if attr.startswith('__') and attr.endswith('__') and attr not in SAFE_DUNDERS:
      self.fail(node, f"attribute '{attr}' is not allowed (interpreter internals)")
      return False
    if attr in DANGEROUS_ATTRIBUTES:
      self.fail(node, f"attribute '{attr}' is not allowed (file, process or OS access)")
      return False
    return True

  def _dotted(self, node: ast.Attribute) -> str | None:
    """`np.random.normal` -> 'numpy.random.normal' when the root is an imported name."""
    parts: list[str] = []
    current: ast.AST = node
    while isinstance(current, ast.Attribute):
      parts.append(current.attr)
      current = current.value
    if not isinstance(current, ast.Name) or current.id not in self.aliases:
      return None
    return '.'.join([self.aliases[current.id], *reversed(parts)])

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
