// The issuance panel of the HQ console: 本人確認 (the card's 4 facts against the resident
// register), choose a certificate and its options, see the fee, 発行 → printed at the booth,
// 再印刷 (with confirmation), 失効; and the 必要手続き一覧 printed on the booth's receipt
// printer before the call ends.
//
// The console server issues (POST /api/sessions/{id}/issuance/documents) and answers with
// the print_job to send: it references the document by a one-time token (fetch) instead of
// carrying it; the booth fetches, checks and prints it, and answers with print_job_status
// on the call's data channel (the same events print-panel.js follows). The card's facts
// stay in this page's memory for the call only.

const REPRINT_QUESTION =
  "この証明書はすでに印刷されている可能性があります。もう1部印刷すると、再印刷として記録されます。再印刷しますか？";
const NO_CHANNEL = "ブースとのデータ接続がありません";

const STATE_TEXT = {
  sending: "送信中",
  queued: "印刷待ち",
  printing: "印刷中",
  printed: "印刷済み",
  failed: "失敗",
  cancelled: "取消",
  rejected: "送信できませんでした",
};

// What staff do next, per state (shown under the state).
const NEXT_STEP = {
  sending: "ブースが文書を受け取っています。",
  queued: "プリンターの準備ができ次第、印刷されます。",
  printing: "印刷が終わるまでお待ちください。",
  printed: "住民の方に、ブースのプリンターから証明書を受け取るようお伝えください。",
  failed_before:
    "印刷されていません。「再送信」を押してください。繰り返し失敗する場合はシステム管理者に連絡してください。",
  failed:
    "用紙に出ていないか住民の方に確認し、出ていなければ「再印刷」を押してください。プリンターの故障は支所の職員に連絡してください。",
  cancelled: "印刷は取り消されました。",
  rejected: "ブースとの接続を確認し、「再送信」を押してください。",
};

// 必要手続き一覧: a starting checklist per department (staff edit it during the call).
const CHECKLISTS = {
  市民課: [
    ["転入届の後、マイナンバーカードの住所変更", "市民課（本庁舎1階）", "マイナンバーカード、暗証番号"],
    ["国民健康保険の加入・住所変更", "保険年金課（本庁舎1階）", "本人確認書類"],
    ["児童手当の手続き（お子さんがいる場合）", "子育て支援課（本庁舎2階）", "振込先口座がわかるもの"],
  ],
  保険年金課: [
    ["国民年金の種別変更", "保険年金課（本庁舎1階）", "基礎年金番号がわかるもの"],
    ["高額療養費の申請", "保険年金課（本庁舎1階）", "領収書、振込先口座がわかるもの"],
  ],
  子育て支援課: [
    ["児童手当の認定請求", "子育て支援課（本庁舎2階）", "振込先口座がわかるもの、健康保険証"],
    ["子ども医療証の申請", "子育て支援課（本庁舎2階）", "お子さんの健康保険証"],
  ],
  課税課: [
    ["住民税の申告", "課税課（本庁舎2階）", "源泉徴収票、控除の証明書"],
  ],
};
const DEFAULT_CHECKLIST = [["ご案内した手続き", "本庁舎 総合案内", "本人確認書類"]];

const $ = (id) => document.getElementById(id);

const panel = {
  call: null, // {sessionId, booth, site, department}
  open: false,
  card: null, // the last card_basic_info of this call (personal data: memory only)
  match: null, // {result, members, tax_years, count}
  catalog: null,
  documents: new Map(), // document id → {document, job: {state, reason, attempts, reprints, fetchFailed}}
  checklist: [], // [{done, what, where, bring}]
  busy: false,
};

// For tests and support staff: the documents and their print states as this page saw them.
window.ekichikaIssuance = {
  get documents() {
    return [...panel.documents.values()].map((d) => ({ ...d.document, print: { ...d.job } }));
  },
  get match() {
    return panel.match ? panel.match.result : null;
  },
};

