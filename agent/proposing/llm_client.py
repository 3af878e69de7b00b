"""One chat call to a language model, over an OpenAI-compatible endpoint or Anthropic's
Messages API, through the vendors' own SDKs.

The SDKs' built-in retries are switched off and done here instead, so that every HTTP
attempt (a 500, a timeout, a refused connection) is reported to the caller's usage
ledger rather than hidden inside the SDK. Errors that no retry can fix (a wrong key, an
unknown model, a bad request) raise LLMFatalError at once.

The API key is read from an environment variable whose name is configurable. It is passed
to the SDK and nowhere else: it is not an attribute of this object, never part of an
error message (server messages are scrubbed of it), never logged. When the variable is
unset a placeholder is sent, which local servers (vLLM, llama.cpp, Ollama) accept.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import time
from typing import Any, Callable, Mapping, Sequence


APIS = ('openai', 'anthropic')
DEFAULT_KEY_ENV = {'openai': 'OPENAI_API_KEY', 'anthropic': 'ANTHROPIC_API_KEY'}
PLACEHOLDER_KEY = 'no-key'
ANTHROPIC_DEFAULT_MAX_TOKENS = 4096  # the Messages API requires a cap; OpenAI's does not
RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every 5xx
MAX_MESSAGE_CHARS = 200


class LLMError(Exception):
  """Base of the client's errors; messages are one line and never hold the key."""


class LLMFatalError(LLMError):
  """The endpoint refused the request in a way no retry fixes (401/403/404/400, ...):
  the run should stop and the person fix the key, model or URL."""


class LLMUnavailable(LLMError):
  """Every attempt failed with a retryable error (5xx, 429, timeout, no connection)."""


@dataclasses.dataclass(frozen=True)
class ChatResult:
  """The model's answer text and what the answering attempt cost in tokens."""
  text: str
  input_tokens: int
  output_tokens: int


@dataclasses.dataclass(frozen=True)
class FailedAttempt:
  """One HTTP attempt that did not produce an answer."""
  outcome: str  # 'http_error' | 'timeout'
  error: str  # one line, key scrubbed


Message = Mapping[str, str]  # {'role': 'user' | 'assistant', 'content': text}


class LLMClient:
  """A chat client for one endpoint and model; `chat` does the retries."""

  def __init__(self, api: str, base_url: str, model: str, *, key_env: str | None = None,
               timeout_s: float = 120.0, max_attempts: int = 4, backoff_s: float = 2.0,
               max_backoff_s: float = 60.0, max_output_tokens: int | None = None):
    if api not in APIS:
      raise ValueError(f'unknown LLM API {api!r}; expected one of {", ".join(APIS)}')
    if not base_url:
      raise ValueError('the LLM base URL is empty')
    if not model:
      raise ValueError('the LLM model name is empty')
    if max_attempts < 1 or timeout_s <= 0 or backoff_s < 0:
      raise ValueError('max_attempts must be >= 1, timeout_s > 0 and backoff_s >= 0')
    self.api, self.base_url, self.model = api, base_url, model
    self.key_env = key_env or DEFAULT_KEY_ENV[api]
    self.timeout_s, self.max_attempts = timeout_s, max_attempts
    self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
    self.max_output_tokens = max_output_tokens
    key = os.environ.get(self.key_env) or ''
    self.key_is_set = bool(key)
    self._scrub_key = _scrubber(key)
    self._send = _sender(api, base_url, key or PLACEHOLDER_KEY, timeout_s)

  def __repr__(self) -> str:
    return f'LLMClient(api={self.api!r}, base_url={self.base_url!r}, model={self.model!r})'

  def chat(self, system: str, messages: Sequence[Message],
           on_failure: Callable[[FailedAttempt], None] | None = None) -> ChatResult:
    """The answer of the first attempt that gets one; `on_failure` hears of every attempt
    before it. Raises LLMFatalError at once, LLMUnavailable after the last attempt."""
    last = ''
    for attempt in range(1, self.max_attempts + 1):
      try:
        return self._send(self.model, system, list(messages), self.max_output_tokens)
      except _Timeout:
        failure = FailedAttempt('timeout', f'no answer within {self.timeout_s:g} s')
      except _Status as e:
        if not _retryable(e.status_code):
          raise LLMFatalError(self._fatal_message(e)) from None
        failure = FailedAttempt('http_error', f'HTTP {e.status_code}: {self._clean(e.message)}')
      except _Connection as e:
        failure = FailedAttempt('http_error', f'connection failed: {self._clean(str(e))}')
      if on_failure:
        on_failure(failure)
      last = failure.error
      if attempt < self.max_attempts:
        time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
    raise LLMUnavailable(f'{self.api} endpoint {self.base_url} failed {self.max_attempts} '
                         f'time(s); last: {last}')

  def _fatal_message(self, e: '_Status') -> str:
    hint = {401: f'check the key in ${self.key_env}', 403: f'check the key in ${self.key_env}',
            404: 'check --llm_base_url and --llm_model'}.get(e.status_code, 'check the request')
    auth = e.status_code in (401, 403)
    unset = f' (${self.key_env} is unset)' if auth and not self.key_is_set else ''
    return (f'{self.api} endpoint {self.base_url} refused model {self.model!r} with HTTP '
            f'{e.status_code}: {self._clean(e.message)}; {hint}{unset}')

  def _clean(self, text: str) -> str:
    """One line, bounded, with the key replaced: servers echo keys in auth errors."""
    line = ' '.join(self._scrub_key(str(text)).split())
    return line if len(line) <= MAX_MESSAGE_CHARS else line[:MAX_MESSAGE_CHARS - 3] + '...'


