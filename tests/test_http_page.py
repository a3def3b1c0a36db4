"""The page at `/` in a real headless Chromium: pick a voice, type, hear it as it streams.

Debian's `chromium`, driven by playwright's async API (in the test's own loop, next
to the in-process server); never a browser playwright would download. Where
Chromium is absent the tests are skipped, saying how to get it (`.ci/run` installs
it when it can).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import VOICE, Server, http_base, run_server

CHROMIUM = Path("/usr/bin/chromium")
#: How Chromium must start on these machines (no sandbox as root, no network chatter).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Functions, not expressions: the page's CSP forbids eval, which playwright uses for those.
VOICES_LISTED = "() => document.querySelectorAll('#voice option').length > 0"
TEXT = "Good evening. The front door is locked and the porch light is on."

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None and not CHROMIUM.exists(),
    reason="Chromium is not installed: `apt-get install chromium chromium-driver` "
    "(.ci/run does it where it can)",
)


@contextlib.asynccontextmanager
async def browser_page(profile: Path) -> AsyncIterator[Any]:
    """A fresh Chromium profile and one page; console errors fail the test at the end."""
    playwright_api = pytest.importorskip("playwright.async_api")
    errors: list[str] = []
    async with playwright_api.async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),  # a fresh --user-data-dir
            executable_path=shutil.which("chromium") or str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.on("console", lambda msg: _console_error(msg, errors))
            yield page
        finally:
            await context.close()
    assert errors == [], errors


def _console_error(message: Any, errors: list[str]) -> None:
    """Console errors but the browser's own note of each refused fetch (a 401 is a test)."""
    if message.type == "error" and not message.text.startswith("Failed to load resource"):
        errors.append(message.text)


async def speak_on_page(page: Any, base: str, token: str | None = None) -> dict[str, Any]:
    await page.goto(f"{base}/")
    await page.wait_for_function(VOICES_LISTED)
    assert await page.input_value("#voice") == VOICE
    await page.fill("#text", TEXT)
    if token is not None:
        await page.fill("#token", token)
    await page.click("#speak")
    await page.wait_for_function(
        "() => window.ttsStats && window.ttsStats.status !== 'speaking'", timeout=30_000
    )
    stats: dict[str, Any] = await page.evaluate("window.ttsStats")
    return stats


async def test_the_page_speaks_a_voice_as_it_streams(http_server: Server, tmp_path: Path) -> None:
    async with browser_page(tmp_path / "profile") as page:
        await page.goto(f"{http_base(http_server)}/")
        await page.wait_for_function(VOICES_LISTED)
        options = await page.eval_on_selector_all("#voice option", "els => els.map(e => e.value)")
        assert options == [VOICE, "en_US-second-medium"]
        await page.select_option("#voice", "en_US-second-medium")
        await page.select_option("#voice", VOICE)
        stats = await speak_on_page(page, http_base(http_server))
        status = await page.text_content("#status")
    assert stats["status"] == "done", stats
    assert stats["rate"] == 22050
    assert stats["contextState"] == "running", "the browser did not play it"
    assert stats["pieces"] > 1, "the reply came in one piece: not streamed"
    assert stats["rmsDbfs"] > -35, "near silence"
    assert 6 < len(TEXT) / stats["seconds"] < 30, stats
    assert 0 < stats["firstAudioMs"] < 5000
    assert status is not None and status.startswith("Done:")


async def test_the_page_sends_the_token_and_shows_errors(tmp_path: Path, cache_dir: Path) -> None:
    env = {"WYOMING_TTS_HTTP_TOKEN": "s3cret"}
    async with (
        run_server("--http", "127.0.0.1:0", "--cache-dir", str(cache_dir), env=env) as srv,
        browser_page(tmp_path / "profile") as page,
    ):
        refused = await speak_on_page(page, http_base(srv))
        shown = await page.text_content("#status")
        spoken = await speak_on_page(page, http_base(srv), token="s3cret")
    assert refused["status"] == "error" and refused["error"].startswith("unauthorized:")
    assert shown is not None and shown.startswith("unauthorized:")
    assert spoken["status"] == "done" and spoken["rmsDbfs"] > -35
