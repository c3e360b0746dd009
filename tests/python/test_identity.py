"""Identity from a real OpenID Connect provider (SPEC §13): the certified `oidc-provider` npm
package, run by tests/oidc/provider.mjs on a free loopback port (installed by `npm ci` there).

Tokens come from the provider's own endpoints (client credentials; authorization code with
PKCE through its login interaction), and are used as API keys by the OpenAI and Anthropic SDKs.
Every check Sluice makes is driven with real key material: the provider script's test-only
`/__test/sign` signs arbitrary claims with the provider's key (or an unpublished key, HS256
keyed with the provider's public key, alg none)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import anthropic
import openai
import pytest
import requests

from conftest import HTTP_TIMEOUT_S, REPO, free_port, sluice_bin

OIDC_DIR = REPO / "tests" / "oidc"
SLUICE_RESOURCE = "https://sluice.test/api"
ADMIN_TOKEN = "py-identity-admin"
ENV = {"SLUICE_ADMIN_TOKEN": ADMIN_TOKEN}


class OidcProvider:
    """The node provider process; `restart(rotate=True)` publishes a new signing key first."""

    def __init__(self, workdir: Path):
        if shutil.which("node") is None or not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            pytest.fail(
                "the OpenID provider is not installed: run `npm ci` in tests/oidc "
                "(scripts/test.sh does)",
                pytrace=False,
            )
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys_file = workdir / "provider-keys.json"
        self.log = workdir / "provider.log"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self, rotate: bool = False) -> None:
        """Starts the provider and waits until it answers discovery. It starts in well under a
        second here (an RSA key is made first). A start that has not answered in 30 s is
        stopped and tried again once, a first start on another port (a CI run once saw the
        process alive but never listening); the failure says what each attempt last saw."""
        attempts = []
        keys_before = self.keys_file.read_bytes() if self.keys_file.exists() else b""
        for attempt in range(2):
            if attempt and not rotate:
                # A first start: nobody knows the port yet. A restart keeps its issuer.
                self.port = free_port()
                self.issuer = f"http://127.0.0.1:{self.port}"
            rotated = self.keys_file.exists() and self.keys_file.read_bytes() != keys_before
            seen = self._start_once(rotate and not rotated)
            if seen is None:
                return
            attempts.append(f"port {self.port}: {seen}")
            self.stop()
        pytest.fail(
            "the provider did not start: " + "; ".join(attempts) + "\n" + self.log.read_text(),
            pytrace=False,
        )

    def _start_once(self, rotate: bool) -> str | None:
        """None once discovery answers, else what the last attempt to reach it saw."""
        # SIGUSR2 makes node write a diagnostic report (its JavaScript stack among it): what a
        # start that never listens is doing.
        self.report = self.log.with_name(f"provider-report-{self.port}.json")
        args = [
            "node", "--report-on-signal", "--report-signal=SIGUSR2", "--report-exclude-network",
            f"--report-directory={self.report.parent}", f"--report-filename={self.report.name}",
            str(OIDC_DIR / "provider.mjs"), str(self.port), str(self.keys_file),
        ]
        if rotate:
            args.append("--rotate")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        last = "no answer yet"
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                r = requests.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2)
                if r.ok:
                    return None
                last = f"HTTP {r.status_code}"
            except requests.RequestException as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.1)
        return f"{last} ({self._where()})"

    def _where(self) -> str:
        """What the hung process is doing: its state, the kernel's wait channel and current
        system call, and from a diagnostic report the top of its JavaScript stack and its
        active libuv handles (a listening socket is a `tcp` one)."""
        proc = Path(f"/proc/{self.proc.pid}")
        seen = []
        for name in ("stat", "wchan", "syscall"):
            try:
                text = (proc / name).read_text().strip()
            except OSError:
                continue
            seen.append(f"{name}: {text.split()[2] if name == 'stat' else text[:80]}")
        try:
            self.report.unlink(missing_ok=True)  # a report left by an earlier run is not this one
            self.proc.send_signal(signal.SIGUSR2)
            for _ in range(30):
                if self.report.exists():
                    break
                time.sleep(0.1)
            report = json.loads(self.report.read_text())
            js = report.get("javascriptStack", {})
            stack = js.get("stack") or [js.get("message") or "no JavaScript running"]
            handles = [h.get("type", "?") for h in report.get("libuv", []) if h.get("is_active")]
            seen.append("js stack: " + " | ".join(str(line).strip() for line in stack[:6]))
            seen.append("active libuv handles: " + ", ".join(handles))
        except (OSError, ValueError, AttributeError):
            seen.append("no diagnostic report")
        return "; ".join(seen)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def restart(self, rotate: bool) -> None:
        self.stop()
        self.start(rotate=rotate)

    def client_token(self, client: str, resource: str = SLUICE_RESOURCE) -> str:
        r = requests.post(
            f"{self.issuer}/token",
            data={"grant_type": "client_credentials", "scope": "api", "resource": resource},
            auth=(client, f"{client}-secret"),
            timeout=HTTP_TIMEOUT_S,
        )
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    def code_flow(self, login: str) -> dict:
        """Authorization code with PKCE (S256) through the provider's login page."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        redirect = "http://127.0.0.1/callback"
        s = requests.Session()
        url = f"{self.issuer}/auth?" + requests.compat.urlencode({
            "client_id": "console", "response_type": "code", "redirect_uri": redirect,
            "scope": "openid email profile api", "code_challenge": challenge,
            "code_challenge_method": "S256", "state": "st-1", "nonce": "n-1",
            "resource": SLUICE_RESOURCE,
        })
        code = None
        for _ in range(12):
            r = s.get(url, allow_redirects=False, timeout=HTTP_TIMEOUT_S)
            if r.status_code in (302, 303):
                url = urljoin(url, r.headers["location"])
                if url.startswith(redirect):
                    q = parse_qs(urlparse(url).query)
                    assert q.get("state") == ["st-1"], url
                    code = q["code"][0]
                    break
                continue
            assert r.status_code == 200, r.text
            action = re.search(r'action="([^"]+)"', r.text)
            assert action, r.text
            form = {"prompt": "login", "login": login, "password": "any"} if 'name="login"' in r.text else {"prompt": "consent"}
            r = s.post(urljoin(url, action.group(1)), data=form, allow_redirects=False, timeout=HTTP_TIMEOUT_S)
            assert r.status_code in (302, 303), r.text
            url = urljoin(url, r.headers["location"])
        assert code, "the provider never redirected back with a code"
        r = requests.post(
            f"{self.issuer}/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
                  "code_verifier": verifier, "resource": SLUICE_RESOURCE},
            auth=("console", "console-secret"),
            timeout=HTTP_TIMEOUT_S,
        )
        assert r.status_code == 200, r.text
        return r.json()

    def sign(self, mode: str = "provider", **claims) -> str:
        r = requests.post(f"{self.issuer}/__test/sign", json={"mode": mode, "claims": claims}, timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 200, r.text
        return r.json()["token"]

    def stats(self) -> dict:
        return requests.get(f"{self.issuer}/__test/stats", timeout=HTTP_TIMEOUT_S).json()


@pytest.fixture
def provider(tmp_path):
    p = OidcProvider(tmp_path)
    yield p
    p.stop()


def config(issuer: str) -> dict:
    return {
        "server": {"admin_token_env": "SLUICE_ADMIN_TOKEN"},
        "orgs": [{"name": "acme"}],
        "roles": [
            {"name": "admin", "permissions": ["chat", "models:list", "keys:manage"], "models": ["*"]},
            {"name": "developer", "permissions": ["chat", "models:list", "keys:manage"], "models": ["mock-*"]},
        ],
        "identity": {
            "issuer": issuer,
            "client_id": "console",
            "audiences": ["sluice"],
            "key_max_days": 7,
            "roles": [
                {"group": "ml-platform-*", "org": "acme", "role": "admin"},
                {"group": "eng", "org": "acme", "role": "developer"},
            ],
        },
        "audit": {"path": "audit.jsonl", "fsync": "always"},
        "filters": [{"type": "auth"}, {"type": "rate_limit"}, {"type": "audit"}],
    }


def chat(gw, key: str) -> str:
    c = gw.client(api_key=key)
    a = c.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "hi there"}])
    return a.choices[0].message.content


