"""`verify`: is a run's record true, not only intact?

The journal's hash chain shows that no record was edited in place. This module checks the
records against what the chain cannot vouch for:

- each verdict is recomputed with the charter's rule recorded in `run_started` (agent.judging.decide)
  from the arms the journal holds: the incumbent as it stood when the trial ran, the
  candidate, and every later look's pair on fresh seeds, look by look, as the sequential
  test took them. A flipped `accepted`, another reason code, a rewritten rationale, other
  numbers, or more or fewer looks than the test needed contradict the recomputation;
- each transfer outcome (charter [transfer]) is recomputed from its recorded arms with
  agent.judging.transfer, every kept verdict has one for each named experiment, the
  incumbent's arm there is the one the journal last kept, and the settings each candidate
  arm carried are those its commit changed;
- every arm matches its scorecard file (whose sha256 is recorded), every scorecard's summary
  (mean, std) matches its per-seed values, and the final scorecards match `final_eval`;
- git: every trial's commit changes exactly the recorded diff on top of the incumbent it was
  judged against, every rejected or waiting trial's ref names that commit, and the run's
  branch is at the journal's incumbent (or at the candidate of the trial in progress);
- the anchor: the journal head's number and hash, written into git after every record
  (Journal.anchor_with), still name this journal's records, so a journal cut short or
  re-hashed wholesale is caught.

What it cannot catch: someone who rewrites the journal, the scorecard files and the run's git
refs consistently leaves nothing to contradict. The first inconsistency is reported in one
line naming the record (or the branch or anchor); None means the run verifies.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Iterator

from agent.charter import Acceptance, Charter, Objective, Tradeoffs, Transfer, Trial
from agent.editing import diffs
from agent.editing.config_edit import EditError
from agent.judging import decide as decide_lib
from agent.judging import rungs
from agent.judging import transfer as transfer_rule
from agent.recording import pooled_noise
from agent.recording import transfer_results as transfer_lib
from agent.recording import records as records_lib
from agent.recording import vcs
from agent.recording.journal import Journal, Record
from agent.recording.records import ArmRecord
from harness.scorecard import SCORECARD, TEST_SCORECARD, json_safe, read_json, summarize

Check = Callable[[], None]
NAN = float('nan')
_CHECKED = (KeyError, OSError, TypeError, ValueError, vcs.VcsError)


class Inconsistency(Exception):
  """One mismatch between a record and the repository, the files or the rule."""


def verify_run(repo: Path, journal: Journal) -> str | None:
  """The first problem found, as one line, or None when the whole run checks out."""
  problem = journal.verify()
  if problem:
    return problem
  records = journal.records()
  for record in records:
    try:
      record.body
    except records_lib.RecordError as e:
      return f'{_where(record)}: {e}'
  if not records or not isinstance(records[0].body, records_lib.RunStarted):
    return f'{journal.path} does not start with a run_started record'
  for where, check in _checks(repo, records, journal.path.parent):
    try:
      check()
    except (Inconsistency, *_CHECKED) as e:
      return f'{where}: {e}'
  ref = vcs.anchor_ref(records[0].body.config.run_id)
  text = vcs.read_text_ref(repo, ref)
  problem = ('it is missing, so nothing outside the journal vouches for its length and hashes'
             if text is None else journal.anchor_problem(text))
  return f'journal anchor {ref}: {problem}' if problem else None


@dataclasses.dataclass(frozen=True)
class Rule:
  """The charter's acceptance rule, as `run_started` recorded its settings."""
  charter: Charter
  objective: Objective

  @property
  def policy(self) -> decide_lib.AcceptancePolicy:
    return decide_lib.AcceptancePolicy.of(self.charter)

  @classmethod
  def recorded(cls, settings: dict[str, Any] | None) -> Rule:
    """Mirrors decide.AcceptancePolicy.of, from the recorded settings instead of the charter
    file."""
    if not settings:
      raise Inconsistency('run_started records no charter settings, so no verdict can be '
                          'recomputed')
    if 'alpha' in settings.get('acceptance', {}):
      raise Inconsistency('the run was judged by the fixed screen-and-confirm rule (alpha, '
                          'noise floor), which this version no longer implements, so its '
                          'verdicts cannot be recomputed here')
    try:
      objective = Objective(**settings['objective'])
      charter = Charter(trial=Trial(**settings['trial']), objective=objective,
                        acceptance=Acceptance(**{'min_effect_of_error': 0.0,  # before it was
                                                 **settings['acceptance']}),
                        tradeoffs=Tradeoffs(**settings['tradeoffs']),
                        transfer=Transfer(**settings.get('transfer', {})))
    except (KeyError, TypeError) as e:
      raise Inconsistency(f'the charter settings in run_started do not parse: {e}') from None
    return cls(charter, objective)


