"""The import allow-list and forbidden forms for agent-written Python."""

from __future__ import annotations

import sys
import textwrap

import pytest

from agent.safety import allow_list, code_policy
from tests.conftest import ROOT


def problems(source: str, path: str = 'models/m.py') -> list[str]:
  return code_policy.check_source(path, textwrap.dedent(source))


@pytest.mark.parametrize('path', sorted(str(p.relative_to(ROOT)) for folder in
                                        ('models', 'experiments')
                                        for p in (ROOT / folder).rglob('*.py')))
def test_the_shipped_models_and_experiments_pass(path):
  assert code_policy.check_source(path, (ROOT / path).read_text()) == []


@pytest.mark.parametrize('source', [
    'from __future__ import annotations\nimport math, functools, itertools, dataclasses\n',
    'import jax.numpy as jnp\nfrom jax import random, lax\nx = jnp.ones(3) + random.normal\n',
    'from flax import nnx\ninit = nnx.initializers.he_normal()\n',
    'import numpy as np\nx = np.random.default_rng(0).normal(size=3).astype(np.float32)\n',
    'import optax\nimport ml_collections\nfrom collections.abc import Mapping\n',
    'from . import layers\nfrom .mlp import MLP\nfrom models.cnn import CNN1D\n',
    'class A:\n  def __init__(self):\n    super().__init__()\n    self.n = type(self).__name__\n',
    'x = getattr(obj, "width", 3)\nok = hasattr(obj, "__call__")\n',
    'from typing import Literal\ndef f(x: Literal["a b", "relu"]) -> "int":\n  return 1\n',
    'import jax\njax.debug.print("{x}", x=1)\n',
    'from flax import nnx\nact = nnx.relu\nACTS = {"relu": act}\nACTS["gelu"] = nnx.gelu\n',
    'import collections.abc\nfrom collections import abc\nM = (collections.abc.Mapping, abc.Set)\n',
    'from models import layers\nact = layers.get_activation("relu")\n',
    'from models import build_model\nm = build_model(config)\n',
    'import models.layers\nf = models.layers.get_activation\n',
    'label = "{:.3f} {}".format(0.5, "__init__")\n',
    'if __name__ == "__main__":\n  pass\n',
])
def test_ordinary_model_code_is_allowed(source):
  assert problems(source) == []


