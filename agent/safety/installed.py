"""The installed harness, as agent-written code sees it: a workspace (the user's own repo)
carries only its models and experiments, so a trial imports `harness` from where this agent
runs it, never from a copy in the workspace.

Only the `harness` package folder is mounted (read-only), never the checkout around it:
that holds the agent, the tests and `runs/` (the data cache with the held-out labels). The
folder above it goes on PYTHONPATH after the worktree, so the worktree's own `models` and
`experiments` come first; inside the sandbox that folder holds nothing else. Where the
harness is installed into the interpreter's site-packages, which every sandbox already
sees, there is nothing to add.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import harness

HARNESS = Path(harness.__file__).resolve().parent


@functools.cache
def import_root() -> Path | None:
  """The folder to put on PYTHONPATH so `import harness` finds this one; None when the
  interpreter's own paths (site-packages) hold it already."""
  root = HARNESS.parent
  on_path = {Path(p).resolve() for p in sys.path
             if p and {'site-packages', 'dist-packages'} & set(Path(p).parts)}
  return None if root in on_path else root


def pythonpath(worktree: Path) -> str:
  """The worktree first (its models and experiments), then the installed harness."""
  root = import_root()
  return os.pathsep.join([str(worktree), *([str(root)] if root else [])])


def read_only() -> tuple[Path, ...]:
  """What a sandbox must mount read-only for the installed harness to import."""
  return (HARNESS,) if import_root() else ()