@dataclasses.dataclass(frozen=True)
class _Expected:
  """The verdict the rule gives; where the loop's own words carry a detail the journal does
  not hold (a trial's failure, another experiment's numbers), `rationale` is a part the
  recorded rationale must contain rather than all of it."""
  accepted: bool
  code: str
  rationale: str
  exact: bool = False
  numbers: tuple[float, float, float] = (NAN, NAN, NAN)  # gain, noise floor, p-value

  @classmethod
  def of(cls, verdict: decide_lib.Verdict) -> _Expected:
    return cls(verdict.accepted, verdict.reason_code, verdict.rationale, True,
               (verdict.gain, verdict.noise_floor, verdict.p_value))


def _where(record: Record) -> str:
  return f'record {record.seq} (kind={record.kind}, trial {record.trial})'


def _checks(repo: Path, records: list[Record], run_dir: Path) -> Iterator[tuple[str, Check]]:
  """Each record's checks in journal order, with the state each verdict was judged in, then
  the run's branch."""
  config, settings = records[0].body.config, records[0].body.charter
  if settings and isinstance(settings.get('trial'), dict):  # looks are of the run's seeds
    settings = {**settings, 'trial': {**settings['trial'], 'seeds': config.seeds}}
  incumbent = _Incumbent(config.start_commit)
  transfer_arms: dict[str, records_lib.TransferArm] = {}  # the incumbent's, by experiment
  started: dict[int, records_lib.TrialStarted] = {}
  finished: dict[int, records_lib.TrialFinished] = {}
  confirmed: dict[int, list[records_lib.ConfirmFinished]] = {}
  transfer_runs: dict[int, dict[str, records_lib.ConfirmFinished]] = {}  # by experiment
  waiting: dict[int, records_lib.Verdict] = {}
  rung_stops: dict[int, int] = {}  # trial -> the step of the rung that stopped it
  in_progress: dict[int, str] = {}  # trial -> its commit, until its end (--workers: several)
  arms: dict[str, ArmRecord] = {}  # every incumbent so far, by commit
  started_at: dict[int, int] = {}  # trial -> the index of its (last) trial_started
  for index, record in enumerate(records):
    body, where, trial = record.body, _where(record), record.trial
    if isinstance(body, records_lib.TRIAL_ENDS):
      in_progress.pop(trial, None)
    if isinstance(body, records_lib.RunStarted):
      yield where, functools.partial(_commit_exists, repo, incumbent.commit)
      yield where, functools.partial(Rule.recorded, settings)
    elif isinstance(body, records_lib.Baseline):
      yield where, functools.partial(_arm_matches_scorecard, body.arm, incumbent.commit)
      incumbent = _Incumbent(body.arm.commit, body.arm)
      arms[incumbent.commit] = body.arm
    elif isinstance(body, records_lib.TransferBaseline):
      yield where, functools.partial(_transfer_baseline_fits, repo, config, body)
      transfer_arms[body.experiment] = body.arm
    elif isinstance(body, records_lib.TrialStarted):
      started[trial], in_progress[trial], started_at[trial] = body, body.commit, index
    elif isinstance(body, records_lib.TrialFinished):
      finished[trial] = body
      confirmed.pop(trial, None)  # an interrupted attempt's looks are not this attempt's
    elif isinstance(body, records_lib.ConfirmFinished) and body.first_seed is not None:
      confirmed.setdefault(trial, []).append(body)
    elif isinstance(body, records_lib.ConfirmFinished) and body.experiment:
      transfer_runs.setdefault(trial, {})[body.experiment] = body
    elif isinstance(body, records_lib.RungDecided):
      yield where, functools.partial(_rung_holds, body)
      rung_stops.update({t: body.step for t in body.stopped})
    elif isinstance(body, records_lib.Verdict):
      first = min((finished[trial].batch or [trial]) if trial in finished else [trial])
      # the run's noise as the loop had it when the trial started (trials side by side may
      # be decided meanwhile)
      pooled = pooled_noise.of_records(records[:started_at.get(trial, index)], first).variance
      judged_on = started[trial].incumbent if trial in started else ''
      against = (incumbent if judged_on in ('', incumbent.commit)
                 else _Incumbent(judged_on, arms.get(judged_on)))
      yield where, functools.partial(_judged_on_current, body, against.commit,
                                     incumbent.commit)
      yield from ((where, check) for check in _verdict_checks(
          repo, config.run_id, settings, against, body, trial, started.get(trial),
          finished.get(trial), confirmed.get(trial, []), pooled))
      yield where, functools.partial(_transfer_fits, repo, config, settings, body,
                                     incumbent.commit, dict(transfer_arms),
                                     transfer_runs.get(trial, {}))
      if trial in rung_stops:
        yield where, functools.partial(_stopped_at_rung, body, finished.get(trial),
                                       rung_stops[trial])
      if body.awaiting_review:
        waiting[trial] = body
      elif body.accepted:
        incumbent = _Incumbent(body.candidate.commit, body.candidate)
        arms[incumbent.commit] = body.candidate
        transfer_arms = transfer_lib.kept_arms(body)
    elif isinstance(body, records_lib.Review):
      verdict = waiting.pop(trial, None)
      yield where, functools.partial(_review_fits, repo, config.run_id, body, verdict)
      if verdict is not None and body.approved:
        incumbent = _Incumbent(verdict.candidate.commit, verdict.candidate)
        arms[incumbent.commit] = verdict.candidate
        transfer_arms = transfer_lib.kept_arms(verdict)
    elif isinstance(body, records_lib.FinalEval):
      yield where, functools.partial(_final_matches, run_dir, body, incumbent.commit,
                                     config.start_commit)
      yield where, functools.partial(_final_transfer_carried, repo, config, body,
                                     incumbent.commit)
  branch = f'agent/{config.run_id}'
  yield f'branch {branch}', functools.partial(_branch_at_incumbent, repo, branch,
                                              incumbent.commit, list(in_progress.values()))


