#!/usr/bin/env python3
"""Replays the attacks of issue 16 (a black-box audit of a running broker) and prints what held.

    python3 tests/attacks/replay.py http://127.0.0.1:8080 [--admin-key K] [--api-key K]
                                    [--ui-user U --ui-password P] [--quick]

Standard library only. Point it at a broker you run yourself (local mode unless noted); it
sends traffic only to that base URL and, for the redirect attack, to a stand-in backend it
starts on 127.0.0.1. Every attack is bounded in count and time.

Notes for a clean run:
- The guessing attack runs last: it gets this client's IP throttled for a minute (that is
  the point), so credentialed checks after it would see 429.
- With the default SWITCHBOARD_RATE_LIMIT_PER_MIN=60 some probes may meet the request-rate
  limit; start the broker with SWITCHBOARD_RATE_LIMIT_PER_MIN=0 to see each rule on its own.
- Rows marked "n/a" could not be tried against this broker (a credential not given, the
  push gateway off, a backend that cannot be registered in public mode).
"""

import argparse
import base64
import http.server
import json
import os
import socket
import struct
import sys
import threading
import time
import urllib.parse

RESULTS = []


def record(finding, attack, expected, observed, held):
    RESULTS.append((finding, attack, expected, observed, held))
    mark = {True: "held", False: "FAILED", None: "n/a"}[held]
    print(f"  [{mark:>6}] {finding:>4} {attack}: {observed}", flush=True)


class Target:
    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        if u.scheme != "http":
            sys.exit("replay.py speaks plain http only (run it next to the broker)")
        self.host = u.hostname
        self.port = u.port or 80
        self.authority = f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"
        self.origin = f"http://{self.authority}"

    def connect(self, timeout=10):
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def request(self, method, path, headers=None, body=b"", timeout=10, host=None):
        """One HTTP/1.1 exchange on a fresh connection: (status, headers dict, body bytes)."""
        if isinstance(body, str):
            body = body.encode()
        h = {"Host": host or self.authority, "Connection": "close"}
        h.update(headers or {})
        if body:
            h["Content-Length"] = str(len(body))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        s = self.connect(timeout)
        try:
            s.sendall(head.encode("latin-1") + body)
            return read_response(s, stop_at_101=True)
        finally:
            s.close()


def read_response(s, stop_at_101=False):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the response head ({len(buf)} bytes)")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), v.strip())
    if status == 101 and stop_at_101:
        return status, headers, rest
    length = int(headers.get("content-length", "-1"))
    body = rest
    while length < 0 or len(body) < length:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        body += chunk
    return status, headers, body


def error_code(body):
    try:
        return json.loads(body)["error"]["code"]
    except Exception:
        return None


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------- a tiny WebSocket client

WS_HEADERS = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


