"""The /docs page of the local gateway in a real headless browser (Debian's chromium driven by
Playwright): it renders every cord of deploy_example from the chute's document, offline, and "Try it
out" calls the chute through this gateway.

Offline is checked three ways: every request the page makes is seen, and one that leaves the gateway
fails the test; host names other than the loopback resolve to nothing; the browser's own background
traffic (updates, sync) is off. `.ci/run` installs chromium, so CI runs this; elsewhere it is skipped
with the reason.
"""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, example):
    platform, _ = example
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    foreign: list[str] = []
    errors: list[str] = []

    def guard(route, request):
        if request.url.startswith(platform.url + "/") or request.url.startswith("data:"):
            route.continue_()
        else:
            foreign.append(request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    yield page
    context.close()
    assert foreign == [], f"the page asked for something outside the gateway: {foreign}"
    assert errors == [], errors


def test_the_docs_page_renders_every_cord_from_the_chutes_document(page, example):
    platform, _ = example
    document = page.request.get(platform.url + "/openapi.json").json()
    page.goto(platform.url + "/docs")
    page.wait_for_selector(".opblock-summary-path[data-path='/proxy']", timeout=30000)
    shown = page.eval_on_selector_all(".opblock", """blocks => blocks.map(b => [
        b.querySelector('.opblock-summary-method').innerText.trim(),
        b.querySelector('.opblock-summary-path').dataset.path])""")
    expected = [[method.upper(), path] for path, item in document["paths"].items() for method in item]
    assert sorted(shown) == sorted(expected)
    assert page.locator(".info .title").inner_text().startswith("demo-service")
    assert "OAS 3.1" in page.locator(".info .title").inner_text()
    assert page.locator("button.authorize").is_visible()  # bearer auth, as on Chutes
    servers = page.eval_on_selector_all(".servers select option", "options => options.map(o => o.value)")
    assert servers == [platform.url, "https://chutes-user-demo-service.chutes.ai"]


def test_try_it_out_calls_the_chute_through_this_gateway(page, example):
    platform, service = example
    page.goto(platform.url + "/docs#/default/get_v1_models")
    block = page.locator("#operations-default-get_v1_models")
    block.wait_for(state="visible", timeout=30000)
    if not block.locator(".opblock-body").is_visible():
        block.locator(".opblock-summary").click()
    block.locator("button.try-out__btn").click()
    block.locator("tr[data-param-name='limit'] input").fill("1")
    with page.expect_response(lambda answer: "/v1/models?" in answer.url) as answered:
        block.locator("button.execute").click()
    answer = answered.value
    assert answer.url == platform.url + "/v1/models?limit=1" and answer.status == 200
    block.locator(".live-responses-table .response-col_status").first.wait_for(timeout=15000)
    assert "demo-tts-1" in block.locator(".live-responses-table").inner_text()