@dataclasses.dataclass(frozen=True)
class _Incumbent:
  """The commit each verdict was judged against, and its arm once measured."""
  commit: str
  arm: ArmRecord | None = None


def _verdict_checks(repo: Path, run_id: str, settings: dict[str, Any] | None,
                    incumbent: _Incumbent, verdict: records_lib.Verdict, trial: int,
                    started: records_lib.TrialStarted | None,
                    finished: records_lib.TrialFinished | None,
                    confirmed: list[records_lib.ConfirmFinished],
                    pooled: float) -> Iterator[Check]:
  """The commit, the arms against their files, the rule, then the trial's ref."""
  commit, diff = verdict.commit, started.diff if started else None
  yield functools.partial(_commit_exists, repo, commit)
  if verdict.candidate:
    yield functools.partial(_arm_matches_scorecard, verdict.candidate, commit)
  for arms in verdict.looks or []:
    for name, arm in arms.items():
      ran = incumbent.commit if name == 'incumbent' else verdict.ran_commit
      yield functools.partial(_arm_matches_scorecard, arm, ran)
  yield functools.partial(_commit_is_diff, repo, commit, diff, incumbent.commit)
  yield functools.partial(_verdict_follows_rule, settings, incumbent, verdict, diff, finished,
                          confirmed, pooled)
  if verdict.awaiting_review:
    yield functools.partial(_ref_names, repo, f'refs/agent/{run_id}/pending/{trial}', commit)
  elif not verdict.accepted:
    yield functools.partial(_ref_names, repo, f'refs/agent/{run_id}/rejected/{trial}', commit)


def _judged_on_current(verdict: records_lib.Verdict, judged_on: str, current: str) -> None:
  """A kept (or waiting) trial was judged against the incumbent current when it was kept;
  one recorded as a late win (STALE) against one replaced before its verdict."""
  kept = verdict.accepted or verdict.awaiting_review
  if kept and judged_on != current:
    raise Inconsistency(f'kept, but judged against {judged_on[:10]} while the incumbent was '
                        f'{current[:10]}')
  if verdict.reason_code == records_lib.STALE and judged_on == current:
    raise Inconsistency(f'recorded as a win that came too late, but it was judged against '
                        f'the incumbent of its verdict ({current[:10]})')


