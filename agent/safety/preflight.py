"""Agent-written code run briefly before any trial: does an edit import, which data does an
experiment pin. Both execute the agent's code (a config file is Python), so both run confined
as a trial is (`agent.safety.confine`), with nothing writable but a private /tmp.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent import charter
from agent.safety import confine, installed, monitor
from agent.safety import sandbox as fs_sandbox
from harness.datasets import source_paths

IMPORT_CHECK = """
import importlib, runpy, sys
for path in sys.argv[1:]:
  if path.startswith('experiments/'):
    runpy.run_path(path)['get_config']()
  else:
    importlib.import_module(path[:-3].replace('/', '.'))
"""
# Prints the experiment's dataset config as one JSON line: how a run pins its data without
# executing a config file in the agent's own process.
DATASET_OF = """
import json, runpy, sys
print('DATASET=' + json.dumps(runpy.run_path(sys.argv[1])['get_config']().dataset.to_dict()))
"""
IMPORT_MEMORY_MB = 4096  # importing jax and flax commits a few hundred MB
IMPORT_OUTPUT_BYTES = 64_000


def import_check(worktree: Path, paths: list[str], timeout_s: float = 120,
                 limits: charter.Trial = charter.Trial(memory_mb=IMPORT_MEMORY_MB)) -> str | None:
  """Imports the edited modules (and builds each edited config) in a sandboxed subprocess.

  Returns None when they load, else one line saying why not: an edit must parse AND import
  before a trial is spent on it. Importing runs the agent's code, so it gets a trial's
  sandbox (its filesystem view with nothing writable but a private /tmp, scrubbed
  environment, limits, namespaces, a capped log, the whole group killed).
  """
  worktree = Path(worktree).absolute()
  modules = [p for p in paths if p.endswith('.py') and (worktree / p).exists()]
  if not modules:
    return None
  returncode, tail = _run_code(worktree, [IMPORT_CHECK, *modules], timeout_s, limits)
  if returncode is None:
    return f'importing the edited modules took more than {timeout_s:g} s'
  if returncode == 0:
    return None
  last = confine.last_line(tail)
  if returncode < 0:
    return confine.one_line(f'killed by {confine.signal_name(-returncode)}: {last}')
  return confine.one_line(last or f'exit code {returncode}')


def dataset_config(worktree: Path, experiment: str, limits: charter.Trial,
                   timeout_s: float = 120) -> dict[str, Any]:
  """The experiment's `config.dataset`, resolved inside the sandbox; ValueError if it cannot
  be (the message is the config's own error)."""
  returncode, tail = _run_code(Path(worktree).absolute(), [DATASET_OF, experiment], timeout_s,
                               limits)
  lines = [line for line in tail.splitlines() if line.startswith('DATASET=')]
  if returncode != 0 or not lines:
    raise ValueError(confine.one_line(f'cannot read config.dataset of {experiment}: '
                                      f'{confine.last_line(tail) or returncode}'))
  dataset = json.loads(lines[-1].removeprefix('DATASET='))
  if not isinstance(dataset, dict):
    raise ValueError(f'config.dataset of {experiment} is not a mapping')
  return dataset


def _run_code(worktree: Path, code_and_args: list[str], timeout_s: float,
              limits: charter.Trial) -> tuple[int | None, str]:
  """Runs `python -c code args` from the worktree in the sandbox, nothing writable; returns
  its exit code (None when it timed out) and the tail of its output."""
  env = {**confine.env_for(worktree), 'PYTHONPATH': installed.pythonpath(worktree),
         'PYTHONDONTWRITEBYTECODE': '1'}  # leave no __pycache__
  with tempfile.TemporaryDirectory(prefix='agent-code-') as folder:
    log = monitor.CappedLog(Path(folder) / 'output.log', IMPORT_OUTPUT_BYTES)
    try:
      mounts = fs_sandbox.Mounts((worktree, *installed.read_only()), (), source_paths(),
                                 chdir=worktree)
      proc, iso = confine.start([sys.executable, '-c', *code_and_args], worktree, env, limits,
                                mounts)
    except BaseException:
      log.close()
      raise
    reader = log.drain(proc.stdout)
    deadline = time.monotonic() + timeout_s
    try:
      while not confine.exited(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
      timed_out = not confine.exited(proc.pid)
    finally:
      confine.signal_group(proc.pid, signal.SIGKILL)  # nothing of it may outlive it
      returncode = confine.reap(proc, iso)
      reader.join(monitor.READER_JOIN_S)
      log.close()
  return (None if timed_out else returncode), log.tail()
