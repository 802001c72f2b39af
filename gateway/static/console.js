// The operator console: a live board of flash sales from the admin sales API, with
// pause, resume and end. Plain browser JavaScript, no build step, nothing from elsewhere.
//
// The operator token comes from the sign-in field or the URL fragment (#token=...), is
// kept in this tab's sessionStorage and travels only in the Authorization header: never
// in a URL. A refused token (401/403) clears it and leaves nothing but the sign-in.
// Everything shown is written with textContent, never parsed as HTML (product names are
// seller input).
"use strict";

const API = "/api/v1/admin/sales";
const TOKEN_KEY = "flashsale.token";
const POLL_MS = 2000;            // the board refreshes itself every 2 seconds
const HISTORY_MS = 3 * 60 * 1000; // the admissions chart shows the last 3 minutes
const RATE_WINDOW_MS = 10 * 1000; // admissions per second averaged over 10 seconds

const $ = (id) => document.getElementById(id);
const state = {
  token: null,
  timer: null,
  cycle: 0,           // the newest refresh (or sign-out): older answers are dropped
  history: new Map(), // sale_id -> [[ms, admissions_total], ...]
  sales: new Map(),   // sale_id -> last SaleBoard
};

// --- token ---------------------------------------------------------------------------
function takeTokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token !== null) {
    // Out of the address bar and the history before anything else happens.
    history.replaceState(null, "", location.pathname);
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
  }
}

function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.cycle += 1;
  clearTimeout(state.timer);
  state.history.clear();
  state.sales.clear();
  $("sales").replaceChildren();
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("connection").textContent = "";
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

function start() {
  state.token = sessionStorage.getItem(TOKEN_KEY);
  if (!state.token) {
    signOut("");
    return;
  }
  $("signin").hidden = true;
  $("signin-error").textContent = "";
  refresh();
}

// --- API -----------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `The service answered ${status}.`);
    this.status = status;
    this.code = error.code || "http_" + status;
  }
}

async function call(method, path) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: "Bearer " + state.token, Accept: "application/json" },
    cache: "no-store",
    credentials: "omit",
  });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function refused(error) {
  return error instanceof ApiError && (error.status === 401 || error.status === 403);
}

async function refresh() {
  // One chain of refreshes: a refresh asked for while another is in flight (an action,
  // the filter) supersedes it, and only the newest one renders and schedules the next.
  clearTimeout(state.timer);
  const cycle = ++state.cycle;
  const filter = $("status-filter").value;
  try {
    const body = await call("GET", API + (filter ? "?status=" + encodeURIComponent(filter) : ""));
    if (cycle !== state.cycle) return;
    $("board").hidden = false;
    $("sign-out").hidden = false;
    render(body.items, Date.now());
    setConnection(true, "live");
  } catch (error) {
    if (cycle !== state.cycle) return;
    if (refused(error)) {
      signOut("That token was refused: " + error.message);
      return;
    }
    // The service or the network is down: keep the last figures, say they are stale.
    setConnection(false, error instanceof ApiError ? error.message : "The service does not answer.");
  }
  state.timer = setTimeout(refresh, POLL_MS);
}

function setConnection(live, text) {
  const el = $("connection");
  el.textContent = live ? "● live" : "● stale: " + text;
  el.className = "connection " + (live ? "live" : "stale");
  $("sales").classList.toggle("stale", !live);
  if (live) $("updated").textContent = "updated " + utc(new Date()).slice(11);
}

// --- board ---------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

function figure(label, field, value, extraClass) {
  return el("div", { class: "figure " + (extraClass || "") },
    el("span", { class: "label" }, label),
    el("span", { class: "value", "data-field": field }, value));
}

function utc(moment) {  // operators across time zones read one clock
  return moment.toISOString().slice(0, 19).replace("T", " ") + " UTC";
}

function when(iso) {
  return iso ? utc(new Date(iso)) : "no end";
}

function record(sale, now) {
  let samples = state.history.get(sale.sale_id);
  if (!samples) state.history.set(sale.sale_id, (samples = []));
  samples.push([now, sale.admissions_total]);
  while (samples.length > 2 && now - samples[0][0] > HISTORY_MS) samples.shift();
  return samples;
}

