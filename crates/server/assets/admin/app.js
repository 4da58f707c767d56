/* hfms admin dashboard: one page, hash routes, no framework, no build step.
 *
 * Served under `Content-Security-Policy: default-src 'self'; style-src 'self';
 * script-src 'self'`: no inline scripts, handlers or style attributes. Every
 * server string (key names are user input) reaches the page through
 * `textContent` / `createElement`, never through HTML parsing.
 */
"use strict";

(() => {
  // ---------------------------------------------------------------- state

  const ROUTES = {
    overview: "Overview",
    models: "Models",
    keys: "API keys",
    usage: "Usage",
    hardware: "Hardware",
  };
  const SCRAPE_MS = 2000;
  const HISTORY_S = 300; // charts: the last 5 minutes
  const CARD_WINDOW_S = 30; // cards: the last 30 seconds
  const REFRESH_MS = 5000; // models / hardware / usage while shown

  const state = {
    signedIn: false,
    auth: true,
    csrf: "",
    who: null,
    route: null,
    keys: [], // the last GET /admin/keys
    status: null, // the last GET /status
    timers: { scrape: 0, page: 0 },
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- DOM helpers

  /** An element: `h("td", {class: "num", testid: "x", title: "…"}, child, "text", …)`. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "class") el.className = v;
        else if (k === "text") el.textContent = String(v);
        else if (k === "testid") el.dataset.testid = v;
        else if (k === "data") Object.assign(el.dataset, v);
        else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
        else if (k === "style") throw new Error("no style attributes under this CSP");
        else if (v === true) el.setAttribute(k, "");
        else el.setAttribute(k, String(v));
      }
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function emptyRow(cols, text) {
    return h("tr", null, h("td", { class: "empty", colspan: cols, text }));
  }

  function badge(text, kind, testid) {
    return h("span", { class: "badge" + (kind ? " badge-" + kind : ""), testid, text });
  }

  function meter(fraction, title) {
    const bar = h("div");
    bar.style.width = Math.max(0, Math.min(1, fraction || 0)) * 100 + "%";
    return h("div", { class: "meter", title }, bar);
  }

  function toast(message, kind = "ok") {
    const el = h("div", {
      class: "toast toast-" + kind,
      testid: kind === "err" ? "toast-error" : "toast-ok",
      role: kind === "err" ? "alert" : "status",
      text: message,
    });
    $("toasts").append(el);
    setTimeout(() => el.remove(), kind === "err" ? 8000 : 4000);
  }

  function showFormError(el, message) {
    el.textContent = message || "";
    el.hidden = !message;
  }

  // ---------------------------------------------------------------- formatting

  const nf0 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const nf1 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const nf2 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
  const nfCompact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });

  function fmtInt(n) {
    return n === null || n === undefined ? "—" : nf0.format(n);
  }

  function fmtRate(v) {
    if (v === null || v === undefined || !isFinite(v)) return "—";
    if (v === 0) return "0";
    if (v < 10) return nf2.format(v);
    if (v < 1000) return nf1.format(v);
    return nfCompact.format(v);
  }

  function fmtCompact(v) {
    if (v === null || v === undefined || !isFinite(v)) return "—";
    return Math.abs(v) < 1000 ? nf2.format(v) : nfCompact.format(v);
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined || !isFinite(s)) return "—";
    if (s === 0) return "0";
    if (s < 0.001) return nf0.format(s * 1e6) + " µs";
    if (s < 1) return (s < 0.01 ? nf2 : nf1).format(s * 1000) + " ms";
    if (s < 120) return nf2.format(s) + " s";
    return nf1.format(s / 60) + " min";
  }

  function fmtPercent(f) {
    if (f === null || f === undefined || !isFinite(f)) return "—";
    const p = f * 100;
    return (p === 0 || p === 100 ? nf0 : p < 10 ? nf2 : nf1).format(p) + "%";
  }

  function fmtBytes(b) {
    if (b === null || b === undefined || !isFinite(b)) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = b;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return (i === 0 ? nf0 : nf1).format(v) + " " + units[i];
  }

  function fmtCost(c) {
    if (c === null || c === undefined || !isFinite(c)) return "—";
    if (c === 0) return "0";
    if (c < 0.01) return c.toPrecision(2);
    return new Intl.NumberFormat(undefined, { maximumFractionDigits: c < 100 ? 4 : 2 }).format(c);
  }

  function fmtDuration(s) {
    s = Math.floor(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function fmtTime(unixS) {
    return new Date(unixS * 1000).toLocaleString();
  }

  /** "3 min ago" with the exact time as a tooltip. */
  function ago(unixS, testid) {
    if (!unixS) return h("span", { class: "muted", testid, text: "never" });
    const d = Date.now() / 1000 - unixS;
    let text;
    if (d < 0) text = "in " + fmtDuration(-d);
    else if (d < 10) text = "just now";
    else text = fmtDuration(d) + " ago";
    return h("span", { title: fmtTime(unixS), testid, text });
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** A request to this server; errors carry the OpenAI envelope's message. */
  async function api(path, { method = "GET", body, text = false } = {}) {
    const headers = { accept: text ? "text/plain" : "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (method !== "GET" && method !== "HEAD" && state.csrf) headers["x-csrf-token"] = state.csrf;
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (e) {
      throw new ApiError(0, "The server cannot be reached (" + e.message + ").");
    }
    if (!res.ok) {
      let message = "HTTP " + res.status + (res.statusText ? " " + res.statusText : "");
      let code;
      try {
        const j = await res.json();
        if (j && j.error && j.error.message) {
          message = j.error.message;
          code = j.error.code;
        }
      } catch (_) {
        /* not JSON */
      }
      if (res.status === 401 && path !== "/admin/session" && state.signedIn) sessionLost();
      throw new ApiError(res.status, message, code);
    }
    if (res.status === 204) return null;
    return text ? res.text() : res.json();
  }

  // ---------------------------------------------------------------- session

  async function boot() {
    applyTheme(localStorage.getItem("hfms-theme") || (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"));
    wireStatic();
    try {
      const s = await api("/admin/session");
      enter(s);
    } catch (e) {
      showSignIn(e.status === 401 ? "" : e.message);
    }
  }

  function showSignIn(message) {
    $("boot").hidden = true;
    $("shell").hidden = true;
    $("signin").hidden = false;
    showFormError($("signin-error"), message);
    $("signin-key").value = "";
    $("signin-key").focus();
  }

  function enter(session) {
    state.signedIn = true;
    state.auth = !!session.auth;
    state.csrf = session.csrf_token || "";
    state.who = session.key || null;
    $("boot").hidden = true;
    $("signin").hidden = true;
    $("shell").hidden = false;
    $("open-banner").hidden = state.auth;
    $("auth-banner").hidden = true;
    $("signout").hidden = !state.auth;
    $("session-key").textContent = state.auth ? (state.who && state.who.name) || "admin" : "no authentication";
    if (state.who && state.who.id) $("session-key").title = "key " + state.who.id;
    live.reset();
    startScraping();
    route();
  }

  function leave() {
    state.signedIn = false;
    state.csrf = "";
    state.who = null;
    state.keys = [];
    clearInterval(state.timers.scrape);
    clearInterval(state.timers.page);
    hideSecret();
    for (const d of document.querySelectorAll("dialog[open]")) d.close();
  }

  function sessionLost() {
    if (!$("secret-box").hidden) {
      // A secret on screen is shown only once: keep it (the first key made
      // on an open server turns authentication on) and offer to sign in.
      state.signedIn = false;
      state.csrf = "";
      clearInterval(state.timers.scrape);
      clearInterval(state.timers.page);
      $("open-banner").hidden = true;
      $("auth-banner").hidden = false;
      return;
    }
    leave();
    showSignIn("Your session has ended: sign in again.");
  }

  async function signIn(ev) {
    ev.preventDefault();
    const key = $("signin-key").value.trim();
    if (!key) {
      showFormError($("signin-error"), "Enter an admin API key.");
      return;
    }
    const btn = $("signin-submit");
    btn.disabled = true;
    showFormError($("signin-error"), "");
    try {
      const s = await api("/admin/session", { method: "POST", body: { key } });
      $("signin-key").value = "";
      enter(s);
    } catch (e) {
      const msg =
        e.status === 401
          ? "That key is not valid. " + e.message
          : e.status === 403
            ? "That key cannot administer this server (it lacks the admin scope). " + e.message
            : e.message;
      showFormError($("signin-error"), msg);
    } finally {
      btn.disabled = false;
    }
  }

  async function signOut() {
    try {
      await api("/admin/session", { method: "DELETE" });
    } catch (e) {
      if (e.status !== 401) toast("Signing out: " + e.message, "err");
    }
    leave();
    showSignIn("");
  }

  // ---------------------------------------------------------------- theme

  function applyTheme(theme) {
    document.documentElement.dataset.theme = theme;
    $("theme-toggle").textContent = theme === "dark" ? "Light theme" : "Dark theme";
  }

  function toggleTheme() {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    localStorage.setItem("hfms-theme", next);
    applyTheme(next);
    charts.rebuildAll();
  }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // ---------------------------------------------------------------- routing

  function route() {
    if (!state.signedIn) return;
    let name = location.hash.replace(/^#/, "");
    if (!Object.hasOwn(ROUTES, name)) name = "overview";
    const changed = state.route !== name;
    state.route = name;
    for (const r of Object.keys(ROUTES)) $("page-" + r).hidden = r !== name;
    for (const a of document.querySelectorAll(".nav a")) a.classList.toggle("active", a.dataset.route === name);
    $("page-title").textContent = ROUTES[name];
    document.title = ROUTES[name] + " · hfms admin";
    if (changed) {
      // Messages belong to the page they came from.
      $("toasts").replaceChildren();
      if (name !== "keys") hideSecret();
    }
    clearInterval(state.timers.page);
    const load = PAGES[name];
    load();
    // Keys change only through this page (or another admin): no polling.
    if (name !== "keys") state.timers.page = setInterval(() => document.hidden || load(true), REFRESH_MS);
  }

  // ---------------------------------------------------------------- charts (uPlot)

  const charts = {
    all: new Map(), // container id -> {u, make}
    observer: null,

    /** Create (or re-create) a chart in container `id`; `make()` returns uPlot options. */
    put(id, make, data) {
      const el = $(id);
      const old = this.all.get(id);
      if (old) old.u.destroy();
      el.replaceChildren();
      const opts = make();
      opts.width = Math.max(240, el.clientWidth || 480);
      const u = new uPlot(opts, data, el);
      this.all.set(id, { u, make, el });
      if (!this.observer) {
        this.observer = new ResizeObserver((entries) => {
          for (const entry of entries) {
            for (const c of this.all.values()) {
              if (c.el === entry.target && entry.contentRect.width > 0) {
                c.u.setSize({ width: Math.floor(entry.contentRect.width), height: c.u.height });
              }
            }
          }
        });
      }
      this.observer.observe(el);
      return u;
    },

    get(id) {
      const c = this.all.get(id);
      return c ? c.u : null;
    },

    rebuildAll() {
      for (const [id, c] of [...this.all.entries()]) this.put(id, c.make, c.u.data);
    },
  };

  function withAlpha(hex, alpha) {
    const m = /^#([0-9a-f]{6})$/i.exec(hex);
    if (!m) return hex;
    const a = Math.round(alpha * 255)
      .toString(16)
      .padStart(2, "0");
    return "#" + m[1] + a;
  }

  /** Common uPlot options: themed axes, a legend with formatted values. */
  /** The legend's value while the cursor is off the chart: the newest point, or the sum. */
  function idleValue(u, sidx, idle) {
    const d = u.data[sidx] || [];
    if (idle === "sum") return d.reduce((a, v) => a + (v || 0), 0);
    for (let i = d.length - 1; i >= 0; i--) if (d[i] !== null && d[i] !== undefined) return d[i];
    return null;
  }

  /** Few enough values that each should be seen as a dot. */
  function sparse(d) {
    let n = 0;
    for (const v of d || []) if (v !== null && v !== undefined) n += 1;
    return n > 0 && n <= 40 && n < d.length; // gaps around them
  }

  function chartOptions({ series, yFormat, yMin = 1, yMax, height = 220, bars = false, step = 0, xRange, idle = "last" }) {
    const muted = cssVar("--muted");
    const grid = cssVar("--grid");
    const axis = { stroke: muted, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, font: "11px " + cssVar("--sans") };
    const barPaths = bars && uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 48], gap: 1 }) : null;
    return {
      height,
      legend: { live: true },
      cursor: { points: { size: 6 }, drag: { x: false, y: false } },
      scales: {
        x: {
          time: true,
          range: xRange || (step ? (u, min, max) => [min - step / 2, max + step / 2] : undefined),
        },
        y: {
          range: (u, min, max) => {
            if (yMax !== undefined) return [0, yMax];
            const top = Math.max(max || 0, yMin);
            return [0, top * 1.15];
          },
        },
      },
      axes: [
        { ...axis, space: 60 },
        { ...axis, size: 58, values: (u, splits) => splits.map((v) => yFormat(v)) },
      ],
      series: [
        {
          label: idle === "sum" ? "Range" : "Time",
          value: (u, v, sidx, idx) => (idx === null || idx === undefined ? (idle === "sum" ? "total" : "latest") : fmtTime(v)),
        },
        ...series.map((s, i) => {
          const color = cssVar(s.color);
          return {
            label: s.label,
            stroke: color,
            width: bars ? 1 : 2,
            fill: bars ? withAlpha(color, 0.55) : withAlpha(color, i === 0 ? 0.12 : 0.06),
            paths: barPaths || undefined,
            // Lines join measured points across idle gaps; dots mark sparse data.
            points: { show: bars ? false : (u, sidx) => sparse(u.data[sidx]), size: 5, fill: color },
            spanGaps: !bars,
            value: (u, v, sidx, idx) => {
              if (idx === null || idx === undefined) v = idleValue(u, sidx, idle);
              else if (bars && (v === null || v === undefined)) v = 0;
              return v === null || v === undefined ? "—" : yFormat(v);
            },
          };
        }),
      ],
    };
  }

  // ---------------------------------------------------------------- overview: /metrics

  /** Prometheus text format → [{name, labels, value}]. */
  function parseMetrics(text) {
    const out = [];
    const line = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
    const label = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const raw of text.split("\n")) {
      if (!raw || raw[0] === "#") continue;
      const m = line.exec(raw);
      if (!m) continue;
      const labels = {};
      if (m[2]) {
        for (const l of m[2].matchAll(label)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
      }
      const v = m[3] === "+Inf" ? Infinity : m[3] === "-Inf" ? -Infinity : Number(m[3]);
      out.push({ name: m[1], labels, value: v });
    }
    return out;
  }

  /** The totals one scrape gives, over the OpenAI routes (`/v1/…`). */
  function summarizeScrape(samples, t) {
    const s = { t, requests: 0, errors: 0, gen: 0, input: 0, buckets: new Map(), cacheHits: 0, cacheAll: 0, running: 0, waiting: 0, loaded: 0 };
    for (const x of samples) {
      const route = x.labels.route || "";
      switch (x.name) {
        case "hfms_http_requests_total":
          if (route.startsWith("/v1/")) {
            s.requests += x.value;
            if (Number(x.labels.status) >= 400) s.errors += x.value;
          }
          break;
        case "hfms_http_request_duration_seconds_bucket":
          if (route.startsWith("/v1/")) {
            const le = x.labels.le === "+Inf" ? Infinity : Number(x.labels.le);
            s.buckets.set(le, (s.buckets.get(le) || 0) + x.value);
          }
          break;
        case "hfms_generation_tokens_total":
          s.gen += x.value;
          break;
        case "hfms_prompt_tokens_total":
        case "hfms_embedding_tokens_total":
          s.input += x.value;
          break;
        case "hfms_response_cache_requests_total":
          s.cacheAll += x.value;
          if (x.labels.result === "hit") s.cacheHits += x.value;
          break;
        case "hfms_num_requests_running":
          s.running += x.value;
          break;
        case "hfms_num_requests_waiting":
          s.waiting += x.value;
          break;
        case "hfms_model_loaded":
          s.loaded += x.value;
          break;
        default:
      }
    }
    return s;
  }

  /** A counter's increase (a restart resets counters: then the new value). */
  function inc(a, b) {
    return b >= a ? b - a : b;
  }

  /** histogram_quantile over the bucket increases between two scrapes. */
  function quantile(q, older, newer) {
    const les = [...newer.buckets.keys()].sort((x, y) => x - y);
    if (!les.length) return null;
    const counts = les.map((le) => inc(older.buckets.get(le) || 0, newer.buckets.get(le)));
    const total = counts[counts.length - 1];
    if (!(total > 0)) return null;
    const rank = q * total;
    for (let i = 0; i < les.length; i++) {
      if (counts[i] >= rank) {
        if (les[i] === Infinity) return i > 0 ? les[i - 1] : null;
        const lo = i > 0 ? les[i - 1] : 0;
        const below = i > 0 ? counts[i - 1] : 0;
        const inBucket = counts[i] - below;
        if (inBucket <= 0) return les[i];
        return lo + (les[i] - lo) * ((rank - below) / inBucket);
      }
    }
    return null;
  }

  /** Rates between two scrapes. */
  function rates(a, b) {
    const dt = (b.t - a.t) / 1000;
    const req = inc(a.requests, b.requests);
    const err = inc(a.errors, b.errors);
    const hits = inc(a.cacheHits, b.cacheHits);
    const cacheAll = inc(a.cacheAll, b.cacheAll);
    return {
      dt,
      rps: req / dt,
      eps: err / dt,
      req,
      err,
      gen: inc(a.gen, b.gen) / dt,
      input: inc(a.input, b.input) / dt,
      p50: quantile(0.5, a, b),
      p99: quantile(0.99, a, b),
      errorRate: req > 0 ? err / req : null,
      hitRate: cacheAll > 0 ? hits / cacheAll : null,
      hits,
      cacheAll,
    };
  }

  const live = {
    scrapes: [], // summaries, oldest first (HISTORY_S worth)
    series: null, // [x, rps, eps, gen, input, p50, p99, errRate%, hitRate%]
    failing: false,

    reset() {
      this.scrapes = [];
      this.series = [[], [], [], [], [], [], [], [], []];
    },

    add(summary) {
      const prev = this.scrapes[this.scrapes.length - 1];
      this.scrapes.push(summary);
      const cutoff = summary.t - (HISTORY_S + 10) * 1000;
      while (this.scrapes.length > 2 && this.scrapes[0].t < cutoff) this.scrapes.shift();
      if (!prev || summary.t <= prev.t) return;
      const r = rates(prev, summary);
      const row = [
        summary.t / 1000,
        r.rps,
        r.eps,
        r.gen,
        r.input,
        r.p50,
        r.p99,
        r.errorRate === null ? null : r.errorRate * 100,
        r.hitRate === null ? null : r.hitRate * 100,
      ];
      row.forEach((v, i) => this.series[i].push(v));
      const xcut = summary.t / 1000 - HISTORY_S;
      while (this.series[0].length && this.series[0][0] < xcut) for (const s of this.series) s.shift();
    },

    /** Rates over the last CARD_WINDOW_S seconds (or what history there is). */
    window() {
      const n = this.scrapes.length;
      if (n < 2) return null;
      const last = this.scrapes[n - 1];
      let first = this.scrapes[0];
      for (let i = n - 2; i >= 0; i--) {
        first = this.scrapes[i];
        if (last.t - first.t >= CARD_WINDOW_S * 1000) break;
      }
      return rates(first, last);
    },
  };

  function startScraping() {
    clearInterval(state.timers.scrape);
    scrape();
    state.timers.scrape = setInterval(scrape, SCRAPE_MS);
  }

  let scraping = false;
  async function scrape() {
    if (scraping || !state.signedIn) return;
    scraping = true;
    try {
      const text = await api("/metrics", { text: true });
      live.add(summarizeScrape(parseMetrics(text), Date.now()));
      live.failing = false;
      setLive("on", "live · every 2 s");
    } catch (e) {
      live.failing = true;
      setLive("off", "metrics unavailable: " + e.message);
    } finally {
      scraping = false;
    }
    if (state.route === "overview") renderOverviewLive();
  }

  function setLive(kind, text) {
    const el = $("live-state");
    el.className = "live " + kind;
    el.textContent = text;
  }

  // The last 5 minutes, or what history there is (at least one minute).
  const liveX = (u, min, max) => {
    const hi = max || Date.now() / 1000;
    const lo = min || hi;
    return [Math.max(hi - HISTORY_S, Math.min(lo, hi - 60)), hi];
  };

  function ensureOverviewCharts() {
    if (charts.get("chart-requests")) return;
    const s = live.series;
    charts.put("chart-requests", () => chartOptions({
      series: [{ label: "requests/s", color: "--c1" }, { label: "errors/s", color: "--c4" }],
      yFormat: fmtRate, xRange: liveX,
    }), [s[0], s[1], s[2]]);
    charts.put("chart-tokens", () => chartOptions({
      series: [{ label: "generated/s", color: "--c3" }, { label: "input/s", color: "--c5" }],
      yFormat: fmtRate, xRange: liveX,
    }), [s[0], s[3], s[4]]);
    charts.put("chart-latency", () => chartOptions({
      series: [{ label: "p50", color: "--c1" }, { label: "p99", color: "--c2" }],
      yFormat: fmtSeconds, yMin: 0.0001, xRange: liveX,
    }), [s[0], s[5], s[6]]);
    charts.put("chart-rates", () => chartOptions({
      series: [{ label: "error rate", color: "--c4" }, { label: "cache hit rate", color: "--c3" }],
      yFormat: (v) => nf0.format(v) + "%", yMax: 100, xRange: liveX,
    }), [s[0], s[7], s[8]]);
  }

  function renderOverviewLive() {
    ensureOverviewCharts();
    const s = live.series;
    charts.get("chart-requests").setData([s[0], s[1], s[2]]);
    charts.get("chart-tokens").setData([s[0], s[3], s[4]]);
    charts.get("chart-latency").setData([s[0], s[5], s[6]]);
    charts.get("chart-rates").setData([s[0], s[7], s[8]]);

    const w = live.window();
    const last = live.scrapes[live.scrapes.length - 1];
    const set = (id, text) => {
      $(id).textContent = text;
    };
    if (!w) {
      for (const id of ["stat-rps", "stat-tps", "stat-p50", "stat-p99", "stat-errors", "stat-cache"]) set(id, "—");
      return;
    }
    set("stat-rps", fmtRate(w.rps));
    set("stat-rps-sub", last ? fmtInt(last.running) + " running · " + fmtInt(last.waiting) + " waiting" : "");
    set("stat-tps", fmtRate(w.gen + w.input));
    set("stat-tps-sub", fmtRate(w.gen) + " out · " + fmtRate(w.input) + " in");
    set("stat-p50", fmtSeconds(w.p50));
    set("stat-p99", fmtSeconds(w.p99));
    set("stat-errors", w.req > 0 ? fmtPercent(w.errorRate) : "—");
    set("stat-errors-sub", fmtInt(w.err) + " of " + fmtInt(w.req) + " requests");
    set("stat-cache", w.cacheAll > 0 ? fmtPercent(w.hitRate) : "—");
    set("stat-cache-sub", fmtInt(w.hits) + " of " + fmtInt(w.cacheAll) + " cacheable");
  }

  async function loadOverview(background) {
    renderOverviewLive();
    try {
      const st = await api("/status");
      state.status = st;
      renderServerPill(st);
      renderFacts(st);
    } catch (e) {
      if (!background) toast("Status: " + e.message, "err");
    }
  }

  function renderServerPill(st) {
    const pill = $("server-pill");
    pill.replaceChildren(
      badge(st.draining ? "draining" : st.ready ? "ready" : "not ready", st.draining ? "warn" : st.ready ? "ok" : "err", "server-ready"),
      "hfms " + st.version + " · up " + fmtDuration(st.uptime_seconds || 0),
    );
  }

  function renderFacts(st) {
    const models = st.models || [];
    const loaded = models.filter((m) => m.state === "loaded").length;
    const inFlight = models.reduce((n, m) => n + (m.in_flight || 0), 0);
    const facts = [
      ["Version", st.version],
      ["Uptime", fmtDuration(st.uptime_seconds || 0)],
      ["Models loaded", loaded + " of " + models.length],
      ["Requests in flight", fmtInt(inFlight)],
      ["Compute", (st.compute ? st.compute.threads + " threads · " + st.compute.kernels : "—")],
      ["Model loads / evictions", st.manager ? fmtInt(st.manager.loads) + " / " + fmtInt(st.manager.evictions) : "—"],
      ["Recent errors", fmtInt((st.errors || []).length)],
    ];
    $("overview-facts").replaceChildren(...facts.map(([k, v]) => h("div", null, h("dt", { text: k }), h("dd", { text: v }))));
  }

  // ---------------------------------------------------------------- models

  const busyModels = new Map(); // model id -> "load" | "unload"

  async function loadModels(background) {
    let st;
    try {
      st = await api("/status");
    } catch (e) {
      if (!background) toast("Models: " + e.message, "err");
      return;
    }
    state.status = st;
    renderServerPill(st);
    const body = $("models-body");
    const models = st.models || [];
    if (!models.length) {
      body.replaceChildren(emptyRow(9, "No models found. Add some to the models folder or the Hugging Face cache."));
      return;
    }
    body.replaceChildren(...models.map(modelRow));
  }

  function stateBadge(s) {
    const kind = { loaded: "ok", loading: "info", unloading: "warn", unloaded: "", failed: "err" }[s];
    return badge(s || "unknown", kind === undefined ? "warn" : kind, "model-state");
  }

  function modelRow(m) {
    const sched = m.scheduler || {};
    const aliases = (m.aliases || []).filter((a) => a !== m.id);
    const busy = busyModels.get(m.id);
    const loaded = m.state === "loaded";
    const loadBtn = h("button", {
      type: "button", class: "btn btn-sm", testid: "model-load", text: busy === "load" ? "Loading…" : "Load",
      disabled: busy || m.state === "loaded" || m.state === "loading",
      on: { click: () => modelAction(m.id, "load") },
    });
    const unloadBtn = h("button", {
      type: "button", class: "btn btn-sm", testid: "model-unload", text: busy === "unload" ? "Unloading…" : "Unload",
      disabled: busy || !loaded,
      on: { click: () => modelAction(m.id, "unload") },
    });
    const err = m.last_error || m.error;
    return h("tr", { testid: "model-row", data: { model: m.id } },
      h("td", null,
        h("div", { class: "cell-main", testid: "model-id", text: m.id }),
        aliases.length ? h("div", { class: "chips" }, aliases.map((a) => h("span", { class: "chip", text: a }))) : null,
        err ? h("div", { class: "cell-sub", text: "error: " + err }) : null),
      h("td", { text: m.task || "—" }),
      h("td", null, stateBadge(m.state), m.pinned ? h("span", { class: "cell-sub", text: " pinned" }) : null),
      h("td", { class: "mono", testid: "model-device", text: m.device || "—" }),
      h("td", { class: "num" },
        h("div", { text: m.bytes ? fmtBytes(m.bytes) : "—" }),
        m.reserved_bytes ? h("div", { class: "cell-sub", text: fmtBytes(m.reserved_bytes) + " reserved" }) : null),
      h("td", { class: "num", testid: "model-in-flight", text: fmtInt(m.in_flight || 0) }),
      h("td", { class: "num", testid: "model-waiting", text: sched.waiting === undefined ? "—" : fmtInt(sched.waiting) }),
      h("td", null, ago(m.last_used)),
      h("td", { class: "actions-col" }, h("div", { class: "actions" }, loadBtn, unloadBtn)));
  }

  async function modelAction(id, action) {
    busyModels.set(id, action);
    loadModels(true);
    try {
      await api("/models/" + action, { method: "POST", body: { model: id } });
      toast((action === "load" ? "Loaded " : "Unloaded ") + id);
    } catch (e) {
      toast((action === "load" ? "Loading " : "Unloading ") + id + ": " + e.message, "err");
    } finally {
      busyModels.delete(id);
      if (state.route === "models") loadModels(true);
    }
  }

  // ---------------------------------------------------------------- keys

  function keyStatus(k) {
    if (k.revoked_at) return ["revoked", "err"];
    if (k.expires_at && k.expires_at <= Date.now() / 1000) return ["expired", "warn"];
    return ["active", "ok"];
  }

  async function fetchKeys() {
    const r = await api("/admin/keys");
    state.keys = r.data || [];
    return state.keys;
  }

  async function loadKeys(background) {
    if (!background) {
      api("/status").then((st) => {
        state.status = st;
        renderServerPill(st);
      }).catch(() => {});
    }
    try {
      await fetchKeys();
    } catch (e) {
      if (!background) toast("Keys: " + e.message, "err");
      return;
    }
    renderKeys();
  }

  function renderKeys() {
    const showRevoked = $("keys-show-revoked").checked;
    const keys = state.keys.filter((k) => showRevoked || !k.revoked_at);
    const body = $("keys-body");
    if (!keys.length) {
      body.replaceChildren(emptyRow(9, state.keys.length ? "Only revoked keys (hidden)." : "No API keys yet. Create one above."));
      return;
    }
    // Active keys first, then newest first (the server's order).
    const rank = (k) => (k.revoked_at ? 2 : keyStatus(k)[0] === "expired" ? 1 : 0);
    keys.sort((a, b) => rank(a) - rank(b));
    body.replaceChildren(...keys.map(keyRow));
  }

  function limitText(v) {
    return v === null || v === undefined ? "∞" : fmtInt(v);
  }

  function keyRow(k) {
    const [status, kind] = keyStatus(k);
    const revoked = !!k.revoked_at;
    const actions = revoked
      ? [h("span", { class: "muted small", text: "revoked " + fmtTime(k.revoked_at) })]
      : [
          h("button", { type: "button", class: "btn btn-sm", testid: "key-edit", text: "Edit", on: { click: () => openEdit(k.id) } }),
          h("button", { type: "button", class: "btn btn-sm", testid: "key-rotate", text: "Rotate", on: { click: () => rotateKey(k.id) } }),
          h("button", { type: "button", class: "btn btn-sm btn-link-danger", testid: "key-revoke", text: "Revoke", on: { click: () => revokeKey(k.id) } }),
        ];
    const budget = (v) => (v === null || v === undefined ? "∞" : fmtCost(v));
    return h("tr", { testid: "key-row", class: revoked ? "revoked" : null, data: { keyId: k.id, keyName: k.name } },
      h("td", null,
        h("div", { class: "cell-main cell-name", testid: "row-name", text: k.name }),
        h("div", { class: "cell-sub", text: (k.owner ? k.owner + " · " : "") + "created " + fmtTime(k.created_at) })),
      h("td", { class: "mono", testid: "row-id", text: k.id }),
      h("td", null, h("div", { class: "chips" }, (k.scopes || []).map((s) => h("span", { class: "chip", text: s })))),
      h("td", null, k.models && k.models.length
        ? h("div", { class: "chips", testid: "row-models" }, k.models.map((m) => h("span", { class: "chip", text: m })))
        : h("span", { class: "muted", testid: "row-models", text: "all" })),
      h("td", null, h("div", { class: "kv" },
        h("div", null, h("span", { text: "rpm " }), h("b", { testid: "row-rpm", text: limitText(k.rpm) })),
        h("div", null, h("span", { text: "tpm " }), h("b", { testid: "row-tpm", text: limitText(k.tpm) })),
        h("div", null, h("span", { text: "concurrent " }), h("b", { testid: "row-max-concurrent", text: limitText(k.max_concurrent) })))),
      h("td", null, h("div", { class: "kv" },
        h("div", null, h("span", { text: "day " }), h("b", { testid: "row-budget-daily", text: budget(k.budget_daily) })),
        h("div", null, h("span", { text: "month " }), h("b", { testid: "row-budget-monthly", text: budget(k.budget_monthly) })))),
      h("td", null, ago(k.last_used_at, "row-last-used"),
        k.expires_at ? h("div", { class: "cell-sub", text: "expires " + fmtTime(k.expires_at) }) : null),
      h("td", null, badge(status, kind, "row-status")),
      h("td", { class: "actions-col" }, h("div", { class: "actions" }, actions)));
  }

  /** Comma- or newline-separated patterns. */
  function splitList(s) {
    return s.split(/[,\n]/).map((x) => x.trim()).filter(Boolean);
  }

  /** A number field: undefined when empty, NaN when not a valid number. */
  function numberField(input, { integer = false, min = 0 } = {}) {
    const raw = input.value.trim();
    input.removeAttribute("aria-invalid");
    if (raw === "") {
      // A number input reports badInput for text it cannot parse.
      if (input.validity && input.validity.badInput) {
        input.setAttribute("aria-invalid", "true");
        return NaN;
      }
      return undefined;
    }
    const v = Number(raw);
    if (!isFinite(v) || v < min || (integer && !Number.isInteger(v))) {
      input.setAttribute("aria-invalid", "true");
      return NaN;
    }
    return v;
  }

  /** The limit fields of a form (prefix "key-" or "edit-"): {field: number|undefined} or an error. */
  function readLimits(prefix) {
    const out = {};
    const fields = [
      ["rpm", "rpm", true, 1, "Requests / min"],
      ["tpm", "tpm", true, 1, "Tokens / min"],
      ["max_concurrent", "max-concurrent", true, 1, "Max concurrent"],
      ["budget_daily", "budget-daily", false, 0, "Daily budget"],
      ["budget_monthly", "budget-monthly", false, 0, "Monthly budget"],
    ];
    for (const [field, id, integer, min, label] of fields) {
      const v = numberField($(prefix + id), { integer, min });
      if (Number.isNaN(v)) {
        return { error: label + ": " + (integer ? "a whole number of at least " + min : "a number of at least " + min) + ", or empty for no limit." };
      }
      out[field] = v;
    }
    return { values: out };
  }

  async function createKey(ev) {
    ev.preventDefault();
    const errEl = $("key-form-error");
    showFormError(errEl, "");
    const name = $("key-name").value.trim();
    if (!name) {
      $("key-name").setAttribute("aria-invalid", "true");
      showFormError(errEl, "A key needs a name.");
      return;
    }
    $("key-name").removeAttribute("aria-invalid");
    const scopes = [];
    if ($("key-scope-inference").checked) scopes.push("inference");
    if ($("key-scope-admin").checked) scopes.push("admin");
    if (!scopes.length) {
      showFormError(errEl, "Pick at least one scope.");
      return;
    }
    const limits = readLimits("key-");
    if (limits.error) {
      showFormError(errEl, limits.error);
      return;
    }
    const body = { name, scopes };
    const owner = $("key-owner").value.trim();
    if (owner) body.owner = owner;
    const models = splitList($("key-models").value);
    if (models.length) body.models = models;
    for (const [k, v] of Object.entries(limits.values)) if (v !== undefined) body[k] = v;
    const expires = $("key-expires").value;
    if (expires) {
      const t = Math.floor(new Date(expires).getTime() / 1000);
      if (!isFinite(t)) {
        showFormError(errEl, "Expires: not a valid date.");
        return;
      }
      body.expires_at = t;
    }
    const btn = $("key-create");
    btn.disabled = true;
    try {
      const key = await api("/admin/keys", { method: "POST", body });
      showSecret("New key “" + key.name + "” (" + key.id + ")", key.secret);
      $("key-form").reset();
      await loadKeys(true);
    } catch (e) {
      showFormError(errEl, e.message);
    } finally {
      btn.disabled = false;
    }
  }

  function showSecret(title, secret) {
    $("secret-title").textContent = title;
    $("secret-value").textContent = secret;
    $("secret-copy").textContent = "Copy";
    $("secret-box").hidden = false;
    $("secret-box").scrollIntoView({ block: "nearest" });
  }

  function hideSecret() {
    $("secret-value").textContent = "";
    $("secret-box").hidden = true;
  }

  async function copySecret() {
    const text = $("secret-value").textContent;
    let ok = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        ok = true;
      }
    } catch (_) {
      ok = false;
    }
    if (!ok) {
      // Select it so that Ctrl+C copies it.
      const range = document.createRange();
      range.selectNodeContents($("secret-value"));
      const sel = getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
    }
    $("secret-copy").textContent = ok ? "Copied" : "Press Ctrl+C";
  }

  // Confirmation in the page (window.confirm would block and needs dialog handling in tests).
  let confirmResolve = null;
  function confirmAction(title, message, okLabel) {
    $("confirm-title").textContent = title;
    $("confirm-message").textContent = message;
    $("confirm-ok").textContent = okLabel || "Confirm";
    const dlg = $("confirm-dialog");
    if (confirmResolve) confirmResolve(false);
    return new Promise((resolve) => {
      confirmResolve = resolve;
      dlg.showModal();
      $("confirm-cancel").focus();
    });
  }

  function closeConfirm(answer) {
    const dlg = $("confirm-dialog");
    if (dlg.open) dlg.close();
    if (confirmResolve) {
      const r = confirmResolve;
      confirmResolve = null;
      r(answer);
    }
  }

  function keyById(id) {
    return state.keys.find((k) => k.id === id);
  }

  async function revokeKey(id) {
    const k = keyById(id);
    if (!k) return;
    const ok = await confirmAction(
      "Revoke “" + k.name + "”?",
      "Requests with this key are refused from now on (its usage history stays). This cannot be undone.",
      "Revoke",
    );
    if (!ok) return;
    try {
      await api("/admin/keys/" + encodeURIComponent(id), { method: "DELETE" });
      toast("Revoked " + k.name);
    } catch (e) {
      toast("Revoking " + k.name + ": " + e.message, "err");
    }
    await loadKeys(true);
  }

  async function rotateKey(id) {
    const k = keyById(id);
    if (!k) return;
    const ok = await confirmAction(
      "Rotate “" + k.name + "”?",
      "A new secret replaces the current one, which stops working at once. Limits and history stay.",
      "Rotate",
    );
    if (!ok) return;
    try {
      const r = await api("/admin/keys/" + encodeURIComponent(id) + "/rotate", { method: "POST" });
      showSecret("New secret for “" + r.name + "” (" + r.id + ")", r.secret);
      toast("Rotated " + k.name);
    } catch (e) {
      toast("Rotating " + k.name + ": " + e.message, "err");
    }
    await loadKeys(true);
  }

  let editing = null;
  function openEdit(id) {
    const k = keyById(id);
    if (!k) return;
    editing = k;
    $("edit-title").textContent = k.id;
    $("edit-name").value = k.name;
    $("edit-owner").value = k.owner || "";
    $("edit-models").value = (k.models || []).join(", ");
    const num = (v) => (v === null || v === undefined ? "" : String(v));
    $("edit-rpm").value = num(k.rpm);
    $("edit-tpm").value = num(k.tpm);
    $("edit-max-concurrent").value = num(k.max_concurrent);
    $("edit-budget-daily").value = num(k.budget_daily);
    $("edit-budget-monthly").value = num(k.budget_monthly);
    $("edit-scope-inference").checked = (k.scopes || []).includes("inference");
    $("edit-scope-admin").checked = (k.scopes || []).includes("admin");
    for (const el of $("edit-form").querySelectorAll("input")) el.removeAttribute("aria-invalid");
    showFormError($("edit-error"), "");
    $("edit-dialog").showModal();
    $("edit-rpm").focus();
  }

  async function saveEdit(ev) {
    ev.preventDefault();
    const k = editing;
    if (!k) return;
    const errEl = $("edit-error");
    showFormError(errEl, "");
    const changes = {};
    const name = $("edit-name").value.trim();
    if (!name) {
      showFormError(errEl, "A key needs a name.");
      return;
    }
    if (name !== k.name) changes.name = name;
    const owner = $("edit-owner").value.trim();
    if (owner !== (k.owner || "")) changes.owner = owner || null;
    const models = splitList($("edit-models").value);
    if (models.join("\n") !== (k.models || []).join("\n")) changes.models = models;
    const scopes = [];
    if ($("edit-scope-inference").checked) scopes.push("inference");
    if ($("edit-scope-admin").checked) scopes.push("admin");
    if (!scopes.length) {
      showFormError(errEl, "Pick at least one scope.");
      return;
    }
    if (scopes.slice().sort().join() !== (k.scopes || []).slice().sort().join()) changes.scopes = scopes;
    const limits = readLimits("edit-");
    if (limits.error) {
      showFormError(errEl, limits.error);
      return;
    }
    for (const [field, v] of Object.entries(limits.values)) {
      const old = k[field] === undefined ? null : k[field];
      const now = v === undefined ? null : v;
      if (old !== now) changes[field] = now; // null: no limit
    }
    if (!Object.keys(changes).length) {
      $("edit-dialog").close();
      return;
    }
    const btn = $("edit-save");
    btn.disabled = true;
    try {
      const updated = await api("/admin/keys/" + encodeURIComponent(k.id), { method: "PATCH", body: changes });
      const kept = Object.entries(changes).filter(([f, v]) => v === null && updated[f] !== null && updated[f] !== undefined);
      $("edit-dialog").close();
      editing = null;
      if (kept.length) toast("The server kept " + kept.map(([f]) => f).join(", ") + " (not cleared).", "err");
      else toast("Saved " + updated.name);
      await loadKeys(true);
    } catch (e) {
      showFormError(errEl, e.message);
    } finally {
      btn.disabled = false;
    }
  }

  // ---------------------------------------------------------------- usage

  const DAY = 86400;
  const HOUR = 3600;

  function usageRange() {
    const r = $("usage-range").value;
    const now = Math.floor(Date.now() / 1000);
    if (r === "24h") {
      const end = Math.floor(now / HOUR) * HOUR;
      return { group: "hour", step: HOUR, first: end - 23 * HOUR, last: end, from: end - 23 * HOUR, to: now + 1, label: "hour" };
    }
    const days = r === "7d" ? 7 : r === "90d" ? 90 : 30;
    const end = Math.floor(now / DAY) * DAY; // UTC days, as the server groups
    return { group: "day", step: DAY, first: end - (days - 1) * DAY, last: end, from: end - (days - 1) * DAY, to: now + 1, label: "day" };
  }

  function usageQuery(extra) {
    const r = usageRange();
    const p = new URLSearchParams({ from: String(r.from), to: String(r.to), ...extra });
    const key = $("usage-key").value;
    const model = $("usage-model").value;
    if (key) p.set("key", key);
    if (model) p.set("model", model);
    return "/admin/usage?" + p.toString();
  }

  function fillSelect(select, items, allLabel) {
    const cur = select.value;
    select.replaceChildren(h("option", { value: "", text: allLabel }), ...items.map(([value, label]) => h("option", { value, text: label })));
    if (items.some(([v]) => v === cur)) select.value = cur;
  }

  async function loadUsage(background) {
    const r = usageRange();
    $("usage-csv").href = usageQuery({ group_by: r.group, format: "csv" });
    let byTime, byModel, byKey;
    try {
      [byTime, byModel, byKey] = await Promise.all([
        api(usageQuery({ group_by: r.group })),
        api(usageQuery({ group_by: "model" })),
        api(usageQuery({ group_by: "key" })),
        fetchKeys().catch(() => state.keys),
        state.status ? null : api("/status").then((s) => (state.status = s)).catch(() => null),
      ]);
    } catch (e) {
      if (!background) toast("Usage: " + e.message, "err");
      return;
    }
    // Filters: every key and model we know of.
    fillSelect($("usage-key"), state.keys.map((k) => [k.id, k.name + " (" + k.id + ")" + (k.revoked_at ? " · revoked" : "")]), "All keys");
    const models = new Set(((state.status && state.status.models) || []).map((m) => m.id));
    for (const row of byModel.data || []) models.add(row.group);
    fillSelect($("usage-model"), [...models].sort().map((m) => [m, m]), "All models");

    renderUsageTotals(byModel.data || []);
    renderUsageCharts(r, byTime.data || []);
    renderUsageModels(byModel.data || []);
    renderUsageKeys(byKey.data || []);
  }

  function renderUsageTotals(rows) {
    const t = rows.reduce(
      (a, x) => ({
        requests: a.requests + x.requests,
        errors: a.errors + x.errors,
        prompt: a.prompt + x.prompt_tokens,
        cached: a.cached + x.cached_tokens,
        completion: a.completion + x.completion_tokens,
        cost: a.cost + x.cost,
      }),
      { requests: 0, errors: 0, prompt: 0, cached: 0, completion: 0, cost: 0 },
    );
    $("usage-total-requests").textContent = fmtInt(t.requests);
    $("usage-total-errors").textContent = fmtInt(t.errors) + " errors";
    $("usage-total-prompt").textContent = fmtInt(t.prompt);
    $("usage-total-cached").textContent = fmtInt(t.cached) + " cached";
    $("usage-total-completion").textContent = fmtInt(t.completion);
    $("usage-total-cost").textContent = fmtCost(t.cost);
  }

  let usageShape = ""; // the range the usage charts were built for
  function renderUsageCharts(r, rows) {
    const by = new Map(rows.map((x) => [Math.floor(Number(x.group) / 1000), x]));
    const xs = [];
    const req = [], err = [], prompt = [], completion = [], cost = [];
    // Zero draws no bar (null); the legend shows it as 0. Tokens are stacked:
    // the back bar is prompt + completion, the front one completion.
    const nz = (v) => (v ? v : null);
    for (let t = r.first; t <= r.last; t += r.step) {
      const x = by.get(t);
      xs.push(t);
      req.push(nz(x && x.requests));
      err.push(nz(x && x.errors));
      prompt.push(nz(x && x.prompt_tokens + x.completion_tokens));
      completion.push(nz(x && x.completion_tokens));
      cost.push(nz(x && x.cost));
    }
    const per = r.label === "hour" ? "hour" : "day";
    $("usage-requests-title").textContent = "Requests per " + per;
    $("usage-tokens-title").textContent = "Tokens per " + per;
    $("usage-cost-title").textContent = "Cost per " + per;
    const shape = r.group + ":" + r.first + ":" + document.documentElement.dataset.theme;
    if (usageShape === shape && charts.get("chart-usage-cost")) {
      charts.get("chart-usage-requests").setData([xs, req, err]);
      charts.get("chart-usage-tokens").setData([xs, prompt, completion]);
      charts.get("chart-usage-cost").setData([xs, cost]);
      return;
    }
    usageShape = shape;
    const opts = (series, yFormat) => () => chartOptions({ series, yFormat, bars: true, step: r.step, height: 200, idle: "sum" });
    charts.put("chart-usage-requests", opts([{ label: "requests", color: "--c1" }, { label: "errors", color: "--c4" }], fmtCompact), [xs, req, err]);
    charts.put("chart-usage-tokens", opts([{ label: "prompt + completion", color: "--c5" }, { label: "completion", color: "--c3" }], fmtCompact), [xs, prompt, completion]);
    charts.put("chart-usage-cost", opts([{ label: "cost", color: "--c2" }], fmtCost), [xs, cost]);
  }

  function renderUsageModels(rows) {
    const body = $("usage-models-body");
    if (!rows.length) {
      body.replaceChildren(emptyRow(7, "No requests in this range."));
      return;
    }
    rows = rows.slice().sort((a, b) => b.requests - a.requests);
    const total = rows.reduce((n, x) => n + x.requests, 0) || 1;
    body.replaceChildren(...rows.map((x) =>
      h("tr", { testid: "usage-model-row", data: { model: x.group } },
        h("td", { class: "cell-main", text: x.group }),
        h("td", { class: "num", testid: "usage-model-requests", text: fmtInt(x.requests) }),
        h("td", { class: "num", text: fmtInt(x.errors) }),
        h("td", { class: "num", text: fmtInt(x.prompt_tokens) }),
        h("td", { class: "num", text: fmtInt(x.completion_tokens) }),
        h("td", { class: "num", text: fmtCost(x.cost) }),
        h("td", null, meter(x.requests / total, fmtPercent(x.requests / total) + " of requests")))));
  }

  function renderUsageKeys(rows) {
    const body = $("usage-keys-body");
    if (!rows.length) {
      body.replaceChildren(emptyRow(6, "No requests in this range."));
      return;
    }
    rows = rows.slice().sort((a, b) => b.cost - a.cost || b.requests - a.requests).slice(0, 25);
    body.replaceChildren(...rows.map((x) => {
      const k = keyById(x.group);
      const label = x.group === "-" ? "no key / admin key" : k ? k.name : x.group;
      return h("tr", { testid: "usage-key-row", data: { key: x.group } },
        h("td", null,
          h("div", { class: "cell-main", testid: "usage-key-name", text: label }),
          x.group !== "-" ? h("div", { class: "cell-sub mono", text: x.group + (k && k.revoked_at ? " · revoked" : "") }) : null),
        h("td", { class: "num", testid: "usage-key-requests", text: fmtInt(x.requests) }),
        h("td", { class: "num", testid: "usage-key-errors", text: fmtInt(x.errors) }),
        h("td", { class: "num", text: fmtInt(x.prompt_tokens + x.completion_tokens) }),
        h("td", { class: "num", text: fmtInt(x.cache_hits) }),
        h("td", { class: "num", text: fmtCost(x.cost) }));
    }));
  }

  // ---------------------------------------------------------------- hardware

  /** "2 physical / 2 logical cores" from the CPU's detection note, else the note. */
  function cpuCores(cpu) {
    if (!cpu) return "";
    const m = /(\d+ physical \/ \d+ logical cores?)/.exec(cpu.reason || "");
    return m ? m[1] : cpu.reason || "";
  }

  async function loadHardware(background) {
    let st;
    try {
      st = await api("/status");
    } catch (e) {
      if (!background) toast("Hardware: " + e.message, "err");
      return;
    }
    state.status = st;
    renderServerPill(st);
    const platforms = st.hardware || [];
    const cpu = platforms.find((p) => p.platform === "cpu");
    const cpuDev = cpu && cpu.devices && cpu.devices[0];
    const cpuBudget = (st.devices || []).find((d) => d.device === "cpu");
    const accelerators = platforms.filter((p) => p.platform !== "cpu" && p.present);
    const card = (label, value, sub, testid) =>
      h("div", { class: "card stat", testid }, h("span", { class: "stat-label", text: label }),
        h("span", { class: "stat-value stat-value-sm", text: value, title: value }), h("span", { class: "stat-sub", text: sub || "", title: sub || "" }));
    $("hw-cards").replaceChildren(
      card("CPU", cpuDev ? cpuDev.name : "—", cpuCores(cpu), "hw-cpu"),
      card("Memory", cpuDev ? fmtBytes(cpuDev.total_bytes) : "—", cpuDev && cpuDev.free_bytes ? fmtBytes(cpuDev.free_bytes) + " free at start" : "", "hw-memory"),
      card("Compute", st.compute ? st.compute.threads + " threads" : "—", st.compute ? "kernels: " + st.compute.kernels : "", "hw-compute"),
      card("Accelerators", accelerators.length ? accelerators.map((p) => p.platform).join(", ") : "none",
        accelerators.length ? accelerators.reduce((n, p) => n + p.devices.length, 0) + " devices" : cpuBudget ? "models run on the CPU" : "", "hw-accelerators"),
    );

    const devices = st.devices || [];
    $("devices-body").replaceChildren(...(devices.length ? devices.map((d) => {
      const used = d.budget_bytes ? d.resident_bytes / d.budget_bytes : 0;
      return h("tr", { testid: "device-row", data: { device: d.device } },
        h("td", { class: "mono cell-main", text: d.device }),
        h("td", { class: "num", text: fmtBytes(d.total_bytes) }),
        h("td", { class: "num", text: fmtBytes(d.budget_bytes) }),
        h("td", { class: "num", text: fmtBytes(d.resident_bytes) }),
        h("td", null, meter(used, fmtPercent(used) + " of the budget"), h("div", { class: "meter-label", text: fmtPercent(used) })),
        h("td", { class: "num", text: fmtInt(d.resident_models) }),
        h("td", { class: "num", text: fmtInt(d.in_flight) }),
        h("td", null, badge(d.build_supported ? "supported" : "not in this build", d.build_supported ? "ok" : "warn")));
    }) : [emptyRow(8, "No devices.")]));

    $("platforms-body").replaceChildren(...(platforms.length ? platforms.map((p) =>
      h("tr", { testid: "platform-row", data: { platform: p.platform } },
        h("td", { class: "cell-main", text: p.platform }),
        h("td", null, badge(p.present ? "present" : "absent", p.present ? "ok" : "")),
        h("td", null, badge(p.build_supports ? "yes" : "no", p.build_supports ? "ok" : "")),
        h("td", null, p.devices && p.devices.length
          ? p.devices.map((d) => h("div", { text: d.name + (d.total_bytes ? " · " + fmtBytes(d.total_bytes) : "") }))
          : h("span", { class: "muted", text: "—" })),
        h("td", { class: "cell-sub", text: p.reason || "" }))) : [emptyRow(5, "This server did not report its hardware.")]));
  }

  // ---------------------------------------------------------------- wiring

  const PAGES = {
    overview: loadOverview,
    models: loadModels,
    keys: loadKeys,
    usage: loadUsage,
    hardware: loadHardware,
  };

  function wireStatic() {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", signOut);
    $("auth-banner-signin").addEventListener("click", () => {
      leave();
      showSignIn("");
    });
    $("theme-toggle").addEventListener("click", toggleTheme);
    $("models-refresh").addEventListener("click", () => loadModels(false));
    $("keys-refresh").addEventListener("click", () => loadKeys(false));
    $("keys-show-revoked").addEventListener("change", renderKeys);
    $("key-form").addEventListener("submit", createKey);
    $("secret-copy").addEventListener("click", copySecret);
    $("secret-dismiss").addEventListener("click", hideSecret);
    $("edit-form").addEventListener("submit", saveEdit);
    $("edit-cancel").addEventListener("click", () => $("edit-dialog").close());
    $("edit-dialog").addEventListener("close", () => {
      editing = null;
    });
    $("confirm-ok").addEventListener("click", () => closeConfirm(true));
    $("confirm-cancel").addEventListener("click", () => closeConfirm(false));
    $("confirm-dialog").addEventListener("close", () => closeConfirm(false));
    $("usage-refresh").addEventListener("click", () => loadUsage(false));
    for (const id of ["usage-range", "usage-key", "usage-model"]) $(id).addEventListener("change", () => loadUsage(false));
    window.addEventListener("hashchange", route);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
