// Fleet status page: reads /api/status every few seconds and renders it; no dependencies.
// Data is written with textContent only, never as HTML.
"use strict";

(function () {
  const body = document.body;
  const API = body.dataset.api;
  const REFRESH_MS = Number(body.dataset.refresh || 5) * 1000;
  // State names come from the count tiles, so the page names each state in one place.
  const STATE_TEXT = {};
  document.querySelectorAll(".count[data-state]").forEach((tile) => {
    STATE_TEXT[tile.dataset.state] = tile.querySelector(".name").textContent;
  });

  const view = { data: null, sort: "state", descending: false, terms: [] };
  const tbody = document.querySelector("#servers tbody");
  const filterBox = document.getElementById("filter");

  // ---- formatting -------------------------------------------------------------

  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 120) return s + " s";
    if (s < 3600 || (s < 7200 && s % 3600)) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.round(s / 3600) + " h";
    if (s < 63115200) return Math.round(s / 86400) + " d";
    return Math.round(s / 31557600) + " y";
  }

  function isoUtc(unix) {
    return new Date(unix * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  // A relative time whose exact UTC time shows on hover and is machine readable.
  function timeAgo(unix, secondsAgo) {
    const node = el("time", duration(secondsAgo) + " ago");
    node.dateTime = isoUtc(unix);
    node.title = isoUtc(unix) + " (UTC)";
    return node;
  }

  // ---- filter and sort ----------------------------------------------------------

  function labelPairs(row) {
    return Object.keys(row.labels).sort().map((name) => name + "=" + row.labels[name]);
  }

  // Every term must match: `name=value` an operator label exactly, else free text anywhere.
  function matches(row, terms) {
    const haystack = [row.server_id, STATE_TEXT[row.state], row.state, row.hostname || "",
      row.agent_version || "", row.pause_reason || ""].concat(labelPairs(row))
      .join("\n").toLowerCase();
    return terms.every((term) => {
      const eq = term.indexOf("=");
      if (eq > 0) {
        const name = term.slice(0, eq);
        const value = term.slice(eq + 1);
        return Object.keys(row.labels).some((key) =>
          key.toLowerCase() === name && row.labels[key].toLowerCase() === value);
      }
      return haystack.includes(term);
    });
  }

  function silence(row) {
    return row.seconds_since_last_seen === null ? Infinity : row.seconds_since_last_seen;
  }

  const COMPARE = {
    server_id: (a, b) => a.server_id.localeCompare(b.server_id),
    state: (a, b) => a.rank - b.rank,  // the bridge sends servers worst state first
    last_seen: (a, b) => silence(a) - silence(b) || 0,
  };

  function sorted(rows) {
    const compare = COMPARE[view.sort];
    const sign = view.descending ? -1 : 1;
    return rows.slice().sort((a, b) =>
      sign * compare(a, b) || a.server_id.localeCompare(b.server_id));
  }

  // ---- rendering --------------------------------------------------------------

  function cell(row, label, content, tag) {
    const td = el(tag || "td");
    td.dataset.label = label;  // shown before the value when rows are cards (phones)
    if (tag === "th") td.scope = "row";
    const value = el("div", null, "value");
    [].concat(content).forEach((part) => {
      value.append(typeof part === "string" ? document.createTextNode(part) : part);
    });
    td.append(value);
    return td;
  }

  // Under the state: why, and until when (pause), when due back (away), since when (retired).
  const STATE_DETAIL = {
    paused: (row) => [row.paused_until && ["until ", row.paused_until], row.pause_reason],
    away: (row) => [row.expected_back && ["back by ", row.expected_back]],
    retired: (row) => [row.retired_at && ["since ", row.retired_at]],
  };

  function stateCell(row) {
    const parts = [el("span", STATE_TEXT[row.state], "badge state-" + row.state)];
    (STATE_DETAIL[row.state] ? STATE_DETAIL[row.state](row) : []).forEach((detail) => {
      if (!detail) return;
      const line = el("span", null, "detail line");
      if (typeof detail === "string") {
        line.textContent = detail;
      } else {
        line.append(detail[0], exactTime(detail[1]));
      }
      parts.push(line);
    });
    return parts;
  }

  function exactTime(unix) {
    const node = el("time", isoUtc(unix).slice(0, 16).replace("T", " ") + " UTC");
    node.dateTime = isoUtc(unix);
    node.title = isoUtc(unix) + " (UTC)";
    return node;
  }

  function agentCell(row) {
    const parts = [];
    if (row.hostname) parts.push(el("span", row.hostname, "host"));
    if (row.agent_version) parts.push(el("span", "agent " + row.agent_version, "detail"));
    return parts.length ? parts : ["-"];
  }

  function labelsCell(row) {
    const pairs = labelPairs(row);
    return pairs.length ? pairs.map((pair) => el("span", pair, "label")) : ["-"];
  }

  function renderRow(row, now) {
    const tr = el("tr", null, "state-" + row.state);
    tr.dataset.serverId = row.server_id;
    tr.dataset.state = row.state;
    const lastSeen = row.last_seen ? timeAgo(row.last_seen, row.seconds_since_last_seen)
      : el("span", "never", "detail");
    const booted = row.boot_time ? timeAgo(row.boot_time, now - row.boot_time) : "-";
    tr.append(
      cell(row, "Server", row.server_id, "th"),
      cell(row, "State", stateCell(row)),
      cell(row, "Last seen", lastSeen),
      cell(row, "Interval", duration(row.interval)),
      cell(row, "Labels", labelsCell(row)),
      cell(row, "Agent", agentCell(row)),
      cell(row, "Booted", booted),
    );
    return tr;
  }

  function render() {
    const data = view.data;
    if (!data) return;
    Object.keys(STATE_TEXT).forEach((state) => {
      document.getElementById("count-" + state).textContent = data.counts[state];
    });
    const shown = sorted(data.servers.filter((row) => matches(row, view.terms)));
    tbody.replaceChildren(...shown.map((row) => renderRow(row, data.generated_at)));
    document.getElementById("empty").hidden = shown.length > 0;
    document.getElementById("shown").textContent = view.terms.length
      ? shown.length + " of " + data.counts.total + " shown"
      : data.counts.total + " servers";
    document.querySelectorAll("th[aria-sort]").forEach((th) => {
      const active = th.querySelector("button").dataset.sort === view.sort;
      th.setAttribute("aria-sort", !active ? "none" : view.descending ? "descending" : "ascending");
      th.querySelector(".arrow").textContent = !active ? "" : view.descending ? " \u25BC" : " \u25B2";
    });
  }

  // ---- data -------------------------------------------------------------------

  function setUpdated(text, stale) {
    const node = document.getElementById("updated");
    node.textContent = text;
    node.classList.toggle("stale", stale);
  }

  async function refresh() {
    try {
      const response = await fetch(API, {
        headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
      });
      if (!response.ok) throw new Error("HTTP " + response.status);
      view.data = await response.json();
      view.data.servers.forEach((row, index) => { row.rank = index; });
      render();
      setUpdated("Updated " + isoUtc(view.data.generated_at).slice(11, 19) + " UTC, refreshed every "
        + REFRESH_MS / 1000 + " s", false);
    } catch (err) {
      const since = view.data ? " - showing data from "
        + isoUtc(view.data.generated_at).slice(11, 19) + " UTC" : "";
      setUpdated("Could not refresh (" + err.message + ")" + since, true);
    }
  }

  function loop() {
    const next = () => setTimeout(loop, REFRESH_MS);
    if (document.hidden) { next(); return; }
    refresh().finally(next);
  }

  // ---- wiring -----------------------------------------------------------------

  filterBox.addEventListener("input", () => {
    view.terms = filterBox.value.toLowerCase().split(/\s+/).filter(Boolean);
    render();
  });

  document.querySelectorAll("th button[data-sort]").forEach((button) => {
    button.addEventListener("click", () => {
      const key = button.dataset.sort;
      view.descending = view.sort === key ? !view.descending : false;
      view.sort = key;
      render();
    });
  });

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });

  loop();
})();
