"""The agent's layers hold: no module imports from a layer above its own."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_import_runs_back_up():
  lint = Path(sys.executable).with_name('lint-imports')
  result = subprocess.run([str(lint), '--no-cache'], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
  assert 'broken' in result.stdout and '0 broken' in result.stdout
