"""A real browser (Debian's chromium driven by Playwright) labels 10 pairs with the keyboard only.

The server runs on 127.0.0.1 in a thread; the labeler opens an invite link, presses Enter, then one
key per pair. Sides are randomized by the server, so the test reads which text is on the left and
checks the stored comparison against the text it meant to prefer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from storage.records import Comparison
from storage.store import Store
from tests.node.labeling.conftest import CAMPAIGN
from tests.node.labeling.test_pages import invite

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]

if not Path(CHROMIUM).exists():
    pytest.skip(f"REAL-BROWSER TEST NOT RUN: {CHROMIUM} is missing; install it with `apt-get install -y chromium`",
                allow_module_level=True)
playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="REAL-BROWSER TEST NOT RUN: the Python package playwright is missing "
                                  "(pip install playwright; no browser download is needed)")


# (key, intent): intent "longer"/"shorter" = the response the labeler prefers; "tie"/"both_bad" as is.
PLAN = [("1", "left"), ("b", "right"), ("3", "tie"), ("x", "both_bad"), ("a", "left"),
        ("2", "right"), ("t", "tie"), ("4", "both_bad"), ("1", "left"), ("b", "right")]


def test_a_labeler_labels_ten_pairs_with_the_keyboard(server: str, store: Store) -> None:
    secret = invite(store, "browser-bob")
    expected: list[tuple[frozenset[str], str | None, str]] = []  # (texts, preferred text or None, outcome kind)
    errors: list[str] = []
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which(CHROMIUM) or CHROMIUM, headless=True,
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{server}/login#invite={secret}")
            assert "invite=" not in page.url  # the script moved the secret out of the address bar
            with page.expect_navigation():
                page.keyboard.press("Enter")
            assert page.url.endswith(f"/label/{CAMPAIGN}")
            cookies = {c["name"]: c for c in page.context.cookies()}
            assert cookies["rn_session"]["httpOnly"] and page.evaluate("document.cookie") == ""
            for i, (key, intent) in enumerate(PLAN):
                left, right = page.inner_text("#left pre"), page.inner_text("#right pre")
                assert page.inner_text("#mine") == str(i)
                if i == 0:  # a comment typed with the keyboard: the label keys do nothing inside it
                    page.keyboard.press("Tab")
                    page.focus("textarea[name=comment]")
                    page.keyboard.type("about a tie? no")
                    page.keyboard.press("Escape")
                preferred = left if intent == "left" else right if intent == "right" else None
                kind = intent if intent in ("tie", "both_bad") else "preferred"
                expected.append((frozenset((left, right)), preferred, kind))
                with page.expect_navigation():
                    page.keyboard.press(key)
            assert page.inner_text("#mine") == "10"
        finally:
            browser.close()
    assert errors == []
    rows = [r for r in store.campaign_labels(CAMPAIGN) if r.annotator == "browser-bob"]
    assert len(rows) == 10 and len({r.pair_id for r in rows}) == 10
    stored = {frozenset((c.response_a, c.response_b)): c for c in store.iter_records(sources=[f"labeling:{CAMPAIGN}"])
              if isinstance(c, Comparison) and c.annotator == "browser-bob"}
    assert len(stored) == 10
    for texts, preferred, kind in expected:
        c = stored[texts]
        if kind == "preferred":
            assert c.outcome in ("A", "B")
            assert (c.response_a if c.outcome == "A" else c.response_b) == preferred
        else:
            assert c.outcome == kind
    first = stored[expected[0][0]]
    assert first.comment == "about a tie? no"
