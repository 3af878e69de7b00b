"""The charter's transfer check, run: a kept change on the other experiments it names.

Why: a win on one dataset may be a win only there. The charter's `[transfer] experiments`
are run for every candidate the sequential test would keep: the candidate's code with the
transfer experiment's config (plus the settings the candidate changed in the run's own
config, where that config has them: agent.judging.transfer.overrides; and, where it
reshaped a section, a switch of model family, that section as its own: the derived config,
agent.judging.transfer.derived, written into a checkout of the commit), paired with the
incumbent on the search's screen seeds, scored from outside the trial with that
experiment's own labels (the loop's `_run`). agent.judging.transfer decides each; a loss or
a failed run (a CNN for 1-D signals on 2-D images) rejects unless the charter says
`mode = "report"`; a run the minute budget cut leaves the candidate undecided, as the
search's own runs do. At the end the start commit and the final incumbent are evaluated
once on each, on fresh seeds and its test split.

The incumbent's arm on each transfer experiment is never run twice: the start commit's is
the run's transfer baseline, and a kept candidate's own arm becomes the next incumbent's,
both read back from the journal, so a resumed run has them too.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable

from agent.candidate import Budget
from agent.charter import Charter
from agent.editing.config_edit import EditError
from agent.judging import decide as decide_lib
from agent.judging import transfer as rule
from agent.recording import records, vcs
from agent.recording.journal import Journal
from agent.recording.records import ArmRecord, TransferArm, TransferResult
from agent.recording.state import RunState
from agent.recording.transfer_results import kept_arms, outcome_of, result_of, transferred
from agent.safety.executor import TrialOutcome

FIRST_SEED = 0  # the search's screen seeds (agent.candidate.SCREEN_FIRST_SEED)


class TransferError(RuntimeError):
  """A transfer experiment cannot be run at the start commit: nothing to compare against."""


def incumbent_arms(journal: Journal) -> dict[str, TransferArm]:
  """The current incumbent's arm on each transfer experiment, from the journal: the transfer
  baselines, replaced by a kept candidate's arms whenever one becomes the incumbent."""
  arms: dict[str, TransferArm] = {}
  waiting: dict[int, records.Verdict] = {}
  for record in journal.records():
    body = record.body
    if isinstance(body, records.TransferBaseline):
      arms[body.experiment] = body.arm
    elif isinstance(body, records.Verdict) and body.awaiting_review:
      waiting[record.trial] = body
    elif isinstance(body, records.Review) and body.approved and body.trial in waiting:
      arms = kept_arms(waiting.pop(body.trial))
    elif isinstance(body, records.Verdict) and body.accepted:
      arms = kept_arms(body)
  return arms


