"""Benchmark credential retrieval (``POST /sdk/token``) against a bare FastAPI endpoint.

Two ways of naming the grant are measured (``--mode grant_id|jwt|both``, default both):

* **grant_id**: the body names the system grant,
  ``{"grant_id": ..., "reason": null, "request": {...}}``;
* **jwt** (identity mode): the body names the secret by its slug and carries the end user's
  ID token, ``{"provider_id": "openai", "reason": null, "request": {...}, "user_token":
  "<JWT>"}`` (field order as the SDK sends it). The vault verifies the JWT against the app's
  identity provider (the real OIDC peer, ``tests/oauth_peer``), finds or syncs the user, and
  resolves that user's grant. Every request carries the same token, as an SDK serving one
  user does, so after the first request its verification is a hit in the vault's cache of
  verified tokens (and the JWKS cache): a steady state, not the cost of a token the vault
  has not seen yet (an RSA verification, plus a JWKS fetch when its key is not cached).

Method
------
1. A throw-away data dir is created and a vault is prepared in it on the embedded SQLite
   default, through the real CLI (``python -m grantvault_server ...``): an app, an API key,
   an OpenAI-template secret with a fake credential, and a system grant on it. For JWT mode
   the OIDC peer is started first (``tests.peer.start_peer``, ID tokens valid 1 h), then the
   CLI points the app at it (``idp set --issuer <peer> --audience vault-basic``) and creates
   a user grant on the same secret for ``alice`` (``grants create --principal user
   --subject alice``), and alice's ID token comes from a real authorization-code + PKCE
   login at the peer, played over HTTP. ``GRANTVAULT_ALLOW_HTTP_HOSTS=127.0.0.1`` (the peer
   is plain http) is set in every mode, so grant_id figures do not depend on ``--mode``.
2. Two servers are started as subprocesses, each single-process uvicorn with the settings
   ``grantvault serve`` uses (``log_config=None``, ``access_log=False``,
   ``server_header=False``, run with ``asyncio.run(Server.serve())``, so both use the stdlib
   event loop and uvicorn's default HTTP parser):

   * **vault**: ``grantvault serve`` with ``GRANTVAULT_LOG_LEVEL=WARNING``;
   * **baseline**: a bare FastAPI app whose ``POST /sdk/token`` reads the JSON body and
     returns a small JSON object. It is the floor: what one uvicorn process does when the
     vault's work (key lookup, signature, nonce insert, grant lookup, decryption, audit
     write) is taken away.

3. One request per measured mode is sent first: anything but a 200 stops the benchmark with
   the answer's body (its audit row is counted in step 5).
   Each target gets a 2 s warm-up, whose results are discarded, then a measured phase of
   ``--duration`` seconds, with ``--concurrency`` keep-alive connections sending requests
   back to back. Every vault request is built exactly like the SDK's: a compact-JSON body
   and a fresh signature (new nonce) from ``grantvault.protocol.signing.sign_request``. Anything but
   a 2xx answer is an error, counted per status code (or socket error) with sample bodies.
   The load generator is one of:

   * **wrk** (``--client wrk``, the default when ``wrk`` is on PATH): ``wrk -t<threads>
     -c<concurrency> -d<duration>s`` with the Lua script ``WRK_SCRIPT`` below. wrk is C and
     needs a fraction of the CPU the servers need per request, so the servers, not the
     client, set the pace. The vault refuses a replayed nonce (401) and a timestamp more
     than 300 s off, so before each vault target this process pre-signs the requests of
     both its phases: one file per wrk thread, one request per line. ``setup()`` gives each
     wrk thread its id, so threads read disjoint files, and ``request()`` sends the thread's
     next request (``wrk.format``) exactly once. The count is ``--presign-rate`` (raised to
     1.25x the fastest baseline run so far) times the phase length, split over the threads,
     plus a margin. A thread that runs out never reuses a nonce: it stops and the report
     flags the phase. The baseline endpoint checks no nonce, so it gets one signed request
     (same headers, same body) replayed, through the same read-and-format path per request.
     ``done()`` prints one JSON line that this process parses: requests, duration, answers
     per status with sample error bodies, socket errors, latency percentiles. Latency is
     wrk's round trip over all answers.
   * **httpx** (``--client httpx``, and the fallback when wrk is missing): this process
     sends the requests. ``--concurrency`` asyncio workers each sign a fresh request and
     send it. By default each worker has its own ``httpx.AsyncClient`` with one connection
     (``--pool per-worker``); ``--pool shared`` uses one client whose pool holds
     ``--concurrency`` connections, which costs the client several times more CPU per
     request (httpcore rescans its whole pool on every request). The client runs on uvloop
     when installed (``--no-client-uvloop`` to disable). Latency is the HTTP round trip of
     the 2xx answers, signing excluded. This client needs more CPU per request than the
     bare baseline endpoint does, so it cannot saturate the baseline: its baseline figure
     and ratio are not trustworthy.

4. Order: baseline, vault grant_id, vault jwt (each as ``--mode`` selects), then (by
   default) baseline again; the two baseline runs are averaged to cancel drift. Both modes
   are measured on the same vault process, one after the other, each with its own warm-up
   and its own pre-signed requests. The verdict compares against the issues' targets:
   grant_id >= 3000 retrievals/s and vault grant_id/baseline >= 0.25; vault jwt/vault
   grant_id >= 0.80 (with ``--mode both`` only). Each vault row also shows its ratio to the
   baseline.
5. After the servers stop, the audit table is counted directly in SQLite: every successful
   retrieval of either mode (warm-up and check requests included) must have written one
   ``credential.retrieved`` row, which shows the measured figure includes the audit write.
   httpx workers finish their last request, so the row count must equal the 2xx count. wrk
   stops with requests in flight; the vault still answers (and audits) them but wrk never
   reads the answers, so the row count must lie between the 2xx count and the 2xx count
   plus those unanswered requests.

Limiter cost (``--compare-limiter``, issue 9): grant_id mode only, on two vault processes
started from copies of the same prepared data dir, identical but for the abuse limits:
**limiter off** (``GRANTVAULT_RATE_LIMIT_PER_KEY/_PER_APP/_PER_IP=0``) and **limiter on**
(the per-key and per-app budgets set so high that they never refuse, so every request pays
the full check and the budget headers; the per-IP budget at its default). They are measured
off, on, on, off (``--limiter-rounds`` times, so that drift cancels), each mean is reported,
and the cost of the limiter is ``1 - on/off`` (target: under 5 %). Server CPU time per
retrieval is reported for both too: on a machine with other load it varies less than req/s.

Policy cost (``--compare-policies``, issue 11): grant_id mode only, on three vault processes
started from copies of the same prepared data dir: **(a) no policies**; **(b) 50 policies**,
stored through the policy service (``services.policies.put_policy``, the write ``grantvault
policies put`` makes), of which 45 apply to the benchmarked grant and allow its call (time
windows covering the whole week in eight time zones, ``ip_allow`` lists with the loopback
network at or near the end, methods, paths with ``*`` and ``**``, ``applies_to`` selectors)
and 5 exclude it by their selectors (their rules would refuse it, so the check request
proves they do not apply); no two of them are alike, so the figure is not flattered by a
cache of identical conditions; **(c)** the same 50 with a quota rule (10^9 calls a day per
grant, never refused in a run) on the first applying one. They are measured a, b, c, c, b, a
(``--policy-rounds`` times). The report gives (b)/(a) (target: >= 0.90) and the quota's cost
(c)/(b) apart, each from req/s and from server CPU per retrieval. After the run the
databases show what was measured: every success row of (b) and (c) lists the 45 applying
policies, (a)'s list none, and (c)'s quota counter equals its success rows (it is charged in
the same transaction), while (a) and (b) have no counter.

Caveat: the load generator runs on the same machine as the server under test and competes
with it for CPU (the output reports the core count and each side's CPU use, 100% = one
core). A phase in which the server used less than 75% of its one core is flagged "not
saturated". With httpx that is the load generator's limit, so the req/s understates the
server; an unsaturated baseline is underestimated, which makes the ratio an upper bound of
the true one. With wrk, which stays far from its own limit, it means the server itself
waited on something other than its CPU (disk, locks, another thread).

Run from the repository root::

    python bench/token_retrieval.py [--duration 10] [--concurrency 32] [--client wrk|httpx]
                                    [--mode grant_id|jwt|both] [--compare-limiter]
                                    [--compare-policies] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import itertools
import json
import math
import os
import resource
import secrets
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from tests.peer import BASIC_CLIENT, VAULT_BASE_URL, Peer, follow_to, query_of, start_peer  # noqa: E402

from grantvault.protocol.signing import sign_request  # noqa: E402

WARMUP_SECONDS = 2.0
TARGET_RPS = 3000.0
TARGET_RATIO = 0.25
# JWT identity mode: its throughput as a share of grant_id mode's (the identity issue).
TARGET_JWT_RATIO = 0.80
# The abuse limits may cost at most this share of grant_id throughput (issue 9, item 3).
TARGET_LIMITER_COST = 0.05
# --compare-limiter: "off" turns every limit off; "on" keeps them on with budgets no run spends.
LIMITER_OFF_ENV = {
    "GRANTVAULT_RATE_LIMIT_PER_KEY": "0",
    "GRANTVAULT_RATE_LIMIT_PER_APP": "0",
    "GRANTVAULT_RATE_LIMIT_PER_IP": "0",
}
LIMITER_ON_ENV = {
    "GRANTVAULT_RATE_LIMIT_PER_KEY": "1000000000",
    "GRANTVAULT_RATE_LIMIT_PER_APP": "1000000000",
}
MODES = ("grant_id", "jwt")
TOKEN_PATH = "/sdk/token"
DESTINATION_URL = "https://api.openai.com/v1/chat/completions"
READY_TIMEOUT_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 60.0
MAX_SAMPLE_BODIES = 3
# A single-process server using less of its one core than this was not the bottleneck.
SATURATED_CPU_PCT = 75.0

# wrk: default threads, and how many requests to pre-sign per vault phase (see the docstring).
WRK_THREADS = 2
PRESIGN_RATE = 4000.0
PRESIGN_BASELINE_FACTOR = 1.25
PRESIGN_MARGIN = 2000
# Pre-signed timestamps must still be within the vault's +-300 s window when they are sent.
WRK_MAX_DURATION_SECONDS = 240
WRK_RESULT_PREFIX = "GRANTVAULT_BENCH_RESULT "
# Where a wrk thread that ran out of pre-signed requests sends its last ones (a 404, no nonce).
WRK_EXHAUSTED_PATH = "/__bench_out_of_presigned_requests"
INSTALL_WRK_HINT = "`apt-get install wrk` (Debian/Ubuntu) gives trustworthy figures"

# JWT mode: the end user who logs in at the real OIDC peer, and how long their ID token lives
# (longer than any run: every request of the run carries that one token).
JWT_USER = "alice"
ID_TOKEN_TTL_SECONDS = 3600
# The peer's registered redirect URI; nothing listens there, the login stops at it.
PEER_CALLBACK = f"{VAULT_BASE_URL}/sdk/auth/callback"

# --compare-policies (issue 11, item 6): how many policies the app holds, how many of them
# leave the benchmarked grant alone (their selectors exclude it), the throughput the policies
# may cost, and the quota that is charged on every retrieval but never refuses during a run.
POLICY_COUNT = 50
POLICIES_NOT_APPLYING = 5
TARGET_POLICY_RATIO = 0.90
POLICY_QUOTA = {"limit": 1_000_000_000, "window": "day", "per": "grant"}
# The three vault variants of --compare-policies: the key is Target.policies.
POLICY_VARIANTS = {
    "none": "no policies",
    "policies": f"{POLICY_COUNT} policies",
    "quota": f"{POLICY_COUNT} + quota",
}

# The baseline server: same uvicorn settings and start-up path as `grantvault serve`.
BASELINE_APP = textwrap.dedent(
    """
    import asyncio
    import sys

    import uvicorn
    from fastapi import FastAPI, Request

    app = FastAPI()


    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}


    @app.post("/sdk/token")
    async def token(request: Request) -> dict[str, object]:
        body = await request.json()
        return {"ok": True, "grant_id": body.get("grant_id")}


    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_config=None,
        access_log=False,
        server_header=False,
    )
    asyncio.run(uvicorn.Server(config).serve())
    """
)

# The wrk script. Arguments after wrk's "--": the request-file prefix, then the mode. "once"
# (vault): each pre-signed request is sent once, since nonces are single-use. "cycle"
# (baseline): the file is replayed in a loop. Thread <id> reads "<prefix><id>.txt": one
# request per line, tab-separated fields: method, path, body, then header name/value pairs.
# done() prints WRK_RESULT_PREFIX and a JSON object (see run_wrk).
WRK_SCRIPT = r"""
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

