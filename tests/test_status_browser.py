"""The status page in a real headless Chromium, against a real bridge (gunicorn, SQLite).

States depend on time, so servers declare intervals of 1-2 s and the tests wait (through
/api/status) until silence has made them late or down before looking at the page.
"""
import json
import math

import pytest
import requests

from tests.tools import (
    ADMIN_TOKEN,
    FLEET_TOKEN,
    ROOT,
    require_binary,
    wait_until,
    write_rows,
)

pytestmark = pytest.mark.live  # every test here starts a real program

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# What a rendered row says, by server id, for the fleet of seed_fleet() once settled.
SETTLED = {"web-up": "Up", "web-late": "Late", "db-down": "Down", "db-new": "Never seen",
           "ops-paused": "Paused", "ops-away": "Away", "old-retired": "Retired"}
STATES = ("up", "late", "down", "never_seen", "paused", "away", "retired")
FLEET = {"Authorization": f"Bearer {FLEET_TOKEN}"}


@pytest.fixture(scope="module")
def browser():
    path = require_binary("chromium")
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS,
                                             timeout=20000)
        yield browser
        browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def open_page(browser):
    """Open a page on a bridge; every context opened is closed at the end of the test."""
    contexts = []

    def open_(bridge, path="/", viewport=None, **context_options):
        context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800},
                                      **context_options)
        context.set_default_timeout(10000)
        # Only loopback traffic: refuse anything that is not the bridge under test.
        context.route("**/*", lambda route: route.continue_()
                      if route.request.url.startswith(bridge.url) else route.abort())
        contexts.append(context)
        page = context.new_page()
        page.goto(bridge.url + path)
        return page

    yield open_
    for context in contexts:
        context.close()


def admin(bridge, method, path, **json):
    response = requests.request(method, bridge.url + path, headers=ADMIN, json=json or None,
                                timeout=5)
    assert response.status_code in (200, 201), response.text
    return response.json()


def api_states(bridge):
    body = requests.get(bridge.url + "/api/status", headers=ADMIN, timeout=5).json()
    return {s["server_id"]: s["state"] for s in body["servers"]}


def seed_fleet(bridge, transient=True):
    """One server in every state, through the real admin and beat endpoints.

    With transient=False, only the states that last: up, never seen, paused, away, retired.
    """
    admin(bridge, "POST", "/api/servers", server_id="web-up", labels={"team": "web"})
    admin(bridge, "POST", "/api/servers", server_id="db-new", labels={"team": "db"})
    beat = {"interval": 3600, "hostname": "web-up.example.net", "agent_version": "1.4.2",
            "boot_time": 1_700_000_000}
    assert bridge.beat("web-up", token=FLEET_TOKEN, json=beat).status_code == 200
    assert bridge.beat("ops-paused", token=FLEET_TOKEN, json={"interval": 1}).status_code == 200
    admin(bridge, "POST", "/api/servers/ops-paused/pause", reason="kernel upgrade",
          **{"for": "2h"})
    for server_id in ("ops-away", "old-retired"):
        assert bridge.beat(server_id, token=FLEET_TOKEN, json={"interval": 1}).status_code == 200
    assert requests.post(bridge.url + "/api/heartbeat/ops-away/goodbye", headers=FLEET,
                         json={"back_within": "1h"}, timeout=5).status_code == 200
    admin(bridge, "POST", "/api/servers/old-retired/retire")
    if not transient:
        return {k: v for k, v in SETTLED.items() if k not in ("web-late", "db-down")}
    admin(bridge, "POST", "/api/servers", server_id="web-late", labels={"team": "web"})
    admin(bridge, "POST", "/api/servers", server_id="db-down", labels={"team": "db"})
    # Late is silent for (3, 6] s at a 2 s interval; down is silent over 3 s at 1 s.
    assert bridge.beat("web-late", token=FLEET_TOKEN, json={"interval": 2}).status_code == 200
    assert bridge.beat("db-down", token=FLEET_TOKEN, json={"interval": 1}).status_code == 200
    wait_until(lambda: api_states(bridge) == {
        "web-up": "up", "web-late": "late", "db-down": "down", "db-new": "never_seen",
        "ops-paused": "paused", "ops-away": "away", "old-retired": "retired"},
        timeout=8, interval=0.1, what="late and down states")
    return SETTLED


def rows(page):
    """Row states as shown in text, by server id, in page order."""
    return page.eval_on_selector_all(
        "#servers tbody tr",
        "trs => trs.map(tr => [tr.dataset.serverId, tr.querySelector('.badge').textContent])")