class _Timeout(Exception):
  """No answer in time (either SDK's timeout, translated)."""


class _Connection(Exception):
  """No connection (either SDK's connection error, translated)."""


class _Status(Exception):
  """An HTTP error status and what the server said (either SDK's status error)."""

  def __init__(self, status_code: int, message: str):
    super().__init__(message)
    self.status_code, self.message = status_code, message


def _translated(sdk: Any, call: Callable[[], ChatResult]) -> ChatResult:
  """Runs one SDK call with its exceptions mapped to the three kinds `chat` retries on."""
  try:
    return call()
  except sdk.APITimeoutError:
    raise _Timeout() from None
  except sdk.APIStatusError as e:
    raise _Status(e.status_code, _server_message(e)) from None
  except sdk.APIConnectionError as e:
    raise _Connection(str(e)) from None


def _server_message(e: Any) -> str:
  """What the server said: the `message` of its JSON error body (both APIs nest it under
  `error`), else the SDK's summary."""
  body = e.body
  if isinstance(body, dict):
    inner = body.get('error') if isinstance(body.get('error'), dict) else body
    if isinstance(inner.get('message'), str):
      return inner['message']
  return e.message


def _retryable(status: int) -> bool:
  return status in RETRYABLE_STATUS or status >= 500


def _scrubber(key: str) -> Callable[[str], str]:
  """Replaces the key (held only by this closure) wherever a message repeats it."""
  return (lambda text: text.replace(key, '***')) if key else (lambda text: text)


_Send = Callable[[str, str, list[Message], int | None], ChatResult]


def _sender(api: str, base_url: str, key: str, timeout_s: float) -> _Send:
  """A function that makes one request with the SDK of `api` (SDK retries off)."""
  sdk = _sdk(api)
  if api == 'openai':
    client = sdk.OpenAI(api_key=key, base_url=base_url, timeout=timeout_s, max_retries=0)

    def send_openai(model: str, system: str, messages: list[Message],
                    max_tokens: int | None) -> ChatResult:
      return _translated(sdk, lambda: _ask_openai(client, model, system, messages, max_tokens))
    return send_openai

  # The Messages API lives at <base>/v1/messages; accept a base URL given with the /v1 an
  # OpenAI-style URL has, since one flag serves both APIs.
  root = base_url.rstrip('/').removesuffix('/v1')
  client = sdk.Anthropic(api_key=key, base_url=root, timeout=timeout_s, max_retries=0)

  def send_anthropic(model: str, system: str, messages: list[Message],
                     max_tokens: int | None) -> ChatResult:
    return _translated(sdk, lambda: _ask_anthropic(client, model, system, messages,
                                                   max_tokens))
  return send_anthropic


def _sdk(api: str) -> Any:
  """The vendor's SDK, imported here, not at module load: it costs seconds, only LLM runs
  need it, and it is an optional extra, so its absence says what to install."""
  try:
    return importlib.import_module(api)
  except ImportError:
    raise ValueError(f"the {api} SDK is not installed; it is pyproject.toml's optional 'llm' "
                     f'extra: pip install {api}') from None


def _ask_openai(client: Any, model: str, system: str, messages: list[Message],
                max_tokens: int | None) -> ChatResult:
  extra = {'max_tokens': max_tokens} if max_tokens else {}
  response = client.chat.completions.create(
      model=model, messages=[{'role': 'system', 'content': system}, *messages], **extra)
  choices = response.choices or []
  text = (choices[0].message.content or '') if choices else ''
  usage = response.usage
  return ChatResult(text, getattr(usage, 'prompt_tokens', 0) or 0,
                    getattr(usage, 'completion_tokens', 0) or 0)


def _ask_anthropic(client: Any, model: str, system: str, messages: list[Message],
                   max_tokens: int | None) -> ChatResult:
  response = client.messages.create(
      model=model, system=system, messages=list(messages),
      max_tokens=max_tokens or ANTHROPIC_DEFAULT_MAX_TOKENS)
  text = ''.join(block.text for block in response.content or []
                 if getattr(block, 'type', '') == 'text')
  usage = response.usage
  return ChatResult(text, getattr(usage, 'input_tokens', 0) or 0,
                    getattr(usage, 'output_tokens', 0) or 0)
