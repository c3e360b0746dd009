"""The console in a real browser: Debian's Chromium, headless, driven by Selenium through
chromedriver, against a real `sluice run`. Sign in with a key, create a key and read it from the
page, call the API with it (the OpenAI SDK), see the call in Usage, revoke it, sign out; the
admin pages; the keyboard alone. Each page is saved as a screenshot in docs/console/ (the
README shows them)."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import openai
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import HTTP_TIMEOUT_S
from console_support import ALICE, CONFIG, ROOT, wait_audit
from console_support import sign_in as key_session

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
WAIT_S = 15


def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail("chromium and chromedriver are needed (scripts/setup.sh installs them)", pytrace=False)
    return browser, driver


@pytest.fixture
def browser():
    binary, driver = chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--disable-gpu", "--no-first-run", "--hide-scrollbars"]:
        opts.add_argument(arg)
    d = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    d.set_page_load_timeout(WAIT_S)
    yield d
    d.quit()


@pytest.fixture
def gw(start_gateway):
    return start_gateway(CONFIG)


def shot(d, name: str) -> None:
    """Saves the whole page (its full height, at most 2400 px) as docs/console/<name>.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = int(d.execute_script("return document.documentElement.scrollHeight"))
    d.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": max(600, min(height, 2400)), "deviceScaleFactor": 1, "mobile": False},
    )
    png = d.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})["data"]
    d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    (SHOTS / f"{name}.png").write_bytes(base64.b64decode(png))


def wait_for(d, pred, what: str):
    # A page replaced while the predicate reads it (the POST's redirect landing) leaves the
    # element it found stale: that is "not yet", and the next poll reads the new page.
    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(d, WAIT_S, ignored_exceptions=ignored).until(lambda drv: pred(drv), message=what)


def sign_in(d, gw, key: str) -> None:
    d.get(f"{gw.public_url}/console/")
    wait_for(d, lambda x: x.current_url.endswith("/console/login"), "the sign-in page")
    field = d.find_element(By.ID, "key")
    field.send_keys(key)
    field.send_keys(Keys.ENTER)
    wait_for(d, lambda x: x.current_url.endswith("/console/api"), "Settings › API after sign-in")


def usage_today(d) -> int:
    """Today's requests in the Usage table (its first row); 0 while the page is reloading."""
    try:
        rows = d.find_elements(By.CSS_SELECTOR, "#usage tbody tr")
        return int(rows[0].find_element(By.CSS_SELECTOR, "td.requests").text) if rows else 0
    except StaleElementReferenceException:
        return 0


def test_sign_in_create_use_revoke_sign_out(gw, browser):
    d = browser
    d.get(f"{gw.public_url}/console/login")
    shot(d, "sign-in")
    sign_in(d, gw, ALICE)
    assert "alice-key" in d.find_element(By.ID, "keys").text
    assert "config · read-only" in d.find_element(By.ID, "keys").text

    # Create a key, narrowed to one model, and read it from the page.
    d.find_element(By.ID, "name").send_keys("laptop")
    d.find_element(By.CSS_SELECTOR, 'input[name="models"][value="mock-echo"]').click()
    Select(d.find_element(By.ID, "expires")).select_by_value("90")
    shot(d, "api-keys")
    d.find_element(By.ID, "create-key").click()
    wait_for(d, lambda x: x.find_elements(By.ID, "new-key"), "the new key")
    key = d.find_element(By.ID, "new-key").text.strip()
    assert key.startswith("sk-sluice-") and len(key) == 50
    assert "will not be shown again" in d.page_source
    copy = d.find_element(By.CSS_SELECTOR, 'button[data-copy="new-key"]')
    assert copy.is_displayed()  # the script un-hides it
    copy.click()
    wait_for(d, lambda x: x.find_element(By.ID, "copy-status").text, "the Copy button's status")
    shot(d, "key-created")

    # The key works with the OpenAI SDK, for the model it was narrowed to only.
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    answer = client.chat.completions.create(
        model="mock-echo", messages=[{"role": "user", "content": "hello from the console key"}]
    )
    assert answer.choices[0].message.content == "hello from the console key"
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="mock-other", messages=[{"role": "user", "content": "x"}])

    # The call shows in Usage, read from the store's spend rows (the page writes this
    # instance's pending rows first). The refused call is no model use, so it is not counted.
    d.get(f"{gw.public_url}/console/usage")
    deadline = time.monotonic() + WAIT_S
    while usage_today(d) < 1 and time.monotonic() < deadline:
        time.sleep(0.3)
        d.refresh()
    assert usage_today(d) == 1
    today = d.find_elements(By.CSS_SELECTOR, "#usage tbody tr")[0].find_elements(By.CSS_SELECTOR, "td")
    assert int(today[2].text) > 0 and int(today[3].text) > 0  # prompt and completion tokens
    float(today[4].text)  # spend in USD, a number
    assert d.find_element(By.CSS_SELECTOR, "svg.chart rect.bar")
    shot(d, "usage")

    d.get(f"{gw.public_url}/console/models")
    snippets = d.find_element(By.TAG_NAME, "main").text
    assert f"{gw.public_url}/v1" in snippets and "from openai import OpenAI" in snippets
    assert "from anthropic import Anthropic" in snippets and "curl " in snippets
    shot(d, "models")

    # Revoke it, confirming; from then on the SDK gets 401.
    d.get(f"{gw.public_url}/console/api")
    key_id = d.find_element(By.XPATH, "//tr[td[@class='name' and text()='laptop']]").get_attribute("data-key-id")
    d.find_element(By.CSS_SELECTOR, f'a[aria-label="Revoke {key_id}"]').click()
    wait_for(d, lambda x: x.find_elements(By.ID, "confirm-revoke"), "the confirmation")
    shot(d, "revoke-confirm")
    d.find_element(By.ID, "confirm-revoke").click()
    wait_for(d, lambda x: "revoked" in x.find_element(By.TAG_NAME, "main").text, "the revoked notice")
    assert key_id not in d.find_element(By.ID, "keys").text
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "x"}])

    # Sign out: back to the sign-in page, and the console is closed to this browser.
    d.find_element(By.XPATH, "//button[text()='Sign out']").click()
    wait_for(d, lambda x: x.current_url.endswith("/console/login"), "the sign-in page after sign-out")
    d.get(f"{gw.public_url}/console/api")
    assert d.current_url.endswith("/console/login")