def shown_ids(page, expected, timeout=8):
    """Wait until the rows are `expected` (ids in order); the bridge answers asynchronously."""
    wait_until(lambda: [s for s, _ in rows(page)] == expected, timeout=timeout,
               interval=0.05, what=f"rows {expected}, showing {rows(page)}")


def counts(page):
    return {state: page.text_content(f"#count-{state}") for state in STATES}


def start(live_bridge, **settings):
    """A bridge with a public page whose snapshots are at most 1 s old."""
    return live_bridge(HEARTBEAT_STATUS_PUBLIC="true", HEARTBEAT_STATUS_MAX_AGE="1", **settings)


PROBLEMS_FIRST = ["db-down", "web-late", "db-new", "ops-away", "ops-paused"]


@pytest.fixture(scope="module")
def settled(module_bridge):
    """One bridge, seeded with the states that last, for the tests that only read it."""
    bridge = start(module_bridge)
    seed_fleet(bridge, transient=False)
    return bridge


def test_the_page_opens_on_servers_not_up_worst_first_with_exact_counts(live_bridge, open_page):
    bridge = start(live_bridge)
    seed_fleet(bridge)
    page = open_page(bridge)
    expect(page.locator("#count-down")).to_have_text("1")
    assert counts(page) == dict.fromkeys(STATES, "1")
    expect(page.locator("#count-total")).to_have_text("7")
    assert rows(page) == [[k, SETTLED[k]] for k in PROBLEMS_FIRST]
    expect(page.locator("button[data-view=problems]")).to_have_attribute("aria-pressed", "true")
    expect(page.locator('tr[data-server-id="ops-paused"]')).to_contain_text("kernel upgrade")
    expect(page.locator('tr[data-server-id="ops-paused"]')).to_contain_text(" UTC")
    expect(page.locator('tr[data-server-id="db-new"]')).to_contain_text("never")
    expect(page.locator('tr[data-server-id="ops-away"]')).to_contain_text("back by")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "status.png"), full_page=True)

    page.click("button[data-view=all]")  # the whole fleet is one click away
    shown_ids(page, PROBLEMS_FIRST + ["web-up", "old-retired"])
    assert "state=all" in page.url
    up_row = page.locator('tr[data-server-id="web-up"]')
    expect(up_row).to_contain_text("web-up.example.net")
    expect(up_row).to_contain_text("agent 1.4.2")
    expect(up_row).to_contain_text("team=web")
    expect(up_row.locator("td[data-label='Interval']")).to_have_text("1 h")
    last_seen = up_row.locator("td[data-label='Last seen'] time")
    assert last_seen.inner_text().endswith(" s ago")
    assert last_seen.get_attribute("datetime").endswith("Z")
    assert last_seen.get_attribute("title").endswith("Z (UTC)")
    expect(page.locator('tr[data-server-id="old-retired"]')).to_contain_text("since")

    page.click("button[data-state=retired]")  # a count tile lists its state
    shown_ids(page, ["old-retired"])
    assert "state=retired" in page.url


def test_a_server_that_changes_state_moves_between_views_on_the_next_refresh(
        live_bridge, open_page):
    bridge = start(live_bridge)
    seed_fleet(bridge)
    answer = admin(bridge, "POST", "/api/servers", server_id="new-own", token=True)
    page = open_page(bridge)
    shown_ids(page, PROBLEMS_FIRST[:3] + ["new-own"] + PROBLEMS_FIRST[3:])
    page.evaluate("window.loadedOnce = 'still here'")
    admin(bridge, "POST", "/api/servers/db-down/retire")
    assert bridge.beat("new-own", token=answer["token"], json={"interval": 3600}
                       ).status_code == 200
    # The next refresh (every 5 s) brings the new snapshot (at most 1 s old).
    shown_ids(page, PROBLEMS_FIRST[1:3] + PROBLEMS_FIRST[3:], timeout=12)
    assert page.evaluate("window.loadedOnce") == "still here"  # no reload, no navigation
    expect(page.locator("#count-retired")).to_have_text("2")
    expect(page.locator("#count-up")).to_have_text("2")
    expect(page.locator("#count-never_seen")).to_have_text("1")  # db-new; new-own is up
    page.click("button[data-view=all]")  # may show the fleet's last snapshot once
    expect(page.locator('tr[data-server-id="new-own"] .badge')).to_have_text("Up",
                                                                             timeout=12000)
    expect(page.locator('tr[data-server-id="db-down"] .badge')).to_have_text("Retired")