local data, pos, mode, exhausted_request

function init(args)
  mode = args[2]
  local file = assert(io.open(args[1] .. id .. ".txt", "rb"))
  data = file:read("*a")
  file:close()
  pos = 1
  issued = 0
  exhausted = 0
  statuses = {}
  -- Flat tables only: wrk's thread:get() cannot copy nested ones. samples["401 2"] is the
  -- second sample body of a 401 answer; sampled["401"] counts them.
  samples = {}
  sampled = {}
  exhausted_request = wrk.format("GET", "EXHAUSTED_PATH", {})
end

local function fields_of(line)
  local fields, start = {}, 1
  while true do
    local tab = string.find(line, "\t", start, true)
    if tab == nil then
      fields[#fields + 1] = string.sub(line, start)
      return fields
    end
    fields[#fields + 1] = string.sub(line, start, tab - 1)
    start = tab + 1
  end
end

function request()
  if pos > #data then
    if mode ~= "cycle" then
      -- Out of pre-signed requests: never reuse a nonce. Stop this thread; whatever it still
      -- sends goes to a path the vault answers with 404, without touching nonces or audit.
      exhausted = exhausted + 1
      wrk.thread:stop()
      return exhausted_request
    end
    pos = 1
  end
  local eol = string.find(data, "\n", pos, true)
  local f = fields_of(string.sub(data, pos, eol - 1))
  pos = eol + 1
  local headers = {}
  for i = 4, #f - 1, 2 do
    headers[f[i]] = f[i + 1]
  end
  issued = issued + 1
  return wrk.format(f[1], f[2], headers, f[3])
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  if status < 200 or status > 299 then
    local n = (sampled[key] or 0) + 1
    if n <= MAX_SAMPLES then
      sampled[key] = n
      samples[key .. " " .. n] = string.sub(body or "", 1, 500)
    end
  end
end

local function json_string(s)
  local escaped = string.gsub(s, '[%c"\\\128-\255]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. escaped .. '"'
end

local function json_value(v)
  local kind = type(v)
  if kind == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      return "null"
    end
    return string.format("%.17g", v)
  elseif kind == "string" then
    return json_string(v)
  elseif kind == "boolean" then
    return tostring(v)
  elseif kind == "table" then
    local items = {}
    if #v > 0 then
      for i = 1, #v do
        items[i] = json_value(v[i])
      end
      return "[" .. table.concat(items, ",") .. "]"
    end
    for key, item in pairs(v) do
      items[#items + 1] = json_string(tostring(key)) .. ":" .. json_value(item)
    end
    return "{" .. table.concat(items, ",") .. "}"
  end
  return "null"
end

function done(summary, latency, requests)
  local per_thread = {}
  for i, thread in ipairs(threads) do
    per_thread[i] = {
      id = thread:get("id"),
      issued = thread:get("issued"),
      exhausted = thread:get("exhausted"),
      statuses = thread:get("statuses"),
      samples = thread:get("samples"),
    }
  end
  local result = {
    duration_us = summary.duration,
    requests = summary.requests,
    bytes = summary.bytes,
    errors = summary.errors,
    latency_us = {
      p50 = latency:percentile(50),
      p99 = latency:percentile(99),
      mean = latency.mean,
      max = latency.max,
    },
    threads = per_thread,
  }
  io.write("RESULT_PREFIX" .. json_value(result) .. "\n")
end
"""


# -- results -----------------------------------------------------------------------------


def is_success(status: str) -> bool:
    """Is this key of ``PhaseResult.statuses`` a 2xx status code?"""
    return len(status) == 3 and status.startswith("2") and status.isdigit()


@dataclass
class PhaseResult:
    """What one load phase against one target produced.

    ``statuses`` counts answers per status code (httpx also counts client exceptions there,
    as ``exception:<type>``); ``socket_errors`` counts wrk's connect/read/write errors. ``ok``
    is the number of 2xx answers; every other answer and every socket error is an error.
    """

    target: str
    elapsed: float = 0.0
    ok: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    # Percentiles computed by the load generator itself (wrk), in ms, keyed by percentile.
    reported_percentiles: dict[float, float] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    socket_errors: Counter[str] = field(default_factory=Counter)
    error_bodies: dict[str, list[str]] = field(default_factory=dict)
    client_cpu_pct: float | None = None
    server_cpu_pct: float | None = None
    # wrk only: answers slower than the timeout (also counted under their status), requests
    # sent but unanswered when wrk stopped, and requests a thread could not send because it
    # had run out of pre-signed ones (the phase's figures are then invalid).
    timeouts: int = 0
    unanswered: int = 0
    out_of_presigned: int = 0

    @property
    def error_kinds(self) -> dict[str, int]:
        kinds = {status: n for status, n in self.statuses.items() if not is_success(status)}
        kinds.update((f"socket {kind}", n) for kind, n in self.socket_errors.items())
        return kinds

    @property
    def errors(self) -> int:
        return sum(self.error_kinds.values())

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def percentile(self, pct: float) -> float | None:
        if pct in self.reported_percentiles:
            return self.reported_percentiles[pct]
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered)) - 1))
        return ordered[rank]

    def record_error(self, status: str, body: str) -> None:
        self.statuses[status] += 1
        self.add_sample(status, body)

    def add_sample(self, status: str, body: str) -> None:
        samples = self.error_bodies.setdefault(status, [])
        body = body[:500]
        if len(samples) < MAX_SAMPLE_BODIES and body not in samples:
            samples.append(body)

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "seconds": round(self.elapsed, 3),
            "ok": self.ok,
            "rps": round(self.rps, 1),
            "p50_ms": _round(self.percentile(50)),
            "p99_ms": _round(self.percentile(99)),
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "statuses": dict(self.statuses),
            "error_bodies": self.error_bodies,
            "timeouts": self.timeouts,
            "unanswered": self.unanswered,
            "out_of_presigned": self.out_of_presigned,
            "client_cpu_pct": _round(self.client_cpu_pct),
            "server_cpu_pct": _round(self.server_cpu_pct),
            "server_saturated": self.server_saturated,
        }

    @property
    def server_saturated(self) -> bool | None:
        """Did the server use (nearly) all of its one core? None when unknown."""
        if self.server_cpu_pct is None:
            return None
        return self.server_cpu_pct >= SATURATED_CPU_PCT


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# -- processes ----------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress goes to stderr so that stdout carries only the report (or the JSON)."""
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def vault_env(data_dir: Path) -> dict[str, str]:
    """The caller's environment without any GRANTVAULT_* setting, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTVAULT_")}
    env["GRANTVAULT_DATA_DIR"] = str(data_dir)
    env["GRANTVAULT_LOG_LEVEL"] = "WARNING"
    # The OIDC peer (JWT mode) is plain http on the loopback interface. Set in every mode, so
    # that grant_id figures do not depend on --mode.
    env["GRANTVAULT_ALLOW_HTTP_HOSTS"] = "127.0.0.1"
    return env


def run_cli(args: list[str], env: Mapping[str, str], stdin: str | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "grantvault_server", *args],
        env=dict(env),
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"grantvault {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def run_cli_json(args: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run_cli([*args, "--json"], env))
    return data


@dataclass(frozen=True)
class Fixture:
    """What signed requests need: the API key, the system grant (grant_id mode), and the
    secret's slug with the end user's ID token (JWT mode; None when JWT mode is off)."""

    api_key: str
    grant_id: str
    provider_id: str
    user_token: str | None = None


def prepare_vault(env: Mapping[str, str], peer: Peer | None) -> Fixture:
    """App, key, secret with a fake credential, and a system grant, through the CLI.

    With ``peer`` (JWT mode), also: the peer as the app's identity provider, a user grant on
    the same secret for JWT_USER, and that user's ID token from a real login at the peer.
    """
    run_cli_json(["apps", "create", "bench"], env)
    key = run_cli_json(["keys", "create", "--app", "bench"], env)
    secret = run_cli_json(["secrets", "create", "--app", "bench", "--template", "openai"], env)
    secret_id = secret["managed_secret_id"]
    run_cli(
        ["secrets", "set-credential", secret_id, "--stdin"],
        env,
        stdin="sk-bench-not-a-real-key-0000000000000000",
    )
    grant = run_cli_json(["grants", "create", "--secret", secret_id, "--principal", "system"], env)
    user_token = None
    if peer is not None:
        set_idp = ["idp", "set", "--app", "bench", "--issuer", peer.issuer]
        run_cli_json([*set_idp, "--audience", BASIC_CLIENT[0]], env)
        user_grant = ["grants", "create", "--secret", secret_id, "--principal", "user"]
        run_cli_json([*user_grant, "--subject", JWT_USER], env)
        user_token = peer_id_token(peer, JWT_USER)
    return Fixture(
        api_key=key["api_key"],
        grant_id=grant["grant_id"],
        provider_id=secret["slug"],
        user_token=user_token,
    )


def peer_id_token(peer: Peer, user: str) -> str:
    """``user``'s ID token from an authorization-code + PKCE login at the peer, played over
    HTTP like ``tests/test_identity_support.py`` does (the redirect to PEER_CALLBACK, where
    nothing listens, is read, not followed)."""
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    params = {
        "response_type": "code",
        "client_id": BASIC_CLIENT[0],
        "redirect_uri": PEER_CALLBACK,
        "scope": "openid email profile",
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "login_hint": user,
    }
    answer = query_of(follow_to(f"{peer.issuer}/auth?{urlencode(params)}", PEER_CALLBACK))
    if "code" not in answer:
        raise RuntimeError(f"login of {user} at the OIDC peer failed: {answer}")
    response = httpx.post(
        f"{peer.issuer}/token",
        data={
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": PEER_CALLBACK,
            "code_verifier": verifier,
        },
        auth=BASIC_CLIENT,
        timeout=10,
    )
    if response.status_code != 200:
        raise RuntimeError(
            f"the OIDC peer's token endpoint answered {response.status_code}: {response.text[:500]}"
        )
    token: str = response.json()["id_token"]
    return token


# -- policies (--compare-policies) --------------------------------------------------------

ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS, WEEKEND = ALL_DAYS[:5], ALL_DAYS[5:]
ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Asia/Tokyo",
    "UTC",
    "Australia/Sydney",
    "America/Los_Angeles",
    "Europe/London",
    "Asia/Kolkata",
]


def _whole_week(n: int, days: list[str] | None = None) -> dict[str, Any]:
    """Time windows that together cover every minute of the week, split at an hour of
    their own (1..23) in a zone of their own, so no two policies share the rule."""
    hour = f"{1 + n % 23:02d}:00"
    return {
        "timezone": ZONES[n % len(ZONES)],
        "windows": [
            {"days": days or ALL_DAYS, "start": hour, "end": "24:00"},
            {"days": days or ALL_DAYS, "start": "00:00", "end": hour},
        ],
    }


def _networks(n: int, *, long: bool = False) -> list[str]:
    """An ip_allow list with a network of this policy's own, the loopback (where wrk calls
    from) last, so that a check walks the whole list before it matches."""
    own = [f"10.{n}.0.0/16", f"172.{16 + n % 16}.{n}.0/24"]
    office = [f"192.168.{n}.0/24", "2001:db8::/32", "fd00::/8"]
    if long:
        office = [*(f"100.{64 + k}.{n}.0/24" for k in range(12)), *office]
    return [*own, *office, "127.0.0.0/8"]


def _applying_policy(n: int, slug: str) -> dict[str, Any]:
    """The ``n``-th policy that applies to the bench's system grant on the secret ``slug``
    and allows its call (POST to DESTINATION_URL from 127.0.0.1, at any time): one of nine
    shapes, each with values of its own (zone, split hour, networks, paths), so the 45 are
    all different, as an app's policies would be."""
    team = f"/v1/team-{n}/**"
    shapes: list[dict[str, Any]] = [
        {
            "description": "office hours widened to the whole week",
            "applies_to": {"secrets": [slug]},
            "rules": {"time_windows": _whole_week(n)},
        },
        {
            "description": "office network",
            "applies_to": {"principals": ["system", "agent"]},
            "rules": {"ip_allow": _networks(n)},
        },
        {
            "description": "chat, models and files only",
            "rules": {
                "methods": ["GET", "POST"],
                "paths": [team, "/v1/models", "/v1/files/**", "/v1/embeddings", "/v1/chat/*"],
            },
        },
        {
            "description": "weekday and weekend shifts",
            "rules": {
                "time_windows": {
                    "timezone": ZONES[n % len(ZONES)],
                    "windows": [
                        *_whole_week(n, WEEKDAYS)["windows"],
                        *_whole_week(n + 5, WEEKEND)["windows"],
                    ],
                }
            },
        },
        {
            "description": "several credentials, local callers, writes under /v1",
            "applies_to": {"secrets": [slug, "stripe", "github"], "providers": ["google"]},
            "rules": {
                "ip_allow": [f"10.{n}.0.0/16", "127.0.0.0/8", "::1/128"],
                "methods": ["POST", "PUT"],
                "paths": [team, "/v1/**"],
            },
        },
        {
            "description": "business hours somewhere, local callers, completions",
            "rules": {
                "time_windows": _whole_week(n),
                "ip_allow": [f"10.{n}.0.0/16", "127.0.0.1/32"],
                "paths": [team, "/v1/*/completions"],
            },
        },
        {
            "description": "the endpoints the app uses",
            "rules": {
                "methods": ["get", "post", "put", "patch", "delete"],
                "paths": [
                    team,
                    "/v1/completions",
                    "/v1/models/*",
                    "/v1/files/*.json",
                    "/v1/chat/completions",
                ],
            },
        },
        {
            "description": "office network (long list)",
            "applies_to": {"secrets": [slug]},
            "rules": {"ip_allow": _networks(n, long=True), "methods": ["POST"]},
        },
        {
            "description": "everything at once, for the app's own grant",
            "applies_to": {"secrets": [slug], "principals": ["system"]},
            "rules": {
                "time_windows": _whole_week(n),
                "ip_allow": _networks(n),
                "methods": ["POST"],
                "paths": [team, "/v1/chat/completions", "/v1/chat/*"],
            },
        },
    ]
    return shapes[n % len(shapes)]


def _idle_policy(kind: int) -> dict[str, Any]:
    """A policy whose selectors exclude the bench's grant (managed secret, system principal,
    no user token). Its rules would refuse the call: if it applied, the check request would
    fail, so the run proves the selectors work."""
    selectors: list[dict[str, Any]] = [
        {"secrets": ["stripe"]},
        {"providers": ["google"]},
        {"principals": ["user", "group"]},
        {"secrets": ["stripe"], "groups": ["finance"]},
        {"principals": ["agent"]},
    ]
    return {
        "description": "a restriction for other grants",
        "applies_to": selectors[kind % len(selectors)],
        "rules": {
            "time_windows": {
                "timezone": "Europe/Berlin",
                "windows": [{"days": ["sun"], "start": "03:00", "end": "03:01"}],
            },
            "ip_allow": ["10.0.0.0/8"],
            "groups_any": ["finance"],
            "methods": ["GET"],
        },
    }


def bench_policies(slug: str, *, quota: bool) -> list[tuple[str, dict[str, Any]]]:
    """POLICY_COUNT policies for the app: POLICIES_NOT_APPLYING of them exclude the bench's
    grant, the others apply to it and allow its call. With ``quota``, the first also has
    POLICY_QUOTA (per grant, too large to refuse during a run); nothing else differs. No two
    policies are the same: a cache of identical conditions would not help here."""
    out: list[tuple[str, dict[str, Any]]] = []
    idle_every = POLICY_COUNT // POLICIES_NOT_APPLYING if POLICIES_NOT_APPLYING else 0
    applying = idle = 0
    for i in range(POLICY_COUNT):
        if idle_every and i % idle_every == idle_every - 1:
            out.append((f"idle-{i:02d}", _idle_policy(idle)))
            idle += 1
            continue
        document = _applying_policy(applying, slug)
        if quota and applying == 0:
            document["rules"]["quota"] = dict(POLICY_QUOTA)
        out.append((f"rule-{i:02d}", document))
        applying += 1
    return out


# Stores policies in the vault named by GRANTVAULT_DATA_DIR through the policy service (the
# same write `grantvault policies put` makes): stdin is {"app": ..., "policies": [[name,
# document], ...]}; stdout the number of live policies of the app afterwards.
POLICY_LOADER = textwrap.dedent(
    """
    import asyncio
    import json
    import sys

    from grantvault_server.config import load_settings
    from grantvault_server.services.apps import get_app
    from grantvault_server.services.policies import list_policies, put_policy
    from grantvault_server.services.vault import Vault, operator_actor


    async def main() -> None:
        spec = json.load(sys.stdin)
        vault = await Vault.start(load_settings())
        try:
            app = await get_app(vault, spec["app"])
            actor = operator_actor("bench")
            for name, document in spec["policies"]:
                await put_policy(
                    vault, app, name, document, actor=actor, source=json.dumps(document)
                )
            print(len(await list_policies(vault, app)))
        finally:
            await vault.close()


    asyncio.run(main())
    """
)


def store_policies(env: Mapping[str, str], policies: list[tuple[str, dict[str, Any]]]) -> None:
    """Put ``policies`` on the bench app of the vault ``env`` names (POLICY_LOADER)."""
    proc = subprocess.run(
        [sys.executable, "-c", POLICY_LOADER],
        env=dict(env),
        input=json.dumps({"app": "bench", "policies": policies}),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or proc.stdout.strip() != str(len(policies)):
        raise RuntimeError(
            f"storing {len(policies)} policies failed ({proc.returncode}): "
            f"{proc.stdout[-500:]}{proc.stderr[-3000:]}"
        )


def copy_vault(source: Path, copy: Path) -> None:
    """A copy of a prepared (and closed) vault: database, its WAL if any, master key."""
    copy.mkdir()
    for name in ("grantvault.db", "grantvault.db-wal", "master.key"):
        if (source / name).exists() or name != "grantvault.db-wal":
            shutil.copy2(source / name, copy / name)


def prepare_policy_vaults(data_dir: Path, fixture: Fixture) -> dict[str, Path]:
    """Copies of the prepared vault, one per --compare-policies variant: "none" is
    ``data_dir`` itself; "policies" and "quota" get ``bench_policies`` (without and with the
    quota) in a copy of their own, so no two server processes share a database."""
    dirs = {"none": data_dir}
    for variant in ("policies", "quota"):
        copy = data_dir / f"policies-{variant}"
        copy_vault(data_dir, copy)
        store_policies(
            vault_env(copy), bench_policies(fixture.provider_id, quota=variant == "quota")
        )
        dirs[variant] = copy
    return dirs


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextlib.contextmanager
def running_server(
    name: str, cmd: list[str], port: int, env: Mapping[str, str], log_dir: Path
) -> Iterator[Server]:
    """Start ``cmd``, wait for ``GET /readyz`` to answer 200, and always stop it afterwards."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd, env=dict(env), stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = Server(name, proc, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(proc)


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/readyz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(
        f"{server.name} not ready after {READY_TIMEOUT_SECONDS}s:\n{server.log_tail()}"
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Target:
    """One row of the report: a server and the shape of the requests it gets.

    ``label`` is "baseline", "vault grant_id" or "vault jwt"; ``mode`` is the body shape
    (see ``signed_request``; the baseline gets grant_id bodies, as it always did).
    """

    label: str
    server: Server
    mode: str
    #: --compare-limiter: whether this vault's abuse limits are on (None otherwise).
    limiter: bool | None = None
    #: --compare-policies: the vault's variant, a key of POLICY_VARIANTS (None otherwise).
    policies: str | None = None

    @property
    def is_vault(self) -> bool:
        return self.server.name.startswith("vault")

    @property
    def file_key(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.label)


def verify_mode(target: Target, fixture: Fixture) -> None:
    """Send one signed request and fail loudly unless the vault answers 200.

    Its audit row is counted (see ``audit`` in ``build_report``).
    """
    body, headers = signed_request(fixture, target.mode)
    url = f"{target.server.base_url}{TOKEN_PATH}"
    response = httpx.post(url, content=body, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS)
    if response.status_code != 200:
        raise RuntimeError(
            f"{target.label}: one check request answered {response.status_code}, not 200: "
            f"{response.text[:1000]}\n{target.server.log_tail()}"
        )


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (Linux /proc; None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- load ---------------------------------------------------------------------------------


def signed_request(fixture: Fixture, mode: str) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one ``POST /sdk/token``, exactly as the SDK builds them.

    ``mode="grant_id"`` names the system grant; ``mode="jwt"`` names the secret's slug and
    carries the end user's ID token, from which the vault resolves that user's grant.
    """
    destination = {"method": "POST", "url": DESTINATION_URL}
    payload: dict[str, Any]
    if mode == "jwt":
        payload = {
            "provider_id": fixture.provider_id,
            "reason": None,
            "request": destination,
            "user_token": fixture.user_token,
        }
    else:
        payload = {"grant_id": fixture.grant_id, "reason": None, "request": destination}
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = sign_request(fixture.api_key, method="POST", target=TOKEN_PATH, body=body)
    headers["x-api-key"] = fixture.api_key
    headers["Content-Type"] = "application/json"
    return body, headers


async def load_phase(
    clients: list[httpx.AsyncClient],
    target: Target,
    fixture: Fixture,
    *,
    duration: float,
    concurrency: int,
) -> PhaseResult:
    """``concurrency`` workers send signed requests back to back for ``duration`` seconds.

    Worker ``i`` sends through ``clients[i % len(clients)]``.
    """
    server = target.server
    result = PhaseResult(target.label)
    url = f"{server.base_url}{TOKEN_PATH}"
    deadline = time.perf_counter() + duration

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            body, headers = signed_request(fixture, target.mode)
            start = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                result.record_error(f"exception:{type(exc).__name__}", str(exc))
                continue
            elapsed_ms = (time.perf_counter() - start) * 1000
            if 200 <= response.status_code < 300:
                result.ok += 1
                result.statuses[str(response.status_code)] += 1
                result.latencies_ms.append(elapsed_ms)
            else:
                result.record_error(str(response.status_code), response.text)

    server_cpu_before = process_cpu_seconds(server.proc.pid)
    client_cpu_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    result.client_cpu_pct = 100 * (time.process_time() - client_cpu_before) / result.elapsed
    server_cpu_after = process_cpu_seconds(server.proc.pid)
    if server_cpu_before is not None and server_cpu_after is not None:
        result.server_cpu_pct = 100 * (server_cpu_after - server_cpu_before) / result.elapsed
    return result


async def measure_httpx(
    target: Target, fixture: Fixture, *, duration: float, concurrency: int, pool: str
) -> tuple[PhaseResult, PhaseResult]:
    """Warm up for WARMUP_SECONDS, then measure; return (warm-up, measured).

    ``pool="shared"``: one client whose pool holds ``concurrency`` connections.
    ``pool="per-worker"``: one client (one keep-alive connection) per worker; the same number
    of connections, but httpcore's pool bookkeeping, which grows with the number of
    connections and waiting requests on every request, stays constant.
    """
    size = concurrency if pool == "shared" else 1
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_SECONDS)
            )
            for _ in range(1 if pool == "shared" else concurrency)
        ]
        warmup = await load_phase(
            clients, target, fixture, duration=WARMUP_SECONDS, concurrency=concurrency
        )
        measured = await load_phase(
            clients, target, fixture, duration=duration, concurrency=concurrency
        )
    return warmup, measured


def client_loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The load generator's event loop (the servers' loop does not depend on it)."""
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def cache_missing_sniffio() -> None:
    """Make httpcore's per-request ``import sniffio`` cheap when sniffio is not installed.

    httpcore imports sniffio each time it creates a lock (several times per request). A failed
    import is not cached, so each one rescans ``sys.path``: about 15% of the load generator's
    CPU here. ``None`` in ``sys.modules`` makes the import fail at once, which is what
    httpcore already handles (it then assumes asyncio), so behaviour is unchanged.
    """
    if importlib.util.find_spec("sniffio") is None:
        sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]


# -- load: wrk ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Wrk:
    """The wrk binary, its version line, the Lua script on disk, and its thread count."""

    executable: str
    version: str
    script: Path
    threads: int


def wrk_script_text() -> str:
    return (
        WRK_SCRIPT.replace("EXHAUSTED_PATH", WRK_EXHAUSTED_PATH)
        .replace("MAX_SAMPLES", str(MAX_SAMPLE_BODIES))
        .replace("RESULT_PREFIX", WRK_RESULT_PREFIX)
    )


def wrk_version(executable: str) -> str:
    """First line of ``wrk -v`` (which prints its usage too, and exits 1)."""
    proc = subprocess.run(
        [executable, "-v"], capture_output=True, text=True, check=False, timeout=10
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else "wrk (unknown version)"


def request_line(method: str, path: str, body: bytes, headers: Mapping[str, str]) -> str:
    """One line of a wrk request file: tab-separated method, path, body, header pairs."""
    fields = [method, path, body.decode(), *itertools.chain.from_iterable(headers.items())]
    if any("\t" in f or "\n" in f for f in fields):
        raise ValueError("a request field contains a tab or a newline")
    return "\t".join(fields) + "\n"


def write_request_files(
    prefix: Path, fixture: Fixture, mode: str, *, threads: int, per_thread: int
) -> None:
    """Write ``<prefix><id>.txt`` for wrk threads 1..threads, each with ``per_thread``
    freshly signed requests (a new nonce each) with ``mode``'s body."""
    for thread_id in range(1, threads + 1):
        with Path(f"{prefix}{thread_id}.txt").open("w", encoding="utf-8", newline="\n") as f:
            for _ in range(per_thread):
                body, headers = signed_request(fixture, mode)
                f.write(request_line("POST", TOKEN_PATH, body, headers))