# ---- the rule -------------------------------------------------------------------------------
def _verdict_follows_rule(settings: dict[str, Any] | None, incumbent: _Incumbent,
                          verdict: records_lib.Verdict, diff: str | None,
                          finished: records_lib.TrialFinished | None,
                          confirmed: list[records_lib.ConfirmFinished], pooled: float) -> None:
  if finished is None or finished.status != verdict.status:
    raise Inconsistency(f'the verdict says the trial ended {verdict.status!r}, its '
                        f'trial_finished record says {finished and finished.status!r}')
  expected = _recompute(Rule.recorded(settings), incumbent, verdict, diff or '', finished,
                        confirmed, pooled)
  if verdict.reason_code == records_lib.STALE:  # the rule kept it; the loop could not
    if not expected.accepted:
      raise Inconsistency(f'recorded as a win that came too late, but the charter\'s rule on '
                          f'the recorded arms gives {_says(False, expected.code)}')
    expected = _Expected(False, records_lib.STALE, 'Won against incumbent',
                         numbers=expected.numbers)
  claimed = bool(verdict.accepted or verdict.awaiting_review)
  if (claimed, verdict.reason_code) != (expected.accepted, expected.code):
    raise Inconsistency(f'the verdict says {_says(claimed, verdict.reason_code)}, but the '
                        f'charter\'s rule on the recorded arms gives '
                        f'{_says(expected.accepted, expected.code)}')
  rationale = verdict.rationale
  if (rationale != expected.rationale) if expected.exact else (expected.rationale not in rationale):
    raise Inconsistency(f'the rationale is not what the charter\'s rule gives on the recorded '
                        f'arms: {expected.rationale[:160]!r}')
  for name, value in zip(('gain', 'noise_floor', 'p_value'), expected.numbers):
    if not _close(getattr(verdict, name), value):
      raise Inconsistency(f'the verdict\'s {name} is {getattr(verdict, name)}, the rule gives '
                          f'{value}')


def _says(accepted: bool, code: str) -> str:
  return f'{"accepted" if accepted else "rejected"} ({code})'


def _recompute(rule: Rule, incumbent: _Incumbent, verdict: records_lib.Verdict, diff: str,
               finished: records_lib.TrialFinished,
               confirmed: list[records_lib.ConfirmFinished], pooled: float) -> _Expected:
  """The verdict CandidateJudge.judge reaches on these arms, with the run's pooled paired-gain
  variance before the trial (`pooled`): the screen's look, each later look while the test is
  undecided, then elsewhere. An undecided candidate the minute budget stopped (reason code
  'budget': no next look recorded, or its runs stopped by the budget) is not kept either
  way, so that claim is checked for its form and its last look's numbers."""
  if not verdict.candidate:  # the trial did not finish with a scorecard
    status = finished.status
    code = {'pruned': 'pruned', 'invalid': 'invariant'}.get(status, status)
    return _Expected(False, code, finished.reason or '')
  if incumbent.arm is None:
    raise Inconsistency('a verdict with no baseline before it to compare against')
  inc, cand = incumbent.arm, verdict.candidate
  if cand.fingerprints != inc.fingerprints:
    return _Expected(False, 'data_changed', 'fingerprints differ')
  card = read_json(Path(inc.workdir) / SCORECARD)
  metric = card['metric']['name']
  direction = rule.objective.resolve_direction(card['metric']['direction'])
  _, added, removed = diffs.diff_stats(diff)
  policy = rule.policy.batch(len(finished.batch or [None]))
  looks = [decide_lib.SeedResults(inc.arm(), cand.arm(), metric)]
  result = decide_lib.decide(looks[0], direction, policy, diff_lines=added - removed,
                             pooled_variance=pooled)
  if (result.accepted or result.undecided) and verdict.reason_code == 'outranked' \
      and finished.batch:
    # Only a batch's best screen member goes on (CandidateJudge.judge_batch): checked for
    # its form, as the others' arms are in their own verdicts.
    return _Expected(False, 'outranked', result.rationale)
  recorded = verdict.looks or []
  while result.undecided:
    index = len(looks) - 1
    budget = ('budget' in (confirmed[index].candidate, confirmed[index].incumbent)
              if index < len(confirmed) else verdict.reason_code == 'budget')
    if budget:
      return _Expected(False, 'budget', 'Undecided, not rejected: the run\'s minute budget ran '
                       'out', numbers=(result.gain, result.noise_floor, result.p_value))
    if index >= len(confirmed):
      raise Inconsistency(f'the test is undecided after {len(looks)} looks, but no '
                          'confirm_finished record follows for the next one')
    statuses = f'{confirmed[index].candidate}/{confirmed[index].incumbent}'
    if statuses != 'ok/ok':
      return _Expected(False, 'confirm_failed', f'({statuses})')
    if index >= len(recorded):
      raise Inconsistency(f'the verdict records no arms for look {len(looks) + 1}, so its '
                          'decision cannot be recomputed')
    arms = recorded[index]
    looks.append(decide_lib.SeedResults(arms['incumbent'].arm(), arms['candidate'].arm(),
                                        metric))
    result = decide_lib.decide(decide_lib.pool(looks), direction, policy,
                               diff_lines=added - removed, pooled_variance=pooled)
  if len(recorded) != len(looks) - 1:
    raise Inconsistency(f'the verdict records {len(recorded)} looks after the screen, but the '
                        f'test decided after {len(looks) - 1}')
  if not result.accepted:
    return _Expected.of(result)
  # A winner is also judged where its code runs (CandidateJudge._judge_elsewhere): whether the
  # experiment runs a changed file needs a checkout, and the other experiments' numbers are
  # not in the journal, so these two rejections are checked for their form only.
  if verdict.reason_code == 'unused_code' and result.reason_code in ('simplification',
                                                                      'efficiency'):
    return _Expected(False, 'unused_code', result.rationale)
  failures = [f for f in (verdict.elsewhere or {}).values() if f != 'held']
  if failures:
    return _Expected(False, 'breaks_elsewhere', failures[0])
  if verdict.transfer:  # the transfer check (agent.transfer), each outcome redone
    for experiment, recorded in verdict.transfer.items():
      _transfer_outcome_holds(experiment, recorded)
    return _Expected.of(transfer_lib.transferred(result, verdict.transfer,
                                                 rule.charter.transfer.mode))
  return _Expected.of(result)