function send(message) {
  return Boolean(window.ekichika && window.ekichika.sendPeerData(message));
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = {};
  try {
    data = await response.json();
  } catch {
    data = {};
  }
  if (!response.ok) {
    throw new Error(data.message || `エラーが発生しました (${response.status})`);
  }
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null) node.append(child);
  return node;
}

function yen(n) {
  return `${Number(n).toLocaleString("ja-JP")}円`;
}

function birthText(iso) {
  const [y, m, d] = iso.split("-").map(Number);
  return `${y}年${m}月${d}日`;
}

function reiwaFiscal(year) {
  return year >= 2019 ? `令和${year - 2018 === 1 ? "元" : year - 2018}年度` : `${year}年度`;
}

// ---------------------------------------------------------------------------------------
// Building the panel
// ---------------------------------------------------------------------------------------

function build() {
  const section = $("issuance-panel");
  section.innerHTML = `
    <div class="iss-head">
      <h3>証明書の発行 <span class="en" lang="en">Certificates</span></h3>
      <span id="iss-note" class="iss-note" role="status"></span>
    </div>
    <div class="iss-grid">
      <section class="iss-step" aria-labelledby="iss-identify-title">
        <h4 id="iss-identify-title">1. 本人確認 <span class="en" lang="en">Identify</span></h4>
        <p id="iss-card" class="iss-card">カードの情報がまだありません。「カード読み取り」で読み取ってください。</p>
        <button type="button" id="iss-match" disabled>住民記録と照合 <span class="en" lang="en">Match</span></button>
        <div id="iss-verdict" class="iss-verdict" hidden></div>
      </section>
      <section class="iss-step" aria-labelledby="iss-choose-title">
        <h4 id="iss-choose-title">2. 証明書と内容 <span class="en" lang="en">Certificate</span></h4>
        <fieldset id="iss-kinds" class="iss-kinds" disabled><legend>種類</legend></fieldset>
        <div id="iss-options" class="iss-options"></div>
        <label class="iss-copies">通数 <input type="number" id="iss-copies" min="1" max="10" value="1" disabled> 通</label>
      </section>
      <section class="iss-step" aria-labelledby="iss-fee-title">
        <h4 id="iss-fee-title">3. 手数料と発行 <span class="en" lang="en">Fee</span></h4>
        <p class="iss-fee"><span id="iss-fee">—</span></p>
        <p class="iss-pay">お支払いは窓口で <span class="en" lang="en">Paid at the counter</span></p>
        <button type="button" id="iss-issue" class="primary" disabled>発行してブースで印刷 <span class="en" lang="en">Issue</span></button>
      </section>
    </div>
    <table class="iss-docs" id="iss-docs" hidden>
      <thead><tr><th>証明書</th><th>文書番号</th><th>通数</th><th>状態</th><th></th></tr></thead>
      <tbody id="iss-docs-body"></tbody>
    </table>
    <details class="iss-checklist" id="iss-checklist-box">
      <summary>必要手続き一覧（レシートで渡す） <span class="en" lang="en">Next procedures</span></summary>
      <p class="iss-help">通話の最後に、まだ必要な手続き・窓口・持ち物をブースのレシートプリンターで印刷してお渡しします。内容は編集できます。</p>
      <table class="iss-check-table">
        <thead><tr><th>含める</th><th>手続き</th><th>窓口</th><th>持ち物</th><th></th></tr></thead>
        <tbody id="iss-check-body"></tbody>
      </table>
      <div class="iss-check-actions">
        <button type="button" id="iss-check-add">行を追加</button>
        <button type="button" id="iss-check-print" disabled>必要手続き一覧を印刷 <span class="en" lang="en">Print</span></button>
        <span id="iss-check-state" class="iss-check-state"></span>
      </div>
    </details>
    <dialog id="iss-dialog" class="iss-dialog">
      <form method="dialog">
        <h4 id="iss-dialog-title">再印刷の確認</h4>
        <p id="iss-dialog-text"></p>
        <label id="iss-dialog-reason-label" hidden>理由 <input id="iss-dialog-reason" maxlength="200"></label>
        <div class="iss-dialog-actions">
          <button value="cancel" id="iss-dialog-cancel">やめる</button>
          <button value="ok" id="iss-dialog-ok" class="primary">再印刷する</button>
        </div>
      </form>
    </dialog>`;
  $("iss-match").addEventListener("click", () => matchResident().catch(showError));
  $("iss-issue").addEventListener("click", () => issue().catch(showError));
  $("iss-copies").addEventListener("input", renderFee);
  $("iss-check-add").addEventListener("click", () => {
    panel.checklist.push({ done: true, what: "", where: "", bring: "" });
    renderChecklist();
  });
  $("iss-check-print").addEventListener("click", printChecklist);
}