def frame(opcode, payload, mask=True, fin=True, length=None):
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", first, (0x80 if mask else 0) | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def ws_open(t, extra=None, timeout=10):
    s = t.connect(timeout)
    h = {"Host": t.authority, **WS_HEADERS, **(extra or {})}
    s.sendall((f"GET /ws HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode())
    status, headers, rest = read_response(s, stop_at_101=True)
    return s, status, rest


def ws_frames(s, buf=b"", timeout=2.0):
    """Yields (opcode, payload) of server frames until the socket closes or goes quiet."""
    deadline = time.time() + timeout
    while True:
        while len(buf) >= 2:
            b1, b2 = buf[0], buf[1]
            n, off = b2 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, off = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, off = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < off + n:
                break
            yield b1 & 0x0F, buf[off:off + n]
            buf = buf[off + n:]
        left = deadline - time.time()
        if left <= 0:
            return
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except (socket.timeout, OSError):
            return
        if not chunk:
            yield None, b""  # TCP closed
            return
        buf += chunk


def close_code(s, buf=b"", timeout=2.0):
    for op, payload in ws_frames(s, buf, timeout):
        if op is None:
            return "dropped (no close frame)"
        if op == 0x8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else "close without code"
    return "nothing within %.1f s" % timeout


def ws_hello(t, auth):
    s, status, rest = ws_open(t, auth)
    if status != 101:
        return None, status
    s.sendall(frame(0x1, json.dumps({"type": "hello"}).encode()))
    for op, payload in ws_frames(s, rest, 3.0):
        if op == 0x1 and b'"session"' in payload:
            return s, 101
        if op in (None, 0x8):
            break
    return s, 101


# ---------------------------------------------------------------- the attacks


def attack_frame_size(t, auth):
    """#1: a frame header announcing 256 MiB; 1009 at the header, memory flat."""
    s, status = ws_hello(t, auth)
    if s is None:
        return record("1", "256 MiB WebSocket frame", "1009 at the header", f"upgrade answered {status}", None)
    start = time.time()
    s.sendall(struct.pack("!BBQ", 0x81, 0x80 | 127, 1 << 28) + os.urandom(4))
    sent = 0
    code = None
    s.settimeout(0.05)
    chunk = b"x" * 65536
    while time.time() - start < 3.0 and sent < 64 * 1024 * 1024:
        try:
            s.sendall(chunk)
            sent += len(chunk)
        except OSError:
            break
        try:
            data = s.recv(65536)
            if data:
                code = close_code(s, data, 0.2)
                break
        except (socket.timeout, BlockingIOError):
            pass
        except OSError:
            break
    if code is None:
        code = close_code(s, b"", 1.0)
    elapsed = (time.time() - start) * 1000
    s.close()
    held = code == 1009 and sent < 32 * 1024 * 1024
    record("1", "256 MiB WebSocket frame", "1009 before the payload", f"close {code} after {elapsed:.0f} ms, {sent >> 20} MiB sent", held)


def attack_origin(t, auth):
    """#2: cross-site WebSocket hijacking and CSRF."""
    for origin in ("http://evil.example", "null"):
        _, status, _ = ws_open(t, {"Origin": origin, **auth})
        record("2", f"/ws with Origin: {origin}", "403", str(status), status == 403)
    _, status, _ = ws_open(t, {"Origin": t.origin, **auth})
    record("2", "/ws from the broker's own origin", "101 (the compare page works)", str(status), status == 101)
    chat = json.dumps({"model": "replay-model", "messages": [{"role": "user", "content": "hi"}]})
    st, _, body = t.request("POST", "/v1/chat/completions", {"Origin": "http://evil.example", "Content-Type": "text/plain"}, chat)
    record("2", "text/plain POST /v1 from a foreign Origin", "403", f"{st} {error_code(body)}", st == 403)
    st, _, body = t.request("POST", "/api/sessions", {"Origin": "http://evil.example", **auth}, "{}")
    record("2", "POST /api/sessions from a foreign Origin", "403", f"{st} {error_code(body)}", st == 403)
    st, _, body = t.request("GET", "/", {**auth}, host=f"evil.example:{t.port}")
    local = st != 200 or error_code(body) == "host_not_allowed"
    record("2", "page with a foreign Host (DNS rebinding)", "403 host_not_allowed (local mode)", f"{st} {error_code(body)}", local)
    st, _, body = t.request("POST", "/api/sessions", {**auth}, "{}", host=f"evil.example:{t.port}")
    record("2", "POST /api/sessions with a foreign Host", "403 host_not_allowed (local mode)", f"{st} {error_code(body)}", st == 403)


def attack_slow_body(t, timeout_s=10):
    """#4: a chunked body that never finishes must be answered 408 and closed."""
    s = t.connect(timeout_s + 5)
    auth = "".join(f"{k}: {v}\r\n" for k, v in API.items())
    s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: {t.authority}\r\nContent-Type: application/json\r\n"
               f"{auth}Transfer-Encoding: chunked\r\n\r\n5\r\n{{\"mod\r\n").encode())
    start = time.time()
    try:
        status, _, _ = read_response(s)
    except Exception as e:  # noqa: BLE001
        status = f"no answer ({type(e).__name__})"
    closed = False
    try:
        s.settimeout(2)
        closed = s.recv(1) == b""
    except OSError:
        closed = True
    s.close()
    took = time.time() - start
    if status == 429:
        return record("4", "unfinished chunked body", "408", "rate limited before the body was read (429)", None)
    record("4", "unfinished chunked body", f"408 and close within {timeout_s + 1} s", f"{status} after {took:.1f} s, closed={closed}", status == 408 and took <= timeout_s + 1 and closed)


def attack_metric_labels(t, admin):
    """#5: unregistered model names must not become metric labels."""
    if not admin:
        return record("5", "100 000-character model names", "/metrics < 1 MB larger", "no --admin-key", None)
    def size():
        st, _, body = t.request("GET", "/metrics", {"X-API-Key": admin})
        return len(body) if st == 200 else None
    before = size()
    if before is None:
        return record("5", "100 000-character model names", "/metrics < 1 MB larger", "cannot read /metrics", None)
    statuses = set()
    for i in range(12):
        body = json.dumps({"model": f"{i}" + "x" * 100_000, "messages": [{"role": "user", "content": "hi"}]})
        st, _, _ = t.request("POST", "/v1/chat/completions", {"Content-Type": "application/json", **API}, body)
        statuses.add(st)
    grown = (size() or 0) - before
    record("5", "12 x 100 000-character model names", "/metrics < 1 MB larger", f"+{grown} bytes (answers {sorted(statuses)})", grown < 1_000_000)


