"""The scorecard: everything a decision about a run needs, in one strict JSON file.

Quality sits beside cost (time, latency, memory, FLOPs) and stability (non-finite values,
gradient norms, loss spikes), with the provenance that makes a result reproducible:
data fingerprints, resolved config, code commit, library versions, device.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

SCORECARD = 'scorecard.json'
TEST_SCORECARD = 'test_scorecard.json'
CURVES = 'curves.jsonl'


def summarize(values: list[float] | np.ndarray) -> dict[str, Any]:
  """Per-seed values with mean and sample standard deviation (ddof=1; 0 for one seed)."""
  arr = np.asarray(values, np.float64)
  with np.errstate(invalid='ignore'):  # a diverged run's inf/nan summarise to null, quietly
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
  return {'per_seed': arr.tolist(), 'mean': float(arr.mean()), 'std': std}


def percentile(values: list[float], q: float) -> float:
  return float(np.percentile(values, q)) if values else math.nan


def code_provenance(root: Path) -> dict[str, Any]:
  """The git commit of the code that ran and whether its tree had uncommitted changes."""
  def git(*args: str) -> str | None:
    try:
      return subprocess.run(['git', '-C', str(root), *args], capture_output=True, text=True,
                            check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
      return None
  commit = git('rev-parse', 'HEAD')
  status = git('status', '--porcelain', '--untracked-files=no')
  return {'commit': commit, 'tree': git('rev-parse', 'HEAD^{tree}'),
          'dirty': None if status is None else bool(status)}


def library_versions() -> dict[str, str]:
  from importlib import metadata
  names = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy')
  return {'python': platform.python_version(), **{n: metadata.version(n) for n in names}}


def device_info() -> dict[str, Any]:
  import jax
  devices = jax.devices()
  return {'platform': devices[0].platform, 'kind': devices[0].device_kind,
          'count': len(devices), 'host': platform.node(), 'machine': platform.machine()}


def max_rss_mb() -> float:
  """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return rss / (1024 * 1024) if sys.platform == 'darwin' else rss / 1024


def device_peak_bytes() -> int | None:
  """Accelerator allocator peak where the backend reports one (GPU/TPU; not CPU)."""
  import jax
  stats = jax.local_devices()[0].memory_stats()
  return None if not stats else stats.get('peak_bytes_in_use')


def json_safe(value: Any) -> Any:
  """JSON has no NaN or infinity: non-finite floats become null (flags say why)."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, (np.floating, np.integer, np.bool_)):
    return json_safe(value.item())
  return value


def write_atomically(path: Path, data: bytes | memoryview) -> None:
  """Writes `path` through a temporary file beside it and a rename: a reader sees the old
  file or the new one, never half of one, and a failed write (a full disk) leaves `path` as
  it was and no temporary file behind. The error names `path`, not the temporary file."""
  path = Path(path)
  tmp = path.with_name(f'.{path.name}.tmp')
  try:
    with tmp.open('wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())  # else a crash just after the rename may leave an empty file
    os.replace(tmp, path)
  except BaseException as e:
    tmp.unlink(missing_ok=True)
    if isinstance(e, OSError) and e.errno is not None:
      raise OSError(e.errno, e.strerror, str(path)) from e
    raise


def write_json(path: Path, data: dict[str, Any]) -> None:
  """Atomically (`write_atomically`), so a reader never sees half a scorecard."""
  text = json.dumps(json_safe(data), indent=2, sort_keys=True, allow_nan=False) + '\n'
  write_atomically(path, text.encode())


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
  try:
    with path.open('a') as f:
      f.write(json.dumps(json_safe(record), sort_keys=True, allow_nan=False) + '\n')
      f.flush()
  except OSError as e:  # a failed write names no file; the error line should
    if e.errno is None or e.filename is not None:
      raise
    raise OSError(e.errno, e.strerror, str(path)) from e


def read_json(path: Path) -> dict[str, Any]:
  return json.loads(Path(path).read_text())