function showError(err) {
  $("iss-note").textContent = String(err.message || err);
  $("iss-note").dataset.kind = "error";
}

function note(text) {
  $("iss-note").textContent = text;
  delete $("iss-note").dataset.kind;
}

function live() {
  return panel.call !== null && panel.open;
}

// ---------------------------------------------------------------------------------------
// 1. 本人確認
// ---------------------------------------------------------------------------------------

function renderCard() {
  const card = panel.card;
  $("iss-card").textContent = card
    ? `カードの情報: ${card.name}（${birthText(card.birth_date)}生）`
    : "カードの情報がまだありません。「カード読み取り」で読み取ってください。";
  $("iss-match").disabled = !card || !panel.call || panel.busy;
}

async function matchResident() {
  if (!panel.card || !panel.call) return;
  panel.busy = true;
  renderCard();
  try {
    const { name, address, birth_date, sex } = panel.card;
    panel.match = await api("POST", `/api/sessions/${panel.call.sessionId}/issuance/match`, {
      name,
      address,
      birth_date,
      sex,
    });
    note("");
  } finally {
    panel.busy = false;
    renderCard();
    renderVerdict();
    renderChoice();
  }
}

function renderVerdict() {
  const box = $("iss-verdict");
  const match = panel.match;
  box.hidden = !match;
  if (!match) return;
  box.dataset.result = match.result;
  box.replaceChildren();
  if (match.result === "match") {
    box.append(
      el("strong", { class: "iss-badge", text: "一致" }),
      el("span", { text: " 住民記録と一致しました。 " }),
      el("span", { class: "en", lang: "en", text: "Matched" }),
    );
  } else if (match.result === "several") {
    box.append(
      el("strong", { class: "iss-badge", text: "要確認" }),
      el("span", {
        text: ` 同じ4情報の方が${match.count}名います。カードだけでは特定できないため、他の方法で本人確認してください。`,
      }),
    );
  } else {
    box.append(
      el("strong", { class: "iss-badge", text: "不一致" }),
      el("span", {
        text: " 住民記録に一致する方がいません。転出・記載事項の変更がないか確認してください。証明書は発行できません。",
      }),
    );
  }
}

// ---------------------------------------------------------------------------------------
// 2. 証明書と内容
// ---------------------------------------------------------------------------------------

async function loadCatalog() {
  if (panel.catalog) return;
  try {
    panel.catalog = await api("GET", "/api/issuance/catalog");
  } catch (err) {
    showError(err);
    return;
  }
  const kinds = $("iss-kinds");
  for (const cert of panel.catalog.certificates) {
    const input = el("input", { type: "radio", name: "iss-kind", value: cert.kind });
    input.addEventListener("change", renderChoice);
    kinds.append(el("label", { class: "iss-kind" }, input, ` ${cert.title}`));
  }
  $("iss-copies").max = String(panel.catalog.max_copies);
  if (!panel.catalog.can_issue) {
    note("署名鍵が設定されていないため、このコンソールでは証明書を発行できません。");
  }
  renderChoice();
}

