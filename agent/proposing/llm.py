"""The LLM proposer: a language model reads the search's state and answers with a
diagnosis, a hypothesis and an edit.

Everything the model says is checked before it reaches the loop: an answer that cannot be
parsed or applied is sent back with the parser's error, up to a retry limit, and then the
attempt ends as ProposalFailed (the loop records a failed trial and goes on). A path the
model was not shown and may not edit still becomes a change, so that the guard rejects it
and the journal names it. Every HTTP attempt is reported through `on_usage`, which the
loop books into the journal's budget ledger.

The model sees every file the charter lets it edit (its [scope]), read from the run's
worktree where the proposer is given it, not only the experiment and models/*.py: a team's
code keeps its layers, losses and helpers wherever it likes.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path
from typing import Callable, TypedDict

from agent.charter import Charter

from agent.proposing import prompts
from agent.proposing.edit_formats import Answer, EditFormatError, parse_answer
from agent.proposing.llm_client import ChatResult, FailedAttempt, LLMClient, LLMUnavailable
from agent.proposing.proposal import Observation, Proposal, ProposalFailed
from agent.recording import vcs

MAX_FILE_CHARS = 40_000  # a larger file (data, generated code) is not shown


class Usage(TypedDict):
  """One HTTP attempt, as the budget ledger books it (a plain dict at run time)."""
  api: str  # 'openai' | 'anthropic'
  model: str
  attempt: int  # 1, 2, ... within one propose() call
  outcome: str  # 'ok' | 'malformed' | 'http_error' | 'timeout'
  input_tokens: int  # 0 when no answer came back
  output_tokens: int
  cost_usd: float | None  # None when no token price is configured


class LLMProposer:
  """Proposes through `client`; `on_usage` (set by the CLI) hears of every HTTP attempt;
  with `worktree` (set by agent.start) the prompt shows every editable file in it."""
  name = 'llm'
  worktree: Path | None = None

  def __init__(self, client: LLMClient, on_usage: Callable[[Usage], None] | None = None, *,
               max_format_retries: int = 2, input_price_per_mtok: float | None = None,
               output_price_per_mtok: float | None = None):
    if max_format_retries < 0:
      raise ValueError('max_format_retries must be >= 0')
    for price in (input_price_per_mtok, output_price_per_mtok):
      if price is not None and price < 0:
        raise ValueError(f'a token price must be >= 0, got {price}')
    self.client = client
    self.on_usage = on_usage
    self.max_format_retries = max_format_retries
    self.prices = (input_price_per_mtok, output_price_per_mtok)

  def propose(self, observation: Observation) -> Proposal:
    """One proposal, after at most 1 + max_format_retries answers.

    Raises ProposalFailed when every answer was malformed or the endpoint stayed
    unavailable; LLMFatalError (a wrong key, model or URL) is left to stop the run.
    """
    attempts = 0
    if self.worktree is not None:
      observation = dataclasses.replace(observation, files={
          **observation.files, **scoped_files(self.worktree, observation.charter)})

    def report(outcome: str, input_tokens: int = 0, output_tokens: int = 0) -> None:
      nonlocal attempts
      attempts += 1
      if self.on_usage:
        self.on_usage(Usage(api=self.client.api, model=self.client.model, attempt=attempts,
                            outcome=outcome, input_tokens=input_tokens,
                            output_tokens=output_tokens,
                            cost_usd=self._cost(input_tokens, output_tokens)))

    def failed(attempt: FailedAttempt) -> None:
      report(attempt.outcome)

    prompt = prompts.user_prompt(observation)
    messages = [{'role': 'user', 'content': prompt}]
    error = ''
    for _ in range(1 + self.max_format_retries):
      try:
        result = self.client.chat(prompts.SYSTEM_PROMPT, messages, on_failure=failed)
      except LLMUnavailable as e:
        raise ProposalFailed(f'the LLM endpoint stayed unavailable: {e}') from None
      try:
        answer = self._parse(result, observation)
      except EditFormatError as e:
        report('malformed', result.input_tokens, result.output_tokens)
        error = str(e)
        # Only the last exchange is sent back: the prompt does not grow with each retry.
        messages = [messages[0], {'role': 'assistant', 'content': result.text},
                    {'role': 'user', 'content': prompts.retry_prompt(error)}]
        continue
      report('ok', result.input_tokens, result.output_tokens)
      return Proposal(operator=f'llm:{answer.operator}', diagnosis=answer.diagnosis,
                      hypothesis=answer.hypothesis, expected_effect=answer.expected_effect,
                      changes=answer.changes)
    raise ProposalFailed(f'{1 + self.max_format_retries} answer(s) in a row could not be '
                         f'used; the last: {error}')

  def learn(self, proposal: Proposal, accepted: bool, gain: float | None) -> None:
    """Nothing to keep: the next observation's history already tells the model every
    verdict, with its reason."""

  def _parse(self, result: ChatResult, observation: Observation) -> Answer:
    """The answer, checked for what the guard would pass but the trial would waste."""
    answer = parse_answer(result.text, observation.files)
    for path in answer.unseen:
      if observation.charter.is_editable(path):  # else the guard rejects it, by name
        raise EditFormatError(f'{path} was not shown to you, so your edit cannot be applied '
                              'to it; edit only the files shown')
    if all(observation.files.get(p) == text for p, text in answer.changes.items()):
      raise EditFormatError('the edit changes nothing')
    return answer

  def _cost(self, input_tokens: int, output_tokens: int) -> float | None:
    """USD at the configured prices per million tokens; None when no price is set (an
    unset price of the two counts as free)."""
    price_in, price_out = self.prices
    if price_in is None and price_out is None:
      return None
    return (input_tokens * (price_in or 0.0) + output_tokens * (price_out or 0.0)) / 1e6


def scoped_files(root: Path, charter: Charter) -> dict[str, str]:
  """Every file git tracks in `root` that the charter lets the agent edit, as text, sorted;
  files that are not UTF-8 text, are links, or are larger than MAX_FILE_CHARS are left out."""
  listing = subprocess.run(['git', 'ls-files', '-z'], cwd=root, env=vcs.git_environment(root),
                           capture_output=True, text=True, check=True).stdout
  files = {}
  for path in sorted(p for p in listing.split('\0') if p and charter.is_editable(p)):
    full = root / path
    if full.is_symlink() or not full.is_file():
      continue
    try:
      text = full.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError):
      continue
    if len(text) <= MAX_FILE_CHARS:
      files[path] = text
  return files