class TransferCheck:
  """Runs the transfer check of one run (`run` is the loop's `_run`; `data(experiment,
  final)` pins and writes an experiment's inputs)."""

  def __init__(self, repo: Path, run_dir: Path, charter: Charter, state: RunState,
               journal: Journal, run: Callable[..., TrialOutcome],
               data: Callable[[str, bool], None], say: Callable[[str], None]):
    self.repo, self.run_dir, self.charter, self.state = repo, run_dir, charter, state
    self.journal, self.run, self.data, self.say = journal, run, data, say
    self.config = state.config
    self.experiments = [e for e in charter.transfer.experiments if e != self.config.experiment]
    self.final_seconds = 0.0  # what the final evaluation's transfer runs take, as measured
    self.budget: Budget | None = None  # the loop's (agent.candidate.Budget): cut runs are BUDGET

  def _sources(self, tree: Path, experiment: str) -> tuple[str, str, str]:
    """The run's experiment at the start commit and in `tree`, and `experiment` in `tree`."""
    start = vcs.file_at(self.repo, self.config.start_commit, self.config.experiment) or ''
    return start, (tree / self.config.experiment).read_text(), (tree / experiment).read_text()

  def _carried(self, tree: Path, experiment: str) -> tuple[list[str], str]:
    """(overrides, derived config) of `tree`'s arm on `experiment` (agent.judging.transfer);
    raises EditError where a reshaped section cannot be carried there."""
    sources = self._sources(tree, experiment)
    return rule.overrides(*sources), rule.derived(*sources)

  def _cut(self) -> bool:
    """Whether a run started now gets less than the charter's time because of the budget."""
    return (self.budget is not None
            and self.budget.timeout() < self.charter.trial.timeout_minutes * 60)

  def _run_on(self, workdir: Path, tree: Path, experiment: str, carried: tuple[list[str], str],
              first_seed: int = FIRST_SEED, **kwargs) -> TrialOutcome:
    """`tree`'s code on `experiment` with what it carries there; on a derived config, in a
    checkout of the tree's commit with that config in place of the experiment's (so the
    scorecard names the commit, changed), removed after the run: the journal holds it."""
    overrides, derived = carried
    code = tree
    if derived:
      code = workdir.with_name(f'{workdir.name}.code')
      shutil.rmtree(code, ignore_errors=True)
      vcs.create_detached(self.repo, code, vcs.resolve(tree, 'HEAD'))
      (code / experiment).write_text(derived)
    try:
      return self.run(workdir, first_seed, worktree=code, experiment=experiment,
                      overrides=tuple(overrides), **kwargs)
    finally:
      if code != tree:
        shutil.rmtree(code, ignore_errors=True)

  def _arm(self, workdir: Path, tree: Path, commit: str, experiment: str,
           carried: tuple[list[str], str] | None = None) -> tuple[TransferArm | None, TrialOutcome]:
    """One arm on the search's seeds; a timeout the budget set is BUDGET, as the search's."""
    carried = carried or self._carried(tree, experiment)
    cut = self._cut()
    outcome = self._run_on(workdir, tree, experiment, carried)
    if cut and outcome.status == 'timeout':  # the budget's edge, not the arm's cost
      outcome = dataclasses.replace(outcome, status=rule.BUDGET, reason=(
          f'{outcome.reason}: the time the run\'s minute budget had left, less than the '
          'charter\'s per-trial time'))
    self.state.compute_seconds += outcome.wall_seconds
    if outcome.status != 'ok' or outcome.scorecard is None:
      return None, outcome
    return TransferArm(ArmRecord.from_scorecard(commit, workdir, outcome.scorecard),
                       *carried), outcome

  def prepare(self) -> None:
    """Pins each transfer experiment's data and runs the start commit on it once (the
    transfer baseline); raises TransferError where it does not train."""
    if not self.experiments:
      return
    have = {b.experiment for b in self.journal.read(records.TransferBaseline)}
    start = vcs.create_detached(self.repo, self.run_dir / 'start', self.config.start_commit)
    for experiment in self.experiments:
      try:
        self.data(experiment, False)
      except (OSError, ValueError) as e:
        raise TransferError(f'transfer experiment {experiment}: {e}') from None
      if experiment in have:
        continue
      self.say(f'[transfer baseline] {experiment} at {self.config.start_commit[:10]}')
      workdir = self.run_dir / 'transfer_baseline' / Path(experiment).stem
      arm, outcome = self._arm(workdir, start, self.config.start_commit, experiment)
      if arm is None:
        raise TransferError(f'transfer experiment {experiment} does not run at the start '
                            f'commit: {outcome.status}: {outcome.reason} (log: '
                            f'{outcome.log_path})')
      self.journal.write(records.TransferBaseline(experiment=experiment, arm=arm,
                                                  wall_seconds=outcome.wall_seconds))
    self.final_seconds = 2 * sum(b.wall_seconds for b in self.journal.read(
        records.TransferBaseline) if b.experiment in self.experiments)

  def judge(self, trial: int, commit: str, worktree: Path, verdict: decide_lib.Verdict,
            extra: dict) -> decide_lib.Verdict:
    """A candidate the test would keep (in `worktree`, at `commit`), on every transfer
    experiment: the verdict says how it did on each, and rejects a loss unless the charter
    only reports them."""
    incumbent = self.state.incumbent
    changed = set(vcs.changed_files(self.repo, incumbent.commit, commit))
    known = incumbent_arms(self.journal)
    results: dict[str, TransferResult] = {}
    for experiment in self.experiments:
      results[experiment] = self._judge_one(trial, commit, worktree, experiment, changed,
                                            known.get(experiment))
      result = results[experiment]
      self.say(f'[trial {trial}] transfer: ' + rule.words(
          experiment, outcome_of(result), result.metric or 'metric', result.reason))
      if result.outcome == rule.UNDECIDED:
        break  # the budget is spent: the other experiments would be cut too
    extra['transfer'] = results
    return transferred(verdict, results, self.charter.transfer.mode)

  def _judge_one(self, trial: int, commit: str, worktree: Path, experiment: str,
                 changed: set[str], incumbent: TransferArm | None) -> TransferResult:
    if experiment in changed:
      return TransferResult(rule.FAILED, incumbent=incumbent, reason=(
          'the change edits this transfer experiment\'s own config, which the check must run '
          'as the charter named it'))
    folder = self.run_dir / 'trials' / str(trial) / 'transfer' / Path(experiment).stem
    self.data(experiment, False)
    try:
      carried = self._carried(worktree, experiment)
    except EditError as e:
      return TransferResult(rule.FAILED, incumbent=incumbent, reason=(
          f'the section it reshaped cannot be carried there: {e}'))
    wall, statuses = 0.0, {'incumbent': 'ok'}
    if incumbent is None:  # a transfer experiment the incumbent has no arm on yet
      tree = vcs.create_detached(self.repo, self.run_dir / 'incumbent', self.state.incumbent.commit)
      try:
        incumbent, ran = self._arm(folder / 'incumbent', tree, self.state.incumbent.commit,
                                   experiment)
      except EditError as e:
        return TransferResult(rule.FAILED, reason=f'the incumbent\'s reshaped section cannot '
                              f'be carried there: {e}')
      wall, statuses['incumbent'] = ran.wall_seconds, ran.status
      if incumbent is None:
        self._confirmed(trial, experiment, wall, 'not run', ran.status)
        if ran.status == rule.BUDGET:
          return TransferResult(rule.UNDECIDED, reason=f'the incumbent\'s run: {ran.reason}')
        return TransferResult(rule.FAILED, reason=f'the incumbent did not finish there '
                              f'({ran.status}: {ran.reason})')
    candidate, ran = self._arm(folder / 'candidate', worktree, commit, experiment, carried)
    self._confirmed(trial, experiment, wall + ran.wall_seconds, ran.status,
                    statuses['incumbent'])
    if candidate is None and ran.status == rule.BUDGET:
      return TransferResult(rule.UNDECIDED, incumbent=incumbent,
                            reason=f'the candidate\'s run: {ran.reason}')
    if candidate is None:
      where = (' on the config derived for it (the transfer experiment\'s, the section it '
               'reshaped its own)') if carried[1] else ''
      return TransferResult(rule.FAILED, incumbent=incumbent,
                            reason=f'the candidate\'s run there ended \'{ran.status}\''
                            f'{where}: {ran.reason}')
    return result_of(incumbent, candidate)

  def _confirmed(self, trial: int, experiment: str, wall: float, candidate: str,
                 incumbent: str) -> None:
    self.journal.write(records.ConfirmFinished(wall_seconds=wall, experiment=experiment,
                                               candidate=candidate, incumbent=incumbent),
                       trial=trial)

  def final(self, start: Path, final: Path, first_seed: int,
            timeout_s: float, final_arm: Callable[[TrialOutcome], records.FinalArm]
            ) -> dict[str, records.TransferFinal]:
    """The start commit and the final incumbent on every transfer experiment, once, on
    fresh seeds and its test split."""
    results = {}
    for experiment in self.experiments:
      self.data(experiment, True)
      folder = self.run_dir / 'final' / 'transfer' / Path(experiment).stem
      arms, carried, metric = {}, {}, ''
      for name, tree in (('baseline', start), ('final', final)):
        self.say(f'[final] {experiment}: the {name} on fresh seeds and the test split')
        carried[name] = self._carried(tree, experiment)
        outcome = self._run_on(folder / name, tree, experiment, carried[name], first_seed,
                               timeout_s=timeout_s)
        arms[name] = final_arm(outcome)
        metric = metric or (outcome.scorecard or {}).get('metric', {}).get('name', '')
      results[experiment] = records.TransferFinal(
          baseline=arms['baseline'], final=arms['final'], overrides=carried['final'][0],
          metric=metric, derived=carried['final'][1])
    return results
