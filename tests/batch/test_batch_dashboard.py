"""The dashboard lists the signed-in key's batches with a progress bar (real headless Chromium)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from openai import OpenAI

from tests.conftest import stop_server
from tests.ops.conftest import start_scripted_server
from tests.ops.test_ops_dashboard import CHROMIUM_ARGS

KEYS = {"dash": "sk-dash-batch-0123456789", "other": "sk-other-batch-0123456789"}


def test_dashboard_lists_own_batches_with_progress(tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("no chromium on the PATH: run scripts/install_test_deps.sh (make test does)")
    from playwright.sync_api import expect, sync_playwright

    server = start_scripted_server(tmp_path, {"OPS_CHUNKS": "2", "MSSERVE_API_KEYS": ",".join(
        f"{name}:{key}" for name, key in KEYS.items())})
    try:
        ids = {}
        for name, key in KEYS.items():
            api = OpenAI(base_url=server.v1, api_key=key, max_retries=0)
            lines = "".join(json.dumps({"custom_id": f"{name}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                        "body": {"messages": [{"role": "user", "content": "hi"}]}}) + "\n"
                            for i in range(3))
            uploaded = api.files.create(file=("in.jsonl", lines.encode()), purpose="batch")
            ids[name] = api.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                           completion_window="24h").id
            deadline = time.monotonic() + 30
            while api.batches.retrieve(ids[name]).status != "completed":
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page()
                page.goto(server.base_url + "/")
                page.fill("#login-key", KEYS["dash"])
                page.click("#login button")
                row = page.locator(f'#batches tr[data-batch-id="{ids["dash"]}"]')
                expect(row).to_have_count(1, timeout=10_000)
                expect(row).to_contain_text("completed")
                assert row.locator("progress").get_attribute("value") == "3"
                assert page.locator(f'#batches tr[data-batch-id="{ids["other"]}"]').count() == 0  # not its key's
            finally:
                browser.close()
    finally:
        stop_server(server)
