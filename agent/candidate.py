"""How one candidate commit is judged against the incumbent: screened on the incumbent's seeds
(pruned early when its curve cannot catch up), given fresh seeds a group at a time while the
sequential test is undecided (agent.judging.sequential), then, if kept, judged wherever else
its changed code runs.

The loop decides what to try and records the verdict; this module only runs and judges, and
journals the runs it makes (trial_finished, confirm_finished) as they end.

Budget edges are not evidence: a run stopped because the run's minute budget ran out (its
timeout was the charter's cut to the time left) ends with status BUDGET, not 'timeout', and a
look that cannot finish in the time left (its measured cost) is not started; either way the
candidate is "undecided, not rejected" (reason code BUDGET): not kept, and nothing counts
against it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
from pathlib import Path
from typing import Any, Callable, Protocol

from agent.charter import Charter
from agent.editing import diffs, knobs
from agent.judging import decide as decide_lib
from agent.judging import rungs, uses
from agent.recording import pooled_noise, records, vcs
from agent.recording.journal import Journal
from agent.recording.records import ArmRecord, mean_of
from agent.recording.state import RunState
from agent.safety.executor import TrialOutcome

SCREEN_FIRST_SEED = 0
# The later looks' seeds: the same for every candidate, so each incumbent runs them once
# (`_incumbent_look`); look j >= 2 starts at CONFIRM_FIRST_SEED + seeds * (j - 2)
CONFIRM_FIRST_SEED = 1000
ELSEWHERE_NOISE_MULTIPLIER = 2.0  # another experiment may lose up to this many standard errors
LOG_EXCERPT_CHARS = 1500  # of a failed trial's output, kept for the proposer's next prompt
FAILED_STATUSES = ('failed', 'bad_input', 'timeout', 'killed', 'invalid')
BUDGET = 'budget'  # a run's status and a verdict's reason code: the minute budget ran out


class RunArm(Protocol):
  """Runs the seeds from `first_seed` of an experiment at a tree (the loop's `_run`)."""

  def __call__(self, workdir: Path, first_seed: int, *, on_curve=None,
               worktree: Path | None = None, experiment: str | None = None) -> TrialOutcome: ...


class RunBatch(Protocol):
  """Runs members with these traced values together on the incumbent's code (`_run_batch`)."""

  def __call__(self, workdir: Path, first_seed: int, values: list[dict[str, float]],
               rule: rungs.Rule | None = None, *, worktree: Path) -> list[TrialOutcome]: ...


@dataclasses.dataclass(frozen=True)
class Budget:
  """What the run's minute budget allows now (the loop's): the time a run started now gets
  (the charter's, cut to what the search has left), the seconds the search has left (net of
  the final evaluation's), and one incumbent run's measured wall seconds."""
  timeout: Callable[[], float] = lambda: float('inf')
  search_left: Callable[[], float] = lambda: float('inf')
  run_seconds: Callable[[], float] = lambda: 0.0


class CandidateJudge:
  """Judges the candidates of one run against its incumbent (`state.incumbent`, or the one a
  judge is `bound` to), booking the compute of every run it makes into `state`."""

  def __init__(self, repo: Path, run_dir: Path, worktree: Path, charter: Charter,
               state: RunState, journal: Journal, run: RunArm, run_batch: RunBatch,
               other_data: Callable[[str], None], say: Callable[[str], None],
               budget: Budget = Budget()):
    self.repo, self.run_dir, self.worktree, self.charter = repo, run_dir, worktree, charter
    self.state, self.journal, self.run, self.run_batch = state, journal, run, run_batch
    self.other_data, self.say, self.budget = other_data, say, budget
    self.config = state.config
    self.pooled_variance = 0.0  # of the run's comparisons before the trial being judged
    self.screen_seconds = 0.0  # the judged candidate's screen run, alone (0: in a batch)
    # (incumbent commit, first seed) -> its arm on a later look's seeds, shared by candidates
    self.incumbent_looks: dict[tuple[str, int], ArmRecord] = {}
    self.transfer = None  # agent.transfer.TransferCheck: the charter's [transfer], if any
    self.incumbent_tree = run_dir / 'incumbent'  # where the incumbent's looks check it out
    self.bound_to: ArmRecord | None = None  # the incumbent a parallel trial was proposed on
    self.preset_noise: float | None = None  # its pooled variance, as its trial started
    self._booking = threading.Lock()  # judges in parallel threads book into one state
    self._transferring = threading.Lock()  # the transfer check has one incumbent checkout
    self._looking: dict[tuple[str, int], threading.Lock] = {}  # one run per incumbent look

  @property
  def incumbent(self) -> ArmRecord:
    return self.bound_to or self.state.incumbent

  def bound(self, worktree: Path, incumbent: ArmRecord, pooled_variance: float,
            scratch: Path) -> CandidateJudge:
    """A judge for one trial run beside others (--workers): its own worktree and incumbent
    checkout (`scratch`), the incumbent it was proposed on and the run's pooled noise as the
    trial started, whatever the loop keeps meanwhile. The incumbent looks' cache is shared."""
    judge = copy.copy(self)
    judge.worktree, judge.bound_to, judge.preset_noise = worktree, incumbent, pooled_variance
    judge.incumbent_tree = scratch
    return judge

  def _book(self, seconds: float) -> None:
    with self._booking:
      self.state.compute_seconds += seconds

  def judge(self, trial: int, commit: str, diff: str, direction: str, metric: str
            ) -> tuple[decide_lib.Verdict, ArmRecord | None, dict[str, Any]]:
    """The verdict, the candidate's screen arm (None if it did not finish) and the details
    the verdict record keeps (records.Verdict's optional fields): screened on the incumbent's
    seeds, then, undecided or kept, it goes on (`_go_on`)."""
    incumbent = self.incumbent
    self._pool_noise(trial)
    workdir = self.run_dir / 'trials' / str(trial) / 'screen'
    steps = _steps_of(self.worktree / self.config.experiment, incumbent.steps)
    cut = self._budget_cuts()
    outcome = _budget_status(self.run(workdir, SCREEN_FIRST_SEED, worktree=self.worktree,
                                      on_curve=self._pruner(steps, direction)), cut)
    self.screen_seconds = outcome.wall_seconds
    self._book(outcome.wall_seconds)
    self.journal.write(records.TrialFinished(
        status=outcome.status, reason=outcome.reason, wall_seconds=outcome.wall_seconds,
        workdir=str(workdir), sandbox=outcome.sandbox), trial=trial)
    policy = decide_lib.AcceptancePolicy.of(self.charter, self.config.seeds)
    verdict, candidate, extra = self._screen(commit, diff, direction, metric, outcome, workdir,
                                             steps, policy)
    if verdict.accepted or verdict.undecided:
      verdict = self._go_on(trial, commit, diff, metric, direction, verdict, candidate, extra,
                            policy)
    return verdict, candidate, extra

  def _pool_noise(self, first_trial: int) -> None:
    """The run's pooled paired-gain variance from the verdicts before `first_trial`."""
    self.pooled_variance = (self.preset_noise if self.preset_noise is not None else
                            pooled_noise.of_records(self.journal.records(), first_trial).variance)

  def _budget_cuts(self) -> bool:
    """Whether a run started now gets less than the charter's time because of the budget."""
    return self.budget.timeout() < self.charter.trial.timeout_minutes * 60

  def _rung_rule(self, direction: str, candidates: int) -> rungs.Rule | None:
    """The batch's successive halving (charter [pruning] rungs), the incumbent trained
    alongside as member 0; a clear loser is one behind it by the pruner's margin."""
    p, incumbent = self.charter.pruning, self.incumbent
    steps = rungs.rung_steps([int(s) for s, _ in incumbent.curve], incumbent.steps, p.rungs)
    if not (p.enabled and steps and candidates >= 2 and len(incumbent.per_seed) >= 2):
      return None
    noise = decide_lib.noise_floor(incumbent.per_seed, 1.0,
                                   min_std=math.sqrt(self.pooled_variance / 2))
    return rungs.Rule(steps, incumbent.steps, 0, direction, p.rung_keep,
                      p.margin_multiplier * noise)

  def _pruner(self, candidate_steps: int, direction: str):
    """Prunes against the incumbent's seed noise, or the run's pooled noise if larger (a
    paired-gain variance v is a per-arm spread of sqrt(v / 2) in `noise_floor`'s terms)."""
    incumbent = self.incumbent
    noise = decide_lib.noise_floor(incumbent.per_seed, 1.0,
                                   min_std=math.sqrt(self.pooled_variance / 2))
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
    arm as if it had run alone, but at false_accept / B (`AcceptancePolicy.batch`). Of those
    the screen kept or left undecided only the best (largest mean paired gain) goes on and,
    if the test keeps it, is kept. `checkout` puts a commit in the worktree (the winner's,
    for its later looks)."""
    incumbent = self.incumbent
    self._pool_noise(trials[0])
    policy = decide_lib.AcceptancePolicy.of(self.charter, self.config.seeds).batch(len(trials))
    workdir = self.run_dir / 'trials' / str(trials[0]) / 'screen'
    cut = self._budget_cuts()
    rule = self._rung_rule(direction, len(trials))
    alongside = [{}] if rule else []  # the incumbent as member 0: its own values
    outcomes = [_budget_status(o, cut)
                for o in self.run_batch(workdir, SCREEN_FIRST_SEED, alongside + values, rule,
                                           worktree=self.worktree)]
    self.screen_seconds = 0.0  # the batch's: a member alone costs what the incumbent does
    wall = outcomes[0].wall_seconds
    self._book(wall)
    outcomes = outcomes[len(alongside):]
    screened = []
    for index, (trial, outcome) in enumerate(zip(trials, outcomes, strict=True)):
      folder = workdir / f'member-{index + len(alongside)}'
      self.journal.write(records.TrialFinished(
          status=outcome.status, reason=outcome.reason, wall_seconds=wall / len(trials),
          workdir=str(folder), sandbox=outcome.sandbox, batch=list(trials)), trial=trial)
      screened.append(self._screen(commits[index], diff_texts[index], direction, metric, outcome,
                                   folder, incumbent.steps, policy))
    for rung in outcomes[0].rungs:  # the judge's numbers, in trials, for `verify` to redo
      self.journal.write(records.RungDecided.of(rung, trials), trial=trials[0])
    alive = [i for i, (verdict, _, _) in enumerate(screened)
             if verdict.accepted or verdict.undecided]
    best = max(alive, key=lambda i: screened[i][0].gain) if alive else None
    judged = []
    for index, (verdict, candidate, extra) in enumerate(screened):
      if index == best:
        checkout(commits[index])
        verdict = self._go_on(trials[index], commits[index], diff_texts[index], metric, direction,
                              verdict, candidate, extra, policy)
      elif index in alive:
        verdict = _rejection('outranked', f'Rejected: trial {trials[best]} of the same batch '
                             f'gained more at the screen ({screened[best][0].gain:+.3g} against '
                             f'{verdict.gain:+.3g}), and only the best of a batch goes on. '
                             f'At the screen: {verdict.rationale}')
      judged.append((verdict, candidate, extra))
    return judged

  def _screen(self, commit: str, diff: str, direction: str, metric: str,
              outcome: TrialOutcome, workdir: Path, steps: int,
              policy: decide_lib.AcceptancePolicy):
    """The first look's verdict on a finished screen run."""
    incumbent = self.incumbent
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
    if outcome.status == BUDGET:
      return _rejection(BUDGET, f'Undecided, not rejected: the run\'s minute budget ran out '
                        f'before the screen finished ({outcome.reason}); the candidate is not '
                        'kept, which is no evidence against it.'), None, extra
    if outcome.status not in ('ok', 'diverged') or outcome.scorecard is None:
      return _rejection(outcome.status, f'The trial {outcome.status}: {outcome.reason}'), None, extra
    candidate = ArmRecord.from_scorecard(commit, workdir, outcome.scorecard)
    if candidate.fingerprints != incumbent.fingerprints:
      return _rejection('data_changed', 'Rejected: the data fingerprints differ from the '
                        'baseline\'s, so the comparison would not be fair.'), candidate, extra
    screen = decide_lib.SeedResults(incumbent.arm(), candidate.arm(), metric)
    return (decide_lib.decide(screen, direction, policy, diff_lines=added - removed,
                              pooled_variance=self.pooled_variance), candidate, extra)

  def _go_on(self, trial: int, commit: str, diff: str, metric: str, direction: str,
             verdict: decide_lib.Verdict, candidate: ArmRecord, extra: dict[str, Any],
             policy: decide_lib.AcceptancePolicy) -> decide_lib.Verdict:
    """A candidate the screen kept or left undecided (in the worktree): given more seeds
    while undecided, then, if kept, judged wherever else its code runs and on the charter's
    transfer experiments."""
    if verdict.undecided:
      verdict = self._more_seeds(trial, commit, diff, metric, direction, candidate, extra,
                                 policy, verdict)
    if verdict.accepted:
      verdict = self._judge_elsewhere(trial, commit, verdict, extra)
    if verdict.accepted and self.transfer is not None and self.transfer.experiments:
      with self._transferring:
        verdict = self.transfer.judge(trial, commit, self.worktree, verdict, extra)
    return verdict

  def _more_seeds(self, trial: int, commit: str, diff: str, metric: str, direction: str,
                  candidate: ArmRecord, extra: dict[str, Any],
                  policy: decide_lib.AcceptancePolicy,
                  verdict: decide_lib.Verdict) -> decide_lib.Verdict:
    """The candidate and the incumbent on the next group of fresh seeds, pooled with all
    before, look after look until the test decides; each look is journaled as it ends. A
    look whose measured cost does not fit in the search's time left is not started."""
    incumbent = self.incumbent
    trial_dir = self.run_dir / 'trials' / str(trial)
    _, added, removed = diffs.diff_stats(diff)
    looks = [decide_lib.SeedResults(incumbent.arm(), candidate.arm(), metric)]
    extra['confirm_seeds'], extra['looks'] = [], []
    incumbent_cost = self.budget.run_seconds()
    cost = self.screen_seconds or incumbent_cost  # one run of the candidate, as last measured
    while verdict.undecided:
      first = CONFIRM_FIRST_SEED + self.config.seeds * (len(looks) - 1)
      need = cost + (0.0 if (incumbent.commit, first) in self.incumbent_looks
                     else incumbent_cost)
      left = self.budget.search_left()
      if need > left:
        return _out_of_budget(verdict, f'look {len(looks) + 1} would take about {need:.0f} s '
                              f'(as measured), and the search has {max(0.0, left):.0f} s left')
      self.say(f'[trial {trial}] undecided after {self.config.seeds * len(looks)} seeds; '
               f'look {len(looks) + 1} on seeds from {first}')
      cut = self._budget_cuts()
      ran = _budget_status(self.run(trial_dir / 'confirm_candidate' / str(first), first,
                                    worktree=self.worktree), cut)
      cost = ran.wall_seconds or cost
      incumbent_arm, incumbent_run = self._incumbent_look(first, cut)
      wall = ran.wall_seconds + (incumbent_run.wall_seconds if incumbent_run else 0.0)
      self._book(wall)
      statuses = (ran.status, incumbent_run.status if incumbent_run else 'ok')
      self.journal.write(records.ConfirmFinished(
          wall_seconds=wall, first_seed=first, candidate=statuses[0], incumbent=statuses[1]),
          trial=trial)
      if BUDGET in statuses:
        return _out_of_budget(verdict, f'the runs of look {len(looks) + 1} were stopped when '
                              f'it ran out ({statuses[0]}/{statuses[1]})')
      if incumbent_arm is None or ran.status != 'ok':
        return _rejection('confirm_failed', f'The runs of look {len(looks) + 1} did not finish '
                          f'({statuses[0]}/{statuses[1]}).')
      arms = {'incumbent': incumbent_arm, 'candidate': ArmRecord.from_scorecard(
          commit, trial_dir / 'confirm_candidate' / str(first), ran.scorecard)}
      extra['confirm_seeds'] += list(range(first, first + self.config.seeds))
      extra['looks'].append(arms)
      looks.append(decide_lib.SeedResults(arms['incumbent'].arm(), arms['candidate'].arm(),
                                          metric))
      verdict = decide_lib.decide(decide_lib.pool(looks), direction, policy,
                                  diff_lines=added - removed,
                                  pooled_variance=self.pooled_variance)
    return verdict

  def _incumbent_look(self, first: int, cut: bool
                      ) -> tuple[ArmRecord | None, TrialOutcome | None]:
    """The incumbent's arm on the seeds from `first`, and the run that made it now (None
    when an earlier candidate's look already did: it is the same code on the same seeds);
    `cut`: the run's time is cut by the budget."""
    incumbent = self.incumbent
    key = (incumbent.commit, first)
    with self._looking.setdefault(key, threading.Lock()):  # a trial beside may be running it
      if key in self.incumbent_looks:
        return self.incumbent_looks[key], None
      tree = vcs.create_detached(self.repo, self.incumbent_tree, incumbent.commit)
      workdir = self.run_dir / 'confirm_incumbent' / incumbent.commit[:12] / str(first)
      ran = _budget_status(self.run(workdir, first, worktree=tree), cut)
      if ran.status != 'ok':
        return None, ran
      arm = self.incumbent_looks[key] = ArmRecord.from_scorecard(incumbent.commit, workdir,
                                                                 ran.scorecard)
      return arm, ran

  def _judge_elsewhere(self, trial: int, commit: str, verdict: decide_lib.Verdict,
                       extra: dict[str, Any]) -> decide_lib.Verdict:
    """A winner's changed code, judged where it is used: a tie is kept only when the running
    experiment runs every changed file; every other shipped experiment that runs one is
    trained with the candidate and with the incumbent on the same seeds, and the candidate
    must finish, keep the task's invariants and not lose beyond that experiment's noise."""
    incumbent = self.incumbent
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
    incumbent_tree = vcs.create_detached(self.repo, self.incumbent_tree, incumbent.commit)
    extra['elsewhere'] = {}
    for experiment in others:
      self.say(f'[trial {trial}] also judging the change on {experiment}, which runs it')
      self.other_data(experiment)
      folder = self.run_dir / 'trials' / str(trial) / 'elsewhere' / Path(experiment).stem
      runs = {arm: self.run(folder / arm, SCREEN_FIRST_SEED, worktree=tree,
                            experiment=experiment)
              for arm, tree in (('candidate', root), ('incumbent', incumbent_tree))}
      wall = sum(o.wall_seconds for o in runs.values())
      self._book(wall)
      self.journal.write(records.ConfirmFinished(
          wall_seconds=wall, experiment=experiment, candidate=runs['candidate'].status,
          incumbent=runs['incumbent'].status), trial=trial)
      failed = _elsewhere_failure(runs)
      extra['elsewhere'][experiment] = failed or 'held'
      if failed:
        return _rejection('breaks_elsewhere', f'Rejected on {experiment}, which also runs the '
                          f'changed code: {failed}')
    return verdict


def _elsewhere_failure(runs: dict[str, TrialOutcome]) -> str | None:
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
  floor = decide_lib.noise_floor(before, ELSEWHERE_NOISE_MULTIPLIER)
  if gain < -floor:
    return (f'{card["metric"]["name"]} is worse by {-gain:.3g} (mean over '
            f'{len(after)} paired seeds), beyond the noise floor {floor:.3g}')
  return None


def _budget_status(outcome: TrialOutcome, cut: bool) -> TrialOutcome:
  """A timeout the budget set (`cut`) is the budget's edge, not the candidate's cost."""
  if not cut or outcome.status != 'timeout':
    return outcome
  return dataclasses.replace(outcome, status=BUDGET, reason=(
      f'{outcome.reason}: the time the run\'s minute budget had left, less than the '
      'charter\'s per-trial time'))


def _out_of_budget(last: decide_lib.Verdict, why: str) -> decide_lib.Verdict:
  """An undecided candidate the budget stopped: not kept, with its last look's numbers."""
  look = last.checks
  return decide_lib.Verdict(
      False, BUDGET, f'Undecided, not rejected: the run\'s minute budget ran out before the '
      f'test decided: {why}. At the last look, mean gain {last.gain:+.3g} over {look["n"]} '
      f'paired seeds, p = {look["p_better"]:.3g} against this look\'s share of false_accept '
      f'{look["accept_share"]:.3g}; the candidate is not kept, which is no evidence against it.',
      last.gain, last.noise_floor, last.p_value, last.checks)


def _rejection(code: str, rationale: str) -> decide_lib.Verdict:
  return decide_lib.Verdict(False, code, rationale, float('nan'), float('nan'), float('nan'), {})


def _steps_of(experiment: Path, default: int) -> int:
  for knob in knobs.inventory(experiment):
    if knob.path == 'train.steps':
      return int(knob.value)
  return default
