"""A local stand-in for an LLM endpoint: replays queued answers over real HTTP.

It serves OpenAI's /v1/chat/completions and Anthropic's /v1/messages in each API's JSON
shape (usage block included), so the tests run the real SDK clients end to end. A reply
can also be an HTTP error or a delay past the client's timeout. Every request is recorded
(path, headers, JSON body) so tests can check what the proposer sent.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclasses.dataclass(frozen=True)
class Reply:
  """One recorded answer: `text` with its token counts, or an error `status` whose body
  says `text`; `delay_s` holds the reply back (longer than the client's timeout: a
  timeout)."""
  text: str = ''
  status: int = 200
  delay_s: float = 0.0
  input_tokens: int = 100
  output_tokens: int = 20


@dataclasses.dataclass(frozen=True)
class Request:
  path: str
  headers: dict[str, str]  # lower-cased names
  body: dict[str, Any]

  def key(self) -> str | None:
    """The API key the client sent: Anthropic's x-api-key, or a bearer token (OpenAI, and
    Anthropic SDKs that authenticate that way)."""
    bearer = self.headers.get('authorization', '').removeprefix('Bearer ')
    return self.headers.get('x-api-key') or bearer or None

  def text(self) -> str:
    """Every message's content (and Anthropic's system prompt), joined."""
    parts = [self.body.get('system') or '']
    parts += [m.get('content') or '' for m in self.body.get('messages', [])]
    return '\n'.join(p if isinstance(p, str) else json.dumps(p) for p in parts)


class ReplayServer:
  """`with ReplayServer() as server:` listens on 127.0.0.1 at a free port."""

  def __init__(self) -> None:
    self.replies: list[Reply] = []
    self.requests: list[Request] = []
    self._lock = threading.Lock()
    self._http = ThreadingHTTPServer(('127.0.0.1', 0), _handler(self))
    self._http.daemon_threads = True
    self._thread = threading.Thread(target=self._http.serve_forever, args=(0.01,),
                                    daemon=True)  # a short poll: a quick shutdown

  @property
  def url(self) -> str:
    host, port = self._http.server_address[:2]
    return f'http://{host}:{port}'

  def queue(self, *replies: Reply | str) -> None:
    with self._lock:
      self.replies += [Reply(r) if isinstance(r, str) else r for r in replies]

  def __enter__(self) -> 'ReplayServer':
    self._thread.start()
    return self

  def __exit__(self, *exc: object) -> None:
    self._http.shutdown()
    self._http.server_close()

  def _next(self, request: Request) -> Reply:
    with self._lock:
      self.requests.append(request)
      return self.replies.pop(0) if self.replies else Reply('no recorded reply left', 599)


def _handler(server: ReplayServer) -> type[BaseHTTPRequestHandler]:
  class Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
      length = int(self.headers.get('content-length') or 0)
      body = json.loads(self.rfile.read(length) or b'{}')
      request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
      reply = server._next(request)
      time.sleep(reply.delay_s)
      anthropic = self.path.rstrip('/').endswith('/messages')
      if reply.status != 200:
        payload = _error(anthropic, reply.text or f'replayed HTTP {reply.status}')
      elif anthropic:
        payload = _anthropic(body, reply)
      else:
        payload = _openai(body, reply)
      data = json.dumps(payload).encode()
      try:
        self.send_response(reply.status)
        self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)
      except OSError:  # the client gave up (a timeout test): nobody to answer
        pass

    def log_message(self, format: str, *args: Any) -> None:
      """Quiet: the tests read `requests`, not stderr."""

  return Handler


def _openai(request: dict[str, Any], reply: Reply) -> dict[str, Any]:
  return {
      'id': 'chatcmpl-replay', 'object': 'chat.completion', 'created': 0,
      'model': request.get('model', ''),
      'choices': [{'index': 0, 'finish_reason': 'stop',
                   'message': {'role': 'assistant', 'content': reply.text}}],
      'usage': {'prompt_tokens': reply.input_tokens, 'completion_tokens': reply.output_tokens,
                'total_tokens': reply.input_tokens + reply.output_tokens}}


def _anthropic(request: dict[str, Any], reply: Reply) -> dict[str, Any]:
  return {
      'id': 'msg_replay', 'type': 'message', 'role': 'assistant',
      'model': request.get('model', ''), 'stop_reason': 'end_turn', 'stop_sequence': None,
      'content': [{'type': 'text', 'text': reply.text}],
      'usage': {'input_tokens': reply.input_tokens, 'output_tokens': reply.output_tokens}}


def _error(anthropic: bool, message: str) -> dict[str, Any]:
  if anthropic:
    return {'type': 'error', 'error': {'type': 'api_error', 'message': message}}
  return {'error': {'message': message, 'type': 'server_error', 'code': None}}