# ---- the transfer check ---------------------------------------------------------------------
def _transfer_outcome_holds(experiment: str, recorded: records_lib.TransferResult) -> None:
  """The rule's outcome on the recorded arms; a failure (an arm missing) for its form."""
  if recorded.incumbent is None or recorded.candidate is None:  # undecided: see _transfer_fits
    expected = records_lib.TransferResult(transfer_rule.UNDECIDED if recorded.outcome ==
                                          transfer_rule.UNDECIDED else transfer_rule.FAILED)
  else:
    expected = transfer_lib.result_of(recorded.incumbent, recorded.candidate)
  if recorded.outcome != expected.outcome or not all(
      _close(getattr(recorded, f), getattr(expected, f)) for f in ('gain', 'noise_floor')):
    raise Inconsistency(f'the transfer outcome on {experiment} is {recorded.outcome} (gain '
                        f'{recorded.gain}), the rule on the recorded arms gives '
                        f'{expected.outcome} (gain {expected.gain})')


def _carried(repo: Path, config: records_lib.RunConfig, commit: str,
             experiment: str) -> tuple[list[str], str]:
  """The settings an arm of `commit` carries to `experiment`, and the config derived for it
  where it reshaped a section (agent.judging.transfer), redone from git."""
  text = lambda sha, path: vcs.file_at(repo, sha, path) or ''
  sources = (text(config.start_commit, config.experiment), text(commit, config.experiment),
             text(commit, experiment))
  try:
    derived = transfer_rule.derived(*sources)
  except EditError:
    derived = None  # not derivable: no arm can have run on a derived config
  return transfer_rule.overrides(*sources), derived


def _transfer_arm_fits(repo: Path, config: records_lib.RunConfig,
                       arm: records_lib.TransferArm, commit: str, experiment: str) -> None:
  _arm_matches_scorecard(arm.arm, commit)
  overrides, derived = _carried(repo, config, commit, experiment)
  if arm.overrides != overrides:
    raise Inconsistency(f'the arm in {arm.arm.workdir} carried {arm.overrides} to '
                        f'{experiment}, but its commit changed {overrides}')
  if arm.derived != derived:
    raise Inconsistency(f'the arm in {arm.arm.workdir} ran a config on {experiment} that is '
                        f'not the one its commit derives there (agent.judging.transfer.derived)')


