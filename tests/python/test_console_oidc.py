"""Provider sign-in in the console (SPEC §14): a real `sluice run` with `[identity]` pointing at
the real `oidc-provider` (tests/oidc/provider.mjs), driven through the provider's own login and
consent pages with `requests`, the console's cookies kept in the same session."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urljoin, urlparse

import pytest
import requests
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from conftest import HTTP_TIMEOUT_S as T
from console_support import CSRF, wait_audit
from test_console import browser  # noqa: F401  (the headless Chromium fixture)
from test_identity import OidcProvider

SECRET_ENV = "SLUICE_TEST_CONSOLE_SECRET"
ADMIN_TOKEN = "console-oidc-admin-token-0123456789"


@pytest.fixture
def provider(tmp_path):
    p = OidcProvider(tmp_path)
    yield p
    p.stop()


@pytest.fixture
def gw(provider, start_gateway):
    cfg = {
        "models": [{"name": "mock-echo", "upstream": "mock", "upstream_model": "echo"}],
        "server": {"admin_token_env": "SLUICE_ADMIN_TOKEN"},
        "orgs": [{"name": "acme"}],
        "roles": [
            {"name": "developer", "permissions": ["chat", "models:list", "keys:manage"], "models": ["mock-*"]},
        ],
        "identity": {
            "issuer": provider.issuer,
            "client_id": "console",
            "client_secret_env": SECRET_ENV,
            "audiences": ["sluice"],
            "roles": [{"group": "eng", "org": "acme", "role": "developer"}],
        },
        "audit": {"path": "audit/audit.jsonl", "fsync": "always"},
        "filters": [{"type": "auth"}, {"type": "rate_limit"}, {"type": "audit"}],
    }
    return start_gateway(cfg, env={SECRET_ENV: "console-secret", "SLUICE_ADMIN_TOKEN": ADMIN_TOKEN})


def start(s: requests.Session, gw) -> str:
    """`GET /console/login/provider`: checks the authorization request; returns its URL."""
    r = s.get(f"{gw.public_url}/console/login/provider", allow_redirects=False, timeout=T)
    assert r.status_code == 303, r.text
    url = r.headers["location"]
    q = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    assert q["response_type"] == "code"
    assert q["client_id"] == "console"
    assert q["redirect_uri"] == f"{gw.public_url}/console/callback"
    assert "openid" in q["scope"].split()
    assert q["code_challenge_method"] == "S256"
    assert len(q["code_challenge"]) == 43 and len(q["state"]) >= 43 and len(q["nonce"]) >= 43
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Path=/console" in cookie and "Max-Age=600" in cookie
    return url


def through_provider(s: requests.Session, gw, url: str, login: str) -> str:
    """The provider's login and consent pages; returns the callback URL it redirects to."""
    callback = f"{gw.public_url}/console/callback"
    for _ in range(12):
        r = s.get(url, allow_redirects=False, timeout=T)
        if r.status_code in (302, 303):
            url = urljoin(url, r.headers["location"])
            if url.startswith(callback):
                return url
            continue
        assert r.status_code == 200, r.text
        action = re.search(r'action="([^"]+)"', r.text)
        assert action, r.text
        form = (
            {"prompt": "login", "login": login, "password": "any"}
            if 'name="login"' in r.text
            else {"prompt": "consent"}
        )
        r = s.post(urljoin(url, action.group(1)), data=form, allow_redirects=False, timeout=T)
        assert r.status_code in (302, 303), r.text
        url = urljoin(url, r.headers["location"])
        if url.startswith(callback):
            return url
    raise AssertionError("the provider never redirected back to the console")


def test_sign_in_with_the_provider_create_a_key_and_sign_out(gw):
    s = requests.Session()
    page = s.get(f"{gw.public_url}/console/login", timeout=T)
    assert page.status_code == 200
    assert 'href="/console/login/provider"' in page.text and "Sign in with 127.0.0.1" in page.text
    assert 'action="/console/login"' in page.text  # console.key_sign_in defaults to true

    callback = through_provider(s, gw, start(s, gw), "bob")
    r = s.get(callback, allow_redirects=False, timeout=T)
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/console/api"

    api = s.get(f"{gw.public_url}/console/api", allow_redirects=False, timeout=T)
    assert api.status_code == 200, api.text[:300]
    assert "bob@example.com" in api.text
    token = CSRF.search(api.text).group(1)
    made = s.post(
        f"{gw.public_url}/console/api/keys",
        data={"csrf": token, "name": "laptop", "expires_in_days": "3"},
        timeout=T,
    )
    assert made.status_code == 200, made.text[:500]
    key = re.search(r'id="new-key">(sk-sluice-[^<]+)<', made.text).group(1)
    reply = gw.client(api_key=key).chat.completions.create(
        model="mock-echo", messages=[{"role": "user", "content": "hello"}]
    )
    assert reply.choices[0].message.content

    signed_in = wait_audit(gw, lambda r: r.get("path") == "/console/callback" and r.get("outcome") == "ok")
    assert signed_in and signed_in[0]["auth"] == "session" and signed_in[0]["user"] == "bob@example.com"

    out = s.post(f"{gw.public_url}/console/logout", data={"csrf": token}, allow_redirects=False, timeout=T)
    assert out.status_code == 303
    after = s.get(f"{gw.public_url}/console/api", allow_redirects=False, timeout=T)
    assert after.status_code == 303 and after.headers["location"] == "/console/login"
    # Signing out ends the console session, not the key made in it.
    assert gw.client(api_key=key).models.list().data