@pytest.mark.parametrize('source, line, words', [
    ('import subprocess', 1, "import of 'subprocess'"),
    ('x = 1\nimport os\nos.system("id")', 2, "import of 'os'"),
    ('import socket', 1, "import of 'socket'"),
    ('from urllib.request import urlopen', 1, "import of 'urllib.request'"),
    ('import requests', 1, "import of 'requests'"),
    ('import http.client', 1, "import of 'http.client'"),
    ('import ctypes', 1, "import of 'ctypes'"),
    ('import importlib', 1, "import of 'importlib'"),
    ('from harness import datasets', 1, "import of 'harness'"),
    ('import harness.datasets', 1, "import of 'harness.datasets'"),
    ('from sklearn.datasets import load_digits', 1, "import of 'sklearn.datasets'"),
    ('import torch', 1, "import of 'torch'"),
    ('import pickle', 1, "import of 'pickle'"),
    ('from numpy import *', 1, "'from numpy import *'"),
    ('eval("1")', 1, "'eval' is not allowed (dynamic code)"),
    ('f = exec', 1, "'exec' is not allowed"),
    ('compile("1", "f", "eval")', 1, "'compile' is not allowed"),
    ('__import__("os")', 1, "'__import__' is not allowed"),
    ('open("/etc/passwd").read()', 1, "'open' is not allowed (file access)"),
    ('g = globals()', 1, "'globals' is not allowed"),
    ('v = vars()', 1, "'vars' is not allowed"),
    ('breakpoint()', 1, "'breakpoint' is not allowed"),
    ('x = input()', 1, "'input' is not allowed"),
    ('b = __builtins__', 1, "'__builtins__' is not allowed"),
    ('s = ().__class__.__bases__[0].__subclasses__()', 1, "attribute '__class__'"),
    ('def f(): pass\ng = f.__globals__', 2, "attribute '__globals__'"),
    ('def f(): pass\nc = f.__code__', 2, "attribute '__code__'"),
    ('d = object.__dict__', 1, "attribute '__dict__'"),
    ('x = getattr(f, "__globals__")', 1, "attribute '__globals__'"),
    ('name = "__glob" + "als__"\nx = getattr(f, name)', 2, "'getattr' is allowed only"),
    ('setattr(f, "__code__", c)', 1, "attribute '__code__'"),
    ('import functools\nfunctools.reduce(getattr, ["a"], f)', 2, "'getattr' is allowed only"),
    ('import dataclasses\nm = dataclasses.sys.modules', 2, "attribute 'sys'"),
    ('f = lambda m: m.os.system("id")', 1, "attribute 'os'"),
    ('import numpy as np\nx = np.load("test.npz")', 2, "attribute 'load'"),
    ('from numpy import load', 1, "'numpy.load' is not allowed"),
    ('import numpy as np\nx = np.fromfile("/data")', 2, "attribute 'fromfile'"),
    ('import numpy as np\nnp.ones(3).tofile("x")', 2, "attribute 'tofile'"),
    ('import numpy as np\nm = np.memmap("x")', 2, "attribute 'memmap'"),
    ('import numpy as np\nx = np.genfromtxt("x.csv")', 2, "attribute 'genfromtxt'"),
    ('import numpy.ctypeslib', 1, "'numpy.ctypeslib' is not allowed"),
    ('import numpy as np\nlib = np.lib.npyio', 2, "'numpy.lib' is not allowed"),
    ('import jax\njax.pure_callback(f, x, x)', 2, "'jax.pure_callback' is not allowed"),
    ('from jax.experimental import io_callback', 1, "'jax.experimental.io_callback'"),
    ('import jax\njax.debug.callback(f)', 2, "'jax.debug.callback' is not allowed"),
    ('import jax\njax.config.update("jax_platforms", "cpu")', 2, "'jax.config' is not allowed"),
    ('import jax\njax.profiler.start_server(9999)', 2, "'jax.profiler' is not allowed"),
    ('from jax import ffi', 1, "'jax.ffi' is not allowed"),
    ('import jax\nx = jax._src.path', 2, "attribute '_src' is not allowed (private"),
    ('from flax.training import checkpoints', 1, "'flax.training' is not allowed"),
    ('from typing import get_type_hints', 1, "'typing.get_type_hints' is not allowed"),
    ('def f(x: "__import__(\'os\').system(\'id\')"): pass', 1, 'in a string annotation'),
    ('s = "{0.__init__.__globals__}".format(f)', 1, 'format string that reaches a dunder'),
    ('match x:\n  case int(__class__=c): pass', 2, "attribute '__class__'"),
    ('from .. import harness', 1, 'relative import beyond the top-level package'),
])
def test_forbidden_forms_are_named_with_their_line(source, line, words):
  found = problems(source)
  assert found, source
  assert found[0].startswith(f'models/m.py:{line}: '), found
  assert words in found[0], found


NNX_MODULE = """
import jax
import jax.numpy as jnp
from flax import nnx


class Block(nnx.Module):
  \"\"\"Uses __call__ and keeps a private scale.\"\"\"

  def __init__(self, width: int, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(width, width, rngs=rngs)
    self.act = nnx.relu
    self._scale = 0.5
    self.norm: nnx.Module | None = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.act(self.linear(x)) * self._scale
    return jnp.maximum(y, 0.0).astype(jnp.float32)

  @classmethod
  def make(cls, rngs: nnx.Rngs) -> 'Block':
    cls._made = True
    return cls(3, rngs=rngs)


original_call = Block.__call__
Block.__call__ = lambda self, x: original_call(self, x) * 2
"""

CONFIG_EDITS = """
import ml_collections

from experiments import digits_mlp
from models.mlp import MLP


def get_config() -> ml_collections.ConfigDict:
  config = digits_mlp.get_config()
  config.model.width = 128
  config.model.update(depth=3)
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'adam'
  del config.model.residual
  setattr(config.train, 'steps', 200)
  return config


def widen(model: MLP) -> MLP:
  model.head.use_bias = False
  model.blocks[0].residual = True
  return model
"""


def test_nnx_modules_and_config_edits_are_allowed():
  assert problems(NNX_MODULE) == []
  assert problems(CONFIG_EDITS, 'experiments/wide.py') == []


