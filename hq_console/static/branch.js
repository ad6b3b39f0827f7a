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

const DEVICE_KINDS = {
  card_reader: { ja: "カード読取機", en: "Card reader" },
  document_camera: { ja: "書画カメラ", en: "Document camera" },
  receipt_printer: { ja: "レシートプリンター", en: "Receipt printer" },
  a4_printer: { ja: "A4プリンター", en: "A4 printer" },
  camera: { ja: "カメラ", en: "Camera" },
  microphone: { ja: "マイク", en: "Microphone" },
  speaker: { ja: "スピーカー", en: "Speaker" },
};

const DEVICE_STATES = {
  ready: { ja: "正常", en: "Ready" },
  busy: { ja: "使用中", en: "In use" },
  card_present: { ja: "カードあり", en: "Card inserted" },
  paper_out: { ja: "用紙切れ", en: "Paper out" },
  offline: { ja: "接続なし", en: "Offline" },
  error: { ja: "エラー", en: "Error" },
};

const FAILED_DEVICE_STATES = new Set(["paper_out", "offline", "error"]);

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
    const devices = status.devices || [];
    const failed = devices.filter((d) => FAILED_DEVICE_STATES.has(d.state));
    if (failed.length > 0) {
      card.classList.add("devices-failed");
      const stripe = el("div", "device-alert", `機器の確認が必要です（${failed.length}台）`);
      stripe.append(el("span", "en", "Device needs attention"));
      stripe.setAttribute("role", "status");
      card.prepend(stripe);
    }
    if (devices.length > 0) card.append(renderDevices(devices, status.state === "offline"));
    grid.append(card);
  }
  $("booths-empty").hidden = booths.length > 0;
  if (booths.length === 0) $("booths-empty").textContent = "このサービスポイントにはブースがありません。";
  const site = booths.length ? booths[0].booth.site_name : "";
  $("site-name").textContent = site;
  tick();
}

function renderDevices(devices, boothOffline) {
  const box = el("section", "booth-devices");
  if (boothOffline) {
    box.classList.add("last-report");
    box.append(el("div", "devices-note", "ブースと接続していないため、最後に届いた状態です"));
  }
  const list = el("ul", "device-list");
  for (const device of devices) {
    const kind = DEVICE_KINDS[device.kind] || { ja: device.kind, en: "" };
    const state = DEVICE_STATES[device.state] || { ja: device.state, en: "" };
    const row = el("li", `device dv-${device.state}`);
    row.dataset.kind = device.kind;
    row.dataset.state = device.state;
    row.title = device.name;
    if (FAILED_DEVICE_STATES.has(device.state)) row.classList.add("failed");
    row.append(el("span", "device-kind", kind.ja));
    row.append(el("span", "device-state", state.ja));
    const since = el("span", "device-since");
    since.dataset.deviceSince = device.since;
    row.append(since);
    if (device.reason) row.append(el("div", "device-reason", device.reason));
    list.append(row);
  }
  box.append(list);
  return box;
}

/** "たった今から", "12分前から", "2時間05分前から" */
function formatDeviceSince(totalSeconds) {
  const s = Math.max(0, Math.floor(totalSeconds));
  if (s < 60) return "たった今から";
  if (s < 3600) return `${Math.floor(s / 60)}分前から`;
  const h = Math.floor(s / 3600);
  if (h >= 48) return `${Math.floor(h / 24)}日前から`;
  return `${h}時間${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}分前から`;
}

function tick() {
  const now = Date.now();
  for (const node of document.querySelectorAll(".device-since[data-device-since]")) {
    node.textContent = formatDeviceSince((now - Date.parse(node.dataset.deviceSince)) / 1000);
  }
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
  } else if (msg.type === "service") {
    // The node cannot reach the others: the booth states shown may be behind.
    $("service-notice").hidden = msg.state !== "degraded";
    document.body.dataset.service = msg.state;
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
  // Several signaling nodes: the client moves to the next URL when one fails.
  const urls = page.me.signaling_urls && page.me.signaling_urls.length ? page.me.signaling_urls : page.me.signaling_url;
  page.client = new SignalingClient(urls, { onMessage, onStatus });
  page.client.start();
  window.addEventListener("pagehide", () => page.client.stop());
}

main().catch((err) => {
  page.lastError = { code: "internal", message: String(err) };
  console.error(err);
});