function ratePerSecond(samples) {
  const last = samples[samples.length - 1];
  let first = last;
  for (let i = samples.length - 1; i >= 0 && last[0] - samples[i][0] <= RATE_WINDOW_MS; i--) {
    first = samples[i];
  }
  const seconds = (last[0] - first[0]) / 1000;
  return seconds > 0 ? Math.max(0, last[1] - first[1]) / seconds : 0;
}

const SVG = "http://www.w3.org/2000/svg";

function chart(samples) {
  // One bar per refresh: the admissions per second between two samples, over the last
  // minutes (right edge: now).
  const width = 260, height = 48;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const bars = [];
  for (let i = 1; i < samples.length; i++) {
    const [t0, a0] = samples[i - 1], [t1, a1] = samples[i];
    const dt = (t1 - t0) / 1000;
    bars.push([t0, t1, dt > 0 ? Math.max(0, a1 - a0) / dt : 0]);
  }
  const peak = Math.max(0, ...bars.map((b) => b[2]));
  svg.dataset.peak = peak.toFixed(2);
  svg.setAttribute("aria-label",
    `admissions per second over the last ${HISTORY_MS / 60000} minutes, peak ${peak.toFixed(1)}`);
  const end = samples.length ? samples[samples.length - 1][0] : 0;
  const x = (t) => width - ((end - t) / HISTORY_MS) * width;
  const scale = (height - 12) / Math.max(1, peak);
  const axis = document.createElementNS(SVG, "line");
  for (const [k, v] of Object.entries({ x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5 })) {
    axis.setAttribute(k, v);
  }
  axis.setAttribute("class", "axis");
  svg.append(axis);
  for (const [t0, t1, rate] of bars) {
    if (rate <= 0) continue;
    const bar = document.createElementNS(SVG, "rect");
    const left = Math.max(0, x(t0));
    bar.setAttribute("x", left.toFixed(1));
    bar.setAttribute("width", Math.max(1, x(t1) - left - 0.5).toFixed(1));
    bar.setAttribute("y", (height - rate * scale).toFixed(1));
    bar.setAttribute("height", (rate * scale).toFixed(1));
    bar.setAttribute("class", "rate");
    svg.append(bar);
  }
  return svg;
}

function trend(samples) {
  const svg = chart(samples);
  return el("div", { class: "trend" }, svg,
    el("span", { class: "muted" }, `admissions per second, last ${HISTORY_MS / 60000} minutes` +
      ` (peak ${parseFloat(svg.dataset.peak).toFixed(1)}/s)`));
}

const ACTIONS = {
  pause: {
    label: "Pause", allowed: ["active", "scheduled", "sold_out"],
    question: (s) => `Pause sale #${s.sale_id} (${s.product_name})? Buyers are refused until you resume it.`,
  },
  resume: {
    label: "Resume", allowed: ["paused"],
    question: (s) => `Resume sale #${s.sale_id} (${s.product_name})? Buyers can reserve again at once.`,
  },
  end: {
    label: "End", allowed: ["scheduled", "active", "paused", "sold_out"],
    question: (s) => `End sale #${s.sale_id} (${s.product_name}) now? This cannot be undone: ` +
      "no new reservations, and unsold units go back to regular stock.",
  },
};

