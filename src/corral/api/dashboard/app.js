// corral dashboard. Plain JS, no build step, no dependencies: everything comes from the
// JSON API of the server that served this page. Text from the server is only ever set
// with textContent (never parsed as HTML).
//
// Auth: over the local socket no token is needed. Over TCP the API answers 401; the page
// then asks for the token, keeps it in sessionStorage (this tab only) and sends it as
// "Authorization: Bearer ..." on every request, streams included (fetch streaming, not
// EventSource, which cannot send headers).
"use strict";

(() => {
  const TOKEN_KEY = "corral.token";
  const MAX_EVENTS = 300;
  const MAX_LOG_LINES = 2000;
  const POLL_MS = 2000;
  const HISTORY_MS = 10000;
  const HOUR_MS = 3600 * 1000;
  const STATES = ["up", "starting", "unhealthy", "stopping", "backoff", "failed", "down"];
  const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#db2777", "#7c3aed", "#0891b2",
                   "#65a30d", "#dc2626"];

  const $ = (id) => document.getElementById(id);

  /** Build an element: h("td", {class: "num"}, "text", child, ...). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function svg(tag, attrs) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
    return el;
  }

  // ------------------------------------------------------------------ formatting
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    let s = Math.floor(seconds);
    const d = Math.floor(s / 86400); s -= d * 86400;
    const hr = Math.floor(s / 3600); s -= hr * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d) return `${d}d${hr}h`;
    if (hr) return `${hr}h${String(m).padStart(2, "0")}m`;
    if (m) return `${m}m${String(s).padStart(2, "0")}s`;
    return `${s}s`;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n >= 100 || i === 0 ? n.toFixed(0) : n.toFixed(1)} ${units[i]}`;
  }

  function percent(n) {
    return n === null || n === undefined ? "—" : `${n.toFixed(n < 10 ? 1 : 0)}%`;
  }

  function clock(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso || "";
    const pad = (v, w = 2) => String(v).padStart(w, "0");
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}` +
           `.${pad(date.getMilliseconds(), 3)}`;
  }

  // ------------------------------------------------------------------ toast
  let toastTimer = 0;
  function toast(message, ok = false) {
    const el = $("toast");
    el.textContent = message;
    el.classList.toggle("ok", ok);
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, ok ? 2500 : 6000);
  }

  // ------------------------------------------------------------------ auth and API
  let tokenPrompt = null;

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  /** Ask for the token (once, however many requests are waiting); resolves when given. */
  function askToken() {
    if (tokenPrompt) return tokenPrompt;
    const refused = sessionStorage.getItem(TOKEN_KEY) !== null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("forget").hidden = true;
    setLive("error", "token needed");
    const dialog = $("auth");
    const error = $("auth-error");
    error.hidden = !refused;
    error.textContent = refused ? "That token was refused. Check it and try again." : "";
    tokenPrompt = new Promise((resolve) => {
      const form = $("auth-form");
      const submit = (event) => {
        event.preventDefault();
        const value = $("token").value.trim();
        if (!value) return;
        sessionStorage.setItem(TOKEN_KEY, value);
        $("token").value = "";
        form.removeEventListener("submit", submit);
        dialog.close();
        $("forget").hidden = false;
        tokenPrompt = null;
        resolve();
      };
      form.addEventListener("submit", submit);
      if (!dialog.open) dialog.showModal();
      $("token").focus();
    });
    return tokenPrompt;
  }

  // The dialog must not be dismissed with Escape while a token is needed.
  $("auth").addEventListener("cancel", (event) => event.preventDefault());

  async function api(method, path) {
    for (;;) {
      const response = await fetch(path, {method, headers: authHeaders(), cache: "no-store"});
      if (response.status === 401) { await askToken(); continue; }
      const data = await response.json().catch(() => null);
      if (!response.ok) {
        const message = data && data.error ? data.error.message
                                           : `${response.status} ${response.statusText}`;
        throw new Error(message);
      }
      return data;
    }
  }

  /**
   * Follow a server-sent event stream with fetch (so it can carry the token), calling
   * onData(object) for each event; reconnects with a growing pause until stopped, sending
   * the last event id received as Last-Event-ID so the stream resumes where it was cut.
   * pathFor(reconnecting) gives the URL. Returns {stop()}.
   */
  function follow(pathFor, onData, onConnect) {
    const controller = new AbortController();
    let stopped = false;
    let lastId = null;
    (async () => {
      let pause = 500;
      let reconnecting = false;
      while (!stopped) {
        try {
          const headers = {Accept: "text/event-stream"};
          if (lastId !== null) headers["Last-Event-ID"] = lastId;
          const response = await fetch(pathFor(reconnecting), {
            headers: authHeaders(headers), signal: controller.signal, cache: "no-store"});
          if (response.status === 401) { await askToken(); continue; }
          if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
          if (onConnect) onConnect(reconnecting);
          pause = 500;
          const reader = response.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const {value, done} = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, {stream: true});
            let end;
            while ((end = buffer.indexOf("\n\n")) >= 0) {
              const frame = buffer.slice(0, end);
              buffer = buffer.slice(end + 2);
              for (const line of frame.split("\n")) {
                if (line.startsWith("id: ")) lastId = line.slice(4);
                else if (line.startsWith("data: ")) onData(JSON.parse(line.slice(6)));
              }
            }
          }
        } catch (error) {
          if (stopped) return;
        }
        if (stopped) return;
        reconnecting = true;
        if (onConnect) onConnect(null);
        await new Promise((resolve) => setTimeout(resolve, pause));
        pause = Math.min(pause * 2, 8000);
      }
    })();
    return {stop() { stopped = true; controller.abort(); }};
  }

  function setLive(state, text) {
    const el = $("live");
    el.dataset.state = state;
    el.textContent = text;
  }

  // ------------------------------------------------------------------ services
  const rows = new Map();  // name -> {tr, cells, data}
  let services = [];
  let selected = decodeURIComponent((location.hash.match(/svc=([^&]+)/) || [])[1] || "");

  function badge(prefix, value) {
    return h("span", {class: `badge ${prefix}-${value}`}, value);
  }

  function actionButton(name, action, label, extraClass) {
    return h("button", {
      type: "button", class: extraClass || null, "data-action": action,
      title: `${label} ${name}`,
      onclick: (event) => { event.stopPropagation(); runAction(name, action, event.currentTarget); },
    }, label);
  }

  function makeRow(name) {
    const cells = {
      name: h("td", {class: "name"}),
      state: h("td", {class: "state"}),
      health: h("td", {class: "health"}),
      inst: h("td", {class: "num inst"}),
      pid: h("td", {class: "num pid"}),
      uptime: h("td", {class: "num uptime"}),
      restarts: h("td", {class: "num restarts"}),
      cpu: h("td", {class: "num cpu"}),
      rss: h("td", {class: "num rss"}),
      actions: h("td", {},
        h("div", {class: "actions"},
          actionButton(name, "start", "Start"),
          actionButton(name, "stop", "Stop", "danger"),
          actionButton(name, "restart", "Restart"))),
    };
    const tr = h("tr", {"data-service": name, tabindex: 0,
                        onclick: () => select(name),
                        onkeydown: (event) => { if (event.key === "Enter") select(name); }},
                 ...Object.values(cells));
    return {tr, cells};
  }

  function fill(cell, ...content) {
    cell.replaceChildren(...content.map((c) => (c instanceof Node ? c : document.createTextNode(c))));
  }

  /** Sum of a figure over the instances that have been sampled; null if none has (the
   * service-level sums read 0 before the first sample, which would look like a fact). */
  function sampled(svc, key) {
    const values = (svc.instance_list || []).map((i) => i[key]).filter((v) => v !== null && v !== undefined);
    return values.length ? values.reduce((a, b) => a + b, 0) : null;
  }

  function renderServices() {
    const filter = $("filter").value.trim().toLowerCase();
    const body = $("service-rows");
    const seen = new Set();
    let previous = null;
    for (const svc of services) {
      seen.add(svc.name);
      let row = rows.get(svc.name);
      if (!row) { row = makeRow(svc.name); rows.set(svc.name, row); }
      const c = row.cells;
      const reason = svc.reason ? h("span", {class: "reason", title: svc.reason}, svc.reason) : null;
      fill(c.name, svc.name, ...(reason ? [reason] : []));
      fill(c.state, badge("s", svc.state));
      fill(c.health, badge("h", svc.health));
      c.inst.textContent = `${svc.running ?? "?"}/${svc.instances}`;
      c.pid.textContent = svc.pid ?? "—";
      c.uptime.textContent = duration(svc.uptime_s);
      c.restarts.textContent = svc.restarts;
      const cpu = sampled(svc, "cpu");
      if (cpu === null) {
        fill(c.cpu, "—");
      } else {
        const bar = h("span", {class: "bar"}, h("span"));
        bar.firstChild.style.width = `${Math.min(100, cpu)}%`;
        fill(c.cpu, percent(cpu), bar);
      }
      c.rss.textContent = bytes(sampled(svc, "rss"));
      row.tr.classList.toggle("selected", svc.name === selected);
      row.tr.hidden = filter !== "" && !svc.name.toLowerCase().includes(filter);
      // Keep the rows in the server's order without re-inserting unchanged ones.
      const expected = previous ? previous.nextSibling : body.firstChild;
      if (expected !== row.tr) body.insertBefore(row.tr, expected);
      previous = row.tr;
    }
    for (const [name, row] of rows) {
      if (!seen.has(name)) { row.tr.remove(); rows.delete(name); }
    }
    $("no-services").hidden = services.length > 0;
    renderSummary();
    renderDetailHeader();
  }

  function renderSummary() {
    const counts = {total: services.length};
    for (const svc of services) counts[svc.state] = (counts[svc.state] || 0) + 1;
    const tiles = [["total", counts.total, ""]];
    for (const state of STATES) {
      if (!counts[state] && !["up", "down", "failed"].includes(state)) continue;
      const tone = state === "up" ? "ok" : state === "failed" ? "bad"
                 : ["unhealthy", "backoff"].includes(state) ? "warn" : "";
      tiles.push([state, counts[state] || 0, counts[state] ? tone : ""]);
    }
    $("summary").replaceChildren(...tiles.map(([label, n, tone]) =>
      h("div", {class: `tile ${tone}`, "data-count": label},
        h("div", {class: "n"}, n), h("div", {class: "label"}, label))));
  }

  async function runAction(name, action, button) {
    const buttons = rows.get(name)?.tr.querySelectorAll("button") || [];
    for (const b of buttons) b.disabled = true;
    try {
      const svc = await api("POST", `/v1/services/${encodeURIComponent(name)}/${action}`);
      const pid = svc && svc.pid ? ` (pid ${svc.pid})` : "";
      toast(`${name}: ${action === "stop" ? "stopped" : action + "ed"}${pid}`, true);
    } catch (error) {
      toast(`${action} ${name}: ${error.message}`);
    } finally {
      for (const b of buttons) b.disabled = false;
      refreshSoon();
    }
    if (button) button.focus();
  }

  let refreshTimer = 0;
  let refreshing = false;
  function refreshSoon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(refresh, 150);
  }

  async function refresh() {
    clearTimeout(refreshTimer);
    if (refreshing) { refreshSoon(); return; }
    refreshing = true;
    try {
      const [status, list] = await Promise.all([api("GET", "/v1/status"),
                                                api("GET", "/v1/services")]);
      services = list;
      renderStatus(status);
      renderServices();
    } catch (error) {
      setLive("error", "unreachable");
    } finally {
      refreshing = false;
      refreshTimer = setTimeout(refresh, POLL_MS);
    }
  }

  function renderStatus(status) {
    $("version").textContent = `v${status.version}`;
    $("state-dir").textContent = status.state_dir;
    $("state-dir").title = status.state_dir;
    $("sup-pid").textContent = status.supervisor_pid ?? "—";
    $("launcher-pid").textContent = status.launcher_pid ?? "—";
    $("sup-uptime").textContent = duration(status.uptime_s);
  }

  // ------------------------------------------------------------------ detail: charts
  let historyTimer = 0;

  function renderDetailHeader() {
    const svc = services.find((s) => s.name === selected);
    $("detail-title").textContent = selected || "Select a service";
    $("detail-sub").textContent = svc
      ? `${svc.state} · ${svc.running ?? 0}/${svc.instances} running · ` +
        `${(svc.command || []).join(" ")}`
      : selected ? "not loaded" : "click a row to see its charts and log";
    const now = (value, format) => {
      if (!svc) return "";
      if (value === null) return "—";
      return format(value) + (svc.instances > 1 ? " total" : "");
    };
    $("cpu-now").textContent = now(svc && sampled(svc, "cpu"), percent);
    $("rss-now").textContent = now(svc && sampled(svc, "rss"), bytes);
  }

  function niceMax(value, floor) {
    const v = Math.max(value, floor);
    const magnitude = 10 ** Math.floor(Math.log10(v));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * magnitude >= v) return step * magnitude;
    }
    return 10 * magnitude;
  }

  /** Draw one line per instance over the last hour into `container` (inline SVG). */
  function drawChart(container, series, format, floor) {
    const width = Math.max(200, container.clientWidth || 400);
    const height = Math.max(80, container.clientHeight || 120);
    const pad = {left: 44, right: 6, top: 6, bottom: 16};
    const root = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img"});
    const now = Date.now();
    const x = (t) => pad.left + (width - pad.left - pad.right) * (1 - (now - t) / HOUR_MS);
    let top = 0;
    for (const s of series) for (const p of s.points) top = Math.max(top, p.value);
    const max = niceMax(top, floor);
    const y = (v) => pad.top + (height - pad.top - pad.bottom) * (1 - v / max);
    for (const frac of [0, 0.5, 1]) {
      root.append(svg("line", {class: "grid", x1: pad.left, x2: width - pad.right,
                               y1: y(max * frac), y2: y(max * frac)}));
      const label = svg("text", {class: "axis", x: pad.left - 4, y: y(max * frac) + 3,
                                 "text-anchor": "end"});
      label.textContent = format(max * frac);
      root.append(label);
    }
    for (const [text, anchor, at] of [["-60m", "start", pad.left], ["now", "end", width - pad.right]]) {
      const label = svg("text", {class: "axis", x: at, y: height - 2, "text-anchor": anchor});
      label.textContent = text;
      root.append(label);
    }
    let drawn = 0;
    series.forEach((s, i) => {
      const points = s.points.filter((p) => now - p.t <= HOUR_MS);
      if (points.length === 0) return;
      const colour = PALETTE[i % PALETTE.length];
      const coords = points.map((p) => `${x(p.t).toFixed(1)},${y(p.value).toFixed(1)}`);
      if (points.length === 1) coords.push(`${(x(points[0].t) + 2).toFixed(1)},${y(points[0].value).toFixed(1)}`);
      const base = y(0).toFixed(1);
      root.append(svg("polygon", {class: "area", fill: colour,
        points: `${coords[0].split(",")[0]},${base} ${coords.join(" ")} ${coords[coords.length - 1].split(",")[0]},${base}`}));
      const line = svg("polyline", {class: "line", stroke: colour, points: coords.join(" ")});
      const title = svg("title", {});
      title.textContent = `instance ${s.index}`;
      line.append(title);
      root.append(line);
      drawn += 1;
    });
    if (!drawn) {
      const text = svg("text", {class: "nodata", x: width / 2, y: height / 2, "text-anchor": "middle"});
      text.textContent = "no samples yet";
      root.append(text);
    }
    container.replaceChildren(root);
  }

  let lastHistory = null;
  function drawHistory() {
    const instances = lastHistory ? lastHistory.instances : [];
    const series = (key) => instances.map((inst) => ({
      index: inst.index,
      points: inst.points.map((p) => ({t: Date.parse(p.at), value: p[key] || 0})),
    }));
    drawChart($("cpu-chart"), series("cpu"), (v) => `${v.toFixed(v < 10 && v > 0 ? 1 : 0)}%`, 5);
    drawChart($("rss-chart"), series("rss"), bytes, 1024 * 1024);
  }

  async function loadHistory() {
    clearTimeout(historyTimer);
    const name = selected;
    if (!name) { lastHistory = null; drawHistory(); return; }
    try {
      const history = await api("GET", `/v1/services/${encodeURIComponent(name)}/history`);
      if (name === selected) { lastHistory = history; drawHistory(); }
    } catch (error) {
      if (name === selected) { lastHistory = null; drawHistory(); }
    }
    historyTimer = setTimeout(loadHistory, HISTORY_MS);
  }

  window.addEventListener("resize", () => drawHistory());

  // ------------------------------------------------------------------ detail: log
  let logStream = null;
  let pendingLines = [];
  let logFrame = 0;
  const STAMPED = /^(\d{4}-\d\d-\d\dT[\d:.]+Z) (\d+) ([OE]) (.*)$/;

  function logLine(text) {
    const match = STAMPED.exec(text);
    if (!match) return h("div", {}, text);
    return h("div", {class: match[3] === "E" ? "e" : null},
      h("span", {class: "t", title: `${match[1]} pid ${match[2]}`}, clock(match[1])), " ", match[4]);
  }

  function flushLog() {
    logFrame = 0;
    const log = $("log");
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
    const fragment = document.createDocumentFragment();
    for (const text of pendingLines.splice(0)) fragment.append(logLine(text));
    log.append(fragment);
    while (log.childElementCount > MAX_LOG_LINES) log.firstElementChild.remove();
    if ($("log-follow").checked && atBottom) log.scrollTop = log.scrollHeight;
  }

  function followLog() {
    if (logStream) logStream.stop();
    logStream = null;
    pendingLines = [];
    $("log").replaceChildren();
    $("log").dataset.placeholder = selected ? "no output yet" : "select a service to follow its log";
    if (!selected) return;
    const name = encodeURIComponent(selected);
    logStream = follow(
      () => `/v1/services/${name}/logs?follow=1&n=200`,
      (event) => {
        // A resumed stream goes on where it was cut: nothing to clear on a reconnect.
        if (event.skipped) {
          const size = event.skipped.bytes;
          pendingLines.push(`… ${size === null ? "some" : size} bytes skipped (rotated away before they could be read)`);
        }
        for (const text of event.lines || []) pendingLines.push(text);
        if (pendingLines.length > MAX_LOG_LINES) pendingLines.splice(0, pendingLines.length - MAX_LOG_LINES);
        if (!logFrame) logFrame = requestAnimationFrame(flushLog);
      });
  }

  $("log-clear").addEventListener("click", () => $("log").replaceChildren());
  $("log-follow").addEventListener("change", () => {
    if ($("log-follow").checked) $("log").scrollTop = $("log").scrollHeight;
  });

  function select(name) {
    if (name === selected) return;
    selected = name;
    history.replaceState(null, "", name ? `#svc=${encodeURIComponent(name)}` : "#");
    renderServices();
    lastHistory = null;
    drawHistory();
    loadHistory();
    followLog();
  }

  // ------------------------------------------------------------------ events
  let lastSeq = -1;

  function eventText(e) {
    const parts = [];
    if (e.kind === "state" && e.from && e.to) parts.push(`${e.from} → ${e.to}`);
    if (e.reason) parts.push(e.reason);
    return parts.join("  ");
  }

  function addEvent(e, live) {
    if (!e.kind) return;  // a note that some events were not kept, not an event
    if (typeof e.seq === "number") {
      if (e.seq <= lastSeq) return;
      lastSeq = e.seq;
    }
    const where = e.instance === null || e.instance === undefined ? e.service : `${e.service}[${e.instance}]`;
    const item = h("li", {class: live ? "fresh" : null, "data-kind": e.kind, "data-service": e.service},
      h("time", {datetime: e.at, title: e.at}, clock(e.at)),
      h("span", {class: "svc"}, where),
      h("span", {class: `kind k-${e.kind}`}, e.kind),
      h("span", {class: "text"}, eventText(e)));
    const list = $("events");
    list.prepend(item);
    while (list.childElementCount > MAX_EVENTS) list.lastElementChild.remove();
    if (live && e.kind !== "health") refreshSoon();
  }

  let firstBatch = true;
  follow(
    () => "/v1/events?follow=1&n=100",  // duplicates after a reconnect are skipped by seq
    (event) => addEvent(event, !firstBatch),
    (reconnecting) => {
      if (reconnecting === null) { setLive("connecting", "reconnecting"); return; }
      setLive("live", "live");
      firstBatch = true;
      // Past events arrive first in one burst; anything after this turn of the loop is live.
      setTimeout(() => { firstBatch = false; }, 300);
      if (reconnecting) refreshSoon();
    });

  // ------------------------------------------------------------------ start
  $("filter").addEventListener("input", renderServices);
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  $("forget").hidden = sessionStorage.getItem(TOKEN_KEY) === null;

  refresh();
  if (selected) {
    const name = selected;
    selected = "";
    select(name);
  } else {
    drawHistory();
    followLog();
  }
})();