@pytest.mark.parametrize('source, line, words', [
    ('import jax.numpy as jnp\njnp.maximum = lambda a, b: a', 2, "changing 'jnp.maximum'"),
    ('import jax\njax.numpy.maximum = f', 2, "changing 'jax.numpy.maximum'"),
    ('from flax import nnx\nnnx.Linear.forward = f', 2, "changing 'nnx.Linear.forward'"),
    ('import optax\ndel optax.adam', 2, "changing 'optax.adam'"),
    ('import optax\noptax.registry["x"] = f', 2, "changing 'optax.registry['x']'"),
    ('import jax.numpy as jnp\njnp.pi += 1', 2, "changing 'jnp.pi'"),
    ('import jax.numpy as jnp\nfor jnp.pi in [3]: pass', 2, "changing 'jnp.pi'"),
    ('from jax.numpy import maximum\nmaximum.x = 1', 2, "changing 'maximum.x'"),
    ('from models.mlp import MLP\nMLP.__call__ = f', 2, "changing 'MLP.__call__'"),
    ('from flax import nnx\nsetattr(nnx.Linear, "forward", f)', 2,
     "changing 'setattr(nnx.Linear, 'forward')'"),
    ('from flax import nnx\ndelattr(nnx.Linear, "__call__")', 2, "changing 'delattr(nnx.Linear"),
    ('from flax import nnx\nL = nnx.Linear\nL.forward = f', 3, "changing 'L.forward'"),
    ('from flax import nnx\n(L := nnx.Linear).forward = f', 2, "changing '(L := nnx.Linear)"),
    ('from flax import nnx\n(nnx.Linear or X).forward = f', 2, "changing '(nnx.Linear or X)"),
    ('import jax.numpy as jnp\ntype(jnp.zeros(1)).mean = f', 2, "changing 'type(jnp.zeros(1))"),
    ('import jax.numpy as jnp\nt = type(jnp.zeros(1))\nt.mean = f', 3, "changing 't.mean'"),
])
def test_monkeypatching_is_refused(source, line, words):
  found = problems(source)
  assert found and found[0].startswith(f'models/m.py:{line}: '), found
  assert words in found[0] and 'no monkeypatching' in found[0], found


def test_a_dunder_is_set_only_on_the_files_own_classes():
  found = problems('from flax import nnx\nfor c in (nnx.Linear,):\n  c.__call__ = f\n')
  assert found == ["models/m.py:3: changing 'c.__call__' is not allowed (a dunder is set only "
                   'on self, cls or a class defined in this file)']
  assert problems('class A:\n  pass\nA.__call__ = f\nsetattr(A, "__call__", f)\n') == []


@pytest.mark.parametrize('source, line, words', [
    ('import jax\n_j = jax\nx = _j._src', 2, "'jax' is a module: use it only as the base"),
    ('import jax\nf(jax)', 2, "'jax' is a module"),
    ('import typing\nx = [typing]', 2, "'typing' is a module"),
    ('import jax\ndef f():\n  return jax.numpy', 3, "'jax.numpy' is a module"),
    ('import jax\ndef f(m=jax.random): pass', 2, "'jax.random' is a module"),
    ('from jax import numpy as jnp\nx = jnp', 2, "'jnp' is a module"),
    ('from flax import nnx\nx = {"nnx": nnx}', 2, "'nnx' is a module"),
    ('import jax\nmatch x:\n  case jax.numpy: pass', 3, "'jax.numpy' is a module"),
    ('import collections\nx = getattr(collections, "abc")', 2, "'collections' is a module"),
    ('from models import layers\nx = layers', 2, "'layers' may be a module"),
    ('from models import build_model\nf = build_model', 2, "'build_model' may be a module"),
    ('import models.layers\nx = models.layers', 2, "'models.layers' is a module"),
    ('from models import layers\nx = layers.jax', 2, "'layers.jax' may be a module"),
    ('from models.layers import jax\nx = jax', 2, "'jax' may be a module"),
])
def test_modules_are_never_values(source, line, words):
  found = problems(source)
  assert found and found[0].startswith(f'models/m.py:{line}: '), found
  assert words in found[0], found


@pytest.mark.parametrize('source, line, words', [
    ('import collections\nos = getattr(collections, "_sys").modules["os"]', 2,
     "attribute '_sys' is not allowed (private"),
    ('hasattr(f, "_sys")', 1, "attribute '_sys' is not allowed (private"),
    ('import jax.numpy as jnp\nx = jnp.zeros(3)._value', 2, "attribute '_value'"),
    ('class A:\n  def f(self, other):\n    return other._x', 3, "attribute '_x'"),
    ('match x:\n  case C(_x=v): pass', 2, "attribute '_x' is not allowed (private"),
    ('self = object()\nx = self._x', 1, "assigning to 'self' is not allowed"),
    ('x = "__globals__"', 1, "the string '__globals__' is not allowed"),
    ('path = "f.__globals__"', 1, "the string '__globals__' is not allowed"),
    ('def f(x: Literal["__class__"]): pass', 1, "the string '__class__'"),
    ('fmt = "{0}"\ns = fmt.format(f)', 2, "'.format' is allowed only on a string literal"),
    ('s = str.format(fmt, f)', 1, "'.format' is allowed only on a string literal"),
    ('import typing\nf = typing.operator.attrgetter("__globals__")(g)', 2,
     "'typing.operator' is the module 'operator', which is not allowed"),
])
def test_private_and_dunder_names_are_refused_in_every_spelling(source, line, words):
  found = problems(source)
  assert found and found[0].startswith(f'models/m.py:{line}: '), found
  assert words in found[0], found


