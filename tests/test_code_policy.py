"""The import allow-list and forbidden forms for agent-written Python."""

from __future__ import annotations

import textwrap

import pytest

from agent import code_policy
from tests.conftest import ROOT


def problems(source: str, path: str = 'models/m.py') -> list[str]:
  return code_policy.check_source(path, textwrap.dedent(source))


@pytest.mark.parametrize('path', sorted(str(p.relative_to(ROOT)) for folder in
                                        ('models', 'experiments')
                                        for p in (ROOT / folder).glob('*.py')))
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
    ('import jax\nx = jax._src.path', 2, "private part '_src'"),
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


def test_optional_packages_count_only_where_installed(monkeypatch):
  monkeypatch.setattr(code_policy.importlib.util, 'find_spec', lambda name: None)
  assert "import of 'einops'" in problems('import einops')[0]
  monkeypatch.setattr(code_policy.importlib.util, 'find_spec', lambda name: object())
  assert problems('import einops') == []


def test_the_projects_own_packages_are_importable_and_can_be_extended():
  assert problems('from models import layers\nimport experiments.digits_mlp') == []
  assert problems('import extra.lib') != []
  assert problems('import extra.lib', 'extra/m.py') != []
  assert code_policy.check_source('extra/m.py', 'import extra.lib\n', ('extra',)) == []


def test_every_problem_is_reported_on_one_line():
  found = problems('import os\nimport subprocess\neval("1")\n')
  assert len(found) == 3 and all('\n' not in p for p in found)
