// Kiosk page. It draws the last "screen" snapshot from the booth agent and reports
// touches; it keeps no state of its own. Messages: shared/kiosk_protocol.py
// (channels kiosk_page_to_agent / kiosk_agent_to_page of protocol.schema.json).
"use strict";

const TEXT = {
  ja: {
    title: "遠隔窓口",
    department_title: "ご用件の窓口を選んでください",
    department_lead: "市役所の職員が、画面でご案内します。",
    back: "最初に戻る",
    waiting_title: "職員におつなぎしています",
    waiting_note: "順番が来ると、自動で画面が切り替わります。",
    registering: "受付しています…",
    next: "次にご案内します",
    ahead: (n) => `あと ${n} 人`,
    position: (p) => `あなたは ${p} 番目です`,
    wait_about: (m) => `待ち時間 約 ${m} 分`,
    wait_unknown: "待ち時間は現在わかりません",
    cancel_waiting: "受付をやめる",
    no_staff_title: "ただいま対応できる職員がいません。",
    no_staff_lead: "このままお待ちいただくか、最初の画面に戻ってください。",
    keep_waiting: "このまま待つ",
    connecting_title: "職員とつないでいます…",
    reconnecting_title: "接続を回復しています…",
    reconnecting_lead: "通信が一時的に途切れました。通話はそのまま続きます。しばらくお待ちください。",
    staff: (name) => `担当：${name}`,
    staff_label: "担当職員",
    elapsed_label: "通話時間",
    hang_up: "終了",
    still_take: "書類を撮影",
    still_busy: "撮影中…",
    lost_title: "接続が切れました。再接続しています…",
    lost_kept: "受付はそのまま保たれています。このままお待ちください。",
    lost_plain: "しばらくお待ちください。",
    ended_title: "ご利用ありがとうございました",
    countdown: (s) => `${s} 秒後に最初の画面に戻ります`,
    to_start: "最初の画面に戻る",
    card_put_title: "マイナンバーカードを置いてください",
    card_put_lead: "カードリーダーの上に、顔写真のある面を上にして置いてください。",
    card_stop: "やめる",
    pin_title: "暗証番号（数字4桁）を入力してください",
    pin_tries: (n) => `残り ${n} 回`,
    pin_last_try: "あと1回間違えると、カードがロックされます。",
    pin_delete: "削除",
    pin_confirm: "確定",
    reading_title: "カードを読み取っています",
    reading_lead: "カードを動かさないでください。",
    done_title: "読み取りが終わりました",
    done_lead: "カードをお取りください。",
    close: "閉じる",
    failed_wrong_pin: "暗証番号が違います。",
    failed_wrong_pin_lead: (n) => `残り ${n} 回です。職員の案内に従ってください。`,
    failed_locked: "暗証番号がロックされています",
    failed_locked_lead:
      "このカードは暗証番号を3回間違えたため使えません。お住まいの市区町村の窓口で暗証番号の再設定が必要です。",
    failed_removed: "カードが取り外されました。",
    failed_removed_lead: "もう一度置いてください。職員が読み取りをやり直します。",
    failed_no_reader: "カードリーダーが使えません",
    failed_no_reader_lead: "職員にお知らせください。",
    failed_error: "カードを読み取れませんでした",
    failed_error_lead: "カードを置き直してください。職員が読み取りをやり直します。",
  },
  en: {
    title: "Remote Counter",
    department_title: "Which counter do you need?",
    department_lead: "A city hall staff member will help you on the screen.",
    back: "Back to start",
    waiting_title: "Connecting you to a staff member",
    waiting_note: "The screen changes by itself when it is your turn.",
    registering: "Registering your request…",
    next: "You are next",
    ahead: (n) => (n === 1 ? "1 person ahead" : `${n} people ahead`),
    position: (p) => `You are number ${p} in line`,
    wait_about: (m) => `Waiting time: about ${m} min`,
    wait_unknown: "The waiting time is not known right now",
    cancel_waiting: "Stop waiting",
    no_staff_title: "No staff member is available right now.",
    no_staff_lead: "You can keep waiting, or go back to the start.",
    keep_waiting: "Keep waiting",
    connecting_title: "Connecting to the staff member…",
    reconnecting_title: "Restoring the connection…",
    reconnecting_lead: "The connection dropped for a moment. Your call continues; please wait.",
    staff: (name) => `Staff: ${name}`,
    staff_label: "Staff member",
    elapsed_label: "Call time",
    hang_up: "End call",
    still_take: "Photograph document",
    still_busy: "Taking photo…",
    lost_title: "The connection was lost. Reconnecting…",
    lost_kept: "Your request is kept. Please wait a moment.",
    lost_plain: "Please wait a moment.",
    ended_title: "Thank you for using the remote counter",
    countdown: (s) => `Back to the start in ${s} seconds`,
    to_start: "Back to start",
    card_put_title: "Please place your My Number card",
    card_put_lead: "Put the card on the card reader, photo side up.",
    card_stop: "Stop",
    pin_title: "Enter your PIN (4 digits)",
    pin_tries: (n) => (n === 1 ? "1 try left" : `${n} tries left`),
    pin_last_try: "One more wrong PIN will lock the card.",
    pin_delete: "Delete",
    pin_confirm: "OK",
    reading_title: "Reading the card",
    reading_lead: "Please do not move the card.",
    done_title: "The card has been read",
    done_lead: "Please take your card.",
    close: "Close",
    failed_wrong_pin: "The PIN is not correct.",
    failed_wrong_pin_lead: (n) =>
      `${n === 1 ? "1 try" : `${n} tries`} left. Please follow the staff member's guidance.`,
    failed_locked: "The PIN is locked",
    failed_locked_lead:
      "The card cannot be used after 3 wrong PINs. Please have the PIN reset at the counter of your city or ward office.",
    failed_removed: "The card was removed.",
    failed_removed_lead: "Please place it again. The staff member will read it again.",
    failed_no_reader: "The card reader is not available",
    failed_no_reader_lead: "Please tell the staff member.",
    failed_error: "The card could not be read",
    failed_error_lead: "Please place the card again. The staff member will read it again.",
  },
};

