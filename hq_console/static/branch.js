// The branch staff page: the site's booths as large cards with their live state.

import {
  ErrorBox,
  SignalingClient,
  fetchMe,
  formatDuration,
  renderConnectionBanner,
} from "./staff-signaling.js";

const BOOTH_STATES = {
  offline: { ja: "オフライン", en: "Offline" },
  idle: { ja: "待機中", en: "Idle" },
  waiting: { ja: "順番待ち", en: "Waiting" },
  in_call: { ja: "通話中", en: "In a call" },
};

const $ = (id) => document.getElementById(id);

const page = { me: null, booths: [], connection: "connecting", lastError: null, client: null };

window.ekichika = {
  get booths() {
    return page.booths;
  },
  get connection() {
    return page.connection;
  },
  get lastError() {
    return page.lastError;
  },
  get state() {
    return page.connection === "connected" ? "watching" : "offline";
  },
};

const errorBox = new ErrorBox($("error-box"));

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function renderBooths() {
  const grid = $("booths");
  grid.replaceChildren();
  const booths = [...page.booths].sort((a, b) => a.booth.name.localeCompare(b.booth.name, "ja"));
  for (const status of booths) {
    const label = BOOTH_STATES[status.state] || { ja: status.state, en: "" };
    const card = el("article", `booth-card st-${status.state}`);
    card.dataset.boothId = status.booth.booth_id;
    card.dataset.state = status.state;
    card.append(el("h2", "booth-name", status.booth.name));
    card.append(el("div", "booth-site", status.booth.site_name));
    const state = el("div", "booth-state", label.ja);
    state.append(el("span", "en", label.en));
    card.append(state);
    const since = el("div", "booth-since");
    since.dataset.since = status.since;
    card.append(since);
    if (status.state === "in_call" && status.staff) {
      card.append(el("div", "booth-staff", `対応中の職員: ${status.staff.display_name}`));
    } else if (status.state === "waiting") {
      card.append(el("div", "booth-staff", "本庁舎の職員につないでいます"));
    }
    grid.append(card);
  }
  $("booths-empty").hidden = booths.length > 0;
  if (booths.length === 0) $("booths-empty").textContent = "このサービスポイントにはブースがありません。";
  const site = booths.length ? booths[0].booth.site_name : "";
  $("site-name").textContent = site;
  tick();
}

function tick() {
  const now = Date.now();
  for (const node of document.querySelectorAll(".booth-since[data-since]")) {
    node.textContent = `${formatDuration((now - Date.parse(node.dataset.since)) / 1000)}前から`;
  }
  const clock = new Date();
  $("clock").textContent = clock.toLocaleTimeString("ja-JP", { hour: "2-digit", minute: "2-digit" });
}

function onMessage(msg) {
  if (msg.type === "welcome") {
    $("me-name").textContent = msg.staff.display_name;
  } else if (msg.type === "booths") {
    page.booths = msg.booths;
    renderBooths();
  } else if (msg.type === "error") {
    page.lastError = msg;
    errorBox.show(msg);
  }
}

function onStatus(status, detail) {
  page.connection = status;
  document.body.dataset.connection = status;
  renderConnectionBanner($("banner"), status, page.client, detail);
  for (const card of document.querySelectorAll(".booth-card")) {
    card.classList.toggle("stale", status !== "connected");
  }
}

async function main() {
  setInterval(tick, 1000);
  tick();
  page.me = await fetchMe();
  $("me-name").textContent = page.me.display_name;
  page.client = new SignalingClient(page.me.signaling_url, { onMessage, onStatus });
  page.client.start();
  window.addEventListener("pagehide", () => page.client.stop());
}

main().catch((err) => {
  page.lastError = { code: "internal", message: String(err) };
  console.error(err);
});
