"""How one candidate commit is judged against the incumbent: screened on the incumbent's seeds
(pruned early when its curve cannot catch up), a winner confirmed on fresh seeds, then judged
wherever else its changed code runs.

The loop decides what to try and records the verdict; this module only runs and judges, and
journals the runs it makes (trial_finished, confirm_finished) as they end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from agent.charter import Charter
from agent.editing import diffs, knobs
from agent.judging import decide as decide_lib
from agent.judging import uses
from agent.recording import records, vcs
from agent.recording.journal import Journal
from agent.recording.records import ArmRecord, mean_of
from agent.recording.state import RunState
from agent.safety.executor import TrialOutcome

SCREEN_FIRST_SEED = 0
CONFIRM_FIRST_SEED = 1000  # + 100 * trial: fresh seeds for each confirmation
LOG_EXCERPT_CHARS = 1500  # of a failed trial's output, kept for the proposer's next prompt
FAILED_STATUSES = ('failed', 'bad_input', 'timeout', 'killed', 'invalid')


class RunArm(Protocol):
  """Runs the seeds from `first_seed` of an experiment at a tree (the loop's `_run`)."""

  def __call__(self, workdir: Path, first_seed: int, *, on_curve=None,
               worktree: Path | None = None, experiment: str | None = None) -> TrialOutcome: ...


class RunBatch(Protocol):
  """Runs members with these traced values together on the incumbent's code (`_run_batch`)."""

  def __call__(self, workdir: Path, first_seed: int,
               values: list[dict[str, float]]) -> list[TrialOutcome]: ...


class CandidateJudge:
  """Judges the candidates of one run against its incumbent (`state.incumbent`), booking the
  compute of every run it makes into `state`."""

  def __init__(self, repo: Path, run_dir: Path, worktree: Path, charter: Charter,
               state: RunState, journal: Journal, run: RunArm, run_batch: RunBatch,
               other_data: Callable[[str], None], say: Callable[[str], None]):
    self.repo, self.run_dir, self.worktree, self.charter = repo, run_dir, worktree, charter
    self.state, self.journal, self.run, self.run_batch = state, journal, run, run_batch
    self.other_data, self.say = other_data, say
    self.config = state.config

  def judge(self, trial: int, commit: str, diff: str, direction: str, metric: str
            ) -> tuple[decide_lib.Verdict, ArmRecord | None, dict[str, Any]]:
    """The verdict, the candidate's screen arm (None if it did not finish) and the details
    the verdict record keeps (records.Verdict's optional fields): screened on the incumbent's
    seeds, then a winner goes on (`_go_on`)."""
    incumbent = self.state.incumbent
    workdir = self.run_dir / 'trials' / str(trial) / 'screen'
    steps = _steps_of(self.worktree / self.config.experiment, incumbent.steps)
    outcome = self.run(workdir, SCREEN_FIRST_SEED, on_curve=self._pruner(steps, direction))
    self.state.compute_seconds += outcome.wall_seconds
    self.journal.write(records.TrialFinished(
        status=outcome.status, reason=outcome.reason, wall_seconds=outcome.wall_seconds,
        workdir=str(workdir), sandbox=outcome.sandbox), trial=trial)
    verdict, candidate, extra = self._screen(commit, diff, direction, metric, outcome, workdir,
                                             steps)
    if verdict.accepted:
      verdict = self._go_on(trial, commit, diff, metric, direction, verdict, candidate, extra)
    return verdict, candidate, extra

  def _pruner(self, candidate_steps: int, direction: str):
    incumbent = self.state.incumbent
    noise = decide_lib.noise_floor(incumbent.per_seed, 1.0)
    p = self.charter.pruning

    def on_curve(curve: list[dict]) -> str | None:
      points = [(pt['step'], mean_of(pt['val_metric'])) for pt in curve
                if pt['step'] < candidate_steps]  # at the last step there is nothing to save
      decision = decide_lib.should_prune([tuple(x) for x in incumbent.curve], points,
                                         candidate_steps, direction, noise,
                                         p.margin_multiplier, p.min_fraction)
      return decision.reason if decision.prune else None
    return on_curve if p.enabled else None

  def judge_batch(self, trials: list[int], commits: list[str], diff_texts: list[str],
                  values: list[dict[str, float]], direction: str, metric: str,
                  checkout: Callable[[str], None]
                  ) -> list[tuple[decide_lib.Verdict, ArmRecord | None, dict[str, Any]]]:
    """Candidates that differ from the incumbent only in traced values, screened together in
    one process (the incumbent's code, each candidate's values): each is judged on its own
    arm exactly as if it had run alone. Of those that pass the screen only the best (largest
    mean paired gain) goes on to confirmation and, if it holds, is kept; picking the best of
    B is a selection, which fresh-seed confirmation is there to correct. `checkout` puts
    a commit in the worktree (the winner's, for its confirmation)."""
    incumbent = self.state.incumbent
    workdir = self.run_dir / 'trials' / str(trials[0]) / 'screen'
    outcomes = self.run_batch(workdir, SCREEN_FIRST_SEED, values)
    wall = outcomes[0].wall_seconds
    self.state.compute_seconds += wall
    screened = []
    for index, (trial, outcome) in enumerate(zip(trials, outcomes, strict=True)):
      folder = workdir / f'member-{index}'
      self.journal.write(records.TrialFinished(
          status=outcome.status, reason=outcome.reason, wall_seconds=wall / len(trials),
          workdir=str(folder), sandbox=outcome.sandbox, batch=list(trials)), trial=trial)
      screened.append(self._screen(commits[index], diff_texts[index], direction, metric, outcome,
                                   folder, incumbent.steps))
    passed = [i for i, (verdict, _, _) in enumerate(screened) if verdict.accepted]
    best = max(passed, key=lambda i: screened[i][0].gain) if passed else None
    judged = []
    for index, (verdict, candidate, extra) in enumerate(screened):
      if index == best:
        checkout(commits[index])
        verdict = self._go_on(trials[index], commits[index], diff_texts[index], metric, direction,
                              verdict, candidate, extra)
      elif index != best and verdict.accepted:
        verdict = _rejection('outranked', f'Rejected: {verdict.rationale} But trial '
                             f'{trials[best]} of the same batch gained more '
                             f'({screened[best][0].gain:+.3g} against {verdict.gain:+.3g}): '
                             'only the best of a batch goes on.')
      judged.append((verdict, candidate, extra))
    return judged

  def _screen(self, commit: str, diff: str, direction: str, metric: str,
              outcome: TrialOutcome, workdir: Path, steps: int):
    """The screen's verdict on a finished screen run."""
    incumbent = self.state.incumbent
    extra: dict[str, Any] = {'status': outcome.status}
    if outcome.status in FAILED_STATUSES:
      extra['log_excerpt'] = outcome.log_tail[-LOG_EXCERPT_CHARS:]
    _, added, removed = diffs.diff_stats(diff)
    if outcome.status == 'pruned':
      saved = incumbent.train_seconds * max(0.0, 1 - (outcome.pruned_at_step or 0) / steps)
      extra['compute_saved_seconds'] = saved
      return _rejection('pruned', f'Stopped early: {outcome.reason}'), None, extra
    if outcome.status == 'invalid':
      return _rejection('invariant', f'Rejected: {outcome.reason}'), None, extra
    if outcome.status not in ('ok', 'diverged') or outcome.scorecard is None:
      return _rejection(outcome.status, f'The trial {outcome.status}: {outcome.reason}'), None, extra
    candidate = ArmRecord.from_scorecard(commit, workdir, outcome.scorecard)
    if candidate.fingerprints != incumbent.fingerprints:
      return _rejection('data_changed', 'Rejected: the data fingerprints differ from the '
                        'baseline\'s, so the comparison would not be fair.'), candidate, extra
    policy = decide_lib.AcceptancePolicy.of(self.charter)
    screen = decide_lib.SeedResults(incumbent.arm(), candidate.arm(), metric)
    return (decide_lib.decide(screen, direction, policy, diff_lines=added - removed),
            candidate, extra)

  def _go_on(self, trial: int, commit: str, diff: str, metric: str, direction: str,
             verdict: decide_lib.Verdict, candidate: ArmRecord,
             extra: dict[str, Any]) -> decide_lib.Verdict:
    """A screen winner (in the worktree): confirmed on fresh seeds when the charter asks,
    then judged wherever else its code runs."""
    if self.charter.acceptance.confirm_on_fresh_seeds:
      verdict = self._confirm(trial, commit, diff, metric, direction, candidate, extra)
    if verdict.accepted:
      verdict = self._judge_elsewhere(trial, commit, verdict, extra)
    return verdict

  def _confirm(self, trial: int, commit: str, diff: str, metric: str, direction: str,
               candidate: ArmRecord, extra: dict[str, Any]) -> decide_lib.Verdict:
    """The candidate and the incumbent on fresh seeds, pooled with the screen."""
    incumbent = self.state.incumbent
    trial_dir = self.run_dir / 'trials' / str(trial)
    self.say(f'[trial {trial}] screen passed; confirming on fresh seeds')
    fresh = CONFIRM_FIRST_SEED + 100 * trial
    cand_fresh = self.run(trial_dir / 'confirm_candidate', fresh)
    incumbent_tree = vcs.create_detached(self.repo, self.run_dir / 'incumbent', incumbent.commit)
    inc_fresh = self.run(trial_dir / 'confirm_incumbent', fresh, worktree=incumbent_tree)
    wall = cand_fresh.wall_seconds + inc_fresh.wall_seconds
    self.state.compute_seconds += wall
    self.journal.write(records.ConfirmFinished(
        wall_seconds=wall, first_seed=fresh, candidate=cand_fresh.status,
        incumbent=inc_fresh.status), trial=trial)
    if cand_fresh.status != 'ok' or inc_fresh.status != 'ok':
      return _rejection('confirm_failed', f'The confirmation runs did not finish '
                        f'({cand_fresh.status}/{inc_fresh.status}).')
    confirm_arms = {'incumbent': ArmRecord.from_scorecard(
                        incumbent.commit, trial_dir / 'confirm_incumbent', inc_fresh.scorecard),
                    'candidate': ArmRecord.from_scorecard(
                        commit, trial_dir / 'confirm_candidate', cand_fresh.scorecard)}
    _, added, removed = diffs.diff_stats(diff)
    policy = decide_lib.AcceptancePolicy.of(self.charter)
    screen = decide_lib.SeedResults(incumbent.arm(), candidate.arm(), metric)
    fresh_pair = decide_lib.SeedResults(confirm_arms['incumbent'].arm(),
                                        confirm_arms['candidate'].arm(), metric)
    verdict = decide_lib.decide(decide_lib.pool(screen, fresh_pair), direction, policy,
                                diff_lines=added - removed, stage='confirm')
    extra['confirm_seeds'] = list(range(fresh, fresh + self.config.seeds))
    extra['confirm_arms'] = confirm_arms
    return verdict

  def _judge_elsewhere(self, trial: int, commit: str, verdict: decide_lib.Verdict,
                       extra: dict[str, Any]) -> decide_lib.Verdict:
    """A winner's changed code, judged where it is used: a tie is kept only when the running
    experiment runs every changed file; every other shipped experiment that runs one is
    trained with the candidate and with the incumbent on the same seeds, and the candidate
    must finish, keep the task's invariants and not lose beyond that experiment's noise."""
    incumbent = self.state.incumbent
    root = self.worktree
    changed = {p for p in vcs.changed_files(self.repo, incumbent.commit, commit)
               if p.endswith('.py')}
    unused = sorted(changed - uses.files_used(root, self.config.experiment))
    if unused and verdict.reason_code in ('simplification', 'efficiency'):
      return _rejection('unused_code', f'Rejected: {verdict.rationale} But {unused[0]} is not '
                        f'run by {self.config.experiment}, so this trial cannot judge it, and '
                        'a tie is kept only for code the experiment runs.')
    start = vcs.create_detached(self.repo, self.run_dir / 'start', self.config.start_commit)
    shipped = set(uses.experiments(start))
    others = [e for e in uses.experiments_using(root, changed, exclude=self.config.experiment)
              if e in shipped]
    if not others:
      return verdict
    incumbent_tree = vcs.create_detached(self.repo, self.run_dir / 'incumbent', incumbent.commit)
    extra['elsewhere'] = {}
    for experiment in others:
      self.say(f'[trial {trial}] also judging the change on {experiment}, which runs it')
      self.other_data(experiment)
      folder = self.run_dir / 'trials' / str(trial) / 'elsewhere' / Path(experiment).stem
      runs = {arm: self.run(folder / arm, SCREEN_FIRST_SEED, worktree=tree,
                            experiment=experiment)
              for arm, tree in (('candidate', root), ('incumbent', incumbent_tree))}
      wall = sum(o.wall_seconds for o in runs.values())
      self.state.compute_seconds += wall
      self.journal.write(records.ConfirmFinished(
          wall_seconds=wall, experiment=experiment, candidate=runs['candidate'].status,
          incumbent=runs['incumbent'].status), trial=trial)
      failed = _elsewhere_failure(runs, self.charter.acceptance)
      extra['elsewhere'][experiment] = failed or 'held'
      if failed:
        return _rejection('breaks_elsewhere', f'Rejected on {experiment}, which also runs the '
                          f'changed code: {failed}')
    return verdict


def _elsewhere_failure(runs: dict[str, TrialOutcome], acceptance: Any) -> str | None:
  """Why the candidate fails on another experiment (None: it held): it did not finish, broke
  an invariant, or lost by more than the incumbent's seed noise there."""
  candidate, incumbent = runs['candidate'], runs['incumbent']
  if incumbent.status != 'ok':
    return f'the incumbent itself did not finish there ({incumbent.status}: {incumbent.reason})'
  if candidate.status != 'ok':
    return f'the candidate {candidate.status}: {candidate.reason}'
  card = candidate.scorecard
  direction = 'max' if card['metric']['direction'] == 'max' else 'min'
  before = incumbent.scorecard['val_metric']['per_seed']
  after = card['val_metric']['per_seed']
  gain = (sum(after) - sum(before)) / len(after) * (1 if direction == 'max' else -1)
  floor = max(decide_lib.noise_floor(before, acceptance.noise_multiplier), acceptance.min_delta)
  if gain < -floor:
    return (f'{card["metric"]["name"]} is worse by {-gain:.3g} (mean over '
            f'{len(after)} paired seeds), beyond the noise floor {floor:.3g}')
  return None


def _rejection(code: str, rationale: str) -> decide_lib.Verdict:
  return decide_lib.Verdict(False, code, rationale, float('nan'), float('nan'), float('nan'), {})


def _steps_of(experiment: Path, default: int) -> int:
  for knob in knobs.inventory(experiment):
    if knob.path == 'train.steps':
      return int(knob.value)
  return default