def _transfer_baseline_fits(repo: Path, config: records_lib.RunConfig,
                            baseline: records_lib.TransferBaseline) -> None:
  _transfer_arm_fits(repo, config, baseline.arm, config.start_commit, baseline.experiment)


def _transfer_fits(repo: Path, config: records_lib.RunConfig, settings: dict[str, Any] | None,
                   verdict: records_lib.Verdict, incumbent: str,
                   incumbent_arms: dict[str, records_lib.TransferArm],
                   runs: dict[str, records_lib.ConfirmFinished]) -> None:
  """A kept verdict was checked on every transfer experiment the charter named; each arm
  matches its scorecard and carried what its commit changed; the incumbent's arm is the one
  the journal last kept for it; an undecided outcome's run was stopped by the budget."""
  named = [e for e in ((settings or {}).get('transfer') or {}).get('experiments') or []
           if e != config.experiment]
  if (verdict.accepted or verdict.awaiting_review) and sorted(verdict.transfer or {}) != sorted(named):
    raise Inconsistency(f'a kept verdict was checked on the transfer experiments '
                        f'{sorted(verdict.transfer or {})}, the charter names {sorted(named)}')
  for experiment, result in (verdict.transfer or {}).items():
    ran = runs.get(experiment)
    if result.outcome == transfer_rule.UNDECIDED and (
        ran is None or transfer_rule.BUDGET not in (ran.candidate, ran.incumbent)):
      raise Inconsistency(f'the transfer outcome on {experiment} is undecided, but no run of '
                          f'it there was stopped by the minute budget')
    if result.candidate is not None:
      _transfer_arm_fits(repo, config, result.candidate, verdict.ran_commit, experiment)
    if result.incumbent is None:
      continue
    if experiment in incumbent_arms:
      if result.incumbent != incumbent_arms[experiment]:
        raise Inconsistency(f'the incumbent\'s arm on {experiment} is not the one the journal '
                            f'kept for it ({incumbent_arms[experiment].arm.workdir})')
    else:
      _transfer_arm_fits(repo, config, result.incumbent, result.incumbent.arm.commit, experiment)


def _rung_holds(recorded: records_lib.RungDecided) -> None:
  """The rung's decision is the rule's on its own numbers (agent.judging.rungs)."""
  redone = rungs.redo(dataclasses.asdict(recorded))
  _same(sorted(recorded.kept), list(redone.kept), f'the rung at step {recorded.step}: kept')
  _same(sorted(recorded.stopped), list(redone.stopped),
        f'the rung at step {recorded.step}: stopped')


def _stopped_at_rung(verdict: records_lib.Verdict, finished: records_lib.TrialFinished | None,
                     step: int) -> None:
  """A candidate a rung stopped was neither kept nor judged on anything after it."""
  if verdict.accepted or verdict.reason_code != 'pruned' or (
      finished is not None and finished.status != 'pruned'):
    raise Inconsistency(f'stopped at the rung at step {step} but recorded as '
                        f'{verdict.reason_code}')


# ---- files ----------------------------------------------------------------------------------
def _arm_matches_scorecard(arm: ArmRecord, commit: str | None = None) -> None:
  if commit is not None and arm.commit != commit:
    raise Inconsistency(f'the arm in {arm.workdir} ran {arm.commit[:10]}, not {commit[:10]}')
  path = Path(arm.workdir) / SCORECARD
  if not path.exists():
    raise Inconsistency(f'scorecard {path} is missing')
  digest = arm.scorecard_sha256
  if digest and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
    raise Inconsistency(f'scorecard {path} changed after it was recorded (sha256 differs)')
  card = read_json(path)
  _same(arm.per_seed, card['val_metric']['per_seed'], f'{path}: val_metric.per_seed')
  _summary_holds(card['val_metric'], f'{path}: val_metric')
  _same(arm.train_seconds, 0.0 if card.get('batch') else card['train_seconds'],
        f'{path}: train_seconds')  # a batch member's costs are unknown (ArmRecord)
  if arm.fingerprints != card['data']['fingerprints']:
    raise Inconsistency(f'{path}: data fingerprints differ from the record')