def refused(gw, token: str) -> dict:
    r = requests.post(
        f"{gw.base_url}/chat/completions",
        json={"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_api_key" and err["type"] == "authentication_error", err
    assert token not in r.text
    if token.count(".") == 2 and token.split(".")[1]:
        assert token.split(".")[1] not in r.text
    return err


def audit_records(gw) -> list[dict]:
    path = gw.workdir / "audit.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def admin(method: str, gw, path: str, **kw) -> requests.Response:
    return requests.request(method, f"{gw.admin_url}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                            timeout=HTTP_TIMEOUT_S, **kw)


def wait_for(pred, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def test_client_credentials_and_pkce_tokens_work_with_the_sdks_and_are_audited_as_jwt(provider, start_gateway):
    gw = start_gateway(config(provider.issuer), env=ENV)
    svc = provider.client_token("svc-eng")
    assert chat(gw, svc) == "hi there"
    # The authorization code flow with PKCE: alice is in ml-platform-admins → admin.
    tokens = provider.code_flow("alice")
    assert "id_token" in tokens
    assert chat(gw, tokens["access_token"]) == "hi there"
    # Anthropic's SDK sends it as x-api-key: the token authenticates there too.
    a = anthropic.Anthropic(base_url=gw.public_url, api_key=svc, max_retries=0)
    try:
        a.messages.create(model="mock-echo", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    except anthropic.APIStatusError as e:
        assert e.status_code not in (401, 403), e
    records = wait_for(lambda: [r for r in audit_records(gw) if r.get("auth") == "jwt"] or None)
    by_user = {r["user"]: r for r in records}
    assert by_user["svc-eng@example.com"]["role"] == "developer"
    assert by_user["alice@example.com"]["role"] == "admin" and by_user["alice@example.com"]["org"] == "acme"
    assert all(svc not in json.dumps(r) for r in audit_records(gw))


def test_every_check_refuses_with_a_message_naming_it(provider, start_gateway):
    gw = start_gateway(config(provider.issuer), env=ENV)
    now = int(time.time())
    cases = {
        "aud": provider.client_token("svc-eng", resource="https://other.test/api"),
        "iss": provider.sign(iss="https://evil.example.com", email="x@example.com", groups=["eng"]),
        "exp": provider.sign(exp=now - 3600, email="x@example.com", groups=["eng"]),
        "nbf": provider.sign(nbf=now + 3600, email="x@example.com", groups=["eng"]),
        "none": provider.sign("none", email="x@example.com", groups=["eng"]),
        "HS256": provider.sign("hs256-public-key", email="x@example.com", groups=["eng"]),
        "kid": provider.sign("unpublished", email="x@example.com", groups=["eng"]),
    }
    good = provider.sign(email="x@example.com", groups=["eng"])
    assert chat(gw, good) == "hi there"
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["ml-platform-admins"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    cases["signature"] = f"{head}.{forged}.{sig}"
    expect = {"aud": "`aud`", "iss": "`iss`", "exp": "`exp`", "nbf": "`nbf`", "none": "`none`",
              "HS256": "`HS256`", "kid": "`kid`", "signature": "signature does not verify"}
    for check, token in cases.items():
        err = refused(gw, token)
        assert expect[check] in err["message"], (check, err)
    # Within 60 s of skew is fine.
    assert chat(gw, provider.sign(exp=now - 20, email="x@example.com", groups=["eng"])) == "hi there"
    # On Anthropic's route, the same refusal in Anthropic's shape.
    r = requests.post(f"{gw.public_url}/v1/messages", headers={"x-api-key": cases["exp"], "anthropic-version": "2023-06-01"},
                      json={"model": "mock-echo", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
                      timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 401 and r.json()["type"] == "error", r.text
    assert r.json()["error"]["type"] == "authentication_error" and "`exp`" in r.json()["error"]["message"]


def test_no_matching_group_is_403_and_nothing_is_stored(provider, start_gateway):
    gw = start_gateway(config(provider.issuer), env=ENV)
    r = requests.get(f"{gw.base_url}/models", headers={"Authorization": f"Bearer {provider.client_token('svc-marketing')}"},
                     timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "permission_denied"
    time.sleep(1.5)  # the sightings writer runs each second: give it the chance to be wrong
    names = [u["name"] for u in admin("GET", gw, "/admin/v1/users").json()["data"]]
    assert "svc-marketing@example.com" not in names


def test_users_are_recorded_their_keys_work_and_disabling_stops_keys_and_tokens(provider, start_gateway):
    gw = start_gateway(config(provider.issuer), env=ENV)
    token = provider.client_token("svc-eng")
    assert chat(gw, token) == "hi there"
    user = wait_for(lambda: admin("GET", gw, "/admin/v1/users/svc-eng%40example.com").json().get("source") and
                    admin("GET", gw, "/admin/v1/users/svc-eng%40example.com").json())
    assert user["source"] == "oidc" and user["org"] == "acme" and user["role"] == "developer", user
    assert user["disabled"] is False and user["last_seen"] >= int(time.time()) - 60
    # A key made with the token: no [[users]] entry, and it expires within key_max_days (7).
    r = requests.post(f"{gw.base_url}/keys", json={"name": "laptop", "expires_in_days": 30},
                      headers={"Authorization": f"Bearer {token}"}, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["expires"] <= int(time.time()) + 7 * 86400 + 5
    assert chat(gw, made["key"]) == "hi there"
    listed = admin("GET", gw, "/admin/v1/users").json()["data"]
    assert any(u["name"] == "svc-eng@example.com" and u["keys"] == 1 for u in listed), listed
    # Disabled: the token and the key are refused; enabled again: both work.
    r = admin("PUT", gw, "/admin/v1/users/svc-eng%40example.com", json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True, r.text
    refused(gw, token)
    refused(gw, made["key"])
    r = admin("PUT", gw, "/admin/v1/users/svc-eng%40example.com", json={"disabled": False})
    assert r.status_code == 200, r.text
    assert chat(gw, token) == "hi there" and chat(gw, made["key"]) == "hi there"
    by_key = [r for r in audit_records(gw) if r.get("key_id") == made["id"]]
    assert by_key and all(r["auth"] == "key" and r["user"] == "svc-eng@example.com" for r in by_key), by_key
    changes = [r for r in audit_records(gw) if r["path"].startswith("/admin/v1/users/")]
    assert len(changes) == 2 and all(c["outcome"] == "ok" for c in changes), changes
    assert admin("PUT", gw, "/admin/v1/users/nobody", json={"disabled": True}).status_code == 404
    assert requests.get(f"{gw.admin_url}/admin/v1/users", timeout=HTTP_TIMEOUT_S).status_code == 401


def test_a_rotated_key_works_at_once_and_unknown_kids_refetch_at_most_once_a_minute(provider, start_gateway):
    gw = start_gateway(config(provider.issuer), env=ENV)
    assert chat(gw, provider.client_token("svc-eng")) == "hi there"
    provider.restart(rotate=True)
    assert provider.stats()["jwks_fetches"] == 0
    rotated = provider.client_token("svc-admin")
    assert chat(gw, rotated) == "hi there"  # a kid Sluice had never seen: refetched, accepted
    assert provider.stats()["jwks_fetches"] == 1
    # Another unknown kid within the minute: refused without asking the provider again.
    err = refused(gw, provider.sign("unpublished", email="x@example.com", groups=["eng"]))
    assert "`kid`" in err["message"]
    assert chat(gw, provider.client_token("svc-eng")) == "hi there"  # cached keys: no fetch
    assert provider.stats()["jwks_fetches"] == 1


def test_check_validates_identity_offline_and_online(provider, tmp_path):
    from conftest import base_config, deep_merge, to_toml

    good = deep_merge(base_config(), config(provider.issuer))
    good["server"].update({"listen": "127.0.0.1:18080", "admin_listen": "127.0.0.1:19090"})
    path = tmp_path / "good.toml"
    path.write_text(to_toml(good))
    r = subprocess.run([str(sluice_bin()), "check", "-c", str(path), "--online"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "signing key" in r.stdout
    bad = deep_merge(good, {"identity": {
        "issuer": "http://login.example.com", "client_id": "c", "audiences": ["a"], "bogus": 1,
        "roles": [{"group": "*", "org": "nope", "role": "ghost"}],
    }})
    path.write_text(to_toml(bad))
    r = subprocess.run([str(sluice_bin()), "check", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    for needle in ["identity.issuer:", "identity.roles[0].org:", "identity.roles[0].role:", "identity.bogus"]:
        assert needle in r.stderr, r.stderr
    # --online with a provider that is not there: exit 2, naming the field.
    down = deep_merge(good, {"identity": {"issuer": f"http://127.0.0.1:{free_port()}"}})
    path.write_text(to_toml(down))
    r = subprocess.run([str(sluice_bin()), "check", "-c", str(path), "--online"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "identity.issuer" in r.stderr, r.stderr