def test_admin_pages(gw, browser):
    d = browser
    sign_in(d, gw, ALICE)
    assert not d.find_elements(By.LINK_TEXT, "Admin")
    d.find_element(By.XPATH, "//button[text()='Sign out']").click()
    wait_for(d, lambda x: x.current_url.endswith("/console/login"), "signed out")
    sign_in(d, gw, ROOT)
    d.find_element(By.LINK_TEXT, "Admin").click()
    wait_for(d, lambda x: x.find_elements(By.ID, "upstreams-table"), "the admin page")
    text = d.find_element(By.TAG_NAME, "main").text
    assert "alice-key" in text and "root-key" in text and "in service" in text
    shot(d, "admin")
    d.get(f"{gw.public_url}/console/admin/audit?user=alice")
    rows = d.find_elements(By.CSS_SELECTOR, "#audit tbody tr")
    assert rows and "session" in d.find_element(By.ID, "audit").text
    shot(d, "admin-audit")


def user_row(d, name: str):
    return d.find_element(By.CSS_SELECTOR, f'#users-table tr[data-user="{name}"]')


def test_admin_disables_and_enables_a_user(gw, browser):
    """Disable from the admin page (confirmed, CSRF): the user's key is refused and their
    console session ends; Enable: the key works again. Both changes are audited."""
    alice_console = key_session(gw, ALICE)
    client = openai.OpenAI(base_url=gw.base_url, api_key=ALICE, max_retries=0)
    ask = {"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]}
    assert client.chat.completions.create(**ask).choices[0].message.content == "hi"

    d = browser
    sign_in(d, gw, ROOT)
    d.get(f"{gw.public_url}/console/admin")
    assert user_row(d, "alice").find_element(By.CSS_SELECTOR, "td.state").text == "enabled"
    user_row(d, "alice").find_element(By.CSS_SELECTOR, 'a[aria-label="Disable alice"]').click()
    wait_for(d, lambda x: x.find_elements(By.ID, "confirm-user"), "the confirmation")
    shot(d, "admin-user-confirm")
    d.find_element(By.ID, "confirm-user").click()
    wait_for(d, lambda x: "The user alice is disabled." in x.find_element(By.TAG_NAME, "main").text,
             "the disabled notice")
    assert user_row(d, "alice").find_element(By.CSS_SELECTOR, "td.state").text == "disabled"
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(**ask)
    r = alice_console.get(f"{gw.public_url}/console/api", allow_redirects=False, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"

    user_row(d, "alice").find_element(By.CSS_SELECTOR, 'a[aria-label="Enable alice"]').click()
    wait_for(d, lambda x: x.find_elements(By.ID, "confirm-user"), "the confirmation")
    d.find_element(By.ID, "confirm-user").click()
    wait_for(d, lambda x: "The user alice is enabled." in x.find_element(By.TAG_NAME, "main").text,
             "the enabled notice")
    assert client.chat.completions.create(**ask).choices[0].message.content == "hi"

    changes = wait_audit(gw, lambda r: r["path"].startswith("/console/admin/users/")
                         and r.get("auth") == "session" and r["outcome"] == "ok")
    assert {c["path"] for c in changes} == {"/console/admin/users/disable", "/console/admin/users/enable"}


def test_user_change_needs_the_csrf_token(gw):
    root = key_session(gw, ROOT)
    r = root.post(f"{gw.public_url}/console/admin/users/disable", data={"user": "alice"},
                  allow_redirects=False, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 403
    client = openai.OpenAI(base_url=gw.base_url, api_key=ALICE, max_retries=0)
    answer = client.chat.completions.create(model="mock-echo", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "hi"


def test_keyboard_alone(gw, browser):
    """Tab to the key field, type, Enter; Tab through the navigation with a visible focus ring;
    create a key with the keyboard only; a key name is shown as text, never run."""
    d = browser
    d.get(f"{gw.public_url}/console/login")
    body = d.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)  # the skip link
    assert d.switch_to.active_element.text == "Skip to content"
    for _ in range(5):
        if d.switch_to.active_element.get_attribute("id") == "key":
            break
        d.switch_to.active_element.send_keys(Keys.TAB)
    active = d.switch_to.active_element
    assert active.get_attribute("id") == "key"
    active.send_keys(ALICE + Keys.ENTER)
    wait_for(d, lambda x: x.current_url.endswith("/console/api"), "signed in by keyboard")
    d.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    focused = d.switch_to.active_element
    outline = d.execute_script("return getComputedStyle(arguments[0]).outlineStyle", focused)
    assert outline == "solid", outline  # :focus-visible
    # Name, then Enter in the field submits "Create key".
    name = d.find_element(By.ID, "name")
    name.send_keys('<script>alert("pwned")</script>' + Keys.ENTER)
    wait_for(d, lambda x: x.find_elements(By.ID, "new-key"), "a key made by keyboard")
    with pytest.raises(NoAlertPresentException):
        d.switch_to.alert.text
    assert '<script>alert("pwned")</script>' in d.find_element(By.TAG_NAME, "main").text
