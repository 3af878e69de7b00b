"""Budget edges are not evidence: a tight minute budget still ends with the final evaluation's
test numbers, a candidate the budget stops is "undecided", and the run's pooled noise keeps a
tiny gain on agreeing seeds out; each run still verifies.

The simulated trials report a wall time and advance the run's clock by it, so the budget is
spent in simulated seconds and each test takes about a second.
"""

from __future__ import annotations

import dataclasses

from agent.editing import knobs
from agent.judging import decide as decide_lib
from agent.recording.records import Verdict
from agent.recording.audit import verify_run
from tests.test_agent_loop import ScriptedProposer, SimulatedRunner, make_loop, set_lr
from tests.test_audit import FinalRunner


class ClockedRunner(FinalRunner):
  """Every run takes `wall` simulated seconds of the loop's clock; runs whose folder name is
  in `time_out` time out when their timeout is shorter than the charter's 10 minutes."""

  def __init__(self, wall: float, time_out: tuple[str, ...] = (), **kwargs):
    super().__init__(**kwargs)
    self.wall, self.time_out, self.loop = wall, time_out, None
    self.timeouts: dict[str, float] = {}

  def __call__(self, spec, scorer=None, on_curve=None):
    self.loop.state.elapsed_before += self.wall
    self.timeouts[f'{spec.workdir.parent.name}/{spec.workdir.name}'] = spec.timeout_s
    outcome = dataclasses.replace(super().__call__(spec, scorer, on_curve),
                                  wall_seconds=self.wall)
    if spec.timeout_s < 600 and spec.workdir.parent.name in self.time_out:
      return dataclasses.replace(outcome, status='timeout', scorecard=None,
                                 reason=f'timed out after {spec.timeout_s:g} s')
    return outcome


def _run(tmp_path, runner, minutes, proposer=None, charter_text=None):
  proposer = proposer or ScriptedProposer([('lr_up', set_lr(1e-2)), ('lr_up', set_lr(2e-2))])
  repo, loop, journal = make_loop(tmp_path, proposer, runner, trials=2, budget_minutes=minutes,
                                  charter_text=charter_text)
  runner.loop = loop
  reason = loop.run()
  final = loop.final_evaluation()
  return repo, loop, journal, reason, final


def test_a_tight_budget_stops_the_search_in_time_for_the_final_evaluation(tmp_path):
  """20 s runs, a 2-minute budget, 60 s kept for the final evaluation: the screen runs, the
  next look (40 s) does not fit in the 20 s left, so the candidate is undecided; the final
  evaluation still fits in the budget and gives test numbers."""
  runner = ClockedRunner(20.0, effect_per_lr={1e-2: 0.05})
  repo, loop, journal, reason, final = _run(tmp_path, runner, minutes=2)
  assert loop.final_reserve() == 60.0
  verdict = journal.last('verdict', trial=1).payload
  assert verdict['reason_code'] == 'budget' and not verdict['accepted']
  assert verdict['rationale'].startswith('Undecided, not rejected: the run\'s minute budget ran '
                                         'out before the test decided: look 2 would take')
  assert 'no evidence against it' in verdict['rationale']
  assert 'confirm_finished' not in [r.kind for r in journal.records()]  # never started
  assert 'time budget spent' in reason and 'kept for the final evaluation' in reason
  assert final.baseline.status == final.final.status == 'ok'
  assert final.final.test['mean'] > 0
  assert loop.elapsed() <= 2 * 60  # baseline, screen and the final evaluation's two runs
  assert runner.timeouts['final/final'] == 600  # never cut by the budget
  assert verify_run(repo, journal) is None
  loop.final_eval = False  # a session without a final evaluation keeps no time for one
  assert loop.final_reserve() == 0.0


def test_a_look_the_budget_cuts_short_is_undecided_not_a_failed_confirmation(tmp_path):
  runner = ClockedRunner(10.0, time_out=('confirm_candidate',), effect_per_lr={1e-2: 0.05})
  repo, _, journal, _, final = _run(tmp_path, runner, minutes=2)
  assert runner.timeouts['confirm_candidate/1000'] < 600  # cut to the time left
  verdict = journal.last('verdict', trial=1).payload
  assert (verdict['reason_code'], verdict['accepted']) == ('budget', False)
  assert 'the runs of look 2 were stopped when it ran out (budget/ok)' in verdict['rationale']
  assert journal.last('confirm_finished').payload['candidate'] == 'budget'
  assert final.final.status == 'ok'
  assert verify_run(repo, journal) is None


def test_a_screen_the_budget_cuts_short_is_undecided_and_does_not_count_as_a_timeout(tmp_path):
  runner = ClockedRunner(10.0, time_out=('1',), effect_per_lr={1e-2: 0.05})
  repo, _, journal, _, _ = _run(tmp_path, runner, minutes=1.5)
  verdict = journal.last('verdict', trial=1).payload
  assert verdict['reason_code'] == 'budget' and verdict['status'] == 'budget'
  assert verdict['rationale'].startswith('Undecided, not rejected')
  assert verify_run(repo, journal) is None


class QuantizedRunner(SimulatedRunner):
  """Learning rate 2e-2: no effect, noisy runs (the run's earlier candidate); 3e-2: +0.0025
  on every seed, nothing else differs (seeds that agree exactly, as accuracy in steps of one
  validation example can)."""

  def __call__(self, spec, scorer=None, on_curve=None):
    lr = {k.path: k.value for k in knobs.inventory(spec.worktree / spec.experiment)}[
        'optimizer.learning_rate']
    self.independent = 0.01 if lr == 2e-2 else 0.0
    return super().__call__(spec, scorer, on_curve)


def test_a_tiny_gain_on_agreeing_seeds_is_not_kept_against_the_runs_pooled_noise(tmp_path):
  runner = QuantizedRunner(effect_per_lr={3e-2: 0.0025})
  proposer = ScriptedProposer([('noise', set_lr(2e-2)), ('tiny', set_lr(3e-2))])
  repo, loop, journal = make_loop(tmp_path, proposer, runner, trials=2,
                                  charter_text=lambda text: text.replace(
                                      'min_effect = 0.02', 'min_effect = 0.001'))
  loop.run()
  first, tiny = journal.read(Verdict)
  assert not first.accepted
  assert not tiny.accepted and tiny.reason_code == 'undecided'
  assert 'pooled spread of paired gains' in tiny.rationale
  # the same arms judged on their own seeds alone would have kept it
  pairs = [(tiny.candidate.arm(), loop.state.incumbent.arm())]
  pairs += [(a['candidate'].arm(), a['incumbent'].arm()) for a in tiny.looks]
  alone = decide_lib.decide(decide_lib.pool([decide_lib.SeedResults(i, c) for c, i in pairs]),
                            'max', decide_lib.AcceptancePolicy.of(loop.charter, 3))
  assert alone.accepted
  assert verify_run(repo, journal) is None
