"""The CPU-side parts of scripts/hostile.py: the corpus builds and is hostile, arguments, verdicts, billing."""

from __future__ import annotations

import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.scripts import load_script

corpus = load_script("hostile_corpus")
cases = load_script("hostile_cases")
hostile = load_script("hostile")


def test_the_corpus_covers_all_thirteen_items() -> None:
    probes = corpus.static_probes()
    items = {probe.item for probe in probes} | set(cases.STATEFUL) | {4}  # 4: hostile.empty_keys
    assert items == set(range(1, 14))
    assert corpus.EMPTY_KEYS and all(not key.replace(",", "").strip() or ":" in key for key in corpus.EMPTY_KEYS)
    for probe in probes:  # every body is sendable as is
        assert isinstance(probe.body, bytes) or json.dumps(probe.body)


def test_router_input_is_the_reported_one() -> None:
    body = next(p.body for p in corpus.static_probes() if p.item == 1)
    assert body["messages"][0]["content"] == "A. x" + "\n" * 16_000


def test_image_urls_never_name_a_public_address() -> None:
    for probe in corpus.static_probes():
        for message in probe.body.get("messages", []) if isinstance(probe.body, dict) else []:
            for part in message["content"] if isinstance(message["content"], list) else []:
                url = part.get("image_url", {}).get("url", "")
                if not url or url.startswith("data:"):
                    continue
                host = urlsplit(url).hostname or ""
                address = ipaddress.ip_address(int(host, 16) if host.startswith("0x") else host)
                assert not address.is_global, url  # the guard refuses it before any connection


def test_the_images_are_what_they_claim() -> None:
    import io
    import struct

    bomb = corpus.png_bomb()
    assert struct.unpack(">II", bomb[16:24]) == (30_000, 30_000)  # what IHDR declares, over a tiny body
    assert len(bomb) < 1000
    assert Image.open(io.BytesIO(corpus.png(1, 1))).size == (1, 1)
    assert corpus.png_many_chunks(50).count(b"tEXt") == 50
    assert Image.open(io.BytesIO(corpus.gif_many_comments(10))).size == (64, 64)  # still a valid GIF
    assert Image.open(io.BytesIO(corpus.jpeg_many_markers(10))).size == (64, 64)


def test_lone_surrogate_bodies_really_hold_lone_surrogates() -> None:
    bodies = [p.body for p in corpus.static_probes() if "surrogate" in p.name]
    assert len(bodies) == 4
    for body in bodies:
        text = json.dumps(json.loads(body), ensure_ascii=False)
        with pytest.raises(UnicodeEncodeError):
            text.encode("utf-8")


def test_arguments() -> None:
    args = hostile.parse_args([])
    assert args.only == set(range(1, 14)) and args.max_seconds == 900.0 and not args.skip_startup_checks
    args = hostile.parse_args(["--only", "3,11", "--max-seconds", "60", "--skip-startup-checks"])
    assert (args.only, args.max_seconds, args.skip_startup_checks) == ({3, 11}, 60.0, True)


def test_server_environment_is_loopback_and_prices_one_dollar_per_answer(tmp_path) -> None:
    azure = cases.BilledAzure(api_key="k")
    azure.port = 12345
    env = hostile.server_env(azure, tmp_path)
    assert urlsplit(env["MSSERVE_AZURE_ENDPOINT"]).hostname == "127.0.0.1"
    assert all(len(key) >= 16 for key in cases.KEYS.values())
    assert set(env["MSSERVE_ADMIN_KEYS"].split(",")) <= set(cases.KEYS)
    answer = cases.Reply(text=cases.FOUR_WORDS)
    azure._completion(answer, {})
    assert azure.billed_usd == pytest.approx(1.0)
    assert float(env["MSSERVE_AZURE_PRICE_OUTPUT_PER_MTOK"]) * 4 / 1e6 == pytest.approx(1.0)


class StillHealth:
    def __init__(self, worst: float) -> None:
        self.worst = worst

    def window(self) -> float:
        return self.worst


@pytest.mark.parametrize(("statuses", "upstream", "health", "problem", "failed"), [
    ([200, 400, 413], False, 0.05, None, False),
    ([503], False, 0.05, None, True),  # a 5xx
    ([502], True, 0.05, None, False),  # the fake Azure failing on purpose
    ([200], False, 1.5, None, True),  # /health too slow meanwhile
    ([200], False, 0.05, "not refused", True),
])
def test_verdicts(capsys, statuses: list[int], upstream: bool, health: float, problem: str | None,
                  failed: bool) -> None:
    run: Any = cases.Run("http://127.0.0.1:9", cases.BilledAzure(), StillHealth(health), deadline=0.0)
    run.report(11, "input", statuses, problem, upstream_5xx=upstream)
    assert bool(run.failures) == failed
    assert "input" in capsys.readouterr().out
