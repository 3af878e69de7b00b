"""Shared fixtures: tiny configs of the shipped experiments, so end-to-end runs stay fast."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

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
  """Runs `python -m harness.main` as a user would, from the repository root."""
  env = {**os.environ, 'PYTHONPATH': str(cwd)}
  return subprocess.run([sys.executable, '-m', 'harness.main', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def mnist1d_tiny() -> ml_collections.ConfigDict:
  return tiny(load_experiment('mnist1d_mlp'))
