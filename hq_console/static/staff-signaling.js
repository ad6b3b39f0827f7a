// The staff pages' connection to the signaling server.
//
// Every (re)connect fetches a fresh short-lived token from the console
// (POST /api/signaling-token) and sends it in the hello message; a signed-out browser
// therefore cannot reconnect. Reconnects back off exponentially with jitter. Given
// several URLs (signaling nodes), each retry goes to the next one: a call in progress
// resumes on whichever node the page reaches (the welcome carries its session id).
// Messages are plain objects whose fields follow protocol.schema.json (snake_case).

export const PROTOCOL_VERSION = 1;

export class SignedOutError extends Error {}

/** The signed-in staff member (GET /api/me); sends the browser to /login when signed out. */
export async function fetchMe() {
  const resp = await fetch("/api/me", { credentials: "same-origin", cache: "no-store" });
  if (resp.status === 401) {
    location.assign("/login");
    throw new SignedOutError("signed out");
  }
  if (!resp.ok) throw new Error(`/api/me answered ${resp.status}`);
  return resp.json();
}

async function fetchToken() {
  const resp = await fetch("/api/signaling-token", {
    method: "POST",
    credentials: "same-origin",
    cache: "no-store",
  });
  if (resp.status === 401) {
    location.assign("/login");
    throw new SignedOutError("signed out");
  }
  if (!resp.ok) throw new Error(`/api/signaling-token answered ${resp.status}`);
  const body = await resp.json();
  return body.token;
}

// Fatal errors after which reconnecting on our own would only repeat the problem.
const STOP_CODES = new Set(["duplicate_connection", "forbidden", "unsupported_protocol"]);

export class SignalingClient {
  /**
   * @param {string | string[]} url WebSocket URL of the signaling server's staff endpoint,
   *   or the URLs of several signaling nodes (tried in turn)
   * @param {{onMessage: (msg: object) => void, onStatus: (status: string, detail?: object) => void}} handlers
   *   status: "connecting" | "connected" (welcome received) | "disconnected" | "stopped"
   */
  constructor(url, { onMessage, onStatus }) {
    this.urls = (Array.isArray(url) ? url : [url]).filter((u) => u);
    this.urlIndex = 0;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.ws = null;
    this.status = "connecting";
    this.attempt = 0;
    this.minDelayMs = 500;
    this.maxDelayMs = 15000;
    this.timer = null;
    this.stopped = false;
    this.stopError = null;
  }

  start() {
    this.stopped = false;
    this.stopError = null;
    clearTimeout(this.timer);
    this.attempt = 0;
    this._connect();
  }

  /** Closes the connection and does not reconnect. */
  stop(error = null) {
    this.stopped = true;
    this.stopError = error;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    this._setStatus("stopped", error);
  }

  /** The URL of the current (or next) connection. */
  get url() {
    return this.urls[this.urlIndex % this.urls.length];
  }

  /** After a failed or lost connection: the next signaling node, if there are several. */
  _nextUrl() {
    this.urlIndex = (this.urlIndex + 1) % this.urls.length;
  }

  get connected() {
    return this.status === "connected";
  }

  /** Sends one message; false if there is no open connection. */
  send(message) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(message));
    return true;
  }

  _setStatus(status, detail) {
    this.status = status;
    this.onStatus(status, detail);
  }

  async _connect() {
    if (this.stopped) return;
    this._setStatus("connecting");
    let token;
    try {
      token = await fetchToken();
    } catch (err) {
      if (err instanceof SignedOutError) return;
      this._setStatus("disconnected");
      this._scheduleReconnect();
      return;
    }
    if (this.stopped) return;
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this._nextUrl();
      this._setStatus("disconnected");
      this._scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ type: "hello", protocol: PROTOCOL_VERSION, token }));
    });
    ws.addEventListener("message", (event) => {
      if (this.ws !== ws) return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!msg || typeof msg !== "object") return;
      if (msg.type === "welcome") {
        this.attempt = 0;
        this._setStatus("connected");
      }
      this.onMessage(msg);
      if (msg.type === "error" && msg.fatal && STOP_CODES.has(msg.code)) {
        this.stop(msg);
      }
    });
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      this._nextUrl();
      this._setStatus("disconnected");
      this._scheduleReconnect();
    });
  }

  _scheduleReconnect() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    const ceiling = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** this.attempt);
    this.attempt += 1;
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.timer = setTimeout(() => this._connect(), delay);
  }
}

