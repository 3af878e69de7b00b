"""What a benchmark ran on: numbers without the machine, the load and the code are not claims."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.scorecard import code_provenance

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'optuna', 'matplotlib')


def _cpu_model() -> str:
  try:
    for line in Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
  try:
    for line in Path('/proc/meminfo').read_text().splitlines():
      if line.startswith('MemTotal:'):
        return round(int(line.split()[1]) / 2**20, 1)
  except OSError:
    pass
  return None


def _version(name: str) -> str:
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return 'not installed'


def load_average() -> list[float]:
  """1, 5 and 15 minute load averages: how much else was running on the cores."""
  return [round(x, 2) for x in os.getloadavg()]


def describe() -> dict[str, Any]:
  import jax
  device = jax.devices()[0]
  return {
      'cpu': _cpu_model(),
      'cores': os.cpu_count(),
      'usable_cores': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else None,
      'ram_gib': _ram_gib(),
      'os': platform.platform(),
      'python': platform.python_version(),
      'accelerator': f'{device.platform} ({device.device_kind})',
      'versions': {name: _version(name) for name in PACKAGES},
      'code': code_provenance(ROOT),
  }


def cpu_snapshot() -> dict[str, float]:
  """System-wide busy CPU seconds (/proc/stat), this process's and its children's, and the
  clock: two snapshots tell how much of the machine other work used in between."""
  busy = float('nan')
  try:
    fields = [int(x) for x in Path('/proc/stat').read_text().split('\n', 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf('SC_CLK_TCK')  # guest time is inside user
  except (OSError, ValueError, IndexError):
    pass
  t = os.times()
  return {'wall': time.monotonic(), 'busy': busy,
          'own': t.user + t.system + t.children_user + t.children_system}


def other_share(start: dict[str, float], end: dict[str, float]) -> float | None:
  """Fraction of all cores that processes other than this benchmark kept busy."""
  wall = end['wall'] - start['wall']
  others = (end['busy'] - start['busy']) - (end['own'] - start['own'])
  if not wall > 0 or others != others:
    return None
  return max(0.0, others / (wall * (os.cpu_count() or 1)))
