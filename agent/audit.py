"""`verify`: does a run's record still match what it claims, link by link?

The journal's hash chain shows that no record was edited; this module checks that the
records still match the world they describe: every kept commit exists and changes exactly
the recorded diff on top of the incumbent it was compared against, and every metric the
decisions used is what the trial's scorecard file says (the file's hash is in the record,
so a scorecard edited after the fact is caught too). The first inconsistency is reported in
one line naming the record; None means the run verifies.
"""

from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Iterator

from agent import diffs, vcs
from agent.journal import Journal, Record
from harness.scorecard import SCORECARD, TEST_SCORECARD, read_json


Check = Callable[[], None]


class Inconsistency(Exception):
  """One mismatch between a record and the repository or the files."""


def verify_run(repo: Path, journal: Journal) -> str | None:
  """The first problem found, as one line, or None when the whole run checks out."""
  problem = journal.verify()
  if problem:
    return problem
  for record, check in _checks(repo, journal.records(), journal.path.parent):
    try:
      check()
    except (Inconsistency, OSError, vcs.VcsError, KeyError, ValueError) as e:
      return f'record {record.seq} (kind={record.kind}, trial {record.trial}): {e}'
  return None


def _checks(repo: Path, records: list[Record], run_dir: Path) -> Iterator[tuple[Record, Check]]:
  """Each record's checks, in journal order, with the incumbent each verdict was judged on."""
  started = {r.trial: r.payload for r in records if r.kind == 'trial_started'}
  approved = {r.payload['trial'] for r in records if r.kind == 'review' and r.payload['approved']}
  incumbent = ''
  for record in records:
    p = record.payload
    if record.kind == 'run_started':
      incumbent = p['config']['start_commit']
      yield record, functools.partial(_commit_exists, repo, incumbent)
    elif record.kind == 'baseline':
      yield record, functools.partial(_arm_matches_scorecard, p['arm'])
    elif record.kind == 'verdict':
      yield record, functools.partial(_commit_exists, repo, p.get('commit', ''))
      if p.get('candidate'):
        yield record, functools.partial(_arm_matches_scorecard, p['candidate'])
      if p['accepted'] or p.get('awaiting_review'):
        diff = started.get(record.trial, {}).get('diff')
        yield record, functools.partial(_commit_is_diff, repo, p['commit'], diff, incumbent)
      if p['accepted'] or record.trial in approved:
        incumbent = p['commit']
    elif record.kind == 'final_eval':
      yield record, functools.partial(_final_matches, run_dir, p)


def _commit_exists(repo: Path, commit: str) -> None:
  if not commit or not vcs.object_exists(repo, commit):
    raise Inconsistency(f'commit {commit[:10] or "(none)"} is not in the repository')


def _commit_is_diff(repo: Path, commit: str, recorded: str | None, incumbent: str) -> None:
  if recorded is None:
    raise Inconsistency(f'no trial_started record holds the diff of {commit[:10]}')
  parent = vcs.parent(repo, commit)
  if parent != incumbent:
    raise Inconsistency(f'commit {commit[:10]} sits on {parent[:10]}, not on the incumbent '
                        f'{incumbent[:10]} it was compared against')
  actual = ''.join(diffs.unified_diff(path, vcs.file_at(repo, parent, path),
                                      vcs.file_at(repo, commit, path))
                   for path in vcs.changed_files(repo, parent, commit))
  if actual != recorded:
    raise Inconsistency(f'commit {commit[:10]} does not change what the journal recorded '
                        f'({len(actual)} vs {len(recorded)} characters of diff)')


def _arm_matches_scorecard(arm: dict[str, Any]) -> None:
  path = Path(arm['workdir']) / SCORECARD
  if not path.exists():
    raise Inconsistency(f'scorecard {path} is missing')
  digest = arm.get('scorecard_sha256')
  if digest and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
    raise Inconsistency(f'scorecard {path} changed after it was recorded (sha256 differs)')
  card = read_json(path)
  _same(arm['per_seed'], card['val_metric']['per_seed'], f'{path}: val_metric.per_seed')
  _same(arm['train_seconds'], card['train_seconds'], f'{path}: train_seconds')
  if arm['fingerprints'] != card['data']['fingerprints']:
    raise Inconsistency(f'{path}: data fingerprints differ from the record')


def _final_matches(run_dir: Path, final: dict[str, Any]) -> None:
  for name in ('baseline', 'final'):
    result = final[name]
    if result.get('status') != 'ok':
      continue
    workdir = run_dir / 'final' / name
    _same(result['val']['per_seed'], read_json(workdir / SCORECARD)['val_metric']['per_seed'],
          f'{workdir / SCORECARD}: val_metric.per_seed')
    _same(result['test']['per_seed'],
          read_json(workdir / TEST_SCORECARD)['test_metric']['per_seed'],
          f'{workdir / TEST_SCORECARD}: test_metric.per_seed')


def _same(recorded: Any, actual: Any, what: str) -> None:
  """Numbers equal up to float noise; the journal stores NaN as the string 'nan'."""
  a, b = _numbers(recorded), _numbers(actual)
  if len(a) != len(b) or any(not (x == y or (math.isnan(x) and math.isnan(y))
                                  or math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-15))
                             for x, y in zip(a, b)):
    raise Inconsistency(f'{what} is {actual}, the journal recorded {recorded}')


def _numbers(value: Any) -> list[float]:
  values = value if isinstance(value, list) else [value]
  return [float('nan') if v is None else float(v) for v in values]
