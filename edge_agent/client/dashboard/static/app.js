// segedge-dashboard page: cards from server-sent events; text only (textContent), never HTML.
"use strict";

const CONFIG = JSON.parse(document.getElementById("config").textContent);
const cards = new Map();      // id -> {data, el, parts}
const visible = new Set();    // ids of cards in the viewport
let filter = (location.hash.match(/state=(\w+)/) || [])[1] || "all";
let clockSkew = 0;            // server time - page time
let meta = {};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function ago(seconds) {
  if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function num(v, digits = 1) { return v === null || v === undefined ? "–" : v.toFixed(digits); }

function now() { return Date.now() / 1000 + clockSkew; }

// the state a card shows: the (effective) state, or offline when silent too long
function shownState(d) {
  if (d.last_seen && now() - d.last_seen > CONFIG.stale_after_s && d.state !== "offline") {
    return "offline";
  }
  return d.state || "unknown";
}

const observer = new IntersectionObserver((entries) => {
  for (const e of entries) {
    const id = e.target.dataset.id;
    if (e.isIntersecting) { visible.add(id); loadOverlay(cards.get(id)); } else visible.delete(id);
  }
});

function makeCard(id) {
  const root = el("article", "card");
  root.dataset.id = id;
  const h = el("h2");
  const name = el("span", "id", id);
  name.title = id;
  const badge = el("span", "badge");
  h.append(name, badge);
  const sub = el("div", "sub");
  const reason = el("div", "reason");
  const figures = el("dl", "figures");
  const img = el("img", "overlay");
  img.alt = `latest overlay of ${id}`;
  img.hidden = true;
  const noimg = el("div", "noimg", "no overlay yet (agent option output.overlay_interval_s, or a snapshot)");
  const seen = el("div", "seen");
  root.append(h, sub, reason, figures, img, noimg, seen);
  const parts = { badge, sub, reason, figures, img, noimg, seen };
  if (CONFIG.operator) {
    const actions = el("div", "actions");
    const reply = el("div", "reply");
    reply.dataset.role = "reply";
    for (const [label, feature, value] of [["Pause", "paused", "ON"], ["Resume", "paused", "OFF"],
                                           ["Snapshot", "snapshot", "PRESS"]]) {
      const b = el("button", "", label);
      b.dataset.command = `${feature}:${value}`;
      b.addEventListener("click", () => command(id, feature, value, reply));
      actions.append(b);
    }
    root.append(actions, reply);
    parts.reply = reply;
    parts.actions = actions;
  }
  img.addEventListener("load", () => { img.dataset.loading = ""; img.hidden = false; noimg.hidden = true; });
  img.addEventListener("error", () => { img.dataset.loading = ""; });
  observer.observe(root);
  return { el: root, parts, data: null };
}

function loadOverlay(card) {
  if (!card || !card.data || !card.data.overlay || !visible.has(card.data.id)) return;
  const img = card.parts.img;
  const want = String(card.data.overlay);
  if (img.dataset.v === want || img.dataset.loading) return;
  img.dataset.v = want;
  img.dataset.loading = "1";
  img.src = `/overlay/${encodeURIComponent(card.data.id)}.jpg?v=${want}`;
}

function figure(dl, label, value) {
  dl.append(el("dt", "", label), el("dd", "", value));
}

function render(card) {
  const d = card.data, p = card.parts;
  const sub = [];
  if (d.cameras) sub.push(`agent of ${d.cameras} camera${d.cameras > 1 ? "s" : ""}`);
  if (d.agent_id && d.agent_id !== d.id) sub.push(`on ${d.agent_id}`);
  if (d.model) sub.push(d.model);
  if (d.device) sub.push(d.device);
  if (d.paused) sub.push("paused");
  p.sub.textContent = sub.join(" · ");
  p.reason.textContent = d.reason || "";
  // pause and snapshot are each camera's: an agent of several cameras takes neither
  if (p.actions) p.actions.hidden = d.cameras > 0;
  p.figures.replaceChildren();
  const f = d.fps || {}, l = d.latency || {};
  figure(p.figures, "fps", `cap ${num(f.capture)} · inf ${num(f.inference)} · pub ${num(f.publish)}`);
  figure(p.figures, "latency", `p50 ${num(l.p50)} · p95 ${num(l.p95)} ms`);
  const q = Object.entries(d.quality || {});
  if (q.length) {
    figure(p.figures, "quality", q.map(([k, v]) => `${k} ${typeof v === "number" ? num(v, 3) : v}`).join(" · "));
  }
  if (!d.overlay) { p.img.hidden = true; p.noimg.hidden = d.cameras > 0; p.img.dataset.v = ""; }
  loadOverlay(card);
  refresh(card);
}

// the parts that change with time: state (silence), last seen, filter
function refresh(card) {
  const d = card.data, state = shownState(d);
  card.el.className = `card ${state}` + (filter !== "all" && filter !== state ? " hidden" : "");
  card.el.dataset.state = state;
  card.parts.badge.textContent = state;
  if (card.parts.actions) {
    for (const b of card.parts.actions.children) b.disabled = state === "offline";
  }
  let seen = d.last_seen ? `last seen ${ago(now() - d.last_seen)} ago` : "not seen since the page started";
  if (state === "offline" && d.state !== "offline") seen = `silent: ${seen}`;
  card.parts.seen.textContent = seen;
}

function refreshAll() {
  const counts = { all: 0, online: 0, degraded: 0, offline: 0 };
  for (const card of cards.values()) {
    refresh(card);
    counts.all++;
    const s = card.el.dataset.state;
    if (s in counts) counts[s]++;
  }
  for (const [k, v] of Object.entries(counts)) {
    document.querySelector(`[data-count="${k}"]`).textContent = v;
  }
  const b = document.getElementById("broker");
  if (meta.broker) {
    b.className = meta.broker.connected ? "broker" : "broker down";
    b.textContent = meta.broker.connected
      ? `broker connected · ${CONFIG.operator ? "operator" : "read-only"}`
      : `broker disconnected ${ago(now() - meta.broker.since)} ago (${meta.broker.reason || "?"}), retrying`;
  }
  const dropped = Object.entries(meta.dropped || {}).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`);
  document.getElementById("footer").textContent =
    `segedge ${CONFIG.version} · ${meta.devices || 0} ids tracked (at most ${meta.max_devices || "?"})` +
    (dropped.length ? ` · dropped: ${dropped.join(", ")}` : "");
}

function order(a, b) {
  const ka = `${a.agent_id || a.id}\u0000${a.agent_id && a.agent_id !== a.id ? a.id : ""}`;
  const kb = `${b.agent_id || b.id}\u0000${b.agent_id && b.agent_id !== b.id ? b.id : ""}`;
  return ka < kb ? -1 : ka > kb ? 1 : 0;
}

function onCards(ev) {
  const msg = JSON.parse(ev.data);
  clockSkew = msg.now - Date.now() / 1000;
  meta = msg.meta || {};
  let added = false;
  for (const d of msg.cards) {
    let card = cards.get(d.id);
    if (!card) { card = makeCard(d.id); cards.set(d.id, card); added = true; }
    card.data = d;
    render(card);
  }
  if (added) {
    const main = document.getElementById("cards");
    const sorted = [...cards.values()].sort((a, b) => order(a.data, b.data));
    main.replaceChildren(...sorted.map((c) => c.el));
  }
  refreshAll();
}

async function command(id, feature, value, replyEl) {
  replyEl.textContent = `${feature} ${value}: sent…`;
  try {
    const r = await fetch("/api/command", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Segedge-Token": CONFIG.token },
      body: JSON.stringify({ id, feature, value }),
    });
    const reply = await r.json();
    replyEl.textContent = `${feature} ${value}: ${reply.result}` + (reply.reason ? ` (${reply.reason})` : "");
    replyEl.dataset.result = reply.result;
  } catch (e) {
    replyEl.textContent = `${feature} ${value}: ${e}`;
    replyEl.dataset.result = "error";
  }
}

function setFilter(f) {
  filter = f;
  history.replaceState(null, "", f === "all" ? "#" : `#state=${f}`);
  for (const b of document.querySelectorAll("#filters button")) {
    b.classList.toggle("active", b.dataset.filter === f);
  }
  refreshAll();
}

for (const b of document.querySelectorAll("#filters button")) {
  b.addEventListener("click", () => setFilter(b.dataset.filter));
}
setFilter(filter);
const events = new EventSource("/events");
events.addEventListener("cards", onCards);
events.addEventListener("error", () => {
  document.getElementById("broker").textContent = "page lost the dashboard server, reconnecting…";
});
setInterval(refreshAll, 1000);