def test_a_disabled_user_loses_the_session(gw):
    s = requests.Session()
    r = s.get(through_provider(s, gw, start(s, gw), "bob"), allow_redirects=False, timeout=T)
    assert r.status_code == 303
    assert s.get(f"{gw.public_url}/console/api", allow_redirects=False, timeout=T).status_code == 200
    d = requests.put(
        f"{gw.admin_url}/admin/v1/users/bob%40example.com",
        json={"disabled": True},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=T,
    )
    assert d.status_code == 200, d.text
    after = s.get(f"{gw.public_url}/console/api", allow_redirects=False, timeout=T)
    assert after.status_code == 303 and after.headers["location"] == "/console/login"
    # Signing in again is refused while the directory disables the user.
    s2 = requests.Session()
    again = s2.get(through_provider(s2, gw, start(s2, gw), "bob"), allow_redirects=False, timeout=T)
    assert again.status_code == 403, again.text[:300]


def test_a_tampered_state_is_401_and_audited(gw):
    s = requests.Session()
    callback = through_provider(s, gw, start(s, gw), "bob")
    state = parse_qs(urlparse(callback).query)["state"][0]
    tampered = callback.replace(f"state={state}", f"state={state[:-2]}xx")
    r = s.get(tampered, allow_redirects=False, timeout=T)
    assert r.status_code == 401, r.text[:300]
    assert 'id="signin-error"' in r.text and "sign in again" in r.text
    assert s.get(f"{gw.public_url}/console/api", allow_redirects=False, timeout=T).status_code == 303
    denied = wait_audit(gw, lambda r: r.get("path") == "/console/callback" and r.get("outcome") == "denied_auth")
    assert denied and denied[0]["auth"] == "session" and denied[0]["status"] == 401


def test_a_replayed_state_is_401(gw):
    s = requests.Session()
    callback = through_provider(s, gw, start(s, gw), "bob")
    state = parse_qs(urlparse(callback).query)["state"][0]
    assert s.get(callback, allow_redirects=False, timeout=T).status_code == 303
    # The same answer again, with the browser's binding cookie put back: the state was used.
    again = requests.Session()
    again.cookies.set("sluice_signin", state, path="/console")
    r = again.get(callback, allow_redirects=False, timeout=T)
    assert r.status_code == 401, r.text[:300]
    assert "sluice_session=" not in r.headers.get("set-cookie", "").replace("sluice_session=;", "")


def test_a_state_from_another_browser_is_401(gw):
    s = requests.Session()
    callback = through_provider(s, gw, start(s, gw), "bob")
    r = requests.get(callback, allow_redirects=False, timeout=T)  # no binding cookie
    assert r.status_code == 401, r.text[:300]


def test_a_user_with_no_matching_group_is_403(gw):
    s = requests.Session()
    r = s.get(through_provider(s, gw, start(s, gw), "mallory"), allow_redirects=False, timeout=T)
    assert r.status_code == 403, r.text[:300]
    assert "none of your groups" in r.text
    assert s.get(f"{gw.public_url}/console/api", allow_redirects=False, timeout=T).status_code == 303
    denied = wait_audit(gw, lambda r: r.get("path") == "/console/callback" and r.get("status") == 403)
    assert denied and denied[0]["outcome"] == "denied_auth" and denied[0]["auth"] == "session"


def test_in_a_browser_through_the_providers_pages(gw, browser):
    """The same flow in headless Chromium: the provider's login and consent pages, the console's
    cookies as a browser keeps them (SameSite=Lax across the redirects)."""
    d = browser
    wait = WebDriverWait(d, 15)
    d.get(f"{gw.public_url}/console/")
    wait.until(lambda x: x.find_elements(By.ID, "signin-provider"), "the provider button")
    d.find_element(By.ID, "signin-provider").click()
    wait.until(lambda x: x.find_elements(By.NAME, "login"), "the provider's login page")
    d.find_element(By.NAME, "login").send_keys("bob")
    d.find_element(By.NAME, "password").send_keys("any")
    d.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()

    consented = []

    def landed(x):
        if x.current_url.endswith("/console/api"):
            return True
        if not consented and not x.current_url.startswith(gw.public_url):
            buttons = x.find_elements(By.CSS_SELECTOR, 'button[type="submit"]')
            if buttons and not x.find_elements(By.NAME, "login"):
                # The consent page, if the provider shows one: submitted once (a second submit
                # while the first is on its way would replay an interaction the provider ended).
                buttons[0].click()
                consented.append(True)
        return False

    try:
        WebDriverWait(d, 30, ignored_exceptions=(StaleElementReferenceException,)).until(landed)
    except Exception:
        text = d.find_element(By.TAG_NAME, "body").text[:500] if d.find_elements(By.TAG_NAME, "body") else ""
        raise AssertionError(f"Settings › API after the provider: at {d.current_url}: {text!r}")
    assert "bob@example.com" in d.page_source
    d.find_element(By.ID, "name").send_keys("from-the-browser")
    d.find_element(By.ID, "create-key").click()
    wait.until(lambda x: x.find_elements(By.ID, "new-key"), "the new key")
    assert d.find_element(By.ID, "new-key").text.strip().startswith("sk-sluice-")
    d.find_element(By.XPATH, "//button[text()='Sign out']").click()
    wait.until(lambda x: x.current_url.endswith("/console/login"), "the sign-in page after sign-out")