// ---------------------------------------------------------------------------------------
// Small shared helpers for the pages
// ---------------------------------------------------------------------------------------

/** "12秒", "3分05秒", "1時間02分" */
export function formatDuration(totalSeconds) {
  const s = Math.max(0, Math.floor(totalSeconds));
  if (s < 60) return `${s}秒`;
  if (s < 3600) return `${Math.floor(s / 60)}分${String(s % 60).padStart(2, "0")}秒`;
  return `${Math.floor(s / 3600)}時間${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}分`;
}

/** "0:07", "12:34", "1:02:03" */
export function formatClock(totalSeconds) {
  const s = Math.max(0, Math.floor(totalSeconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

export const LANGUAGE_NAMES = {
  ja: "日本語",
  en: "英語 English",
  zh: "中国語 中文",
  ko: "韓国語 한국어",
  vi: "ベトナム語 Tiếng Việt",
  ne: "ネパール語 नेपाली",
  pt: "ポルトガル語 Português",
  es: "スペイン語 Español",
  tl: "タガログ語 Tagalog",
  th: "タイ語 ไทย",
  id: "インドネシア語 Bahasa Indonesia",
  my: "ミャンマー語 မြန်မာ",
};

export function languageName(code) {
  return LANGUAGE_NAMES[code] || LANGUAGE_NAMES[String(code).split("-")[0]] || code;
}

export const ERROR_TEXT = {
  bad_json: "送信したデータを読み取れませんでした。",
  bad_message: "送信した内容に誤りがありました。",
  too_large: "送信したデータが大きすぎます。",
  unsupported_protocol: "画面のバージョンが古いため接続できません。ページを再読み込みしてください。",
  auth_required: "認証が必要です。",
  auth_failed: "認証に失敗しました。もう一度ログインしてください。",
  token_expired: "認証の有効期限が切れました。再接続します。",
  forbidden: "このアカウントではこの操作はできません。",
  out_of_order: "この操作は現在できません（すでに状況が変わっています）。",
  not_in_session: "この通話はすでに終了しています。",
  unknown_department: "担当課が見つかりません。",
  duplicate_connection:
    "別の画面で同じアカウントが接続したため、この画面の接続を切りました。",
  rate_limited: "操作が多すぎます。少し待ってからお試しください。",
  internal: "サーバーでエラーが発生しました。",
};

/** Shows ErrorMessage texts in a box; Japanese explanation first, the server's text second. */
export class ErrorBox {
  constructor(element) {
    this.element = element;
    this.timer = null;
  }

  show(msg, { sticky = false } = {}) {
    const el = this.element;
    el.replaceChildren();
    const main = document.createElement("strong");
    main.textContent = ERROR_TEXT[msg.code] || "エラーが発生しました。";
    const detail = document.createElement("span");
    detail.className = "en";
    detail.lang = "en";
    detail.textContent = msg.message || "";
    el.append(main, " ", detail);
    el.hidden = false;
    el.dataset.code = msg.code || "";
    clearTimeout(this.timer);
    if (!sticky && !msg.fatal) this.timer = setTimeout(() => this.hide(), 15000);
  }

  hide() {
    clearTimeout(this.timer);
    this.element.hidden = true;
  }
}

/** The reconnect banner shared by both pages. */
export function renderConnectionBanner(banner, status, client, detail) {
  banner.replaceChildren();
  if (status === "connected") {
    banner.hidden = true;
    return;
  }
  banner.hidden = false;
  banner.dataset.status = status;
  if (status === "connecting" && client.attempt === 0) {
    banner.textContent = "サーバーに接続しています…";
  } else if (status === "stopped") {
    const text = document.createElement("span");
    text.textContent =
      detail && detail.code === "duplicate_connection"
        ? "別の画面で使用中のため、接続を停止しました。"
        : "サーバーとの接続を停止しました。";
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "この画面で再接続";
    button.addEventListener("click", () => client.start());
    banner.append(text, " ", button);
  } else {
    banner.textContent = "サーバーとの接続が切れました。再接続中…";
  }
}
