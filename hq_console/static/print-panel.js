// The print panel of the HQ console: print a 受付票 (receipt) or an A4 document at the
// booth of the current call, and follow each job's state.
//
// Jobs travel on the call's data channel (channel "peer_data" of protocol.schema.json):
// print_job (a receipt inline; an A4 PDF announced with its size and SHA-256, then sent in
// print_job_chunk pieces), print_job_command (reprint, cancel); the booth answers with
// print_job_status on every change and print_job_rejected when it cannot act. The booth's
// print spool keeps the jobs; this page shows the last state it saw, also after the call.
// console.js tells this module about the call with "ekichika:*" events on document and
// sends frames for it with window.ekichika.sendPeerData.

const CHUNK_BYTES = 36 * 1024; // shared.protocol.PRINT_CHUNK_BYTES
const MAX_BUFFERED = 1024 * 1024; // wait while the data channel holds more than this
const REPRINT_CONFIRM = "既に印刷されている可能性があります。再印刷しますか？";
const THANKS = "本日はご利用ありがとうございました";

const STATE_TEXT = {
  sending: "送信中",
  queued: "待機中",
  printing: "印刷中",
  printed: "印刷済み",
  failed: "失敗",
  cancelled: "取消",
  rejected: "送信できませんでした",
};

const $ = (id) => document.getElementById(id);

const panel = {
  call: null, // {sessionId, booth, site, department}
  lastSessionId: null,
  open: false, // the data channel of the call is open
  jobs: new Map(), // job id → {id, title, target, sentAt, state, reason, attempts, reprints}
};

// For tests and support staff: the jobs as this page last saw them.
window.ekichikaPrint = {
  get jobs() {
    return [...panel.jobs.values()].map((job) => ({ ...job }));
  },
};

function newJobId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function send(message) {
  return Boolean(window.ekichika && window.ekichika.sendPeerData(message));
}