def _final_matches(run_dir: Path, final: records_lib.FinalEval, incumbent: str,
                   start: str) -> None:
  commits = final.commit
  if (commits.get('baseline'), commits.get('final')) != (start, incumbent):
    raise Inconsistency(f'the final evaluation ran {commits}, not the start commit '
                        f'{start[:10]} and the incumbent {incumbent[:10]}')
  for name in ('baseline', 'final'):
    _final_arm_matches(getattr(final, name), run_dir / 'final' / name)
  for experiment, transfer in (final.transfer or {}).items():
    folder = run_dir / 'final' / 'transfer' / Path(experiment).stem
    for name in ('baseline', 'final'):
      _final_arm_matches(getattr(transfer, name), folder / name)


def _final_transfer_carried(repo: Path, config: records_lib.RunConfig,
                            final: records_lib.FinalEval, incumbent: str) -> None:
  """The final incumbent's arm on each transfer experiment carried what its commit carries
  there: the same settings, the same derived config."""
  for experiment, transfer in (final.transfer or {}).items():
    if (transfer.overrides, transfer.derived) != _carried(repo, config, incumbent, experiment):
      raise Inconsistency(f'the final arm on {experiment} did not run what the final '
                          f'incumbent carries there (settings or derived config)')


def _final_arm_matches(result: records_lib.FinalArm, folder: Path) -> None:
  if result.status != 'ok':
    return
  for file, key, recorded in ((SCORECARD, 'val_metric', result.val),
                              (TEST_SCORECARD, 'test_metric', result.test)):
    path = folder / file
    summary = read_json(path)[key]
    _summary_holds(summary, f'{path}: {key}')
    for field in ('per_seed', 'mean', 'std'):
      _same(recorded[field], summary[field], f'{path}: {key}.{field}')


def _summary_holds(summary: dict[str, Any], what: str) -> None:
  """mean and std are those of per_seed, as harness.scorecard.summarize writes them."""
  expected = json_safe(summarize(_numbers(summary['per_seed'])))
  for field in ('mean', 'std'):
    if not _close(summary[field], expected[field]):
      raise Inconsistency(f'{what}.{field} is {summary[field]}, but its per_seed values give '
                          f'{expected[field]}')


# ---- git ------------------------------------------------------------------------------------
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


def _ref_names(repo: Path, ref: str, commit: str) -> None:
  actual = vcs.ref_commit(repo, ref)
  if actual != commit:
    raise Inconsistency(f'{ref} is missing' if actual is None else
                        f'{ref} names {actual[:10]}, the journal recorded {commit[:10]}')


def _review_fits(repo: Path, run_id: str, review: records_lib.Review,
                 verdict: records_lib.Verdict | None) -> None:
  if verdict is None or verdict.commit != review.commit:
    raise Inconsistency(f'a review of trial {review.trial} ({review.commit[:10]}), which '
                        f'does not await review')
  if not review.approved:
    _ref_names(repo, f'refs/agent/{run_id}/rejected/{review.trial}', review.commit)


def _branch_at_incumbent(repo: Path, branch: str, incumbent: str,
                         in_progress: list[str]) -> None:
  """At the incumbent; or, while a trial runs (or was killed), at its candidate: the
  incumbent plus the recorded change of a trial with no verdict yet (its message may
  already carry the verdict)."""
  head = vcs.ref_commit(repo, f'refs/heads/{branch}')
  if head is None:
    raise Inconsistency('the branch is missing')
  if head == incumbent or (in_progress and vcs.parent(repo, head) == incumbent and any(
      not vcs.changed_files(repo, head, commit) for commit in in_progress)):
    return
  raise Inconsistency(f'the branch is at {head[:10]}, not at the journal\'s incumbent '
                      f'{incumbent[:10]}')


# ---- numbers --------------------------------------------------------------------------------
def _same(recorded: Any, actual: Any, what: str) -> None:
  a, b = _numbers(recorded), _numbers(actual)
  if len(a) != len(b) or not all(_close(x, y) for x, y in zip(a, b)):
    raise Inconsistency(f'{what} is {actual}, the journal recorded {recorded}')


def _close(x: Any, y: Any) -> bool:
  """Equal up to float noise; NaN equals NaN (the journal stores it as 'nan', JSON as null)."""
  x, y = _numbers(x)[0], _numbers(y)[0]
  return x == y or (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-12,
                                                                     abs_tol=1e-15)


def _numbers(value: Any) -> list[float]:
  values = value if isinstance(value, list) else [value]
  return [NAN if v is None else float(v) for v in values]