function chosenKind() {
  const checked = document.querySelector('input[name="iss-kind"]:checked');
  return checked ? checked.value : null;
}

function matched() {
  return panel.match && panel.match.result === "match";
}

function renderChoice() {
  const ok = matched() && live();
  $("iss-kinds").disabled = !ok;
  $("iss-copies").disabled = !ok;
  const options = $("iss-options");
  const kind = chosenKind();
  if (options.dataset.kind !== (kind || "") || options.dataset.match !== String(Boolean(ok))) {
    options.dataset.kind = kind || "";
    options.dataset.match = String(Boolean(ok));
    options.replaceChildren();
    if (ok && kind === "resident_record") buildResidentOptions(options);
    if (ok && kind === "tax_income") buildTaxOptions(options);
  }
  renderFee();
}

function buildResidentOptions(box) {
  const whole = el("input", { type: "radio", name: "iss-scope", value: "household", checked: true });
  const some = el("input", { type: "radio", name: "iss-scope", value: "members" });
  const members = el("div", { class: "iss-members", id: "iss-members", hidden: true });
  for (const m of panel.match.members) {
    const box2 = el("input", { type: "checkbox", value: m.id, checked: m.self });
    box2.addEventListener("change", renderFee);
    members.append(
      el(
        "label",
        { class: "iss-member" },
        box2,
        ` ${m.name}（${m.relationship}）`,
        m.self ? el("span", { class: "iss-self", text: "ご本人" }) : null,
      ),
    );
  }
  const toggle = () => {
    members.hidden = !some.checked;
    renderFee();
  };
  whole.addEventListener("change", toggle);
  some.addEventListener("change", toggle);
  box.append(
    el(
      "fieldset",
      { class: "iss-scope" },
      el("legend", { text: "世帯" }),
      el("label", {}, whole, " 世帯全員"),
      el("label", {}, some, " 世帯の一部"),
      members,
    ),
    el(
      "fieldset",
      { class: "iss-flags" },
      el("legend", { text: "記載事項" }),
      el("label", {}, el("input", { type: "checkbox", id: "iss-relationship" }), " 世帯主・続柄を記載"),
      el("label", {}, el("input", { type: "checkbox", id: "iss-honseki" }), " 本籍・筆頭者を記載"),
    ),
  );
}

function buildTaxOptions(box) {
  const select = el("select", { id: "iss-year" });
  for (const year of panel.match.tax_years) {
    select.append(el("option", { value: String(year), text: `${reiwaFiscal(year)}（${year - 1}年中の所得）` }));
  }
  if (!panel.match.tax_years.length) {
    box.append(el("p", { class: "iss-help", text: "発行できる年度がありません。" }));
    return;
  }
  select.addEventListener("change", renderFee);
  box.append(el("label", { class: "iss-year" }, "年度 ", select));
}

function currentRequest() {
  const kind = chosenKind();
  if (!kind || !matched()) return null;
  const copies = Math.max(1, Math.min(10, Number($("iss-copies").value) || 1));
  if (kind === "resident_record") {
    const some = document.querySelector('input[name="iss-scope"][value="members"]');
    const request = {
      kind,
      copies,
      scope: some && some.checked ? "members" : "household",
      show_relationship: Boolean($("iss-relationship") && $("iss-relationship").checked),
      show_honseki: Boolean($("iss-honseki") && $("iss-honseki").checked),
    };
    if (request.scope === "members") {
      request.member_ids = [...document.querySelectorAll("#iss-members input:checked")].map((i) => i.value);
      if (!request.member_ids.length) return null;
    }
    return request;
  }
  if (kind === "tax_income") {
    const year = $("iss-year");
    if (!year) return null;
    return { kind, copies, fiscal_year: Number(year.value) };
  }
  return { kind, copies };
}