def test_an_unchanged_refresh_is_answered_304_and_keeps_every_row(settled, open_page):
    bridge = settled
    page = open_page(bridge)
    shown_ids(page, ["db-new", "ops-away", "ops-paused"])
    # Rows drawn before are kept as they are (only their "ago" text moves).
    page.eval_on_selector_all("#servers tbody tr", "trs => trs.forEach(tr => tr.kept = true)")
    with page.expect_response(lambda r: "/api/status" in r.url, timeout=15000) as refreshed:
        pass
    assert refreshed.value.status == 304
    assert refreshed.value.request.headers["if-none-match"].startswith('W/"')
    assert page.eval_on_selector_all("#servers tbody tr", "trs => trs.map(tr => tr.kept)") == [
        True, True, True]
    expect(page.locator("#updated")).to_contain_text("unchanged")


def test_the_filter_matches_labels_exactly_and_text_anywhere(settled, open_page):
    bridge = settled
    page = open_page(bridge, path="/?state=all")
    expect(page.locator("#servers tbody tr")).to_have_count(5)
    cases = {"team=web": ["web-up"], "team=db": ["db-new"], "TEAM=DB": ["db-new"],
             "team=we": [], "kernel": ["ops-paused"], "paused": ["ops-paused"],
             "ops": ["ops-away", "ops-paused"], "ops away": ["ops-away"],
             "web team=web": ["web-up"], "example.net": ["web-up"], "nothing-like-it": [],
             "": ["db-new", "ops-away", "ops-paused", "web-up", "old-retired"]}
    for text, expected in cases.items():
        page.fill("#filter", text)
        shown_ids(page, expected)
    page.fill("#filter", "team=db")
    expect(page.locator("#shown")).to_have_text("1-1 of 1")
    assert "q=team%3Ddb" in page.url
    page.fill("#filter", "zzz")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#empty")).to_have_text("No server matches.")


def test_paging_sorting_and_filtering_survive_in_a_shared_url(live_bridge, open_page):
    bridge = start(live_bridge)
    for i in range(130):  # never seen: all in the opening view, 100 to a page
        admin(bridge, "POST", "/api/servers", server_id=f"node-{i:03d}",
              labels={"rack": f"r{i % 3}"})
    page = open_page(bridge)
    expect(page.locator("#servers tbody tr")).to_have_count(100)
    expect(page.locator("#page-info")).to_have_text("Page 1 of 2")
    expect(page.locator("#prev")).to_be_disabled()
    page.click("#next")
    shown_ids(page, [f"node-{i:03d}" for i in range(100, 130)])
    assert "page=2" in page.url
    expect(page.locator("#shown")).to_have_text("101-130 of 130")

    page.click("button[data-sort=server_id]")  # sorting starts again at page 1
    page.click("button[data-sort=server_id]")  # again: descending
    shown_ids(page, [f"node-{i:03d}" for i in range(129, 29, -1)])
    page.fill("#filter", "rack=r1")
    expected = [f"node-{i:03d}" for i in range(129, -1, -1) if i % 3 == 1]
    shown_ids(page, expected)
    assert "page=" not in page.url and "order=desc" in page.url

    shared = open_page(bridge, path=page.url[len(bridge.url):])
    shown_ids(shared, expected)
    assert shared.input_value("#filter") == "rack=r1"
    expect(shared.locator("th:has(button[data-sort=server_id])")).to_have_attribute(
        "aria-sort", "descending")
    expect(shared.locator("#shown")).to_have_text(f"1-{len(expected)} of {len(expected)}")


def test_filter_and_sort_buttons_are_reachable_and_usable_with_the_keyboard(
        settled, open_page):
    bridge = settled
    page = open_page(bridge, path="/?state=all")
    expect(page.locator("#servers tbody tr")).to_have_count(5)
    page.keyboard.press("Tab")
    reached = [page.evaluate("document.activeElement.dataset.state")]
    page.focus("#filter")
    for _ in range(3):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.dataset.sort"))
    assert reached == ["up", "server_id", "state", "last_seen"]

    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")  # back on the Server button
    page.keyboard.press("Enter")
    by_id = ["db-new", "old-retired", "ops-away", "ops-paused", "web-up"]
    shown_ids(page, by_id)
    expect(page.locator("th:has(button[data-sort=server_id])")).to_have_attribute(
        "aria-sort", "ascending")
    page.keyboard.press("Space")
    shown_ids(page, by_id[::-1])
    expect(page.locator("th:has(button[data-sort=server_id])")).to_have_attribute(
        "aria-sort", "descending")
    page.focus("button[data-sort=last_seen]")
    page.keyboard.press("Enter")  # most recently seen first, never seen last
    wait_until(lambda: [s for s, _ in rows(page)][-1:] == ["db-new"], timeout=8,
               what="never seen last")
    expect(page.locator("th:has(button[data-sort=state])")).to_have_attribute(
        "aria-sort", "none")