def attack_log_forging(t, auth):
    """#7: control characters in request ids and model names are refused (400)."""
    forged = "r1\n[2025-01-01T00:00:00Z WARN  switchboard::auth] FORGED LINE"
    body = json.dumps({"model": "m" + forged, "messages": [{"role": "user", "content": "hi"}]})
    st, _, resp = t.request("POST", "/v1/chat/completions", {"Content-Type": "application/json", **API}, body)
    record("7", "model name with a newline (/v1)", "400", f"{st} param={param_of(resp)}", st == 400)
    st, _, resp = t.request("POST", "/v1/chat/completions", {"Content-Type": "application/json", "X-Request-Id": "a\tb", **API}, body)
    record("7", "X-Request-Id with a control character", "400", f"{st} param={param_of(resp)}", st == 400)
    st, _, resp = t.request("POST", "/api/sessions", {**auth}, "{}")
    if st != 201:
        return record("7", "session request_id with a newline", "400", f"cannot create a session ({st})", None)
    sid = json.loads(resp)["session_id"]
    msg = json.dumps({"request_id": forged, "content": "hi", "models": ["m"]})
    st, _, resp = t.request("POST", f"/api/sessions/{sid}/messages", {"Content-Type": "application/json", **auth}, msg)
    record("7", "session request_id with a newline (REST)", "400", f"{st} param={param_of(resp)}", st == 400)
    s, status = ws_hello(t, auth)
    if s is None:
        return record("7", "cancel with a newline (WebSocket)", "invalid_message", f"upgrade {status}", None)
    s.sendall(frame(0x1, json.dumps({"type": "cancel", "request_id": forged}).encode()))
    got = None
    for op, payload in ws_frames(s, b"", 2.0):
        if op == 0x1 and b'"error"' in payload:
            got = json.loads(payload).get("code")
            break
    s.close()
    record("7", "cancel with a newline (WebSocket)", "error invalid_message (not logged)", str(got), got == "invalid_message")


def param_of(body):
    try:
        return json.loads(body)["error"]["param"]
    except Exception:
        return None


def attack_ws_protocol_error(t, auth):
    """#7: a protocol error closes with 1002, not a dropped connection."""
    s, status = ws_hello(t, auth)
    if s is None:
        return record("7", "WebSocket protocol error", "close 1002", f"upgrade {status}", None)
    s.sendall(frame(0x1, b'{"type":"ping"}', mask=False))  # clients must mask
    code = close_code(s, b"", 2.0)
    s.close()
    record("7", "WebSocket protocol error (unmasked frame)", "close 1002", str(code), code == 1002)


def attack_hello_flood(t, auth, n=60):
    """#7: /ws hellos creating sessions are rate checked."""
    created = refused = 0
    for _ in range(n):
        s, status, rest = ws_open(t, auth)
        if status != 101:
            refused += 1
            continue
        s.sendall(frame(0x1, json.dumps({"type": "hello"}).encode()))
        code = None
        for op, payload in ws_frames(s, rest, 1.0):
            if op == 0x1 and b'"session"' in payload:
                created += 1
                break
            if op == 0x8 or op is None:
                refused += 1
                break
        s.close()
    record("7", f"{n} /ws hellos in a row", "some refused (rate checked)", f"{created} sessions created, {refused} refused", refused > 0)


def attack_push_flood(t, limit=300):
    """#7: /push/* connects count against the per-IP rate limit (stops at the first 429)."""
    statuses = {}
    for i in range(limit):
        st, _, _ = t.request("GET", f"/push/replay{i}", timeout=5)
        statuses[st] = statuses.get(st, 0) + 1
        if st == 404:
            return record("7", "/push connect flood", "429 past the rate limit", "push gateway off (404)", None)
        if st == 429:
            break
    n = sum(statuses.values())
    record("7", "/push connect flood", "429 past the rate limit", f"{n} connects: {statuses}", 429 in statuses)


def attack_nosniff(t):
    st, h, _ = t.request("GET", "/v1/nothing-here")
    record("7", "JSON error has X-Content-Type-Options", "nosniff", f"{st} {h.get('x-content-type-options')}", h.get("x-content-type-options") == "nosniff")
    st, h, _ = t.request("GET", "/v1/chat/completions")
    record("-", "known path, wrong method", "405 with Allow", f"{st} Allow={h.get('allow')}", st == 405 and "POST" in (h.get("allow") or ""))


