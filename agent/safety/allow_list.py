"""What agent-written Python may import and reach: the allow-list, the names refused inside
it, and what a dotted name really is.

Models and experiment configs need arithmetic, arrays and Flax, never processes, sockets,
files, FFI or dynamic code. So an editable file may import only the modules below; inside
them, the parts that do file I/O, FFI, host callbacks or global configuration are refused,
as are the builtins and dunder names that reach code or namespaces (eval, open,
__import__, __globals__, __subclasses__). The tables live apart from the checker
(code_policy.py) so that a reviewer reads what is allowed in one place.

Dotted names are resolved against the real modules (imported lazily, only when allowed),
so what a stdlib module imported for itself is seen for what it is: `enum.bltns` is
builtins and `typing.operator` is operator, neither allowed.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import types
import warnings

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
    'numpy.core', 'numpy.rec', 'numpy.ma.mrecords', 'numpy.memmap', 'numpy.DataSource',
    'numpy.load',
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
# Attribute names refused on any object: modules that reach the OS (bltns is enum's name
# for builtins) and file I/O methods (np.load, arr.tofile, arr.dump, ...), however the
# object was obtained.
DANGEROUS_ATTRIBUTES = frozenset({
    'os', 'sys', 'subprocess', 'builtins', 'bltns', 'socket', 'importlib', 'ctypes',
    'ctypeslib', 'shutil', 'pathlib', 'pickle', 'marshal', 'inspect', 'posix', 'pty', 'runpy',
    'types', 'multiprocessing', 'urllib', 'http', 'requests', 'linecache', 'tokenize',
    'fileinput', 'tempfile', 'glob', 'mmap', 'fcntl', 'zipimport', 'pkgutil', 'gc', 'codecs',
    'io', 'load', 'save', 'savez', 'savez_compressed', 'savetxt', 'loadtxt', 'genfromtxt',
    'fromfile', 'tofile', 'fromregex', 'memmap', 'open_memmap', 'DataSource', 'dump', 'open',
    'openfile',  # numpy.ma.mrecords.openfile opens any path
    'compile',  # jit(f).lower(x).compile({'xla_dump_to': ...}) writes where it is told
})
# The same for dynamic code and getters by computed name, as attributes of whatever holds
# them (bltns.exec, operator.attrgetter). Not eval: that is also nnx's `model.eval()`.
DYNAMIC_ATTRIBUTES = frozenset({
    'exec', 'globals', 'locals', 'vars', 'breakpoint', 'getattr', 'setattr', 'delattr',
    'import_module', 'attrgetter', 'methodcaller',
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
# A dunder in a string reaches no further than the same attribute spelled in code could;
# '__main__' is for `if __name__ == '__main__'`.
SAFE_DUNDER_STRINGS = SAFE_DUNDERS | {'__main__'}
_TEST_PARTS = frozenset({'test', 'tests', 'testing', 'conftest'})
_MISSING = object()


def allowed_modules() -> tuple[str, ...]:
  """The import allow-list (without the project's packages), packages first."""
  optional = tuple(p for p in OPTIONAL_PACKAGES if importlib.util.find_spec(p) is not None)
  return PACKAGES + optional + tuple(sorted(STDLIB))


def is_dunder(name: str) -> bool:
  """`__x__`: interpreter protocol, reached only by the names SAFE_DUNDERS lists."""
  return len(name) > 4 and name.startswith('__') and name.endswith('__')


def forbidden_prefix(full: str) -> str | None:
  """The shortest leading part of `full` on FORBIDDEN_NAMES (`jax.config` of `jax.config.x`)."""
  parts = full.split('.')
  return next((p for p in ('.'.join(parts[:i]) for i in range(2, len(parts) + 1))
               if p in FORBIDDEN_NAMES), None)


def _module_allowed(name: str, packages: tuple[str, ...]) -> bool:
  """An allowed module, by its real name. Never a package's tests or conftest: they are no
  model code, and importing one to look inside runs its setup (numpy.conftest sets env)."""
  parts = name.split('.')
  return name in STDLIB or (parts[0] in packages and forbidden_prefix(name) is None
                            and not any(p in _TEST_PARTS or p.startswith('test_') for p in parts))


def _import_quietly(name: str) -> types.ModuleType:
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    return importlib.import_module(name)


@functools.lru_cache(maxsize=None)
def resolve(full: str, packages: tuple[str, ...]) -> tuple[int, str]:
  """Walks `full` through the real modules: (how many leading parts are allowed modules,
  the name of the refused module the next part is, or '').

  Only allowed packages are imported (lazily, once), and their submodules when a chain
  names one that is not loaded yet, so the answer does not depend on what happens to be
  imported; project code is never imported. The walk stops at the first non-module.
  """
  parts = full.split('.')
  if not _module_allowed(parts[0], packages):
    return 0, ''
  try:
    current = _import_quietly(parts[0])
  except Exception:  # not installed or broken: the trial's own import fails the same way
    return 0, ''
  for i, part in enumerate(parts[1:], 1):
    value = vars(current).get(part, _MISSING)
    if value is _MISSING and hasattr(current, '__path__'):
      submodule = f'{current.__name__}.{part}'
      if not _module_allowed(submodule, packages):  # refused by name: found, never imported
        found = importlib.machinery.PathFinder.find_spec(submodule, current.__path__)
        return i, submodule if found is not None else ''
      try:
        value = _import_quietly(submodule)
      except Exception:
        return i, ''
    if not isinstance(value, types.ModuleType):
      return i, ''
    if not _module_allowed(value.__name__, packages):
      return i, value.__name__
    current = value
  return len(parts), ''