// Short explanations of the departments the city offers (by department code).
const DEPARTMENT_HELP = {
  shimin: {
    ja: "住民票・印鑑登録・戸籍・引っ越しの届出",
    en: "Residence records, seal registration, family register, moving",
  },
  hoken: {
    ja: "国民健康保険・国民年金・後期高齢者医療",
    en: "Health insurance, national pension, medical care for 75+",
  },
  kosodate: {
    ja: "児童手当・保育園・子育ての相談",
    en: "Child allowance, nursery schools, parenting advice",
  },
  kazei: {
    ja: "住民税・課税証明書・軽自動車税",
    en: "Resident tax, tax certificates, light vehicle tax",
  },
};

const state = {
  pin: "", // the digits typed so far: only here, never in a snapshot; cleared after 確定
  pinAttempt: -1,
  socket: null,
  snapshot: null,
  receivedAt: 0,
  retryTimer: null,
  offlineTimer: null,
};

const $ = (id) => document.getElementById(id);

function text(key, ...args) {
  const lang = state.snapshot ? state.snapshot.language : "ja";
  const entry = TEXT[lang][key] ?? TEXT.ja[key];
  return typeof entry === "function" ? entry(...args) : entry;
}

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(message));
  }
}

function connect() {
  const socket = new WebSocket(`ws://${location.host}/ws`);
  state.socket = socket;
  socket.addEventListener("open", () => {
    clearTimeout(state.offlineTimer);
    $("offline").classList.remove("shown");
  });
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "screen") {
      render(message);
    } else if (message.type === "error") {
      console.warn("kiosk agent:", message.message);
    }
  });
  socket.addEventListener("close", () => {
    state.socket = null;
    clearTimeout(state.offlineTimer);
    state.offlineTimer = setTimeout(() => $("offline").classList.add("shown"), 1500);
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(connect, 1000);
  });
}

