"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): sign in, upload, caption, new row.

Chromium must be installed (scripts/install_test_deps.sh, called by `make test`): without it this test fails,
it does not skip. `playwright install` is never used.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import stop_server
from tests.images import image_bytes
from tests.ops.conftest import start_scripted_server

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "sk-dash-0123456789ab"


def test_sign_in_upload_and_see_the_routed_caption(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")  # Debian's package, on the PATH wherever the distribution puts it
    if chromium is None:
        pytest.fail("no chromium on the PATH: run scripts/install_test_deps.sh (make test does)")
    from playwright.sync_api import expect, sync_playwright

    picture = tmp_path / "red.png"
    picture.write_bytes(image_bytes("PNG", (120, 80)))
    server = start_scripted_server(tmp_path, {"OPS_CHUNKS": "4", "MSSERVE_API_KEYS": f"dash:{KEY}"})
    console_errors: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page()
                page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
                page.goto(server.base_url + "/")
                expect(page.locator("#login")).to_be_visible()
                page.fill("#login-key", "sk-wrong")
                page.click("#login button")
                expect(page.locator("#login-error")).to_be_visible()
                page.fill("#login-key", KEY)
                page.click("#login button")
                expect(page.locator("#recent")).to_be_attached(timeout=10_000)
                rows_before = page.locator("#recent tr").count()

                page.set_input_files("#upload-file", str(picture))
                page.click("#upload-button")
                expect(page.locator("#caption")).to_have_text("w0 w1 w2 w3", timeout=20_000)
                expect(page.locator("#caption-tier")).to_have_text("local")
                request_id = page.locator("#caption-request-id").inner_text()
                assert len(request_id) == 32
                row = page.locator(f'#recent tr[data-request-id="{request_id}"]')
                expect(row).to_have_count(1, timeout=10_000)
                expect(row).to_contain_text("/v1/captions")
                expect(row).to_contain_text("local")
                assert page.locator("#recent tr").count() == rows_before + 1
                expect(page.locator("#c-requests")).to_have_text("1")
            finally:
                browser.close()
    finally:
        stop_server(server)
    # The page's own requests were refused only where expected (the wrong key), never for CSP or scripts.
    assert [e for e in console_errors if "401" not in e] == []