function card(sale, samples) {
  const rate = ratePerSecond(samples);
  const soldShare = sale.initial ? (sale.initial - sale.remaining) / sale.initial : 0;
  const books = sale.books_balanced
    ? el("span", { class: "ok", "data-field": "books" }, "books balanced")
    : el("span", { class: "bad", "data-field": "books" },
      `books off by ${sale.books_mismatch_units} unit${sale.books_mismatch_units === 1 ? "" : "s"}`);
  const actions = el("div", { class: "actions" });
  for (const [action, spec] of Object.entries(ACTIONS)) {
    if (!spec.allowed.includes(sale.status)) continue;
    const button = el("button", {
      type: "button", class: action === "end" ? "danger" : "",
      "data-action": action, textContent: spec.label,
    });
    button.addEventListener("click", () => ask(sale, action));
    actions.append(button);
  }
  let waiting = null;
  if (sale.waiting_room && typeof sale.waiting_room === "object") {
    waiting = el("div", { class: "waiting", "data-field": "waiting_room" },
      el("span", { class: "label" }, "waiting room"),
      ...Object.entries(sale.waiting_room).map(([k, v]) =>
        el("span", { class: "pair" },
          `${k.replaceAll("_", " ")}: ${typeof v === "object" && v !== null ? JSON.stringify(v) : v}`)));
  }
  const progress = el("div", { class: "progress" });
  progress.append(el("div", { class: "sold" }));
  progress.firstChild.style.width = (100 * soldShare).toFixed(1) + "%";
  return el("article", { class: "sale status-" + sale.status, "data-sale-id": String(sale.sale_id) },
    el("header", {},
      el("h2", {}, el("span", { class: "muted" }, `#${sale.sale_id} `),
        el("span", { "data-field": "product_name" }, sale.product_name)),
      el("span", { class: "badge", "data-field": "status" }, sale.status.replace("_", " "))),
    el("p", { class: "muted meta" },
      `price ${sale.price} · product ${sale.product_id} · ${sale.per_user_limit} per buyer · ` +
      `hold ${sale.hold_seconds}s · ${when(sale.starts_at)} → ${when(sale.ends_at)}`),
    el("div", { class: "big" },
      el("span", { class: "value", "data-field": "remaining" }, sale.remaining),
      el("span", { class: "muted" }, " of ", el("span", { "data-field": "initial" }, sale.initial), " left")),
    progress,
    el("div", { class: "figures" },
      figure("held (live holds)", "held", sale.held),
      figure("confirmed", "confirmed", sale.confirmed),
      figure("released", "released", sale.released),
      figure("expired", "expired", sale.expired),
      figure("admissions/s", "rate", rate.toFixed(1)),
      figure("reconciler lag", "reconciler_lag", sale.reconciler_lag,
        sale.reconciler_lag > 0 ? "warn" : "")),
    trend(samples),
    el("p", { class: "audit" }, books),
    waiting,
    actions);
}

function render(items, now) {
  const seen = new Set();
  const cards = items.map((sale) => {
    seen.add(sale.sale_id);
    state.sales.set(sale.sale_id, sale);
    return card(sale, record(sale, now));
  });
  for (const id of [...state.history.keys()]) {
    if (!seen.has(id)) { state.history.delete(id); state.sales.delete(id); }
  }
  $("sales").replaceChildren(...cards);
  $("empty").hidden = items.length > 0;
  const counts = {};
  for (const sale of items) counts[sale.status] = (counts[sale.status] || 0) + 1;
  $("summary").textContent = `${items.length} sale${items.length === 1 ? "" : "s"}` +
    Object.entries(counts).map(([s, n]) => ` · ${n} ${s.replace("_", " ")}`).join("");
}

// --- actions -------------------------------------------------------------------------
let pending = null;

function ask(sale, action) {
  pending = { sale, action };
  $("confirm-text").textContent = ACTIONS[action].question(sale);
  $("confirm-ok").textContent = ACTIONS[action].label + " sale #" + sale.sale_id;
  $("confirm").showModal();
}

async function act() {
  const { sale, action } = pending;
  pending = null;
  $("confirm").close();
  try {
    const board = await call("POST", `${API}/${sale.sale_id}/${action}`);
    notice(`Sale #${board.sale_id} is now ${board.status.replace("_", " ")}.`, false);
  } catch (error) {
    if (refused(error)) { signOut("That token was refused: " + error.message); return; }
    notice(`Could not ${action} sale #${sale.sale_id}: ${error.message}`, true);
  }
  refresh();
}

function notice(text, isError) {
  const box = $("notice");
  box.textContent = text;
  box.className = "notice " + (isError ? "error" : "ok");
  box.hidden = false;
}

// --- wiring --------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) signIn(token);
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("status-filter").addEventListener("change", () => refresh());
  $("confirm-ok").addEventListener("click", act);
  $("confirm-cancel").addEventListener("click", () => { pending = null; $("confirm").close(); });
  window.addEventListener("hashchange", () => { takeTokenFromFragment(); start(); });
  takeTokenFromFragment();
  start();
});