function renderFee() {
  const request = currentRequest();
  const cert = request && panel.catalog ? panel.catalog.certificates.find((c) => c.kind === request.kind) : null;
  if (!request || !cert || cert.fee_per_copy_yen == null) {
    $("iss-fee").textContent = "—";
  } else {
    const total = cert.fee_per_copy_yen * request.copies;
    $("iss-fee").textContent = `手数料 ${yen(cert.fee_per_copy_yen)} × ${request.copies}通 ＝ ${yen(total)}`;
  }
  $("iss-issue").disabled =
    !request || !live() || panel.busy || !(panel.catalog && panel.catalog.can_issue);
}

// ---------------------------------------------------------------------------------------
// 3. 発行 and the print job
// ---------------------------------------------------------------------------------------

async function issue() {
  const request = currentRequest();
  if (!request || !panel.call) return;
  panel.busy = true;
  renderFee();
  try {
    const result = await api("POST", `/api/sessions/${panel.call.sessionId}/issuance/documents`, request);
    const entry = {
      document: result.document,
      job: { state: "sending", reason: null, attempts: 0, reprints: 0, fetchFailed: false },
    };
    panel.documents.set(result.document.id, entry);
    note(`${result.document.title}（${result.document.document_number}）を発行しました。`);
    sendJob(entry, result.print_job);
  } finally {
    panel.busy = false;
    renderFee();
    renderDocuments();
  }
}

function sendJob(entry, message) {
  entry.job.state = "sending";
  entry.job.reason = null;
  entry.job.fetchFailed = false;
  if (!send(message)) {
    entry.job.state = "rejected";
    entry.job.reason = NO_CHANNEL;
  }
  renderDocuments();
}

async function resend(entry) {
  const result = await api("POST", `/api/issuance/documents/${entry.document.id}/print`, {});
  sendJob(entry, result.print_job);
}

function ask(title, text, okText, withReason) {
  const dialog = $("iss-dialog");
  $("iss-dialog-title").textContent = title;
  $("iss-dialog-text").textContent = text;
  $("iss-dialog-ok").textContent = okText;
  $("iss-dialog-reason-label").hidden = !withReason;
  $("iss-dialog-reason").value = "";
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const reason = $("iss-dialog-reason").value.trim();
        resolve(dialog.returnValue === "ok" && (!withReason || reason) ? reason || true : null);
      },
      { once: true },
    );
    dialog.showModal();
  });
}

async function reprint(entry) {
  const answer = await ask("再印刷の確認", REPRINT_QUESTION, "再印刷する", false);
  if (!answer) return;
  const result = await api("POST", `/api/issuance/documents/${entry.document.id}/reprint`, { confirm: true });
  entry.document = result.document;
  entry.job.state = "sending";
  entry.job.reason = null;
  if (!send(result.print_job_command)) {
    entry.job.state = "rejected";
    entry.job.reason = NO_CHANNEL;
  }
  renderDocuments();
}

async function revoke(entry) {
  const reason = await ask(
    "失効の確認",
    `${entry.document.title}（${entry.document.document_number}）を失効させます。確認ページで「失効」と表示されるようになります。`,
    "失効させる",
    true,
  );
  if (!reason) return;
  const result = await api("POST", `/api/issuance/documents/${entry.document.id}/revoke`, { reason });
  entry.document = result.document;
  note(`${entry.document.document_number} を失効させました。`);
  renderDocuments();
}

function stepText(job) {
  if (job.state === "failed" && job.fetchFailed) return NEXT_STEP.failed_before;
  return NEXT_STEP[job.state] || "";
}