def test_a_phone_width_screen_has_no_horizontal_overflow(settled, open_page):
    bridge = settled
    # Dark, to get a look at the other palette in the screenshot too.
    page = open_page(bridge, path="/?state=all", viewport={"width": 390, "height": 844},
                     color_scheme="dark")
    expect(page.locator("#servers tbody tr")).to_have_count(5)
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "status-phone.png"), full_page=True)


def test_a_protected_page_works_with_basic_auth_and_refuses_without(live_bridge, open_page):
    bridge = live_bridge()
    seed_fleet(bridge, transient=False)
    page = open_page(bridge, http_credentials={"username": "ops", "password": ADMIN_TOKEN})
    expect(page.locator("#count-paused")).to_have_text("1")
    expect(page.locator("#updated")).to_contain_text("Updated")
    assert ADMIN_TOKEN not in page.content()

    # Without credentials headless Chromium cannot answer the challenge and stops;
    # with a wrong token it ends on the 401 answer, which holds no fleet data.
    with pytest.raises(sync_api.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):
        open_page(bridge)
    wrong = open_page(bridge, path="/static/status.css",
                      http_credentials={"username": "ops", "password": "wrong-token-012345"})
    response = wrong.goto(bridge.url + "/")
    assert response.status == 401
    assert response.headers["www-authenticate"].startswith("Basic ")
    assert "invalid_token" in wrong.content() and "web-up" not in wrong.content()


def test_server_data_is_shown_as_text_never_as_markup(live_bridge, open_page):
    bridge = start(live_bridge)
    admin(bridge, "POST", "/api/servers", server_id="odd-1",
          labels={"note": '<img src="/x" onerror="window.pwned=1"><b>bold</b>'})
    page = open_page(bridge)
    row = page.locator('tr[data-server-id="odd-1"]')
    expect(row).to_contain_text('note=<img src="/x" onerror="window.pwned=1"><b>bold</b>')
    assert row.locator("img, b").count() == 0
    assert page.evaluate("window.pwned") is None


def test_format_characters_stored_before_are_shown_as_what_they_are(live_bridge, open_page,
                                                                      tmp_path):
    """A right-to-left override in a host name would make the row read `gnp.evil-bew`
    reversed; the page names the character instead. The API refuses such values now, so the
    row is written into the SQLite file as a store from before would hold it."""
    bridge = start(live_bridge)
    admin(bridge, "POST", "/api/servers", server_id="web-1")
    write_rows(f"sqlite:///{tmp_path / 'bridge.db'}",
               "UPDATE servers SET hostname = ?, agent_version = ?, labels = ? "
               "WHERE server_id = 'web-1'",
               ("web-\u202elive.png", "1.0\u200b", '{"team": "d\u2066b"}'))
    page = open_page(bridge, path="/?state=all")
    row = page.locator('tr[data-server-id="web-1"]')
    expect(row).to_contain_text("web-<U+202E>live.png")
    expect(row).to_contain_text("agent 1.0<U+200B>")
    expect(row).to_contain_text("team=d<U+2066>b")
    assert "\u202e" not in row.inner_text()


def test_odd_stored_values_blank_nothing(live_bridge, open_page, tmp_path):
    """Values no API accepts, written straight into the SQLite file (issue 13)."""
    bridge = start(live_bridge)
    seed_fleet(bridge, transient=False)
    odd = {"odd-inf": dict(paused=1, paused_until=math.inf, pause_reason="forever"),
           "odd-1e13": dict(paused=1, paused_until=1e13, boot_time=1e13),
           "odd-away": dict(expected_back=math.inf, boot_time=-math.inf)}
    for server_id in odd:
        admin(bridge, "POST", "/api/servers", server_id=server_id)
    for server_id, columns in odd.items():
        sets = ", ".join(f"{name} = ?" for name in columns)
        write_rows(f"sqlite:///{tmp_path / 'bridge.db'}",
                   f"UPDATE servers SET {sets} WHERE server_id = ?",
                   (*columns.values(), server_id))
    wait_until(lambda: len(api_states(bridge)) == 8, timeout=5, what="every server listed")
    text = requests.get(bridge.url + "/api/status", timeout=5).text
    assert "Infinity" not in text and "NaN" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in /api/status"))

    errors = []
    page = open_page(bridge, path="/?state=all")
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    shown_ids(page, ["db-new", "odd-away", "ops-away", "odd-1e13", "odd-inf", "ops-paused",
                     "web-up", "old-retired"])
    assert counts(page) == {"up": "1", "late": "0", "down": "0", "never_seen": "1",
                            "paused": "3", "away": "2", "retired": "1"}
    expect(page.locator('tr[data-server-id="odd-1e13"]')).to_contain_text("until time 1")
    expect(page.locator('tr[data-server-id="odd-inf"]')).to_contain_text("forever")
    assert errors == []