def presign_count(seconds: int, rate: float, threads: int) -> int:
    """Requests to pre-sign per wrk thread for ``seconds`` of load at up to ``rate`` req/s."""
    return math.ceil(seconds * rate / threads) + PRESIGN_MARGIN


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    wrk: Wrk, target: Target, prefix: Path, mode: str, *, seconds: int, concurrency: int
) -> PhaseResult:
    """Run wrk once against ``server`` and turn the JSON line its ``done()`` prints into a
    ``PhaseResult``. Client CPU is wrk's own (the only child waited for meanwhile).

    ``mode`` is the Lua script's: "once" or "cycle".
    """
    server = target.server
    cmd = [
        wrk.executable,
        f"-t{wrk.threads}",
        f"-c{concurrency}",
        f"-d{seconds}s",
        f"--timeout={math.ceil(REQUEST_TIMEOUT_SECONDS)}s",
        "-s",
        str(wrk.script),
        f"{server.base_url}{TOKEN_PATH}",
        "--",
        str(prefix),
        mode,
    ]
    server_cpu_before = process_cpu_seconds(server.proc.pid)
    client_cpu_before = children_cpu_seconds()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=seconds + 120)
    client_cpu = children_cpu_seconds() - client_cpu_before
    server_cpu_after = process_cpu_seconds(server.proc.pid)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(WRK_RESULT_PREFIX)]
    if proc.returncode != 0 or len(lines) != 1:
        raise RuntimeError(
            f"wrk failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    data: dict[str, Any] = json.loads(lines[0].removeprefix(WRK_RESULT_PREFIX))

    result = PhaseResult(target.label)
    result.elapsed = data["duration_us"] / 1e6
    issued = 0
    for thread in data["threads"]:
        issued += int(thread["issued"])
        result.out_of_presigned += int(thread["exhausted"])
        for status, n in thread["statuses"].items():
            result.statuses[status] += int(n)
        for key, body in sorted(thread["samples"].items()):
            result.add_sample(key.split(" ", 1)[0], body)
    result.ok = sum(n for status, n in result.statuses.items() if is_success(status))
    errors = data["errors"]
    for kind in ("connect", "read", "write"):
        if errors[kind]:
            result.socket_errors[kind] = int(errors[kind])
    result.timeouts = int(errors["timeout"])
    requests = int(data["requests"])
    # Sent by request() but never answered: in flight when wrk stopped its threads. wrk calls
    # the first thread's request() once before the run, to check that the request parses, and
    # never sends that one.
    result.unanswered = max(0, issued - 1 + result.out_of_presigned - requests)
    if requests:
        result.reported_percentiles = {
            50.0: data["latency_us"]["p50"] / 1000,
            99.0: data["latency_us"]["p99"] / 1000,
        }
    # Cross-checks between wrk's own counters and the script's per-status counts.
    over_399 = sum(n for s, n in result.statuses.items() if s.isdigit() and int(s) > 399)
    if sum(result.statuses.values()) != requests or over_399 != int(errors["status"]):
        log(
            f"warning: wrk counted {requests} answers and {errors['status']} with status > 399; "
            f"the script counted {dict(result.statuses)}"
        )
    if result.elapsed:
        result.client_cpu_pct = 100 * client_cpu / result.elapsed
        if server_cpu_before is not None and server_cpu_after is not None:
            result.server_cpu_pct = 100 * (server_cpu_after - server_cpu_before) / result.elapsed
    return result


def measure_wrk(
    wrk: Wrk,
    target: Target,
    fixture: Fixture,
    work_dir: Path,
    *,
    seconds: int,
    concurrency: int,
    presign_rate: float,
) -> tuple[PhaseResult, PhaseResult]:
    """Warm up for WARMUP_SECONDS, then measure; return (warm-up, measured).

    Vault: both phases' requests are signed first (fresh nonces, timestamps of now), so the
    two phases run back to back. Baseline: one signed request per thread, replayed.
    """
    warmup_seconds = math.ceil(WARMUP_SECONDS)
    prefixes = {
        "warm-up": work_dir / f"{target.file_key}-warmup-",
        "measured": work_dir / f"{target.file_key}-measured-",
    }
    if target.is_vault:
        mode = "once"
        for phase, phase_seconds in (("warm-up", warmup_seconds), ("measured", seconds)):
            per_thread = presign_count(phase_seconds, presign_rate, wrk.threads)
            log(
                f"  pre-signing {per_thread * wrk.threads} requests for the {phase} phase "
                f"({per_thread} per wrk thread, for up to {presign_rate:.0f} req/s) ..."
            )
            write_request_files(
                prefixes[phase], fixture, target.mode, threads=wrk.threads, per_thread=per_thread
            )
    else:
        mode = "cycle"
        for prefix in prefixes.values():
            write_request_files(prefix, fixture, target.mode, threads=wrk.threads, per_thread=1)
    try:
        warmup = run_wrk(
            wrk,
            target,
            prefixes["warm-up"],
            mode,
            seconds=warmup_seconds,
            concurrency=concurrency,
        )
        measured = run_wrk(
            wrk, target, prefixes["measured"], mode, seconds=seconds, concurrency=concurrency
        )
    finally:
        for prefix in prefixes.values():
            for thread_id in range(1, wrk.threads + 1):
                Path(f"{prefix}{thread_id}.txt").unlink(missing_ok=True)
    return warmup, measured


# -- audit --------------------------------------------------------------------------------


def audit_counts(db_path: Path) -> dict[str, int]:
    """``credential.retrieved`` rows per outcome, read straight from the SQLite file."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        rows = conn.execute(
            "SELECT outcome, count(*) FROM audit_events "
            "WHERE event = 'credential.retrieved' GROUP BY outcome"
        ).fetchall()
    return {str(outcome): int(n) for outcome, n in rows}


def policy_audit_counts(db_path: Path) -> dict[str, int]:
    """What one --compare-policies vault recorded: its successful retrievals, how many of
    their audit rows list exactly the applying policies, and the quota counters' total."""
    applying = POLICY_COUNT - POLICIES_NOT_APPLYING
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        success, listed = conn.execute(
            "SELECT count(*), coalesce(sum(json_array_length(details, '$.policies') = ?), 0) "
            "FROM audit_events WHERE event = 'credential.retrieved' AND outcome = 'success'",
            (applying,),
        ).fetchone()
        (charged,) = conn.execute("SELECT coalesce(sum(count), 0) FROM policy_counters").fetchone()
    return {"success": int(success), "listing_policies": int(listed), "quota_count": int(charged)}


# -- report -------------------------------------------------------------------------------


def mean_phase(name: str, phases: list[PhaseResult]) -> dict[str, Any]:
    """Average of several runs of one target (rps, p50, p99, errors)."""
    p50s = [p for p in (r.percentile(50) for r in phases) if p is not None]
    p99s = [p for p in (r.percentile(99) for r in phases) if p is not None]
    return {
        "target": name,
        "ok": sum(r.ok for r in phases),
        "rps": round(statistics.fmean(r.rps for r in phases), 1),
        "p50_ms": _round(statistics.fmean(p50s)) if p50s else None,
        "p99_ms": _round(statistics.fmean(p99s)) if p99s else None,
        "errors": sum(r.errors for r in phases),
        "out_of_presigned": sum(r.out_of_presigned for r in phases),
        "client_cpu_pct": None,
        "server_cpu_pct": None,
        "server_saturated": _all_saturated(phases),
    }


def _all_saturated(phases: list[PhaseResult]) -> bool | None:
    flags = [r.server_saturated for r in phases]
    return None if None in flags else all(flags)


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _rps_cell(row: Mapping[str, Any]) -> str:
    marks = ("!" if row["out_of_presigned"] else "") + (
        "*" if row["server_saturated"] is False else ""
    )
    return f"{_fmt(row['rps'], '.1f')}{marks:<2}"


def print_report(report: dict[str, Any]) -> None:
    cfg = report["config"]
    for warning in report["warnings"]:
        print(f"WARNING: {warning}")
    if report["warnings"]:
        print()
    print(
        f"POST /sdk/token ({' and '.join(cfg['modes'])} mode) vs bare FastAPI: "
        f"{cfg['concurrency']} concurrent connections, "
        f"{cfg['duration_s']:g} s per phase after a {cfg['warmup_s']:g} s warm-up, "
        f"{cfg['cpu_count']} CPU cores; load generator: {cfg['client_detail']}"
    )
    print()
    header = (
        f"{'target':<18} {'ok (2xx)':>8} {'req/s':>11} {'vs base':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'errors':>7} {'client CPU':>11} {'server CPU':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in report["rows"]:
        print(
            f"{row['target']:<18} {row['ok']:>8} {_rps_cell(row):>11} "
            f"{_fmt(row['vs_baseline'], '.3f'):>8} "
            f"{_fmt(row['p50_ms'], '.2f'):>8} {_fmt(row['p99_ms'], '.2f'):>8} "
            f"{row['errors']:>7} {_pct(row['client_cpu_pct']):>11} {_pct(row['server_cpu_pct']):>11}"
        )
    print()
    verdict = report["verdict"]
    upper_bound = (
        " (upper bound: the baseline server was not saturated)"
        if verdict["baseline_saturated"] is False
        else ""
    )
    for mode, rps, ratio in (
        ("grant_id", verdict["vault_rps"], verdict["ratio"]),
        ("jwt", verdict["jwt_rps"], verdict["jwt_ratio"]),
    ):
        if rps is not None:
            print(
                f"vault {mode} / baseline = {rps:.1f} / {verdict['baseline_rps']:.1f} "
                f"= {ratio:.3f}{upper_bound}"
            )
    if verdict.get("limiter"):
        lim = verdict["limiter"]
        print(
            f"limiter on / off = {lim['on_mean']:.1f} / {lim['off_mean']:.1f} retrievals/s "
            f"(runs: off {lim['off_rps']}, on {lim['on_rps']}): cost {100 * lim['cost']:.1f} %"
        )
        if lim["cpu_us_per_retrieval_off"] and lim["cpu_us_per_retrieval_on"]:
            print(
                f"server CPU per retrieval: off {lim['cpu_us_per_retrieval_off']:.0f} us, "
                f"on {lim['cpu_us_per_retrieval_on']:.0f} us"
            )
    if verdict.get("policies"):
        print_policies(verdict["policies"])
    if verdict["jwt_vs_grant_id"] is not None:
        print(
            f"vault jwt / vault grant_id = {verdict['jwt_rps']:.1f} / {verdict['vault_rps']:.1f} "
            f"= {verdict['jwt_vs_grant_id']:.3f}"
        )
    elif verdict["jwt_rps"] is not None:
        print("(vault jwt / vault grant_id, the JWT mode's target, needs --mode both)")
    for check in verdict["checks"]:
        status = "PASS" if check["pass"] else "MISS"
        print(f"  [{status}] {check['name']}: {check['value']} (target {check['target']})")
    print()
    audit = report["audit"]
    if audit["vault_unanswered"]:
        print(
            f"audit: {audit['vault_successes']} 2xx retrievals (warm-up and check requests "
            "included) + "
            f"{audit['vault_unanswered']} requests unanswered when wrk stopped; "
            f"{audit['rows_success']} credential.retrieved success rows, "
            f"{audit['rows_total']} in total -> "
            + ("consistent (2xx <= rows <= 2xx + unanswered)" if audit["match"] else "MISMATCH")
        )
    else:
        print(
            f"audit: {audit['vault_successes']} 2xx retrievals (warm-up and check requests "
            "included), "
            f"{audit['rows_success']} credential.retrieved success rows, "
            f"{audit['rows_total']} in total -> {'equal' if audit['match'] else 'MISMATCH'}"
        )
    for phase in report["phases"]:
        if phase["errors"]:
            print(f"\nerrors in {phase['target']} ({phase['kind']}): {phase['error_kinds']}")
            for status, bodies in phase["error_bodies"].items():
                for body in bodies:
                    print(f"  {status}: {body}")
        if phase["out_of_presigned"]:
            print(
                f"\n! {phase['target']} ({phase['kind']}): a wrk thread ran out of pre-signed "
                f"requests ({phase['out_of_presigned']} not sent) and stopped early, so this "
                "phase's req/s is too low. Rerun with a higher --presign-rate."
            )
    print()
    if any(row["server_saturated"] is False for row in report["rows"]):
        print(
            f"* not saturated: the server used < {SATURATED_CPU_PCT:g}% of its one core. With a "
            "busy client (httpx) the client was the limit and this req/s understates the "
            "server; with an idle one (wrk) the server was waiting on something other than "
            "its CPU (disk, locks, another thread)."
        )
    print(f"Note: {report['note']}")


def _cpu_us_per_retrieval(phases: list[PhaseResult]) -> float | None:
    """Server CPU time per 2xx answer over ``phases``: less sensitive than req/s to the
    machine's other load (a stolen core lowers req/s, not the CPU a request needs)."""
    if not phases or any(m.server_cpu_pct is None for m in phases):
        return None
    cpu = sum((m.server_cpu_pct or 0) / 100 * m.elapsed for m in phases)
    done = sum(m.ok for m in phases)
    return round(1e6 * cpu / done, 1) if done else None


def policy_comparison(
    runs: list[tuple[Target, PhaseResult, PhaseResult]], policy_audit: dict[str, dict[str, int]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """--compare-policies: each variant's runs and means, the two ratios, and the checks.

    (b)/(a) is the policies' share of throughput (target >= TARGET_POLICY_RATIO); (c)/(b)
    is the quota's, reported apart. The audit part proves what was measured: every success
    row of a vault with policies lists the applying ones, and the quota counter of (c)
    counts exactly its successful retrievals (charged in the same transaction).
    """
    applying = POLICY_COUNT - POLICIES_NOT_APPLYING
    variants: dict[str, Any] = {}
    for variant, label in POLICY_VARIANTS.items():
        phases = [m for t, _, m in runs if t.policies == variant]
        warm = [w for t, w, _ in runs if t.policies == variant]
        p50s = [p for p in (m.percentile(50) for m in phases) if p is not None]
        p99s = [p for p in (m.percentile(99) for m in phases) if p is not None]
        # The 2xx answers this vault gave (its check request included), against its rows.
        answered = 1 + sum(m.ok + w.ok for m, w in zip(phases, warm, strict=True))
        unanswered = sum(m.unanswered + w.unanswered for m, w in zip(phases, warm, strict=True))
        counts = policy_audit[variant]
        variants[variant] = {
            "label": label,
            "policies": 0 if variant == "none" else POLICY_COUNT,
            "applying": 0 if variant == "none" else applying,
            "quota": variant == "quota",
            "rps": [round(m.rps, 1) for m in phases],
            "rps_mean": round(statistics.fmean(m.rps for m in phases), 1),
            "p50_ms": [_round(p) for p in p50s],
            "p99_ms": [_round(p) for p in p99s],
            "p50_ms_mean": _round(statistics.fmean(p50s)) if p50s else None,
            "p99_ms_mean": _round(statistics.fmean(p99s)) if p99s else None,
            "errors": sum(m.errors for m in phases),
            "cpu_us_per_retrieval": _cpu_us_per_retrieval(phases),
            "server_saturated": _all_saturated(phases),
            "audit": {
                **counts,
                "answered_2xx": answered,
                "unanswered": unanswered,
                "rows_match": answered <= counts["success"] <= answered + unanswered,
                # Every success row lists the applying policies (none without policies) ...
                "policies_listed": counts["listing_policies"]
                == (0 if variant == "none" else counts["success"]),
                # ... and the quota counted exactly the successes of (c), nothing elsewhere.
                "quota_exact": counts["quota_count"]
                == (counts["success"] if variant == "quota" else 0),
            },
        }
    none, pol, quota = (variants[v] for v in ("none", "policies", "quota"))
    ratio = _ratio(pol["rps_mean"], none["rps_mean"]) or 0.0
    quota_ratio = _ratio(quota["rps_mean"], pol["rps_mean"]) or 0.0

    def cpu_ratio(num: dict[str, Any], den: dict[str, Any]) -> float | None:
        a, b = num["cpu_us_per_retrieval"], den["cpu_us_per_retrieval"]
        return round(b / a, 3) if a and b else None

    report = {
        "variants": variants,
        "policies_vs_none": ratio,
        "quota_vs_policies": quota_ratio,
        "quota_cost": round(1 - quota_ratio, 4),
        # The same ratios from server CPU per retrieval (inverted: a higher cost is a lower
        # ratio), for a machine whose other load makes req/s noisy.
        "cpu_policies_vs_none": cpu_ratio(pol, none),
        "cpu_quota_vs_policies": cpu_ratio(quota, pol),
        "audit_ok": all(
            v["audit"]["rows_match"] and v["audit"]["policies_listed"] and v["audit"]["quota_exact"]
            for v in variants.values()
        ),
    }
    checks = [
        {
            "name": f"{POLICY_COUNT} policies / no policies (req/s)",
            "value": ratio,
            "target": f">= {TARGET_POLICY_RATIO:g}",
            "pass": ratio >= TARGET_POLICY_RATIO,
        }
    ]
    return report, checks


def print_policies(pol: dict[str, Any]) -> None:
    """The --compare-policies summary: one row per variant over all its runs, then the two
    ratios and the audit proof."""
    print()
    header = (
        f"{'grant_id retrievals':<20} {'policies':>8} {'apply':>5} {'mean req/s':>10} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10}  runs (req/s)"
    )
    print(header)
    print("-" * len(header))
    for v in pol["variants"].values():
        name = v["label"] if not v["quota"] else f"{v['label']} rule"
        mark = "*" if v["server_saturated"] is False else ""
        print(
            f"{name:<20} {v['policies']:>8} {v['applying']:>5} "
            f"{_fmt(v['rps_mean'], '.1f') + mark:>10} {_fmt(v['p50_ms_mean'], '.2f'):>7} "
            f"{_fmt(v['p99_ms_mean'], '.2f'):>7} {_fmt(v['cpu_us_per_retrieval'], '.0f'):>10}  "
            + ", ".join(f"{x:.1f}" for x in v["rps"])
        )
    none, with_policies, quota = (pol["variants"][k] for k in ("none", "policies", "quota"))
    print()
    print(
        f"(b)/(a) {with_policies['label']} / {none['label']} = "
        f"{with_policies['rps_mean']:.1f} / {none['rps_mean']:.1f} = "
        f"{pol['policies_vs_none']:.3f} (from CPU per retrieval: "
        f"{_fmt(pol['cpu_policies_vs_none'], '.3f')})"
    )
    print(
        f"(c)/(b) quota rule: {quota['rps_mean']:.1f} / {with_policies['rps_mean']:.1f} = "
        f"{pol['quota_vs_policies']:.3f}, cost {100 * pol['quota_cost']:.1f} % "
        f"(from CPU per retrieval: {_fmt(pol['cpu_quota_vs_policies'], '.3f')})"
    )
    print(
        "policy audit (success rows, of which list the applying policies, quota count): "
        + "; ".join(
            f"{v['label']}: {v['audit']['success']}, {v['audit']['listing_policies']}, "
            f"{v['audit']['quota_count']}"
            for v in pol["variants"].values()
        )
        + f" -> {'consistent' if pol['audit_ok'] else 'MISMATCH'}"
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    return round(numerator / denominator, 3) if denominator else 0.0


def build_report(
    args: argparse.Namespace,
    runs: list[tuple[Target, PhaseResult, PhaseResult]],
    audit: dict[str, int],
    probes: int,
    policy_audit: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """``probes``: the vault's 2xx answers to ``verify_mode``'s check requests (audited too).
    ``policy_audit``: ``policy_audit_counts`` per --compare-policies variant."""
    baseline_runs = [m for t, _, m in runs if not t.is_vault]
    baseline_rps = statistics.fmean(r.rps for r in baseline_runs)
    # Measured vault rps per mode (each mode is measured once per run).
    mode_rps = {t.mode: m.rps for t, _, m in runs if t.is_vault}
    rows: list[dict[str, Any]] = []
    baseline_count = 0
    for target, _, measured in runs:
        row = {"mode": target.mode if target.is_vault else None, **measured.summary()}
        row["vs_baseline"] = _ratio(measured.rps, baseline_rps) if target.is_vault else None
        if not target.is_vault:
            baseline_count += 1
            if len(baseline_runs) > 1:
                row["target"] = f"baseline (run {baseline_count})"
        rows.append(row)
    if len(baseline_runs) > 1:
        rows.append(
            {"mode": None, **mean_phase("baseline (mean)", baseline_runs), "vs_baseline": None}
        )
    grant_rps, jwt_rps = mode_rps.get("grant_id"), mode_rps.get("jwt")
    ratio = _ratio(grant_rps, baseline_rps)
    jwt_vs_grant_id = _ratio(jwt_rps, grant_rps)
    checks: list[dict[str, Any]] = []
    if grant_rps is not None and ratio is not None:
        checks += [
            {
                "name": "retrievals/s (grant_id)",
                "value": round(grant_rps, 1),
                "target": f">= {TARGET_RPS:g}",
                "pass": grant_rps >= TARGET_RPS,
            },
            {
                "name": "vault grant_id / baseline",
                "value": ratio,
                "target": f">= {TARGET_RATIO:g}",
                "pass": ratio >= TARGET_RATIO,
            },
        ]
    if jwt_vs_grant_id is not None:
        checks.append(
            {
                "name": "vault jwt / vault grant_id",
                "value": jwt_vs_grant_id,
                "target": f">= {TARGET_JWT_RATIO:g}",
                "pass": jwt_vs_grant_id >= TARGET_JWT_RATIO,
            }
        )
    limiter: dict[str, Any] | None = None
    if any(t.limiter is not None for t, _, _ in runs):
        off = [m.rps for t, _, m in runs if t.limiter is False]
        on = [m.rps for t, _, m in runs if t.limiter is True]
        off_rps, on_rps = statistics.fmean(off), statistics.fmean(on)
        cost = 1 - on_rps / off_rps if off_rps else 0.0

        cpu_off = _cpu_us_per_retrieval([m for t, _, m in runs if t.limiter is False])
        cpu_on = _cpu_us_per_retrieval([m for t, _, m in runs if t.limiter is True])
        grant_rps = off_rps
        ratio = _ratio(grant_rps, baseline_rps)
        limiter = {
            "off_rps": [round(x, 1) for x in off],
            "on_rps": [round(x, 1) for x in on],
            "off_mean": round(off_rps, 1),
            "on_mean": round(on_rps, 1),
            "cost": round(cost, 4),
            "cpu_us_per_retrieval_off": cpu_off,
            "cpu_us_per_retrieval_on": cpu_on,
        }
        checks = [
            {
                "name": "limiter cost (1 - on/off)",
                "value": round(cost, 4),
                "target": f"< {TARGET_LIMITER_COST:g}",
                "pass": cost < TARGET_LIMITER_COST,
            }
        ]
    policy_report: dict[str, Any] | None = None
    if policy_audit is not None:
        policy_report, checks = policy_comparison(runs, policy_audit)
        grant_rps = policy_report["variants"]["none"]["rps_mean"]
        ratio = _ratio(grant_rps, baseline_rps)
    vault_runs = [(w, m) for t, w, m in runs if t.is_vault]
    vault_successes = probes + sum(w.ok + m.ok for w, m in vault_runs)
    vault_unanswered = sum(w.unanswered + m.unanswered for w, m in vault_runs)
    rows_success = audit.get("success", 0)
    if args.client == "wrk":
        note = (
            f"wrk runs on the same {os.cpu_count()}-core machine as the servers (CPU columns: "
            "100% = one core) but needs far less CPU per request than they do, so a "
            "single-process server can use its whole core. wrk's latency covers all answers "
            "(errors included); a request in flight when wrk stops is neither counted nor timed."
        )
    else:
        note = (
            f"the load generator runs in this process on the same {os.cpu_count()}-core machine "
            "as the servers and competes with them for CPU (CPU columns: 100% = one core). "
            "It needs more CPU per request than the bare baseline does, so the baseline is "
            f"not saturated and the ratio is an upper bound; {INSTALL_WRK_HINT}."
        )
    return {
        "config": {
            "client": args.client,
            "client_detail": args.client_detail,
            "duration_s": args.duration,
            "warmup_s": WARMUP_SECONDS,
            "modes": list(args.modes),
            "concurrency": args.concurrency,
            "cpu_count": os.cpu_count(),
            "repeat_baseline": args.repeat_baseline,
            "pool": args.pool if args.client == "httpx" else None,
            "client_loop": args.client_loop if args.client == "httpx" else None,
            "wrk_threads": args.threads if args.client == "wrk" else None,
            "presign_rate": args.presign_rate if args.client == "wrk" else None,
            "saturated_cpu_pct": SATURATED_CPU_PCT,
            "compare_limiter": args.compare_limiter,
            "compare_policies": args.compare_policies,
        },
        "warnings": args.warnings,
        "rows": rows,
        "phases": [
            {"kind": kind, **phase.summary()}
            for _, warm, measured in runs
            for kind, phase in (("warm-up", warm), ("measured", measured))
        ],
        # vault_rps and ratio are grant_id mode's (null when it was not measured).
        "verdict": {
            "vault_rps": _round(grant_rps, 1),
            "baseline_rps": round(baseline_rps, 1),
            "ratio": ratio,
            "jwt_rps": _round(jwt_rps, 1),
            "jwt_ratio": _ratio(jwt_rps, baseline_rps),
            "jwt_vs_grant_id": jwt_vs_grant_id,
            "baseline_saturated": _all_saturated(baseline_runs),
            "checks": checks,
            "limiter": limiter,
            "policies": policy_report,
        },
        "audit": {
            "vault_successes": vault_successes,
            "vault_probes": probes,
            "vault_unanswered": vault_unanswered,
            "rows_success": rows_success,
            "rows_total": sum(audit.values()),
            "rows_by_outcome": audit,
            "match": vault_successes <= rows_success <= vault_successes + vault_unanswered,
        },
        "note": note,
    }


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="Seconds measured per phase (default 10; whole seconds with wrk).",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="Concurrent connections (wrk) or workers (httpx) (default 32).",
    )
    parser.add_argument(
        "--mode",
        choices=[*MODES, "both"],
        default="both",
        help="How vault requests name their grant: grant_id (the system grant's id), jwt (the "
        "secret's slug and the end user's ID token, verified against the app's IdP; starts the "
        "OIDC peer, needs Node.js), or both, measured one after the other (default both).",
    )
    parser.add_argument(
        "--repeat-baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Measure the baseline again after the vault and average both runs (default on).",
    )
    parser.add_argument(
        "--client",
        choices=["wrk", "httpx"],
        default=None,
        help="Load generator: wrk (default when on PATH) or httpx (this process; its "
        "baseline figure is client-bound).",
    )
    wrk_group = parser.add_argument_group("wrk")
    wrk_group.add_argument(
        "--threads",
        type=int,
        default=WRK_THREADS,
        help=f"wrk threads, at most --concurrency (default {WRK_THREADS}).",
    )
    wrk_group.add_argument(
        "--presign-rate",
        type=float,
        default=PRESIGN_RATE,
        help="Vault requests pre-signed per second of each phase; raised to "
        f"{PRESIGN_BASELINE_FACTOR:g}x the fastest baseline run (default {PRESIGN_RATE:g}).",
    )
    httpx_group = parser.add_argument_group("httpx")
    httpx_group.add_argument(
        "--pool",
        choices=["per-worker", "shared"],
        default="per-worker",
        help="per-worker: one httpx client and connection per worker (default); shared: one "
        "client whose pool holds --concurrency connections (costs the client more CPU).",
    )
    httpx_group.add_argument(
        "--client-uvloop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Run the load generator on uvloop when installed (default on; servers unaffected).",
    )
    parser.add_argument(
        "--compare-limiter",
        action="store_true",
        help="Measure grant_id retrievals with the abuse limits off and on (two otherwise "
        "identical vault processes, order off, on, on, off) and report the limiter's cost.",
    )
    parser.add_argument(
        "--limiter-rounds",
        type=int,
        default=2,
        help="With --compare-limiter: how many off, on, on, off sequences (default 2).",
    )
    parser.add_argument(
        "--compare-policies",
        action="store_true",
        help=f"Measure grant_id retrievals on three otherwise identical vault processes: no "
        f"policies, {POLICY_COUNT} policies ({POLICY_COUNT - POLICIES_NOT_APPLYING} apply to "
        "the grant and allow the call), and the same with a per-grant quota rule (order "
        "a, b, c, c, b, a); report (b)/(a) and the quota's cost (c)/(b).",
    )
    parser.add_argument(
        "--policy-rounds",
        type=int,
        default=2,
        help="With --compare-policies: how many a, b, c, c, b, a sequences (default 2).",
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1:
        parser.error("--duration must be > 0 and --concurrency >= 1")
    args.modes = MODES if args.mode == "both" else (args.mode,)
    if args.compare_limiter and args.compare_policies:
        parser.error("--compare-limiter and --compare-policies are separate runs")
    if args.limiter_rounds < 1 or args.policy_rounds < 1:
        parser.error("--limiter-rounds and --policy-rounds must be >= 1")
    if args.compare_limiter or args.compare_policies:
        args.modes = ("grant_id",)
    args.warnings = []
    args.wrk_path = shutil.which("wrk")
    if args.client is None:
        if args.wrk_path is not None:
            args.client = "wrk"
        else:
            args.client = "httpx"
            args.warnings.append(
                "wrk is not on PATH, so the load generator is httpx in this Python process. "
                "It is slower than the baseline server, so the baseline figure and the "
                f"vault/baseline ratio are not trustworthy; {INSTALL_WRK_HINT}."
            )
    if args.client == "wrk":
        if args.wrk_path is None:
            parser.error(f"wrk is not on PATH: {INSTALL_WRK_HINT}, or use --client httpx")
        if not args.duration.is_integer():
            parser.error("with wrk, --duration must be a whole number of seconds")
        if args.duration > WRK_MAX_DURATION_SECONDS:
            parser.error(
                f"with wrk, --duration must be <= {WRK_MAX_DURATION_SECONDS}: pre-signed "
                "timestamps must stay within the vault's 300 s window"
            )
        if args.threads < 1 or args.presign_rate <= 0:
            parser.error("--threads must be >= 1 and --presign-rate > 0")
        args.threads = min(args.threads, args.concurrency)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for warning in args.warnings:
        log(f"WARNING: {warning}")
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    args.client_loop = None
    if args.client == "httpx":
        cache_missing_sniffio()
        loop_factory = client_loop_factory(args.client_uvloop)
        args.client_loop = "uvloop" if loop_factory is not None else "asyncio"
        args.client_detail = f"httpx in this process ({args.pool} pool) on {args.client_loop}"
    with (
        tempfile.TemporaryDirectory(prefix="grantvault-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        data_dir = Path(tmp)
        wrk: Wrk | None = None
        if args.client == "wrk":
            script = data_dir / "token_retrieval.lua"
            script.write_text(wrk_script_text())
            wrk = Wrk(args.wrk_path, wrk_version(args.wrk_path), script, args.threads)
            args.client_detail = f"{wrk.version.split(' [', 1)[0]}, {wrk.threads} threads"
        env = vault_env(data_dir)
        peer: Peer | None = None
        if "jwt" in args.modes:
            log("starting the OIDC peer (the app's identity provider in JWT mode) ...")
            peer = start_peer(PEER_ID_TOKEN_TTL=ID_TOKEN_TTL_SECONDS)
            stack.callback(peer.stop)
        log(
            "preparing the vault (app, key, secret, credential, grant"
            + (f"; IdP, user grant, {JWT_USER}'s login" if peer is not None else "")
            + ") ..."
        )
        fixture = prepare_vault(env, peer)
        baseline_script = data_dir / "baseline_app.py"
        baseline_script.write_text(BASELINE_APP)

        vault_port, baseline_port = free_port(), free_port()
        vault_cmd = [sys.executable, "-m", "grantvault_server", "serve", "--port", str(vault_port)]
        baseline_cmd = [sys.executable, str(baseline_script), str(baseline_port)]
        runs: list[tuple[Target, PhaseResult, PhaseResult]] = []
        limited_dir = data_dir / "limited"
        policy_dirs: dict[str, Path] = {}
        if args.compare_policies:
            log(
                f"storing {POLICY_COUNT} policies ({POLICIES_NOT_APPLYING} of them for other "
                "grants) in two copies of the vault, one with a quota ..."
            )
            policy_dirs = prepare_policy_vaults(data_dir, fixture)
        if args.compare_limiter:
            # Same vault (app, key, grant), its own copy: the two processes never share a file.
            copy_vault(data_dir, limited_dir)
            env = {**env, **LIMITER_OFF_ENV}
        else:
            # Throughput runs measure the limiter's work but must not be throttled by it: one
            # key sends far more than the default budget here, which is the limiter's job.
            env = {**env, **LIMITER_ON_ENV}
        with (
            running_server("vault", vault_cmd, vault_port, env, data_dir) as vault,
            running_server("baseline", baseline_cmd, baseline_port, env, data_dir) as baseline,
            contextlib.ExitStack() as extra_stack,
        ):
            # One vault process serves every mode, one mode after the other.
            vault_targets = [Target(f"vault {mode}", vault, mode) for mode in args.modes]
            if args.compare_limiter:
                limited_port = free_port()
                limited = extra_stack.enter_context(
                    running_server(
                        "vault-limited",
                        [*vault_cmd[:-1], str(limited_port)],
                        limited_port,
                        {
                            **env,
                            **LIMITER_ON_ENV,
                            "GRANTVAULT_RATE_LIMIT_PER_IP": "600",
                            "GRANTVAULT_DATA_DIR": str(limited_dir),
                        },
                        data_dir,
                    )
                )
                off = Target("limiter off", vault, "grant_id", limiter=False)
                on = Target("limiter on", limited, "grant_id", limiter=True)
                vault_targets = [off, on, on, off] * args.limiter_rounds
            if args.compare_policies:
                variants = {"none": vault}
                for variant in ("policies", "quota"):
                    port = free_port()
                    variants[variant] = extra_stack.enter_context(
                        running_server(
                            f"vault-{variant}",
                            [*vault_cmd[:-1], str(port)],
                            port,
                            {**env, "GRANTVAULT_DATA_DIR": str(policy_dirs[variant])},
                            data_dir,
                        )
                    )
                a, b, c = (
                    Target(f"vault {POLICY_VARIANTS[v]}", variants[v], "grant_id", policies=v)
                    for v in ("none", "policies", "quota")
                )
                # Mirrored, so that a drift of the machine's speed cancels out of the means.
                vault_targets = [a, b, c, c, b, a] * args.policy_rounds
            baseline_target = Target("baseline", baseline, "grant_id")
            order = [baseline_target, *vault_targets]
            if args.repeat_baseline:
                order.append(baseline_target)
            distinct = list({t.label: t for t in vault_targets}.values())
            for target in distinct:
                verify_mode(target, fixture)
            for target in order:
                log(
                    f"measuring {target.label}: {WARMUP_SECONDS:g} s warm-up + "
                    f"{args.duration:g} s ..."
                )
                if wrk is not None:
                    fastest_baseline = max(
                        (m.rps for t, _, m in runs if not t.is_vault), default=0.0
                    )
                    warm, measured = measure_wrk(
                        wrk,
                        target,
                        fixture,
                        data_dir,
                        seconds=int(args.duration),
                        concurrency=args.concurrency,
                        presign_rate=max(
                            args.presign_rate, PRESIGN_BASELINE_FACTOR * fastest_baseline
                        ),
                    )
                else:
                    with asyncio.Runner(loop_factory=loop_factory) as runner:
                        warm, measured = runner.run(
                            measure_httpx(
                                target,
                                fixture,
                                duration=args.duration,
                                concurrency=args.concurrency,
                                pool=args.pool,
                            )
                        )
                runs.append((target, warm, measured))
        # Both servers have stopped. Every committed audit row is in the database file or its
        # WAL, and sqlite3 reads both.
        audit = audit_counts(data_dir / "grantvault.db")
        if args.compare_limiter:
            audit = dict(Counter(audit) + Counter(audit_counts(limited_dir / "grantvault.db")))
        policy_audit: dict[str, dict[str, int]] | None = None
        if args.compare_policies:
            for variant in ("policies", "quota"):
                extra = audit_counts(policy_dirs[variant] / "grantvault.db")
                audit = dict(Counter(audit) + Counter(extra))
            policy_audit = {
                variant: policy_audit_counts(directory / "grantvault.db")
                for variant, directory in policy_dirs.items()
            }
        report = build_report(args, runs, audit, probes=len(distinct), policy_audit=policy_audit)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
