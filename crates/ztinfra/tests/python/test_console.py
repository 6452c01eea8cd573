"""The approvals console in a real browser: Debian's Chromium, driven by Selenium through
chromedriver. A person signs in, sees an agent's request appear in the queue, approves it; the
agent's retry is allowed; the person opens its evidence record and the page verifies it
(WebCrypto Ed25519 and SHA-256), and shows a proof tampered with in transit as failed. The
cookie is HttpOnly and SameSite=Strict, the API takes it only with its CSRF token, and a
sign-in that ended or expired is refused.
"""

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as Driver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait
from test_approvals import DROP, start

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Set to a directory to keep the screenshots of the two main screens (the README's).
SCREENSHOTS = os.environ.get("ZTINFRA_SCREENSHOTS")


@pytest.fixture
def browser(tmp_path):
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "the console tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Driver(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def raw(method, url, headers, body=None):
    """A request with exactly these headers (no bearer): the status and the problem's detail."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **headers},
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, ""
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}").get("detail", "")


def sign_in(browser, base, token):
    browser.get(f"{base}/console")
    wait = WebDriverWait(browser, 15)
    wait.until(ready.visibility_of_element_located((By.ID, "token"))).send_keys(token)
    browser.find_element(By.ID, "sign-in-button").click()
    wait.until(ready.visibility_of_element_located((By.ID, "approvals")))
    return wait


def test_approve_in_the_console_then_verify_the_evidence(tmp_path, browser):
    with start(tmp_path) as service:
        wait = sign_in(browser, service.base, service.people["alice"])
        assert browser.find_element(By.ID, "who").text == "alice (approver)"
        wait.until(ready.text_to_be_present_in_element((By.ID, "queue"), "Nothing waits"))

        # The agent asks; the request appears in the open page by itself (long poll).
        token = service.session(on_behalf_of="frank")
        status, asked = service.decide(token, DROP)
        aid = asked["approval"]["id"]
        card = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, f"article[data-id='{aid}']")))
        text = card.text
        for shown in ("ops-bot asks to db.tables.drop on db://prod/orders", "frank", "drop-needs-sre",
                      "0 of 1 from group sre-oncall", '"ticket": "OPS-42"', "started by launcher",
                      "an action it was never allowed before; 0 decisions in the last minute"):
            assert shown in text, (shown, text)
        if SCREENSHOTS:
            browser.save_screenshot(str(Path(SCREENSHOTS) / "console-approvals.png"))

        # A reason is required; then approve.
        approve = card.find_element(By.CSS_SELECTOR, "button.approve")
        assert not approve.is_enabled()
        card.find_element(By.CSS_SELECTOR, "textarea.reason").send_keys("OPS-42: orders archived to cold storage")
        approve.click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "queue-note"), f"{aid}): it is approved now"))
        # The agent's retry is allowed; the page's queue empties.
        status, allowed = service.decide(token, DROP, aid)
        assert allowed["decision"] == "allow", allowed
        wait.until(ready.text_to_be_present_in_element((By.ID, "queue"), "Nothing waits"))

        # The evidence browser: find the allowed retry and verify its record in the page.
        browser.find_element(By.ID, "tab-evidence").click()
        browser.find_element(By.ID, "f-actor").send_keys("ops-bot")
        browser.find_element(By.ID, "f-decision").send_keys("allow")
        browser.find_element(By.ID, "search").click()
        row = wait.until(ready.presence_of_element_located(
            (By.CSS_SELECTOR, f"#records tr[data-seq='{allowed['evidence']['seq']}']")))
        assert aid in row.text and "db.tables.drop" in row.text
        row.find_element(By.CSS_SELECTOR, "button.open").click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "record-json"), allowed["decision_id"]))
        browser.find_element(By.ID, "verify").click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "verdict"), "verified"))
        verdict = browser.find_element(By.ID, "verdict").text
        assert verdict.startswith("verified: record #") and "checkpoint key" in verdict, verdict
        if SCREENSHOTS:
            browser.save_screenshot(str(Path(SCREENSHOTS) / "console-evidence.png"))

        # The same proof altered in transit (one bit of its first hash) is shown as failed.
        browser.execute_script("""
            const real = window.fetch;
            window.fetch = async (url, init) => {
              const response = await real(url, init);
              if (!String(url).includes('/proof')) return response;
              const proof = await response.json();
              const first = proof.proof[0];
              proof.proof[0] = (parseInt(first[0], 16) ^ 1).toString(16) + first.slice(1);
              return new Response(JSON.stringify(proof), {status: 200, headers: {'content-type': 'application/json'}});
            };""")
        browser.find_element(By.ID, "verify").click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "verdict"), "verification failed"))
        assert "does not lead to the signed checkpoint's root" in browser.find_element(By.ID, "verdict").text

        # The cookie: HttpOnly (the page's script cannot read it), SameSite=Strict.
        cookie = browser.get_cookie("zt_console")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict", cookie
        assert "zt_console" not in browser.execute_script("return document.cookie")
        csrf = browser.execute_script("return state.csrf")
        jar = {"cookie": f"zt_console={cookie['value']}"}
        # CSRF: the cookie alone, or with a wrong token, changes nothing.
        aid2 = service.decide(token, {**DROP, "resource": "db://prod/carts"})[1]["approval"]["id"]
        for headers in (jar, {**jar, "x-csrf-token": "forged"}):
            status, detail = raw("POST", f"{service.base}/v1/approvals/{aid2}/approve", headers, {"reason": "csrf"})
            assert status == 401 and "X-CSRF-Token" in detail, (status, detail)
        status, _ = raw("GET", f"{service.base}/v1/approvals/{aid2}", {**jar, "x-csrf-token": csrf})
        assert status == 200

        # Signing out ends the sign-in: the same cookie and token are refused.
        browser.find_element(By.ID, "sign-out").click()
        wait.until(ready.visibility_of_element_located((By.ID, "sign-in")))
        status, detail = raw("GET", f"{service.base}/v1/approvals/{aid2}", {**jar, "x-csrf-token": csrf})
        assert status == 401 and "sign in again" in detail, (status, detail)


def test_console_sign_ins_expire_and_need_a_person_s_role(tmp_path, browser):
    with start(tmp_path, extra="\n[approvals]\nconsole_session_ttl_secs = 2\n") as service:
        # An enforcement point's credential signs nobody in; a wrong one neither.
        pep = service.credential("gate", "pep")
        status, detail = raw("POST", f"{service.base}/console/session", {}, {"token": pep})
        assert status == 403, (status, detail)
        status, detail = raw("POST", f"{service.base}/console/session", {}, {"token": "zt_" + "A" * 43})
        assert status == 401, (status, detail)

        # An auditor signs in, sees the queue, has no approve button; after 2 s the sign-in ends.
        token = service.session()
        aid = service.decide(token, DROP)[1]["approval"]["id"]
        wait = sign_in(browser, service.base, service.auditor)
        card = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, f"article[data-id='{aid}']")))
        assert not card.find_elements(By.CSS_SELECTOR, "button.approve")
        cookie = browser.get_cookie("zt_console")["value"]
        csrf = browser.execute_script("return state.csrf")
        time.sleep(2.5)
        status, detail = raw("GET", f"{service.base}/v1/approvals", {"cookie": f"zt_console={cookie}", "x-csrf-token": csrf})
        assert status == 401 and "sign in again" in detail, (status, detail)
        # The open page notices at its next request and asks to sign in again.
        browser.find_element(By.ID, "tab-evidence").click()
        wait.until(ready.visibility_of_element_located((By.ID, "sign-in")))
        assert "sign in again" in browser.find_element(By.ID, "sign-in-error").text
