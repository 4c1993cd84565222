"""A small OpenAI-compatible HTTP server on 127.0.0.1 for the scoring tests and the benchmark.

It speaks enough of the API for the real `openai` client: ``POST /v1/chat/completions``, and the
Files + Batches endpoints the ``--batch`` mode uses (``POST /v1/files``, ``POST/GET /v1/batches``,
``GET /v1/batches/{id}``, ``GET /v1/files/{id}/content``).

Behaviour is scripted by directives written into the sample text itself, ``[[key=value]]``, so a
test controls each row even when ``ual score`` runs in another process:

    [[id=row7]]        name used to count requests per row (else the whole user message)
    [[score=42]]       the score the "model" gives (default: a stable hash of the id, 0..99)
    [[reply=json]]     json (default) | plain ("I would rate this 42.") | noscore | fenced | bare |
                       distractor ("The user asked 70 seconds in one hour.") | percent ("98.5% of the time ...")
                       | chatty (prose, then "Score: 42") | cut (JSON cut by the reply-token limit, as llama.cpp
                       sent it) | big ('{"score": 1024.5}', as SmolLM2 answered "What is 2 to the power of 10?");
                       a follow-up turn asking for only the score gets the bare number, unless
                       [[reask=noscore]] ("I cannot say.") or [[reask=same]] (the first reply again)
    [[429=2]]          the first 2 requests for this row get 429 with a retry-after header
    [[500=1]]          the first request gets HTTP 500; [[500=always]] every request does
    [[400=always]]     a 400 the client cannot fix (e.g. context too long)
    [[delay=0.3]]      sleep before answering
    [[stall=1]]        the first request sleeps ``stall_seconds`` (to trip the client's timeout)
    [[quota=1]]        429 with code insufficient_quota (no retry can help)
    [[dist=30:0.25,40:0.75]]  the score distribution; with `logprobs` requested the reply carries
                       top_logprobs over those score tokens and the text holds the most likely one

Server-wide knobs are attributes: ``latency`` (seconds added to every chat request),
``reject_response_format`` (answer 400 to any request carrying ``response_format``), ``models`` (what
``GET /v1/models`` lists), ``honour_n`` (answer ``n`` choices, else one), ``serial`` (one chat request
at a time, as llama.cpp's server), ``digit_logprobs`` (logprob tokens of single digits),
``refuse_formats`` / ``refuse_status`` / ``refuse_body`` (which ``response_format`` types are refused, how),
``expected_key`` (answer 401 — echoing the key sent, as a worst case — when the bearer token differs),
``retry_after`` (the header value sent with 429s), ``batch_polls`` (how many retrieves a batch stays
``in_progress``), ``usage`` (whether to report token usage), ``logprobs_supported`` (whether a
``logprobs`` request gets logprobs back).

Counters: ``counts[id]`` chat requests per row (batch lines included), ``arrivals[id]`` when they came, ``requests`` (every HTTP
request as (method, path)), ``chat_bodies`` (the JSON of every chat request), ``auth_headers``
(distinct Authorization headers seen, and Azure ``api-key`` headers as "api-key KEY"), ``max_inflight`` (most chat
requests handled at once), ``max_waiting`` (most chat requests received at once, queued ones included),
``depths`` (how many chat requests were at the server, this one included, as each arrived).

``FakeOpenAI.llama_cpp()`` behaves as llama-cpp-python 0.3.36's server did with SmolLM2-135M-Instruct
(Q4_1 GGUF), requests and replies captured through a logging proxy: HTTP 500 with a pydantic
``literal_error`` body on ``response_format: json_schema``, ``json_object`` accepted (34 of 41 replies
``{"score": N, "type":"json"}``, the rest ``{"score": N}``, ``"type":"SAMPLE"`` or cut at the token
limit), one request at a time, ``n`` ignored (one choice), numbers split into digit tokens in logprobs
with single digits as the alternatives, and chatty replies without a score in plain text.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_DIRECTIVE = re.compile(r"\[\[(\w+)=([^\]]*)\]\]")
REASK_MARK = "Reply with only the score"
# llama-cpp-python 0.3.36 (server), POST /v1/chat/completions with response_format json_schema: HTTP 500
LLAMA_CPP_JSON_SCHEMA_500 = {"error": {"message": (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input "
    "should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': {'expected': \"'text' or 'json_object'\"}}"
    "\n\n  File \"llama_cpp/server/app.py\", line 376, in create_chat_completion\n    POST /v1/chat/completions"),
    "type": "internal_server_error", "param": None, "code": None}}
LLAMA_CPP_CHATTY = 'The user asked: "How many different replies would be just as acceptable as the'


def directives(text: str) -> dict[str, str]:
    return {k: v for k, v in _DIRECTIVE.findall(text)}


def stable_score(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 100


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle + delayed ACKs add ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep the base signature
        pass

    # -- plumbing ---------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bool = False) -> None:
        body = payload if raw else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw else "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        err = {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error",
               "param": None, "code": code}
        self._send(status, {"error": err}, headers)

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization", "")
        srv = self.server.owner
        with srv.lock:
            srv.auth_headers.add(auth)
            if self.headers.get("api-key"):
                srv.auth_headers.add("api-key " + self.headers["api-key"])
        if srv.expected_key is not None and auth != f"Bearer {srv.expected_key}":
            sent = auth.removeprefix("Bearer ")
            # Worst case on purpose: echo the whole key back, so tests can check the tool redacts it.
            self._error(401, f"Incorrect API key provided: {sent}.", code="invalid_api_key")
            return False
        return True

    # -- routes -----------------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802
        srv = self.server.owner
        body = self._read_body()
        path = self.path.split("?")[0]
        with srv.lock:
            srv.requests.append(("POST", path))
        if not self._authorised():
            return
        if path.endswith("/chat/completions"):
            status, payload, headers = srv.chat(json.loads(body or b"{}"))
            self._send(status, payload, headers)
        elif path.endswith("/files"):
            self._send(200, srv.upload(self.headers.get("Content-Type", ""), body))
        elif path.endswith("/batches"):
            self._send(200, srv.create_batch(json.loads(body or b"{}")))
        else:
            self._error(404, f"no route {path}")

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server.owner
        path = self.path.split("?")[0]
        with srv.lock:
            srv.requests.append(("GET", path))
        if not self._authorised():
            return
        if path == "/stats":  # for a server in another process (the benchmark)
            with srv.lock:
                return self._send(200, {"n_chat": srv.n_chat, "max_inflight": srv.max_inflight,
                                        "rows": len(srv.counts)})
        if path.endswith("/models"):
            return self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "me"}
                                                               for m in srv.models]})
        m = re.search(r"/files/([^/]+)/content$", path)
        if m:
            data = srv.files.get(m.group(1))
            if data is None:
                return self._error(404, "no such file")
            return self._send(200, data["content"], raw=True)
        m = re.search(r"/batches/([^/]+)$", path)
        if m:
            batch = srv.retrieve_batch(m.group(1))
            return self._send(200, batch) if batch else self._error(404, "no such batch")
        if path.endswith("/batches"):
            with srv.lock:
                data = [dict(b) for b in reversed(srv.batches.values())]
            return self._send(200, {"object": "list", "data": data, "has_more": False,
                                    "first_id": data[0]["id"] if data else None,
                                    "last_id": data[-1]["id"] if data else None})
        self._error(404, f"no route {path}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    owner: FakeOpenAI


class FakeOpenAI:
    """Start with ``with FakeOpenAI() as srv:``; ``srv.base_url`` is the ``--base-url`` to use."""

    def __init__(self, latency: float = 0.0, expected_key: str | None = None) -> None:
        self.latency = latency
        self.expected_key = expected_key
        self.reject_response_format = False
        self.retry_after = "0.05"
        self.batch_polls = 1
        self.stall_seconds = 2.0
        self.usage = True
        self.logprobs_supported = True
        self.models = ["test-model"]
        self.honour_n = True
        self.serial = False
        self.digit_logprobs = False
        self.llama = False
        self.refuse_formats: set[str] = set()
        self.refuse_status = 400
        self.refuse_body: dict | None = None
        self.waiting = 0
        self.arrivals: dict[str, list[float]] = {}
        self.max_waiting = 0
        self.depths: list[int] = []
        self._serial_lock = threading.Lock()
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []
        self.chat_bodies: list[dict] = []
        self.auth_headers: set[str] = set()
        self.inflight = 0
        self.max_inflight = 0
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self._batch_retrieves: Counter[str] = Counter()
        self._ids = 0
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @classmethod
    def llama_cpp(cls, latency: float = 0.05) -> FakeOpenAI:
        """A server that answers as llama-cpp-python's did (see the module docstring)."""
        srv = cls(latency=latency)
        srv.models = ["SmolLM2-135M-Instruct.Q4_1.gguf"]
        srv.honour_n, srv.serial, srv.digit_logprobs, srv.llama = False, True, True, True
        srv.refuse_formats, srv.refuse_status, srv.refuse_body = {"json_schema"}, 500, LLAMA_CPP_JSON_SCHEMA_500
        return srv

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _next_id(self, prefix: str) -> str:
        with self.lock:
            self._ids += 1
            return f"{prefix}{self._ids}"

    @property
    def n_chat(self) -> int:
        return sum(self.counts.values())

    # -- chat completions -------------------------------------------------------------------------
    def chat(self, req: dict) -> tuple[int, dict, dict[str, str]]:
        messages = req.get("messages") or []
        user = "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
        d = directives(user)
        name = d.get("id", user)
        with self.lock:
            self.counts[name] += 1
            self.arrivals.setdefault(name, []).append(time.monotonic())
            attempt = self.counts[name]
            self.chat_bodies.append(req)
            self.waiting += 1
            self.max_waiting = max(self.max_waiting, self.waiting)
            self.depths.append(self.waiting)
        try:
            with self._serial_lock if self.serial else contextlib.nullcontext():
                with self.lock:
                    self.inflight += 1
                    self.max_inflight = max(self.max_inflight, self.inflight)
                try:
                    delay = self.latency + float(d.get("delay", 0) or 0)
                    if delay:
                        time.sleep(delay)
                    return self._answer(req, d, name, attempt)
                finally:
                    with self.lock:
                        self.inflight -= 1
        finally:
            with self.lock:
                self.waiting -= 1

    def _answer(self, req: dict, d: dict[str, str], name: str, attempt: int) -> tuple[int, dict, dict[str, str]]:
        if self.reject_response_format and req.get("response_format") is not None:
            return 400, _err("response_format is not supported by this server", "response_format"), {}
        if (req.get("response_format") or {}).get("type") in self.refuse_formats:
            return self.refuse_status, self.refuse_body or _err("response_format is not supported", None), {}
        if "stall" in d and attempt <= int(d["stall"]):
            time.sleep(self.stall_seconds)  # longer than the client's timeout
        if "quota" in d:
            return 429, {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                                   "param": None, "code": "insufficient_quota"}}, {}
        for status in ("429", "500", "400"):
            if status in d:
                limit = d[status]
                if limit == "always" or attempt <= int(limit):
                    headers = {"retry-after": self.retry_after} if status != "400" else {}
                    msg = {"429": "Rate limit reached, please slow down", "500": "The server had an error",
                           "400": "This model's maximum context length was exceeded"}[status]
                    return int(status), _err(msg, None), headers
        return 200, self._completion(req, d, name), {}

    def _content(self, req: dict, d: dict[str, str], score: int) -> str:
        messages = req.get("messages") or []
        reask = REASK_MARK in str(messages[-1].get("content", "")) if messages else False
        fmt = (req.get("response_format") or {}).get("type")
        if self.llama and "reply" not in d:  # what SmolLM2 answered through llama-cpp-python
            return f'{{"score": {score}, "type":"json"}}' if fmt == "json_object" else LLAMA_CPP_CHATTY
        if reask and d.get("reask") != "same":
            return "I cannot say." if d.get("reask") == "noscore" else str(score)
        return {
            "json": json.dumps({"score": score}),
            "plain": f"I would rate this {score}.",
            "bare": str(score),
            "fenced": f'Here you go:\n```json\n{{"score": {score}}}\n```',
            "noscore": "I am not able to rate this sample.",
            "distractor": "The user asked 70 seconds in one hour.",
            "percent": "98.5% of the time, the response is correct",
            "chatty": f"The sample asks for 3 facts and 1 opinion, so 2 answers fit.\nScore: {score}",
            "cut": f'{{\n  "score": {score},\n"type": "json",',
            "big": '{"score": 1024.5}',
        }[d.get("reply", "json")]

    def _completion(self, req: dict, d: dict[str, str], name: str) -> dict:
        dist = _parse_dist(d.get("dist"))
        n = int(req.get("n") or 1) if self.honour_n else 1
        choices = []
        for i in range(n):
            score = int(d["score"]) if "score" in d else (max(dist, key=dist.get) if dist else stable_score(name))
            score = (score + 2 * i) % 100 if "spread" in d else score  # [[spread=1]]: choice i scores +2 i
            content = self._content(req, d, score)
            choice: dict[str, Any] = {"index": i, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "length" if d.get("reply") == "cut" else "stop",
                                      "logprobs": None}
            if req.get("logprobs") and self.logprobs_supported:
                tokens = _digit_tokens(content) if self.digit_logprobs else \
                    _logprob_tokens(content, score, dist or {score: 1.0})
                choice["logprobs"] = {"content": tokens, "refusal": None}
            choices.append(choice)
        prompt_chars = sum(len(str(m.get("content", ""))) for m in req.get("messages") or [])
        out: dict[str, Any] = {"id": self._next_id("chatcmpl-"), "object": "chat.completion",
                               "created": int(time.time()), "model": req.get("model", "?"), "choices": choices}
        if self.usage:
            p, c = prompt_chars // 4 + 7, sum(max(1, len(ch["message"]["content"]) // 3) for ch in choices)
            out["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        return out

    # -- files + batches --------------------------------------------------------------------------
    def upload(self, content_type: str, body: bytes) -> dict:
        m = re.search(r"boundary=\"?([^\";]+)\"?", content_type)
        if not m:
            raise ValueError("expected a multipart upload")
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in body.split(b"--" + m.group(1).encode()):
            if b"\r\n\r\n" not in part:
                continue
            head, _, data = part.partition(b"\r\n\r\n")
            if data.endswith(b"\r\n"):
                data = data[:-2]
            hm = re.search(rb'name="([^"]+)"', head)
            fm = re.search(rb'filename="([^"]*)"', head)
            if hm:
                fields[hm.group(1).decode()] = (fm.group(1).decode() if fm else None, data)
        filename, content = fields["file"]
        fid = self._next_id("file-")
        purpose = fields.get("purpose", (None, b"batch"))[1].decode()
        obj = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
               "filename": filename or "upload.jsonl", "purpose": purpose, "status": "processed"}
        with self.lock:
            self.files[fid] = {**obj, "content": content}
        return obj

    def create_batch(self, req: dict) -> dict:
        bid = self._next_id("batch_")
        src = self.files[req["input_file_id"]]["content"].decode()
        out_lines, err_lines = [], []
        lines = [json.loads(x) for x in src.splitlines() if x.strip()]
        for line in lines:
            status, payload, _ = self.chat(line["body"])
            rec = {"id": self._next_id("batch_req_"), "custom_id": line["custom_id"],
                   "response": {"status_code": status, "request_id": "req", "body": payload}, "error": None}
            (out_lines if status == 200 else err_lines).append(json.dumps(rec))
        out_id = err_id = None
        if out_lines:
            out_id = self._next_id("file-")
            self.files[out_id] = {"content": ("\n".join(out_lines) + "\n").encode()}
        if err_lines:
            err_id = self._next_id("file-")
            self.files[err_id] = {"content": ("\n".join(err_lines) + "\n").encode()}
        batch = {"id": bid, "object": "batch", "endpoint": req.get("endpoint"), "errors": None,
                 "input_file_id": req["input_file_id"], "completion_window": req.get("completion_window"),
                 "status": "validating", "created_at": int(time.time()), "metadata": req.get("metadata"),
                 "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                 "_final": {"output_file_id": out_id, "error_file_id": err_id,
                            "request_counts": {"total": len(lines), "completed": len(out_lines),
                                               "failed": len(err_lines)}}}
        with self.lock:
            self.batches[bid] = batch
        return _public(batch)

    def retrieve_batch(self, bid: str) -> dict | None:
        with self.lock:
            batch = self.batches.get(bid)
            if batch is None:
                return None
            self._batch_retrieves[bid] += 1
            if self._batch_retrieves[bid] > self.batch_polls and batch["status"] != "completed":
                batch.update(batch["_final"], status="completed", completed_at=int(time.time()))
            elif batch["status"] == "validating":
                batch["status"] = "in_progress"
            return _public(batch)


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _err(message: str, param: str | None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


def _parse_dist(spec: str | None) -> dict[int, float] | None:
    if not spec:
        return None
    out = {}
    for item in spec.split(","):
        k, v = item.split(":")
        out[int(k)] = float(v)
    return out


def _digit_tokens(content: str) -> list[dict]:
    """Tokens as a digit-splitting tokenizer (SmolLM2, Llama-2) gives them: each digit its own token,
    and the alternatives at a digit other single digits (as llama.cpp returned: "1", "9", "0", ...)."""
    pieces = re.findall(r"\d|[^\d]+", content)
    out = []
    for piece in pieces:
        top = [{"token": piece, "logprob": math.log(0.5), "bytes": None}]
        if piece.isdigit():
            top += [{"token": str(k), "logprob": math.log(0.5 / 9), "bytes": None} for k in range(10) if str(k) != piece]
        out.append({"token": piece, "logprob": math.log(0.5), "bytes": None, "top_logprobs": top})
    return out


def _logprob_tokens(content: str, score: int, dist: dict[int, float]) -> list[dict]:
    """Split ``content`` into tokens with the score as one token; top_logprobs there follow ``dist``."""
    text = str(score)
    at = content.find(text)
    pieces = [content[:at], text, content[at + len(text):]] if at >= 0 else [content]
    tokens = []
    for piece in pieces:
        if not piece:
            continue
        if piece == text and at >= 0:
            top = [{"token": str(k), "logprob": math.log(p), "bytes": list(str(k).encode())}
                   for k, p in sorted(dist.items(), key=lambda kv: -kv[1]) if p > 0]
            top.append({"token": "hello", "logprob": math.log(1e-4), "bytes": list(b"hello")})
            lp = math.log(dist.get(score, 1e-4))
            tokens.append({"token": piece, "logprob": lp, "bytes": list(piece.encode()), "top_logprobs": top})
        else:
            tokens.append({"token": piece, "logprob": -0.01, "bytes": list(piece.encode()),
                           "top_logprobs": [{"token": piece, "logprob": -0.01, "bytes": list(piece.encode())}]})
    return tokens


if __name__ == "__main__":  # python -m tests.scoring.server [--latency S]: prints the base URL
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.05)
    with FakeOpenAI(latency=ap.parse_args().latency) as s:
        print(s.base_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