def test_attrgetter_with_a_dunder_is_refused_on_every_count():
  found = problems('import typing\ntyping.operator.attrgetter("__globals__")(f)\n')
  assert [p.split(': ', 1)[1] for p in found] == [
      "'typing.operator' is the module 'operator', which is not allowed",
      "attribute 'attrgetter' is not allowed (dynamic code or attribute access)",
      "the string '__globals__' is not allowed (it names interpreter internals)"]


@pytest.mark.parametrize('source, line, words', [
    ('from enum import bltns\nbltns.exec("import os")', 1,
     "'enum.bltns' is the module 'builtins', which is not allowed"),
    ('import enum\nb = enum.bltns', 2, "attribute 'bltns'"),
    ('import dataclasses\nr = dataclasses.re', 2, "'dataclasses.re' is the module 're'"),
    ('from dataclasses import re', 1, "'dataclasses.re' is the module 're'"),
    ('from dataclasses import copy', 1, "'dataclasses.copy' is the module 'copy'"),
    ('import typing\nc = typing.contextlib.suppress', 2,
     "'typing.contextlib' is the module 'contextlib'"),
    ('import typing as t\nr = t.stdlib_re', 2, "'typing.stdlib_re' is the module 're'"),
    ('from typing import operator', 1, "'typing.operator' is the module 'operator'"),
    ('from models.layers import jax\njax.config.update("x", 1)', 2, "'jax.config' is not allowed"),
    ('from models import layers\nlayers.jax.config.update("x", 1)', 2,
     "'jax.config' is not allowed"),
    ('def f(m):\n  return m.typing.operator', 2, "'typing.operator' is the module 'operator'"),
])
def test_modules_that_allowed_modules_import_are_not_a_way_in(source, line, words):
  found = problems(source)
  assert found and found[0].startswith(f'models/m.py:{line}: '), found
  assert words in found[0], found


def test_the_builtins_reached_through_enum_are_refused_on_each_line():
  found = problems('from enum import bltns\nbltns.exec("import os")\n')
  assert len(found) == 2 and "attribute 'exec' is not allowed" in found[1], found


def test_stdlib_modules_that_are_allowed_stay_reachable():
  assert problems('import typing\nimport collections\n'
                  'x = (typing.collections.abc.Mapping, collections.abc.Sequence)\n') == []


def test_a_packages_tests_are_refused_without_being_imported():
  found = problems('import numpy.conftest\nfrom flax import testing\n')
  assert [p.split(': ', 1)[1] for p in found] == [
      "the module 'numpy.conftest' is not allowed (outside the allow-list, or tests)",
      "the module 'flax.testing' is not allowed (outside the allow-list, or tests)"]
  assert 'numpy.conftest' not in sys.modules and 'flax.testing' not in sys.modules


def test_project_code_is_never_imported_to_be_checked():
  assert problems('import models.not_a_module\nx = models.not_a_module.y.z\n') == []
  assert 'models.not_a_module' not in sys.modules


def test_optional_packages_count_only_where_installed(monkeypatch):
  monkeypatch.setattr(allow_list.importlib.util, 'find_spec', lambda name: None)
  assert "import of 'einops'" in problems('import einops')[0]
  monkeypatch.setattr(allow_list.importlib.util, 'find_spec', lambda name: object())
  assert problems('import einops') == []


def test_the_projects_own_packages_are_importable_and_can_be_extended():
  assert problems('from models import layers\nimport experiments.digits_mlp') == []
  assert problems('import extra.lib') != []
  assert problems('import extra.lib', 'extra/m.py') != []
  assert code_policy.check_source('extra/m.py', 'import extra.lib\n', ('extra',)) == []


def test_every_problem_is_reported_on_one_line():
  found = problems('import os\nimport subprocess\neval("1")\n')
  assert len(found) == 3 and all('\n' not in p for p in found)


@pytest.mark.parametrize('source, words', [
    ('from numpy.ma.mrecords import openfile\nopenfile("/etc/passwd")\n', 'numpy.ma.mrecords'),
    ('import numpy as np\nnp.ma.mrecords.openfile("x")\n', 'numpy.ma.mrecords'),
    ('import jax\njax.jit(abs).lower(1.0).compile({"xla_dump_to": "/x"})\n', "'compile'"),
    ('import jax.numpy as jnp\n[type(jnp.zeros(1))][0].argmax = abs\n', 'argmax'),
    ('def make():\n  return object()\nmake().x = 1\n', 'reached from a name'),
])
def test_doors_found_past_the_first_policy_are_closed(source, words):
  found = problems(source)
  assert found and any(words in p for p in found), found