function renderDocuments() {
  const body = $("iss-docs-body");
  body.replaceChildren();
  for (const entry of panel.documents.values()) {
    const { document: doc, job } = entry;
    const revoked = doc.status === "revoked";
    const stateCell = el("td", { class: "iss-state" });
    stateCell.append(
      el("strong", {
        text: revoked ? "失効" : STATE_TEXT[job.state] || job.state,
      }),
    );
    if (!revoked && job.reprints > 0) stateCell.append(el("span", { text: `（再印刷 ${job.reprints} 回）` }));
    if (job.reason && !revoked) stateCell.append(el("small", { class: "iss-reason", text: job.reason }));
    if (!revoked) stateCell.append(el("small", { class: "iss-step-text", text: stepText(job) }));
    const actions = el("td", { class: "iss-actions" });
    const canResend = live() && !revoked && (job.state === "rejected" || (job.state === "failed" && job.fetchFailed));
    const canReprint =
      live() && !revoked && !job.fetchFailed && ["printed", "failed", "cancelled"].includes(job.state);
    const resendButton = el("button", { type: "button", class: "iss-resend", text: "再送信", disabled: !canResend });
    resendButton.addEventListener("click", () => resend(entry).catch(showError));
    const reprintButton = el("button", { type: "button", class: "iss-reprint", text: "再印刷", disabled: !canReprint });
    reprintButton.addEventListener("click", () => reprint(entry).catch(showError));
    const revokeButton = el("button", { type: "button", class: "iss-revoke", text: "失効", disabled: revoked });
    revokeButton.addEventListener("click", () => revoke(entry).catch(showError));
    actions.append(resendButton, reprintButton, revokeButton);
    const row = el(
      "tr",
      { "data-document-id": doc.id, "data-state": revoked ? "revoked" : job.state },
      el("td", { text: doc.title }),
      el("td", { class: "iss-number", text: doc.document_number }),
      el("td", { text: `${doc.copies}通` }),
      stateCell,
      actions,
    );
    body.append(row);
  }
  $("iss-docs").hidden = panel.documents.size === 0;
}

function onPrintMessage(msg) {
  const entry = panel.documents.get(msg.job_id);
  if (!entry) return;
  if (msg.type === "print_job_status") {
    entry.job.state = msg.state;
    entry.job.reason = msg.reason;
    entry.job.attempts = msg.attempts;
    entry.job.reprints = msg.reprints;
    // failed with no attempt: the document never reached the printer (fetch or check).
    entry.job.fetchFailed = msg.state === "failed" && msg.attempts === 0;
  } else if (msg.type === "print_job_rejected") {
    if (entry.job.state === "sending") {
      entry.job.state = "rejected";
      entry.job.reason = msg.reason;
    } else {
      note(`${entry.document.document_number}: ${msg.reason}`);
    }
  }
  renderDocuments();
}

// ---------------------------------------------------------------------------------------
// 必要手続き一覧 (receipt)
// ---------------------------------------------------------------------------------------

function startChecklist() {
  const base = (panel.call && CHECKLISTS[panel.call.department]) || DEFAULT_CHECKLIST;
  panel.checklist = base.map(([what, where, bring]) => ({ done: true, what, where, bring }));
  $("iss-check-state").textContent = "";
  renderChecklist();
}

function renderChecklist() {
  const body = $("iss-check-body");
  body.replaceChildren();
  panel.checklist.forEach((item, index) => {
    const include = el("input", { type: "checkbox", checked: item.done, "aria-label": "印刷に含める" });
    include.addEventListener("change", () => {
      item.done = include.checked;
    });
    const field = (key, label) => {
      const input = el("input", { type: "text", value: item[key], maxlength: "60", "aria-label": label });
      input.addEventListener("input", () => {
        item[key] = input.value;
      });
      return el("td", {}, input);
    };
    const remove = el("button", { type: "button", text: "削除" });
    remove.addEventListener("click", () => {
      panel.checklist.splice(index, 1);
      renderChecklist();
    });
    body.append(
      el("tr", {}, el("td", {}, include), field("what", "手続き"), field("where", "窓口"), field("bring", "持ち物"), el("td", {}, remove)),
    );
  });
  $("iss-check-print").disabled = !live();
}

