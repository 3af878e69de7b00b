"""What the trusted parent sees of confined code while it runs: CPU time and peak memory of its
process tree, read from /proc (`TreeUsage`), and its output in one log of bounded size
(`CappedLog`). Neither depends on anything the code says about itself.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from pathlib import Path
from typing import IO

TAIL_CHARS = 2000
READER_JOIN_S = 5.0  # how long to wait for the log's reader once the process has exited
_LINE_BYTES = 1 << 16


class TreeUsage:
  """CPU time and peak resident memory of a process tree, read by the parent from /proc.

  The trial cannot change what the kernel counts for it, so these are the costs it cannot
  misreport. bwrap does not wait for the sandbox's PID 1, so the kernel's rusage of the
  leader holds none of it: the tree is sampled instead (at each poll, so up to one poll
  interval of CPU time before the end may be missed). Linux only; elsewhere it stays 0.
  """
  _CLOCK = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100

  def __init__(self, root: int):
    self.root = root
    self.seen: dict[int, tuple[int, float, float]] = {}  # pid -> (parent, own, children's)
    self.max_rss_mb = 0.0

  def sample(self) -> None:
    try:
      stats = {int(p): _proc_stat(p) for p in os.listdir('/proc') if p.isdigit()}
    except OSError:
      return
    children: dict[int, list[int]] = {}
    for pid, stat_ in stats.items():
      if stat_:
        children.setdefault(stat_[0], []).append(pid)
    todo = [self.root]
    while todo:
      pid = todo.pop()
      todo += children.get(pid, [])
      if stats.get(pid):
        parent, own, reaped = stats[pid]
        self.seen[pid] = (parent, own / self._CLOCK, reaped / self._CLOCK)
        self.max_rss_mb = max(self.max_rss_mb, _peak_rss_mb(pid))

  def totals(self) -> dict[str, float]:
    """Each process's own CPU time, plus what its reaped children used beyond what was
    seen of them directly (so a child is counted once, even one that lived between two
    samples)."""
    cpu = 0.0
    for pid, (_, own, reaped) in self.seen.items():
      seen_children = sum(o + r for p, o, r in self.seen.values() if p == pid)
      cpu += own + max(0.0, reaped - seen_children)
    return {'cpu_seconds': cpu, 'max_rss_mb': self.max_rss_mb}


def _proc_stat(pid: str) -> tuple[int, int, int] | None:
  """(parent pid, own CPU ticks, reaped children's CPU ticks) from /proc/PID/stat."""
  try:
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
  except (OSError, IndexError):
    return None
  return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def _peak_rss_mb(pid: int) -> float:
  try:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024
  except (OSError, ValueError, IndexError):
    pass
  return 0.0


class CappedLog:
  """The trial's output in one file of bounded size, drained by one reader thread.

  stdout and stderr share one pipe so the log keeps the order the trial wrote in (with two
  pipes and two readers, a crash message could land before the 64 KB of stdout that preceded
  it). Past the cap, output is drained and dropped (a blocked pipe would stall the trial), but
  a rolling tail of everything is kept: the end of a flood, where the error usually is, is
  appended to the file on close and returned as log_tail.
  """

  def __init__(self, path: Path, cap: int):
    self._file = path.open('wb')
    self._cap = cap
    self._written = 0
    self._dropped = 0
    self._tail = bytearray()
    self._lock = threading.Lock()
    self._closed = False

  def write(self, data: bytes) -> None:
    with self._lock:
      if self._closed:
        return
      self._tail += data
      del self._tail[:-4 * TAIL_CHARS]
      keep = data[:max(0, self._cap - self._written)]
      if keep:
        self._file.write(keep)
        self._written += len(keep)
      if len(keep) < len(data):
        if not self._dropped:
          self._file.write(f'\n[output truncated at {self._cap} bytes]\n'.encode())
        self._dropped += len(data) - len(keep)

  def drain(self, pipe: IO[bytes]) -> threading.Thread:
    def run() -> None:
      # Ctrl-C must reach the main thread: a signal the kernel hands to this thread (while
      # the main one blocks signals around vfork) would leave Python's handler waiting.
      signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
      with pipe:
        for line in iter(functools.partial(pipe.readline, _LINE_BYTES), b''):
          self.write(line)
    thread = threading.Thread(target=run, name='trial-log', daemon=True)
    thread.start()
    return thread

  def tail(self) -> str:
    with self._lock:
      return self._tail.decode(errors='replace')[-TAIL_CHARS:]

  def close(self) -> None:
    with self._lock:
      if self._dropped:
        text = self._tail.decode(errors='replace')[-TAIL_CHARS:]
        self._file.write(f'[{self._dropped} bytes dropped; the last {len(text)} characters '
                         f'of output follow]\n{text}'.encode())
      self._closed = True
      self._file.close()
