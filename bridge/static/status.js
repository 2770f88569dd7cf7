// Fleet status page: asks /api/status for the counts and one page of servers every few
// seconds and updates only the rows that changed; no dependencies. Filtering, sorting and
// paging happen in the bridge; the page's URL keeps them, so a view can be shared.
// Data is written with textContent only, never as HTML.
"use strict";

(function () {
  const body = document.body;
  const API = body.dataset.api;
  const REFRESH_MS = Number(body.dataset.refresh || 5) * 1000;
  const FILTER_DELAY_MS = 80;  // one request per pause in typing, not per key
  const PROBLEMS = ["down", "late", "never_seen", "away", "paused"];
  // State names come from the count tiles, so the page names each state in one place.
  const STATE_TEXT = {};
  document.querySelectorAll(".count[data-state]").forEach((tile) => {
    STATE_TEXT[tile.dataset.state] = tile.querySelector(".name").textContent;
  });
  const STATES = Object.keys(STATE_TEXT);
  // The page opens on the servers that are not up; the API's own default is all.
  const DEFAULTS = { state: "problems", q: "", sort: "state", order: "asc", page: "1" };

  const view = readUrl();
  let rowsById = new Map();  // server_id -> {tr, signature}
  let last = null;           // the last answer: {data, etag, url}
  let clockOffset = 0;       // bridge clock minus this browser's, from the last answer
  let inflight = null;
  let filterTimer = null;
  let refreshTimer = null;

  const tbody = document.querySelector("#servers tbody");
  const filterBox = document.getElementById("filter");
  filterBox.value = view.q;

  // ---- formatting (defensive: one odd value must not blank the page) ------------

  function duration(seconds) {
    if (!Number.isFinite(seconds)) return "-";
    const s = Math.max(0, Math.round(seconds));
    if (s < 120) return s + " s";
    if (s < 3600 || (s < 7200 && s % 3600)) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.round(s / 3600) + " h";
    if (s < 63115200) return Math.round(s / 86400) + " d";
    return Math.round(s / 31557600) + " y";
  }

  // ISO 8601 UTC, or null for a time no Date can hold (beyond year 275760, or not a number).
  function isoUtc(unix) {
    const ms = Number(unix) * 1000;
    if (!Number.isFinite(ms) || Math.abs(ms) > 8.64e15) return null;
    return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
  }

  // Format characters (bidi overrides and isolates, zero-width characters) shown as what
  // they are: a stored host name cannot make its row read differently from its data.
  const FORMAT = /\p{Cf}/gu;
  function visible(text) {
    return String(text).replace(FORMAT, (c) =>
      "<U+" + c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0") + ">");
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = visible(text);
    if (className) node.className = className;
    return node;
  }

  function timeNode(unix, text) {
    const iso = isoUtc(unix);
    if (iso === null) return el("span", "time " + String(unix), "detail odd");
    const node = el("time", text(iso));
    node.dateTime = iso;
    node.title = iso + " (UTC)";
    return node;
  }

  function serverNow() {
    return Date.now() / 1000 + clockOffset;
  }

  // A relative time whose exact UTC time shows on hover and is machine readable.
  function timeAgo(unix) {
    const node = timeNode(unix, () => duration(serverNow() - unix) + " ago");
    node.dataset.unix = unix;
    node.classList.add("ago");
    return node;
  }

  function exactTime(unix) {
    return timeNode(unix, (iso) => iso.slice(0, 16).replace("T", " ") + " UTC");
  }

  function clockTime(unix) {
    const iso = isoUtc(unix);
    return iso === null ? "?" : iso.slice(11, 19) + " UTC";
  }

  // ---- rows -------------------------------------------------------------------

  function cell(label, content, tag) {
    const td = el(tag || "td");
    td.dataset.label = label;  // shown before the value when rows are cards (phones)
    if (tag === "th") td.scope = "row";
    const value = el("div", null, "value");
    [].concat(content).forEach((part) => {
      value.append(typeof part === "string" ? document.createTextNode(visible(part)) : part);
    });
    td.append(value);
    return td;
  }

  // Under the state: why, and until when (pause), when due back (away), since when (retired).
  const STATE_DETAIL = {
    paused: (row) => [row.paused_until !== null && ["until ", row.paused_until], row.pause_reason],
    away: (row) => [row.expected_back !== null && ["back by ", row.expected_back]],
    retired: (row) => [row.retired_at !== null && ["since ", row.retired_at]],
  };

  function stateCell(row) {
    const parts = [el("span", STATE_TEXT[row.state] || row.state, "badge state-" + row.state)];
    (STATE_DETAIL[row.state] ? STATE_DETAIL[row.state](row) : []).forEach((detail) => {
      if (!detail) return;
      const line = el("span", null, "detail line");
      if (typeof detail === "string") {
        line.textContent = visible(detail);
      } else {
        line.append(detail[0], exactTime(detail[1]));
      }
      parts.push(line);
    });
    return parts;
  }

  function agentCell(row) {
    const parts = [];
    if (row.hostname) parts.push(el("span", row.hostname, "host"));
    if (row.agent_version) parts.push(el("span", "agent " + row.agent_version, "detail"));
    return parts.length ? parts : ["-"];
  }

  function labelsCell(row) {
    const labels = row.labels || {};
    const pairs = Object.keys(labels).sort().map((name) => name + "=" + labels[name]);
    return pairs.length ? pairs.map((pair) => el("span", pair, "label")) : ["-"];
  }

  function renderRow(row) {
    const tr = el("tr", null, "state-" + row.state);
    tr.dataset.serverId = row.server_id;
    tr.dataset.state = row.state;
    try {
      const lastSeen = row.last_seen !== null ? timeAgo(row.last_seen)
        : el("span", "never", "detail");
      tr.append(
        cell("Server", row.server_id, "th"),
        cell("State", stateCell(row)),
        cell("Last seen", lastSeen),
        cell("Interval", row.interval !== null ? duration(row.interval) : "-"),
        cell("Labels", labelsCell(row)),
        cell("Agent", agentCell(row)),
        cell("Booted", row.boot_time !== null ? timeAgo(row.boot_time) : "-"),
      );
    } catch (err) {  // whatever a row holds, the others are still shown
      tr.replaceChildren(cell("Server", row.server_id, "th"),
        cell("State", [el("span", STATE_TEXT[row.state] || row.state, "badge state-" + row.state)]));
    }
    return tr;
  }

  // Rows are keyed by server id; a row is rebuilt only when its data changed, and moved
  // only when its place did. The times "ago" are updated in place.
  function renderRows(servers) {
    const next = new Map();
    let previous = null;
    servers.forEach((row) => {
      const { seconds_since_last_seen: _, ...rest } = row;
      const signature = JSON.stringify(rest);
      let entry = rowsById.get(row.server_id);
      if (!entry || entry.signature !== signature) {
        const tr = renderRow(row);
        if (entry) entry.tr.replaceWith(tr);
        entry = { tr, signature };
      }
      next.set(row.server_id, entry);
      const wanted = previous ? previous.nextSibling : tbody.firstChild;
      if (entry.tr !== wanted) tbody.insertBefore(entry.tr, wanted);
      previous = entry.tr;
    });
    rowsById.forEach((entry, id) => { if (!next.has(id)) entry.tr.remove(); });
    rowsById = next;
    updateAgo();
  }

  function updateAgo() {
    const now = serverNow();
    tbody.querySelectorAll("time.ago").forEach((node) => {
      const text = duration(now - Number(node.dataset.unix)) + " ago";
      if (node.textContent !== text) node.textContent = text;
    });
  }

  function setText(id, text) {
    const node = document.getElementById(id);
    if (node.textContent !== text) node.textContent = text;
  }

  function render(data) {
    STATES.forEach((state) => setText("count-" + state, String(data.counts[state])));
    setText("count-total", String(data.counts.total));
    renderRows(data.servers);
    const count = data.servers.length;
    const first = (data.query.page - 1) * data.query.per_page;
    setText("shown", data.matched === 0 ? "none shown"
      : (first + 1) + "-" + (first + count) + " of " + data.matched);
    const empty = document.getElementById("empty");
    empty.hidden = count > 0;
    empty.textContent = view.state === "problems" && !view.q ? "Every server is up."
      : "No server matches.";
    setText("page-info", "Page " + data.query.page + " of " + data.pages);
    document.getElementById("prev").disabled = data.query.page <= 1;
    document.getElementById("next").disabled = data.query.page >= data.pages;
  }

  function renderControls() {
    const states = view.state === "all" ? STATES
      : view.state === "problems" ? PROBLEMS : view.state.split(",");
    document.querySelectorAll(".count[data-state]").forEach((tile) => {
      tile.setAttribute("aria-pressed", String(view.state === tile.dataset.state));
    });
    document.querySelectorAll("button[data-view]").forEach((button) => {
      button.setAttribute("aria-pressed", String(view.state === button.dataset.view));
    });
    setText("listing", view.state === "all" ? "All servers"
      : view.state === "problems" ? "Servers that are not up"
        : "Servers " + states.map((s) => (STATE_TEXT[s] || s).toLowerCase()).join(" or "));
    document.querySelectorAll("th[aria-sort]").forEach((th) => {
      const active = th.querySelector("button").dataset.sort === view.sort;
      const descending = view.order === "desc";
      th.setAttribute("aria-sort", !active ? "none" : descending ? "descending" : "ascending");
      th.querySelector(".arrow").textContent = !active ? "" : descending ? " \u25BC" : " \u25B2";
    });
  }

  // ---- the view in the URL ----------------------------------------------------

  function readUrl() {
    const params = new URLSearchParams(window.location.search);
    const out = {};
    Object.keys(DEFAULTS).forEach((key) => { out[key] = params.get(key) || DEFAULTS[key]; });
    return out;
  }

  function query(withDefaults) {
    const params = new URLSearchParams();
    Object.keys(DEFAULTS).forEach((key) => {
      if (withDefaults || view[key] !== DEFAULTS[key]) params.set(key, view[key]);
    });
    return params.toString();
  }

  function writeUrl() {
    const search = query(false);
    const url = window.location.pathname + (search ? "?" + search : "");
    if (url !== window.location.pathname + window.location.search) {
      window.history.replaceState(null, "", url);
    }
  }

  // ---- data -------------------------------------------------------------------

  function setUpdated(text, stale) {
    const node = document.getElementById("updated");
    node.textContent = text;
    node.classList.toggle("stale", stale);
  }

  async function refresh() {
    const url = API + "?" + query(true);
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    const headers = { Accept: "application/json" };
    // Unchanged since the last answer for this view: the bridge says 304, nothing to draw.
    if (last && last.url === url && last.etag) headers["If-None-Match"] = last.etag;
    try {
      const response = await fetch(url, {
        headers, credentials: "same-origin", cache: "no-store", signal: controller.signal,
      });
      if (response.status === 304) {
        updateAgo();
        setUpdated("Checked " + clockTime(serverNow()) + ", unchanged; refreshed every "
          + REFRESH_MS / 1000 + " s", false);
        return;
      }
      if (!response.ok) {
        const problem = await response.json().catch(() => ({}));
        throw new Error(problem.message || "HTTP " + response.status);
      }
      const data = await response.json();
      if (controller !== inflight) return;  // a newer view was asked for meanwhile
      clockOffset = data.generated_at - Date.now() / 1000;
      last = { data, url, etag: response.headers.get("ETag") };
      if (data.query.page > data.pages) {  // the list shrank under this page
        view.page = String(data.pages);
        writeUrl();
        refresh();
        return;
      }
      render(data);
      setUpdated("Updated " + clockTime(data.generated_at) + ", refreshed every "
        + REFRESH_MS / 1000 + " s", false);
    } catch (err) {
      if (err.name === "AbortError") return;
      const since = last ? " - showing data from " + clockTime(last.data.generated_at) : "";
      setUpdated("Could not refresh (" + err.message + ")" + since, true);
    } finally {
      if (inflight === controller) inflight = null;
    }
  }

  function schedule() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(loop, REFRESH_MS);
  }

  function loop() {
    if (document.hidden) { schedule(); return; }
    refresh().finally(schedule);
  }

  // A change of view: new URL, new request now, the timer starts again.
  function changed() {
    renderControls();
    writeUrl();
    loop();
  }

  // ---- wiring -----------------------------------------------------------------

  filterBox.addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      const text = filterBox.value.trim();
      if (text === view.q) return;
      view.q = text;
      view.page = "1";
      changed();
    }, FILTER_DELAY_MS);
  });

  document.querySelectorAll(".count[data-state]").forEach((tile) => {
    tile.addEventListener("click", () => {
      view.state = view.state === tile.dataset.state ? "problems" : tile.dataset.state;
      view.page = "1";
      changed();
    });
  });

  document.querySelectorAll("button[data-view]").forEach((button) => {
    button.addEventListener("click", () => {
      view.state = button.dataset.view;
      view.page = "1";
      changed();
    });
  });

  document.querySelectorAll("th button[data-sort]").forEach((button) => {
    button.addEventListener("click", () => {
      const key = button.dataset.sort;
      view.order = view.sort === key && view.order === "asc" ? "desc" : "asc";
      view.sort = key;
      view.page = "1";
      changed();
    });
  });

  document.getElementById("prev").addEventListener("click", () => {
    view.page = String(Math.max(1, Number(view.page) - 1));
    changed();
  });
  document.getElementById("next").addEventListener("click", () => {
    view.page = String(Number(view.page) + 1);
    changed();
  });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) loop();
  });

  renderControls();
  loop();
})();