class Redirector(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # health checks pass
        body = b'{"object":"list","data":[]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(302)
        self.send_header("Location", "http://10.1.2.3:8000/internal")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def attack_redirect(t, admin):
    """#7: a backend's 3xx is answered 502, its Location never relayed."""
    if not admin:
        return record("7", "backend answers 302", "502 without Location", "no --admin-key", None)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    reg = json.dumps({"model_name": "replay-redirect", "endpoint_url": url, "verify": False})
    st, _, body = t.request("POST", "/admin/register", {"X-API-Key": admin, "Content-Type": "application/json"}, reg)
    if st != 201:
        server.shutdown()
        return record("7", "backend answers 302", "502 without Location", f"cannot register a loopback backend ({st}; public mode?)", None)
    rid = json.loads(body)["registration_id"]
    chat = json.dumps({"model": "replay-redirect", "messages": [{"role": "user", "content": "hi"}]})
    st, h, resp = t.request("POST", "/v1/chat/completions", {"Content-Type": "application/json", **API}, chat)
    t.request("DELETE", f"/admin/register/{rid}", {"X-API-Key": admin})
    server.shutdown()
    leaked = "location" in h or b"10.1.2.3" in resp
    record("7", "backend answers 302", "502 without Location", f"{st} location={h.get('location')}", st == 502 and not leaked)


def attack_guessing(t, admin, ui):
    """#3: after 10 failed credential checks a minute, 429 with Retry-After (runs last)."""
    seen = []
    retry = None
    for i in range(25):
        st, h, _ = t.request("GET", "/admin/stats", {"X-API-Key": f"wrong-key-{i}"})
        seen.append(st)
        retry = h.get("retry-after", retry)
    first_429 = seen.index(429) + 1 if 429 in seen else None
    record("3", "25 wrong admin keys", "429 from the 11th, Retry-After", f"first 429 at attempt {first_429}, Retry-After {retry}", first_429 == 11 and retry is not None)
    if admin:
        st, _, _ = t.request("GET", "/admin/stats", {"X-API-Key": admin})
        record("3", "the right key while throttled", "429 (no oracle)", str(st), st == 429)
    if not ui:
        return record("3", "Basic on pages while throttled", "429 (every surface)", "no UI password set (pages are open)", None)
    st, _, _ = t.request("GET", "/dashboard", {"Authorization": basic("admin", "wrong")})
    record("3", "Basic on pages while throttled", "429 (every surface)", str(st), st == 429)


API = {}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", help="the broker's base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--admin-key")
    ap.add_argument("--api-key", help="a valid client key, when SWITCHBOARD_API_KEYS is set")
    ap.add_argument("--ui-user", default="admin")
    ap.add_argument("--ui-password")
    ap.add_argument("--request-timeout", type=int, default=10, help="SWITCHBOARD_REQUEST_TIMEOUT_S of the broker")
    ap.add_argument("--quick", action="store_true", help="skip the slow-body attack")
    args = ap.parse_args()
    t = Target(args.base)
    auth = {"Authorization": basic(args.ui_user, args.ui_password)} if args.ui_password else {}
    if args.api_key:
        API["Authorization"] = f"Bearer {args.api_key}"
    print(f"replaying issue 16 against {args.base}")
    steps = [
        lambda: attack_origin(t, auth),
        lambda: attack_frame_size(t, auth),
    ]
    if not args.quick:  # early: later probes use up the request-rate budget of /v1
        steps.append(lambda: attack_slow_body(t, args.request_timeout))
    steps += [
        lambda: attack_metric_labels(t, args.admin_key),
        lambda: attack_log_forging(t, auth),
        lambda: attack_ws_protocol_error(t, auth),
        lambda: attack_nosniff(t),
        lambda: attack_redirect(t, args.admin_key),
        lambda: attack_hello_flood(t, auth),
        lambda: attack_push_flood(t),
    ]
    steps.append(lambda: attack_guessing(t, args.admin_key, args.ui_password))
    for step in steps:
        try:
            step()
        except Exception as e:  # noqa: BLE001 - one broken probe must not hide the others
            record("?", getattr(step, "__name__", "attack"), "-", f"probe failed: {type(e).__name__}: {e}", None)
    print()
    w = max(len(r[1]) for r in RESULTS)
    print(f"{'#':>2}  {'attack':<{w}}  {'result':<6}  observed")
    for finding, attack, expected, observed, held in RESULTS:
        mark = {True: "held", False: "FAILED", None: "n/a"}[held]
        print(f"{finding:>2}  {attack:<{w}}  {mark:<6}  {observed}  (expected {expected})")
    failed = sum(1 for r in RESULTS if r[4] is False)
    held = sum(1 for r in RESULTS if r[4] is True)
    print(f"\n{held} held, {failed} failed, {len(RESULTS) - held - failed} not tried")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
