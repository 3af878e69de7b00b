"""Shared fixtures: tiny configs of the shipped experiments, so end-to-end runs stay fast."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import ml_collections
import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_experiment(name: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(name, ROOT / 'experiments' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny(config: ml_collections.ConfigDict, steps: int = 60, every: int = 20,
         checkpoint_every: int = 40) -> ml_collections.ConfigDict:
  config.train.steps = steps
  config.train.eval_every = every
  config.train.checkpoint_every = checkpoint_every
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 4)
  return config


def run_binary(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `python -m harness.main` as a user would, from the repository root (with the
  session's compilation cache: the same tiny programs compile once)."""
  env = {**cached_env(), 'PYTHONPATH': str(cwd)}
  return subprocess.run([sys.executable, '-m', 'harness.main', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def mnist1d_tiny() -> ml_collections.ConfigDict:
  return tiny(load_experiment('mnist1d_mlp'))


# ---- scheduling -------------------------------------------------------------------------
# Seconds each work unit took in a full run (2 workers on a 2-core box, other jobs adding a
# load of ~1; the timeline per worker summed per unit; those under 12 s left out).
# `--dist loadscope` hands whole units to workers in collection order (pyproject.toml turns
# off xdist's reordering by test count): a module's test functions are one unit, each test
# class another (tests/test_benchmarks.py splits its toy runs so). The heaviest go first and
# the small ones fill the gaps at the end: two workers finish together instead of one
# running a long tail. Refresh when a unit's cost changes a lot; a unit not listed counts as
# its module's entry, else DEFAULT_SECONDS.
MODULE_SECONDS = {
    'test_agent_crash.py': 136,
    'test_train.py': 104,
    'test_progress.py': 102,
    'test_cli.py': 98,
    'test_benchmarks.py::TestOverheadSeedsBatchesEarlyStopping': 59,  # toy runs
    'test_workspace.py': 58,
    'test_llm_e2e.py': 57,
    'test_hostile_llm.py': 57,
    'test_hostile_proposals.py': 57,
    'test_agent_e2e.py': 57,
    'test_benchmarks.py::TestRayOverheadSearchLargeBroken': 50,
    'test_ray_executor.py': 48,
    'test_models.py': 44,
    'test_workers.py': 41,  # a real --workers=2 run, killed and resumed
    'test_benchmarks.py::TestSearchAndRigor': 39,
    'test_regimen.py': 35,
    'test_agent_loop.py': 35,
    'test_batches.py': 33,
    'test_executor.py': 32,
    'test_hosts.py': 28,
    'test_mesh.py': 27,
    'test_members.py': 25,
    'test_review.py': 22,
    'test_transfer.py': 21,
    'test_benchmarks.py': 20,  # its test functions (one in-process batch)
    'test_audit.py': 15,
    'test_accelerator_benchmark.py': 14,
    'test_html_report.py': 12,
}
DEFAULT_SECONDS = 10.0


def unit_seconds(item: pytest.Item) -> float:
  """The listed seconds of the item's work unit: its class's, else its module's."""
  module = item.path.name
  unit = module if item.cls is None else f'{module}::{item.cls.__name__}'
  return MODULE_SECONDS.get(unit, MODULE_SECONDS.get(module, DEFAULT_SECONDS))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
  """Longest units first (a stable sort: order within a unit is kept)."""
  items.sort(key=lambda item: -unit_seconds(item))


# ---- JAX's persistent compilation cache ---------------------------------------------------
# Runs of the same tiny experiments compile the same programs again and again, in this
# process and in `python -m harness.main`. A module opts in (`compile_cache`); never one
# that tests a compilation cache itself (tests/test_executor.py). One folder per test
# process, made on first use and removed at its end: no state outlives the session, and
# no two processes of one session write an entry at once.
_CACHE_ENV = {'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
              'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


@functools.cache
def compile_cache_dir() -> Path:
  """This test process's cache folder, made on first use."""
  return Path(tempfile.mkdtemp(prefix='jax-compile-cache-'))


def pytest_unconfigure(config: pytest.Config) -> None:
  if compile_cache_dir.cache_info().currsize:
    shutil.rmtree(compile_cache_dir(), ignore_errors=True)


def cached_env() -> dict[str, str]:
  """This process's environment plus the session's compilation cache, for subprocesses."""
  return {**os.environ, 'JAX_COMPILATION_CACHE_DIR': str(compile_cache_dir()), **_CACHE_ENV}


@pytest.fixture(scope='module')
def compile_cache() -> Iterator[Path]:
  """The session's compilation cache for this module's in-process programs, then off."""
  import jax  # here, not at the top: conftest is imported by processes that never use JAX
  from jax.experimental.compilation_cache import compilation_cache
  options = {'jax_compilation_cache_dir': str(compile_cache_dir()),
             'jax_persistent_cache_min_compile_time_secs': 0.0,
             'jax_persistent_cache_min_entry_size_bytes': 0}
  before = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  yield compile_cache_dir()
  for name, value in before.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