function formatDateTime(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${date.getFullYear()}年${date.getMonth() + 1}月${date.getDate()}日 ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}`
  );
}

// ---------------------------------------------------------------------------------------
// Building the panel
// ---------------------------------------------------------------------------------------

function build() {
  const section = $("print-panel");
  section.innerHTML = `
    <div class="print-head">
      <h3>ブースで印刷 <span class="en" lang="en">Print at the booth</span></h3>
      <span id="print-note" class="print-note"></span>
    </div>
    <div class="print-actions">
      <button type="button" id="print-receipt" disabled>受付票を印刷 <span class="en" lang="en">Receipt</span></button>
      <button type="button" id="print-a4" disabled>A4 テスト文書を印刷 <span class="en" lang="en">A4 test page</span></button>
    </div>
    <table class="print-jobs">
      <thead><tr><th>文書</th><th>送信</th><th>状態</th><th></th></tr></thead>
      <tbody id="print-jobs-body"></tbody>
    </table>
    <p id="print-empty" class="print-empty">まだ印刷していません。</p>`;
  $("print-receipt").addEventListener("click", printReceipt);
  $("print-a4").addEventListener("click", () => {
    printA4().catch((err) => failSending(err));
  });
}

function render() {
  const live = panel.call !== null && panel.open;
  $("print-receipt").disabled = !live;
  $("print-a4").disabled = !live;
  const body = $("print-jobs-body");
  body.replaceChildren();
  for (const job of panel.jobs.values()) {
    const row = document.createElement("tr");
    row.dataset.jobId = job.id;
    row.dataset.state = job.state;
    const title = document.createElement("td");
    title.textContent = job.title;
    const sent = document.createElement("td");
    sent.textContent = job.sentAt.toLocaleTimeString("ja-JP", { hour: "2-digit", minute: "2-digit" });
    const state = document.createElement("td");
    state.className = "print-state";
    state.textContent = stateText(job);
    if (job.state === "queued" && job.reason) {
      const why = document.createElement("small");
      why.textContent = job.reason;
      state.append(document.createElement("br"), why);
    }
    const actions = document.createElement("td");
    actions.className = "print-job-actions";
    const reprint = document.createElement("button");
    reprint.type = "button";
    reprint.className = "print-reprint";
    reprint.textContent = "再印刷";
    reprint.disabled = !live || !["printed", "failed", "cancelled"].includes(job.state);
    reprint.addEventListener("click", () => command(job, "reprint"));
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "print-cancel";
    cancel.textContent = "取消";
    cancel.disabled = !live || !["queued", "failed"].includes(job.state);
    cancel.addEventListener("click", () => command(job, "cancel"));
    actions.append(reprint, cancel);
    row.append(title, sent, state, actions);
    body.append(row);
  }
  $("print-empty").hidden = panel.jobs.size > 0;
}

function stateText(job) {
  const base = STATE_TEXT[job.state] || job.state;
  if ((job.state === "failed" || job.state === "rejected") && job.reason) {
    return `${base}: ${job.reason}`;
  }
  if (job.reprints > 0 && job.state !== "failed") return `${base}（再印刷 ${job.reprints} 回）`;
  return base;
}

// ---------------------------------------------------------------------------------------
// Sending jobs
// ---------------------------------------------------------------------------------------

function addJob(title, target) {
  const job = {
    id: newJobId(),
    title,
    target,
    sentAt: new Date(),
    state: "sending",
    reason: null,
    attempts: 0,
    reprints: 0,
  };
  panel.jobs.set(job.id, job);
  render();
  return job;
}

function printReceipt() {
  const call = panel.call;
  if (!call) return;
  const now = new Date();
  const job = addJob("受付票", "receipt");
  const receipt = {
    title: "受付票",
    blocks: [
      { kind: "text", text: "受付票", size: 44, bold: true, align: "center" },
      { kind: "text", text: "駅近窓口 Ekichika", size: 24, bold: false, align: "center" },
      { kind: "rule", thickness: 2 },
      { kind: "text", text: `ブース: ${call.booth}`, size: 28, bold: false, align: "left" },
      { kind: "text", text: `拠点: ${call.site}`, size: 28, bold: false, align: "left" },
      { kind: "text", text: `担当課: ${call.department}`, size: 28, bold: false, align: "left" },
      { kind: "text", text: `日時: ${formatDateTime(now)}`, size: 28, bold: false, align: "left" },
      { kind: "space", dots: 16 },
      { kind: "qr", data: `ekichika:session:${call.sessionId}`, module: 6, align: "center" },
      { kind: "text", text: call.sessionId, size: 18, bold: false, align: "center" },
      { kind: "rule", thickness: 2 },
      { kind: "text", text: THANKS, size: 28, bold: true, align: "center" },
    ],
  };
  const ok = send({ type: "print_job", job_id: job.id, target: "receipt", title: "受付票", receipt });
  if (!ok) markRejected(job, "ブースとのデータ接続がありません");
}

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
  }
  return btoa(text);
}

async function drain() {
  // Keep the data channel's buffer small so that other messages are not held up.
  for (let i = 0; i < 600; i++) {
    const buffered = window.ekichika ? window.ekichika.peerBufferedAmount : 0;
    if (buffered < MAX_BUFFERED) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function printA4() {
  if (!panel.call) return;
  const job = addJob("A4 テスト文書", "a4");
  const response = await fetch("/api/documents/test-a4.pdf", { credentials: "same-origin" });
  if (!response.ok) throw new Error(`A4 文書を取得できませんでした (${response.status})`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const sha256 = await sha256Hex(bytes);
  const head = {
    type: "print_job",
    job_id: job.id,
    target: "a4",
    title: "A4 test document",
    size: bytes.length,
    sha256,
  };
  if (!send(head)) {
    markRejected(job, "ブースとのデータ接続がありません");
    return;
  }
  const count = Math.ceil(bytes.length / CHUNK_BYTES);
  for (let seq = 0; seq < count; seq++) {
    await drain();
    const piece = bytes.subarray(seq * CHUNK_BYTES, (seq + 1) * CHUNK_BYTES);
    const chunk = {
      type: "print_job_chunk",
      job_id: job.id,
      seq,
      data_b64: toBase64(piece),
      last: seq === count - 1,
    };
    if (!send(chunk)) {
      markRejected(job, "送信中にデータ接続が切れました");
      return;
    }
  }
}

function failSending(err) {
  const job = [...panel.jobs.values()].reverse().find((j) => j.state === "sending");
  if (job) markRejected(job, String(err.message || err));
}

function markRejected(job, reason) {
  job.state = "rejected";
  job.reason = reason;
  render();
}

function command(job, action) {
  if (action === "reprint" && !window.confirm(REPRINT_CONFIRM)) return;
  send({ type: "print_job_command", job_id: job.id, action });
}

// ---------------------------------------------------------------------------------------
// From the booth and from console.js
// ---------------------------------------------------------------------------------------

function onPeerData(msg) {
  const job = panel.jobs.get(msg.job_id);
  if (!job) return;
  if (msg.type === "print_job_status") {
    job.state = msg.state;
    job.reason = msg.reason;
    job.attempts = msg.attempts;
    job.reprints = msg.reprints;
  } else if (msg.type === "print_job_rejected") {
    if (job.state === "sending") {
      job.state = "rejected";
      job.reason = msg.reason;
    } else {
      $("print-note").textContent = `${job.title}: ${msg.reason}`;
    }
  }
  render();
}

document.addEventListener("ekichika:call", (event) => {
  const again = panel.lastSessionId === event.detail.sessionId; // e.g. rejoined after a reconnect
  panel.call = event.detail;
  panel.lastSessionId = event.detail.sessionId;
  panel.open = false;
  if (!again) panel.jobs.clear();
  $("print-note").textContent = "";
  $("print-panel").hidden = false;
  $("print-panel").dataset.call = "live";
  render();
});

document.addEventListener("ekichika:channel", (event) => {
  if (!panel.call || event.detail.sessionId !== panel.call.sessionId) return;
  panel.open = event.detail.open;
  render();
});

document.addEventListener("ekichika:peer-data", (event) => {
  if (!panel.call || event.detail.sessionId !== panel.call.sessionId) return;
  const msg = event.detail.msg;
  if (msg.type === "print_job_status" || msg.type === "print_job_rejected") onPeerData(msg);
});

document.addEventListener("ekichika:call-ended", (event) => {
  if (!panel.call || event.detail.sessionId !== panel.call.sessionId) return;
  panel.call = null;
  panel.open = false;
  $("print-panel").dataset.call = "ended";
  if (panel.jobs.size === 0) {
    $("print-panel").hidden = true;
  } else {
    $("print-note").textContent = "通話は終了しました。最後に受け取った状態を表示しています。";
  }
  render();
});

build();
