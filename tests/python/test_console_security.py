"""The console's security rules (SPEC §14) against a real `sluice run`, with `requests`:
cookie attributes and security headers, CSRF token, `Origin` and `Sec-Fetch-Site` checks, a
stolen cookie after sign-out, idle and absolute timeouts (the session rows of the real SQLite
store moved back in time), a session bounded by its key, admin pages refused to a non-admin,
script injection through a key name, and the audit records of all of it."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
import requests

from conftest import HTTP_TIMEOUT_S
from console_support import ALICE, CONFIG, CSRF as CSRF_RE, NARROW, ROOT, csrf_of, sign_in, wait_audit

T = HTTP_TIMEOUT_S


@pytest.fixture
def gw(start_gateway):
    return start_gateway(CONFIG)


def create(s: requests.Session, gw, token: str, **fields) -> requests.Response:
    data = {"csrf": token, **fields}
    return s.post(f"{gw.public_url}/console/api/keys", data=data, allow_redirects=False, timeout=T)


def test_cookie_and_security_headers(gw):
    r = requests.post(
        f"{gw.public_url}/console/login", data={"key": ALICE}, allow_redirects=False, timeout=T
    )
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    name, _, attrs = cookie.partition(";")
    assert name.startswith("sluice_session=") and len(name) > len("sluice_session=") + 40
    parts = {a.strip().split("=")[0].lower(): a.strip() for a in attrs.split(";")}
    assert "httponly" in parts and parts["samesite"] == "SameSite=Lax"
    assert parts["path"] == "Path=/console"
    assert "secure" not in parts  # plain HTTP listener
    for page in ["/console/login", "/console/api", "/console/assets/console.css"]:
        r = requests.get(
            f"{gw.public_url}{page}", cookies={"sluice_session": name.split("=", 1)[1]}, timeout=T
        )
        assert r.status_code == 200, page
        assert r.headers["content-security-policy"] == "default-src 'self'; frame-ancestors 'none'"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    # The console is not a model call: nothing of it is scanned (the key is a secret DLP blocks
    # in a prompt) and the sign-in is on the trail as a session action.
    ok = wait_audit(gw, lambda x: x.get("path") == "/console/login" and x.get("outcome") == "ok")
    assert ok and ok[0]["auth"] == "session" and ok[0]["user"] == "alice"
    assert not any(r.get("dlp") for r in ok)


def test_failed_sign_in_is_401_and_audited(gw):
    r = requests.post(
        f"{gw.public_url}/console/login",
        data={"key": "sk-sluice-" + "x" * 40},
        allow_redirects=False,
        timeout=T,
    )
    assert r.status_code == 401
    assert "not valid" in r.text and "set-cookie" not in r.headers
    recs = wait_audit(gw, lambda x: x.get("path") == "/console/login" and x["outcome"] == "denied_auth")
    assert recs and recs[0]["auth"] == "session" and recs[0]["status"] == 401
    assert "x" * 40 not in str(recs)


def test_state_changes_need_the_sessions_csrf_token_and_its_origin(gw):
    s = sign_in(gw, ALICE)
    token = csrf_of(s, gw)
    assert create(s, gw, "").status_code == 403  # missing
    r = s.post(f"{gw.public_url}/console/api/keys", data={"name": "x"}, timeout=T)
    assert r.status_code == 403 and "CSRF" in r.text
    assert create(s, gw, token[:-2] + "AA").status_code == 403  # wrong
    other = sign_in(gw, ALICE)
    assert create(s, gw, csrf_of(other, gw)).status_code == 403  # another session's
    # Cross-origin, even with the right token.
    evil = {"Origin": "http://evil.example"}
    r = s.post(f"{gw.public_url}/console/api/keys", data={"csrf": token}, headers=evil, timeout=T)
    assert r.status_code == 403
    cross = {"Sec-Fetch-Site": "cross-site"}
    r = s.post(f"{gw.public_url}/console/api/keys", data={"csrf": token}, headers=cross, timeout=T)
    assert r.status_code == 403
    r = s.post(
        f"{gw.public_url}/console/login", data={"key": ALICE}, headers=evil, allow_redirects=False, timeout=T
    )
    assert r.status_code == 403
    # `Origin: null` (sent under no-referrer) defers to the token; the console's own origin too.
    for origin in ["null", gw.public_url]:
        r = s.post(
            f"{gw.public_url}/console/api/keys",
            data={"csrf": token, "name": f"from {origin}"},
            headers={"Origin": origin},
            timeout=T,
        )
        assert r.status_code == 200 and "sk-sluice-" in r.text, r.text[:300]
    refused = wait_audit(gw, lambda x: x.get("outcome") == "denied_permission"
                         and x.get("path") == "/console/api/keys")
    assert len(refused) >= 5 and all(x["auth"] == "session" for x in refused)


def test_a_cookie_after_sign_out_is_worthless(gw):
    s = sign_in(gw, ALICE)
    token = csrf_of(s, gw)
    stolen = dict(s.cookies)
    r = s.post(f"{gw.public_url}/console/logout", data={"csrf": token}, allow_redirects=False, timeout=T)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    thief = requests.Session()
    thief.cookies.update(stolen)
    r = thief.get(f"{gw.public_url}/console/api", allow_redirects=False, timeout=T)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert create(thief, gw, token).status_code == 403


def db(gw) -> sqlite3.Connection:
    return sqlite3.connect(Path(gw.workdir) / "data" / "sluice.db")


@pytest.mark.parametrize("column, shift", [("last_seen", -31 * 60), ("expires", -12 * 3600 - 1)])
def test_an_expired_session_is_over(gw, column, shift):
    s = sign_in(gw, ALICE)
    assert s.get(f"{gw.public_url}/console/api", allow_redirects=False, timeout=T).status_code == 200
    with db(gw) as c:
        # Idle 31 minutes (default idle_minutes = 30), or past the absolute end.
        c.execute(f"UPDATE console_sessions SET {column} = {column} + ?", (shift,))
    r = s.get(f"{gw.public_url}/console/api", allow_redirects=False, timeout=T)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    with db(gw) as c:
        assert c.execute("SELECT COUNT(*) FROM console_sessions").fetchone()[0] == 0


def test_the_store_keeps_a_hash_of_the_session_id_only(gw):
    s = sign_in(gw, ALICE)
    cookie = s.cookies["sluice_session"]
    with db(gw) as c:
        rows = c.execute("SELECT id_sha256, user_name, key_id, auth FROM console_sessions").fetchall()
    assert len(rows) == 1
    assert rows[0] == (hashlib.sha256(cookie.encode()).hexdigest(), "alice", "alice-key", "key")


def test_admin_pages_need_console_admin(gw):
    alice = sign_in(gw, ALICE)
    token = csrf_of(alice, gw)
    for page in ["/console/admin", "/console/admin/audit?user=root"]:
        r = alice.get(f"{gw.public_url}{page}", allow_redirects=False, timeout=T)
        assert r.status_code == 403, page
    r = alice.post(
        f"{gw.public_url}/console/admin/keys/root-key/revoke", data={"csrf": token}, timeout=T
    )
    assert r.status_code == 403
    assert 'href="/console/admin"' not in csrf_page(alice, gw)
    root = sign_in(gw, ROOT)
    r = root.get(f"{gw.public_url}/console/admin", timeout=T)
    assert r.status_code == 200 and "alice-key" in r.text and "Upstream targets" in r.text
    denied = wait_audit(gw, lambda x: x.get("path", "").startswith("/console/admin")
                        and x["outcome"] == "denied_permission")
    assert denied and denied[0]["user"] == "alice"


def csrf_page(s, gw) -> str:
    return s.get(f"{gw.public_url}/console/api", timeout=T).text


def test_a_session_never_holds_more_than_its_key(gw):
    s = sign_in(gw, NARROW)  # alice's key narrowed to mock-echo
    token = csrf_of(s, gw)
    r = create(s, gw, token, models="mock-other")
    assert r.status_code == 403 and "wider" in r.text
    models = s.get(f"{gw.public_url}/console/models", timeout=T).text
    assert "mock-echo" in models and "mock-other" not in models
    r = create(s, gw, token, models="mock-echo", name="narrow child")
    assert r.status_code == 200 and "sk-sluice-" in r.text


def test_a_revoked_key_ends_its_sessions(gw):
    made = requests.post(
        f"{gw.base_url}/keys", json={"name": "temp"}, headers={"Authorization": f"Bearer {ALICE}"},
        timeout=T,
    ).json()
    s = sign_in(gw, made["key"])
    assert s.get(f"{gw.public_url}/console/api", allow_redirects=False, timeout=T).status_code == 200
    r = requests.delete(
        f"{gw.base_url}/keys/{made['id']}", headers={"Authorization": f"Bearer {ALICE}"}, timeout=T
    )
    assert r.status_code == 200
    r = s.get(f"{gw.public_url}/console/api", allow_redirects=False, timeout=T)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"


def test_a_key_name_cannot_inject_script(gw):
    s = sign_in(gw, ALICE)
    token = csrf_of(s, gw)
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    r = create(s, gw, token, name=evil)
    assert r.status_code == 200
    for page in [r.text, csrf_page(s, gw), sign_in(gw, ROOT).get(f"{gw.public_url}/console/admin", timeout=T).text]:
        assert evil not in page and "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert" in page


def test_key_actions_are_audited_with_the_key_id(gw):
    s = sign_in(gw, ALICE)
    token = csrf_of(s, gw)
    r = create(s, gw, token, name="audited")
    key_id = r.text.split('<code>key_', 1)[1].split("<", 1)[0]
    key_id = "key_" + key_id
    r = s.post(
        f"{gw.public_url}/console/api/keys/{key_id}/revoke", data={"csrf": token}, allow_redirects=False,
        timeout=T,
    )
    assert r.status_code == 303, r.text[:300]
    # The console's record of the action (the key API's own change record is there too).
    made = wait_audit(gw, lambda x: x.get("path") == "/console/api/keys" and x.get("key_id") == key_id
                      and x.get("auth") == "session")
    gone = wait_audit(gw, lambda x: x.get("path") == f"/console/api/keys/{key_id}/revoke"
                      and x.get("auth") == "session")
    assert made and made[0]["auth"] == "session" and made[0]["user"] == "alice" and made[0]["outcome"] == "ok"
    assert gone and gone[0]["outcome"] == "ok"
    for rec in made + gone:
        assert "sk-sluice-" not in str(rec)


def test_behind_tls_the_cookie_is_secure_and_the_origin_is_the_public_one(start_gateway):
    cfg = dict(CONFIG, console={"public_url": "https://gw.example.test"})
    gw = start_gateway(cfg)
    r = requests.post(
        f"{gw.public_url}/console/login",
        data={"key": ALICE},
        headers={"Origin": "https://gw.example.test"},
        allow_redirects=False,
        timeout=T,
    )
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("__Host-sluice_session=")
    attrs = [a.strip() for a in cookie.split(";")[1:]]
    assert {"Secure", "HttpOnly", "SameSite=Lax", "Path=/"} <= set(attrs)
    jar = {"Cookie": cookie.split(";")[0]}
    page = requests.get(f"{gw.public_url}/console/api", headers=jar, timeout=T).text
    token = CSRF_RE.search(page).group(1)
    assert "https://gw.example.test/v1" in page
    # The listener's own address is not the console's origin here.
    for origin, want in [(gw.public_url, 403), ("https://gw.example.test", 200)]:
        r = requests.post(
            f"{gw.public_url}/console/api/keys",
            data={"csrf": token, "name": "tls"},
            headers={**jar, "Origin": origin},
            timeout=T,
        )
        assert r.status_code == want, origin


def test_models_page_snippets_fit_each_models_upstream(start_gateway):
    from conftest import closed_port

    cfg = dict(CONFIG)
    cfg["upstreams"] = [
        {"name": "mock", "builtin": "mock"},
        {"name": "vendor", "url": f"http://127.0.0.1:{closed_port()}"},
    ]
    cfg["models"] = CONFIG["models"] + [{"name": "mock-vendor", "upstream": "vendor"}]
    gw = start_gateway(cfg)
    page = sign_in(gw, ALICE).get(f"{gw.public_url}/console/models", timeout=T).text
    sections = {s.split("</code>", 1)[0]: s for s in page.split('<h2 id="model-')[1:]}
    by_model = {k.split("<code>", 1)[1]: v for k, v in sections.items()}
    assert set(by_model) == {"mock-echo", "mock-other", "mock-vendor"}
    for model, html in by_model.items():
        assert f"{gw.public_url}/v1/chat/completions" in html and "from openai import OpenAI" in html
        assert "from anthropic import Anthropic" in html
        assert ("api = &quot;anthropic&quot;" in html) == (model == "mock-vendor"), model


def test_a_form_over_the_bound_is_413_with_the_security_headers(gw):
    r = requests.post(
        f"{gw.public_url}/console/login", data={"key": "x" * 100_000}, allow_redirects=False, timeout=T
    )
    assert r.status_code == 413
    assert r.headers["content-security-policy"] == "default-src 'self'; frame-ancestors 'none'"
    assert r.headers["x-content-type-options"] == "nosniff"


def test_signing_in_again_replaces_the_session(gw):
    s = sign_in(gw, ALICE)
    old = s.cookies["sluice_session"]
    r = s.post(f"{gw.public_url}/console/login", data={"key": ALICE}, allow_redirects=False, timeout=T)
    assert r.status_code == 303 and s.cookies["sluice_session"] != old
    stale = requests.get(
        f"{gw.public_url}/console/api", cookies={"sluice_session": old}, allow_redirects=False, timeout=T
    )
    assert stale.status_code == 303
    assert s.get(f"{gw.public_url}/console/api", allow_redirects=False, timeout=T).status_code == 200