function printChecklist() {
  const items = panel.checklist.filter((i) => i.done && i.what.trim());
  if (!panel.call || !items.length) return;
  const now = new Date();
  const blocks = [
    { kind: "text", text: "必要手続き一覧", size: 40, bold: true, align: "center" },
    { kind: "text", text: `${now.getFullYear()}年${now.getMonth() + 1}月${now.getDate()}日 ${panel.call.department}`, size: 22, bold: false, align: "center" },
    { kind: "rule", thickness: 2 },
  ];
  items.slice(0, 18).forEach((item, n) => {
    blocks.push({ kind: "text", text: `□ ${n + 1}. ${item.what.trim()}`, size: 28, bold: true, align: "left" });
    if (item.where.trim()) blocks.push({ kind: "text", text: `　窓口: ${item.where.trim()}`, size: 24, bold: false, align: "left" });
    if (item.bring.trim()) blocks.push({ kind: "text", text: `　持ち物: ${item.bring.trim()}`, size: 24, bold: false, align: "left" });
  });
  blocks.push({ kind: "rule", thickness: 2 });
  blocks.push({ kind: "text", text: "ご不明な点は各窓口にお尋ねください", size: 22, bold: false, align: "center" });
  const jobId = crypto.randomUUID();
  const ok = send({ type: "print_job", job_id: jobId, target: "receipt", title: "procedures", receipt: { title: "procedures", blocks } });
  panel.checklistJob = jobId;
  $("iss-check-state").textContent = ok ? STATE_TEXT.sending : NO_CHANNEL;
}

function onChecklistStatus(msg) {
  if (msg.job_id !== panel.checklistJob) return;
  $("iss-check-state").textContent =
    msg.type === "print_job_status" ? STATE_TEXT[msg.state] + (msg.reason ? `: ${msg.reason}` : "") : msg.reason;
  $("iss-check-state").dataset.state = msg.type === "print_job_status" ? msg.state : "rejected";
}

// ---------------------------------------------------------------------------------------
// From console.js
// ---------------------------------------------------------------------------------------

function renderAll() {
  renderCard();
  renderVerdict();
  renderChoice();
  renderDocuments();
  renderChecklist();
}

document.addEventListener("ekichika:call", (event) => {
  const again = panel.call && panel.call.sessionId === event.detail.sessionId;
  panel.call = event.detail;
  panel.open = false;
  if (!again) {
    panel.card = null;
    panel.match = null;
    panel.documents.clear();
    startChecklist();
    note("");
  }
  $("issuance-panel").hidden = false;
  $("issuance-panel").dataset.call = "live";
  loadCatalog();
  renderAll();
});

document.addEventListener("ekichika:channel", (event) => {
  if (!panel.call || event.detail.sessionId !== panel.call.sessionId) return;
  panel.open = event.detail.open;
  renderAll();
});

document.addEventListener("ekichika:peer-data", (event) => {
  if (!panel.call || event.detail.sessionId !== panel.call.sessionId) return;
  const msg = event.detail.msg;
  if (msg.type === "card_basic_info") {
    panel.card = { name: msg.name, address: msg.address, birth_date: msg.birth_date, sex: msg.sex };
    panel.match = null;
    renderAll();
  } else if (msg.type === "print_job_status" || msg.type === "print_job_rejected") {
    onPrintMessage(msg);
    onChecklistStatus(msg);
  }
});

document.addEventListener("ekichika:call-ended", (event) => {
  if (!panel.call || event.detail.sessionId !== panel.call.sessionId) return;
  panel.call = null;
  panel.open = false;
  panel.card = null; // personal data: gone with the call
  panel.match = null;
  $("issuance-panel").dataset.call = "ended";
  if (panel.documents.size === 0) $("issuance-panel").hidden = true;
  else note("通話は終了しました。最後に受け取った状態を表示しています。");
  renderAll();
});

build();