function formatDuration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${r}` : `${m}:${r}`;
}

function departmentName(snapshot, code) {
  const d = snapshot.departments.find((x) => x.code === code);
  if (!d) return "";
  return snapshot.language === "ja" ? d.name_ja : d.name_en;
}

function renderDepartments(snapshot) {
  const box = $("departments");
  box.replaceChildren();
  for (const d of snapshot.departments) {
    const button = document.createElement("button");
    button.className = "big department";
    button.dataset.action = "request_help";
    button.dataset.department = d.code;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = snapshot.language === "ja" ? d.name_ja : d.name_en;
    button.append(name);
    const help = DEPARTMENT_HELP[d.code];
    if (help) {
      const explain = document.createElement("span");
      explain.className = "explain";
      explain.textContent = help[snapshot.language];
      button.append(explain);
    }
    box.append(button);
  }
}

function renderQueue(snapshot) {
  const position = snapshot.queue_position;
  if (position === null) {
    $("queue-main").textContent = text("registering");
    $("queue-sub").textContent = "";
  } else if (position === 1) {
    $("queue-main").textContent = text("next");
    $("queue-sub").textContent = text("position", position);
  } else {
    $("queue-main").textContent = text("ahead", position - 1);
    $("queue-sub").textContent = text("position", position);
  }
  const wait = snapshot.estimated_wait_s;
  $("queue-wait").textContent =
    position === null ? "" : wait === null ? text("wait_unknown") : text("wait_about", Math.max(1, Math.ceil(wait / 60)));
  $("waiting-department").textContent = departmentName(snapshot, snapshot.department);
}

function setVideo(on) {
  for (const img of [$("staff-video"), $("self-video")]) {
    if (on && !img.getAttribute("src")) {
      img.src = `${img.dataset.src}?t=${Date.now()}`;
    } else if (!on && img.getAttribute("src")) {
      img.removeAttribute("src");
    }
  }
}

function render(snapshot) {
  state.snapshot = snapshot;
  state.receivedAt = performance.now();
  document.documentElement.lang = snapshot.language;
  document.body.dataset.screen = snapshot.screen;
  for (const el of document.querySelectorAll("[data-text]")) {
    el.textContent = text(el.dataset.text);
  }
  $("booth-name").textContent = snapshot.booth_name;
  for (const section of document.querySelectorAll(".screen")) {
    section.classList.toggle("active", section.dataset.screen === snapshot.screen);
  }
  switch (snapshot.screen) {
    case "department":
      renderDepartments(snapshot);
      break;
    case "waiting":
      renderQueue(snapshot);
      break;
    case "connecting":
      $("connecting-staff").textContent = snapshot.staff_name ? text("staff", snapshot.staff_name) : "";
      break;
    case "in_call":
      $("call-staff").textContent = snapshot.staff_name ?? "";
      renderStill(snapshot.still_busy);
      break;
    case "connection_lost":
      $("lost-lead").textContent = snapshot.request_kept ? text("lost_kept") : text("lost_plain");
      break;
    case "ended":
      $("ended-error").textContent = snapshot.error ?? "";
      break;
  }
  renderCard(snapshot.screen === "in_call" ? snapshot.card : null);
  document.dispatchEvent(new CustomEvent("kiosk:screen", { detail: snapshot })); // kiosk-forms.js
  setVideo(snapshot.screen === "in_call");
  tick();
}

// The My Number card read, drawn beside the staff video.
function renderCard(card) {
  const stage = card ? card.stage : null;
  if (stage) document.body.dataset.card = stage;
  else delete document.body.dataset.card;
  for (const el of document.querySelectorAll(".card-stage")) {
    el.classList.toggle("active", el.dataset.stage === stage);
  }
  if (stage !== "waiting_for_pin" || card.attempt !== state.pinAttempt) {
    state.pin = "";
  }
  state.pinAttempt = stage === "waiting_for_pin" ? card.attempt : -1;
  if (stage === "waiting_for_pin") {
    const tries = card.remaining_tries;
    $("pin-tries").textContent = tries === null ? "" : text("pin_tries", tries);
    $("pin-warning").textContent = tries === 1 ? text("pin_last_try") : "";
    renderPin();
  } else if (stage === "failed") {
    const failure = card.failure || "error";
    const key = TEXT.ja[`failed_${failure}`] ? `failed_${failure}` : "failed_error";
    $("card-failed-title").textContent = text(key);
    $("card-failed-lead").textContent = text(`${key}_lead`, card.remaining_tries ?? 0);
  }
}

function renderPin() {
  const cells = $("pin-display").children;
  for (let i = 0; i < cells.length; i++) {
    cells[i].textContent = i < state.pin.length ? "●" : "";
    cells[i].classList.toggle("filled", i < state.pin.length);
  }
  $("pin-confirm").disabled = state.pin.length !== 4;
  $("pin-delete").disabled = state.pin.length === 0;
}

// 書類を撮影: the agent reports still_busy while a still is being taken or sent.
function renderStill(busy) {
  const button = $("still-take");
  button.disabled = Boolean(busy);
  button.textContent = text(busy ? "still_busy" : "still_take");
  if (busy) document.body.dataset.still = "busy";
  else delete document.body.dataset.still;
}

function pinKey(target) {
  if (target.dataset.digit !== undefined) {
    if (state.pin.length < 4) state.pin += target.dataset.digit;
  } else if (target.id === "pin-delete") {
    state.pin = state.pin.slice(0, -1);
  } else if (target.id === "pin-confirm" && state.pin.length === 4) {
    send({ type: "pin_entered", pin: state.pin });
    state.pin = "";
  }
  renderPin();
}

// Call timer and the ended-screen countdown run locally between snapshots.
function tick() {
  const snapshot = state.snapshot;
  if (!snapshot) return;
  const since = (performance.now() - state.receivedAt) / 1000;
  if (snapshot.screen === "in_call") {
    $("call-timer").textContent = formatDuration((snapshot.call_elapsed_s ?? 0) + since);
  } else if (snapshot.screen === "ended" && snapshot.return_to_start_s !== null) {
    const left = Math.max(0, Math.ceil(snapshot.return_to_start_s - since));
    $("ended-countdown").textContent = text("countdown", left);
  }
}

document.addEventListener("click", (event) => {
  const key = event.target.closest(".pin-key");
  if (key) {
    pinKey(key);
    return;
  }
  const target = event.target.closest("[data-action]");
  if (!target) return;
  const message = { type: target.dataset.action };
  if (message.type === "choose_language") message.language = target.dataset.language;
  if (message.type === "request_help") message.department = target.dataset.department;
  send(message);
});
document.addEventListener("contextmenu", (event) => event.preventDefault());

// For the form screen (kiosk-forms.js): send a message, the current language.
window.kiosk = { send, language: () => (state.snapshot ? state.snapshot.language : "ja") };

setInterval(tick, 500);
connect();
