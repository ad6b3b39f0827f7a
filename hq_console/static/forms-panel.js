// 書かない窓口 in the HQ console: the staff member fills a form during the call, the resident
// checks it on the booth screen, asks for corrections or signs with a finger, and the staff
// member submits the signed application (stored as a PDF by the console).
//
// HTTP (hq_console/forms_api.py): GET /api/forms?session_id=…, GET /api/forms/{id},
// PUT …/draft (saved as the staff member types, debounced), POST …/show (a new revision
// and the form_show message), POST …/applications (申請を確定).
// Data channel (channel "peer_data" of protocol.schema.json): form_show, form_sign_request,
// form_close to the booth; form_correction_request, form_signature, form_sign_cancelled
// from it. The card's facts come from the card panel's last read (card_basic_info on the
// data channel; used only while the card panel still shows them).

const SAVE_DELAY_MS = 500;

const REASON_TEXT = {
  name: "氏名が違う",
  address: "住所が違う",
  birth_date: "生年月日が違う",
  field: "この項目が違う",
  other: "その他（口頭で確認してください）",
};
const REASON_CARD_FACT = { name: "name", address: "address", birth_date: "birth_date" };

const $ = (id) => document.getElementById(id);

const panel = {
  call: null, // {sessionId}
  lastSessionId: null,
  open: false,
  forms: [],
  department: null,
  template: null,
  values: {},
  errors: new Map(), // field id → FieldError
  display: {}, // field id → {ja, en}
  revision: 0, // the last revision shown at the booth
  shownValues: null, // JSON of the values of that revision
  complete: false,
  signature: null, // form_signature of the shown revision
  corrections: [], // form_correction_request of the shown revision
  card: null, // the last card_basic_info of this call
  result: null, // the submitted application
  saveTimer: null,
  saving: null,
  status: "",
};

// For tests and support staff (no personal data): where the form stands.
window.ekichikaForms = {
  get formId() {
    return panel.template ? panel.template.id : null;
  },
  get revision() {
    return panel.revision;
  },
  get signed() {
    return Boolean(panel.signature);
  },
  get applicationId() {
    return panel.result ? panel.result.id : null;
  },
  /** Resolves when the last change is saved as the draft. */
  async saved() {
    clearTimeout(panel.saveTimer);
    if (panel.saveTimer !== null) {
      panel.saveTimer = null;
      await saveDraft();
    }
    if (panel.saving) await panel.saving;
  },
};

function send(message) {
  return Boolean(panel.open && window.ekichika && window.ekichika.sendPeerData(message));
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  return { status: response.status, ok: response.ok, data };
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// ---------------------------------------------------------------------------------------
// Building the panel
// ---------------------------------------------------------------------------------------

function build() {
  const section = $("forms-panel");
  section.innerHTML = `
    <div class="forms-head">
      <h3>申請書の作成 <span class="en" lang="en">Forms</span></h3>
      <span id="forms-status" class="forms-status" role="status"></span>
    </div>
    <div class="forms-pick">
      <label for="forms-select">様式 <span class="en" lang="en">Form</span></label>
      <select id="forms-select"></select>
      <button type="button" id="forms-fill-card">カードから入力 <span class="en" lang="en">Fill from card</span></button>
    </div>
    <p id="forms-notice" class="forms-notice" hidden></p>
    <div id="forms-fields" class="forms-fields"></div>
    <div class="forms-signature" id="forms-signature" hidden>
      <div class="forms-signature-head">利用者の署名 <span class="en" lang="en">Signature</span>
        <span id="forms-signature-revision"></span></div>
      <canvas id="forms-signature-preview" width="600" height="200"></canvas>
    </div>
    <div class="forms-actions">
      <button type="button" id="forms-show">利用者に表示 <span class="en" lang="en">Show at booth</span></button>
      <button type="button" id="forms-sign">署名を依頼 <span class="en" lang="en">Ask to sign</span></button>
      <button type="button" id="forms-submit" class="primary">申請を確定 <span class="en" lang="en">Submit</span></button>
    </div>
    <div class="forms-result" id="forms-result" hidden>
      <span>受付番号 <span class="en" lang="en">Receipt no.</span></span>
      <strong id="forms-receipt"></strong>
      <a id="forms-pdf" target="_blank" rel="noopener">申請書 PDF</a>
    </div>`;
  $("forms-select").addEventListener("change", () => chooseForm($("forms-select").value));
  $("forms-fill-card").addEventListener("click", fillFromCard);
  $("forms-show").addEventListener("click", showAtBooth);
  $("forms-sign").addEventListener("click", askToSign);
  $("forms-submit").addEventListener("click", submit);
}

function setStatus(text) {
  panel.status = text;
  $("forms-status").textContent = text;
}

function notice(text, kind = "info") {
  const box = $("forms-notice");
  box.textContent = text;
  box.dataset.kind = kind;
  box.hidden = !text;
}

function renderButtons() {
  const live = Boolean(panel.call);
  const changed = panel.revision > 0 && JSON.stringify(panel.values) !== panel.shownValues;
  $("forms-select").disabled = !live;
  $("forms-fill-card").disabled = !live || !panel.template;
  $("forms-show").disabled = !live || !panel.open || !panel.template;
  $("forms-sign").disabled =
    !live || !panel.open || panel.revision === 0 || changed || !panel.complete;
  $("forms-submit").disabled = !panel.signature || changed;
  $("forms-panel").dataset.stage = panel.result
    ? "submitted"
    : panel.signature
      ? "signed"
      : panel.revision > 0
        ? "shown"
        : "editing";
}

// ---------------------------------------------------------------------------------------
// Forms and fields
// ---------------------------------------------------------------------------------------

async function loadForms(sessionId) {
  const { ok, data } = await api("GET", `/api/forms?session_id=${encodeURIComponent(sessionId)}`);
  if (!ok || !panel.call || panel.call.sessionId !== sessionId) return;
  panel.forms = data.forms;
  panel.department = data.department;
  const select = $("forms-select");
  select.replaceChildren(el("option", { value: "", text: "― 様式を選んでください ―" }));
  for (const form of data.forms) {
    const option = el("option", { value: form.id, text: form.title_ja });
    if (form.department === data.department) option.dataset.callDepartment = "yes";
    select.append(option);
  }
  renderButtons();
}

async function chooseForm(formId) {
  resetForm();
  if (!formId) {
    $("forms-fields").replaceChildren();
    renderButtons();
    return;
  }
  const { ok, data } = await api("GET", `/api/forms/${encodeURIComponent(formId)}`);
  if (!ok) {
    notice("様式を読み込めませんでした。", "warn");
    return;
  }
  panel.template = data;
  $("forms-select").value = formId;
  renderFields();
  renderButtons();
  setStatus("入力中");
}

function resetForm() {
  clearTimeout(panel.saveTimer);
  panel.saveTimer = null;
  panel.template = null;
  panel.values = {};
  panel.errors = new Map();
  panel.display = {};
  panel.revision = 0;
  panel.shownValues = null;
  panel.complete = false;
  panel.signature = null;
  panel.corrections = [];
  panel.result = null;
  $("forms-signature").hidden = true;
  $("forms-result").hidden = true;
  notice("");
  setStatus("");
}

function inputFor(field) {
  const id = `form-field-${field.id}`;
  let input;
  if (field.type === "choice") {
    input = el("select", { id });
    input.append(el("option", { value: "", text: "―" }));
    for (const option of field.options) {
      input.append(el("option", { value: option.value, text: option.ja }));
    }
  } else if (field.type === "checkbox") {
    input = el("input", { id, type: "checkbox" });
  } else if (field.type === "multiline") {
    input = el("textarea", { id, rows: "3" });
  } else {
    input = el("input", { id, type: "text", autocomplete: "off" });
    if (field.type === "postal_code") input.placeholder = "206-0011";
    if (field.type === "date") input.placeholder = "昭和60年4月1日 / 1985-04-01";
    if (field.type === "kana") input.placeholder = "タマ　タロウ";
    if (field.type === "phone") input.placeholder = "042-375-8111";
  }
  if (field.max_length) input.maxLength = field.max_length;
  input.dataset.field = field.id;
  input.addEventListener(field.type === "checkbox" || field.type === "choice" ? "change" : "input", () =>
    onInput(field, input),
  );
  return input;
}

function renderFields() {
  const box = $("forms-fields");
  box.replaceChildren();
  const template = panel.template;
  if (!template) return;
  for (const field of template.fields) {
    const label = el(
      "label",
      { for: `form-field-${field.id}` },
      field.label_ja,
      " ",
      el("span", { class: "en", lang: "en", text: field.label_en }),
      field.required ? el("span", { class: "required", text: "必須" }) : null,
      field.card ? el("span", { class: "from-card", text: "カード" }) : null,
    );
    const row = el(
      "div",
      { class: `forms-field type-${field.type}`, "data-field": field.id },
      label,
      inputFor(field),
      el("div", { class: "forms-display", "data-display": field.id }),
      field.help_ja ? el("div", { class: "forms-help", text: field.help_ja }) : null,
      el("div", { class: "forms-error", "data-error": field.id, role: "alert" }),
      el("div", { class: "forms-correction", "data-correction": field.id }),
    );
    box.append(row);
  }
}

function setInput(field, value) {
  const input = $(`form-field-${field.id}`);
  if (!input) return;
  if (field.type === "checkbox") input.checked = value === true;
  else input.value = value ?? "";
}

function readInput(field, input) {
  if (field.type === "checkbox") return input.checked;
  return input.value;
}

function onInput(field, input) {
  const value = readInput(field, input);
  if (value === "" || value === false) delete panel.values[field.id];
  else panel.values[field.id] = value;
  changed();
}

function changed() {
  if (panel.signature) {
    panel.signature = null;
    $("forms-signature").hidden = true;
  }
  if (panel.revision > 0 && JSON.stringify(panel.values) !== panel.shownValues) {
    setStatus(`変更があります。もう一度「利用者に表示」してください（表示中：第${panel.revision}版）`);
  }
  renderButtons();
  clearTimeout(panel.saveTimer);
  panel.saveTimer = setTimeout(() => {
    panel.saveTimer = null;
    saveDraft();
  }, SAVE_DELAY_MS);
}

async function saveDraft() {
  const template = panel.template;
  const call = panel.call;
  if (!template || !call) return;
  const values = { ...panel.values };
  const run = (async () => {
    const path = `/api/sessions/${encodeURIComponent(call.sessionId)}/forms/${encodeURIComponent(template.id)}/draft`;
    const { ok, data } = await api("PUT", path, { values });
    if (!ok || panel.template !== template) return;
    panel.errors = new Map(data.errors.map((e) => [e.field_id, e]));
    panel.display = data.display;
    renderChecks();
  })();
  panel.saving = run;
  try {
    await run;
  } finally {
    if (panel.saving === run) panel.saving = null;
  }
}

function renderChecks() {
  const template = panel.template;
  if (!template) return;
  for (const field of template.fields) {
    const error = panel.errors.get(field.id);
    const box = document.querySelector(`[data-error="${field.id}"]`);
    box.textContent = error ? error.message_ja : "";
    box.closest(".forms-field").classList.toggle("invalid", Boolean(error));
    const shown = document.querySelector(`[data-display="${field.id}"]`);
    const display = panel.display[field.id];
    // Dates in both calendars, normalised kana and postal codes: what will be printed.
    const useful = ["date", "kana", "postal_code", "phone", "number"].includes(field.type);
    const raw = panel.values[field.id];
    shown.textContent =
      !error && useful && display && display.ja && display.ja !== raw ? `→ ${display.ja}` : "";
  }
}

function renderCorrections() {
  for (const box of document.querySelectorAll("[data-correction]")) {
    box.textContent = "";
    box.closest(".forms-field").classList.remove("flagged");
  }
  const template = panel.template;
  if (!template) return;
  for (const request of panel.corrections) {
    let ids = [];
    if (request.field_id) ids = [request.field_id];
    else if (REASON_CARD_FACT[request.reason]) {
      ids = template.fields.filter((f) => f.card === REASON_CARD_FACT[request.reason]).map((f) => f.id);
    }
    for (const id of ids) {
      const box = document.querySelector(`[data-correction="${id}"]`);
      if (!box) continue;
      box.textContent = `利用者から訂正の依頼：${REASON_TEXT[request.reason] || request.reason}`;
      box.closest(".forms-field").classList.add("flagged");
    }
  }
}

// ---------------------------------------------------------------------------------------
// カードから入力
// ---------------------------------------------------------------------------------------

function cardShown(card) {
  // The card panel still shows this read (表示を消す or a new read clears it).
  const facts = $("card-facts");
  return Boolean(card && facts && !facts.hidden && $("card-name").textContent === card.name);
}

function fillFromCard() {
  const template = panel.template;
  const card = panel.card;
  if (!template) return;
  if (!cardShown(card)) {
    notice("カードの情報がありません。先に「カード読み取り」をしてください。", "warn");
    return;
  }
  let filled = 0;
  for (const field of template.fields) {
    let value;
    if (field.card === "name") value = card.name;
    else if (field.card === "address") value = card.address;
    else if (field.card === "birth_date") value = card.birth_date; // ISO; stored as 和暦/西暦
    else if (field.card === "sex" && field.options.some((o) => o.value === card.sex)) {
      value = card.sex;
    }
    if (value === undefined) continue;
    panel.values[field.id] = value;
    setInput(field, value);
    filled += 1;
  }
  notice(`カードの ${filled} 項目を入力しました。残りの項目を入力してください。`);
  changed();
}

// ---------------------------------------------------------------------------------------
// At the booth: show, corrections, signature, submit
// ---------------------------------------------------------------------------------------

async function showAtBooth() {
  const template = panel.template;
  const call = panel.call;
  if (!template || !call) return;
  clearTimeout(panel.saveTimer);
  panel.saveTimer = null;
  const values = { ...panel.values };
  const path = `/api/sessions/${encodeURIComponent(call.sessionId)}/forms/${encodeURIComponent(template.id)}/show`;
  const { status, data } = await api("POST", path, { values });
  if (status === 422) {
    panel.errors = new Map(data.errors.map((e) => [e.field_id, e]));
    renderChecks();
    notice("入力に誤りがあります。赤く示した項目を直してください。", "warn");
    return;
  }
  if (status !== 200) {
    notice(`表示できませんでした（${data ? data.message : status}）。`, "warn");
    return;
  }
  if (!send(data.message)) {
    notice("ブースに送れませんでした。データ接続を確認してください。", "warn");
    return;
  }
  panel.revision = data.revision;
  panel.shownValues = JSON.stringify(values);
  panel.complete = data.complete;
  panel.signature = null;
  panel.corrections = [];
  panel.errors = new Map();
  $("forms-signature").hidden = true;
  renderCorrections();
  renderChecks();
  notice(
    data.complete
      ? ""
      : `未入力の必須項目があります：${data.errors.map((e) => fieldLabel(e.field_id)).join("、")}`,
    data.complete ? "info" : "warn",
  );
  setStatus(`利用者に表示中（第${data.revision}版）`);
  renderButtons();
}

function fieldLabel(fieldId) {
  const field = panel.template && panel.template.fields.find((f) => f.id === fieldId);
  return field ? field.label_ja : fieldId;
}

function askToSign() {
  const template = panel.template;
  if (!template || panel.revision === 0) return;
  if (send({ type: "form_sign_request", form_id: template.id, revision: panel.revision })) {
    setStatus(`署名を依頼しました（第${panel.revision}版）`);
  }
}

function drawSignature(signature) {
  const canvas = $("forms-signature-preview");
  const ctx = canvas.getContext("2d");
  const width = canvas.width;
  const height = Math.round(width / signature.pad_aspect_ratio);
  canvas.height = Math.max(60, Math.min(400, height));
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#0a1a33";
  ctx.fillStyle = "#0a1a33";
  ctx.lineWidth = 3;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const stroke of signature.strokes) {
    if (stroke.length === 1) {
      ctx.beginPath();
      ctx.arc(stroke[0].x * canvas.width, stroke[0].y * canvas.height, 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.beginPath();
    ctx.moveTo(stroke[0].x * canvas.width, stroke[0].y * canvas.height);
    for (const p of stroke.slice(1)) ctx.lineTo(p.x * canvas.width, p.y * canvas.height);
    ctx.stroke();
  }
}

function onPeerData(msg) {
  const template = panel.template;
  switch (msg.type) {
    case "card_basic_info":
      panel.card = msg;
      return;
    case "form_correction_request":
      if (!template || msg.form_id !== template.id || msg.revision !== panel.revision) return;
      panel.corrections.push(msg);
      panel.signature = null;
      $("forms-signature").hidden = true;
      renderCorrections();
      notice(
        `利用者から訂正の依頼があります：${REASON_TEXT[msg.reason] || msg.reason}` +
          (msg.field_id ? `（${fieldLabel(msg.field_id)}）` : ""),
        "warn",
      );
      setStatus(`訂正の依頼（第${panel.revision}版）`);
      break;
    case "form_signature": {
      if (!template || msg.form_id !== template.id) return;
      const changedSince = JSON.stringify(panel.values) !== panel.shownValues;
      if (msg.revision !== panel.revision || changedSince) {
        notice("以前の版への署名のため使えません。もう一度表示して署名を依頼してください。", "warn");
        return;
      }
      panel.signature = msg;
      drawSignature(msg.signature);
      $("forms-signature-revision").textContent = `第${msg.revision}版`;
      $("forms-signature").hidden = false;
      notice("");
      setStatus(`署名を受け取りました（第${msg.revision}版）`);
      break;
    }
    case "form_sign_cancelled":
      if (!template || msg.form_id !== template.id || msg.revision !== panel.revision) return;
      setStatus("利用者が署名をやめました");
      break;
    default:
      return;
  }
  renderButtons();
}

async function submit() {
  const template = panel.template;
  const signed = panel.signature;
  const sessionId = panel.call ? panel.call.sessionId : panel.lastSessionId;
  if (!template || !signed || !sessionId) return;
  $("forms-submit").disabled = true;
  setStatus("申請書を作成しています…");
  const path = `/api/sessions/${encodeURIComponent(sessionId)}/forms/${encodeURIComponent(template.id)}/applications`;
  const { status, data } = await api("POST", path, {
    values: panel.values,
    revision: signed.revision,
    signature: signed.signature,
  });
  if (status !== 201) {
    if (data && data.errors) {
      panel.errors = new Map(data.errors.map((e) => [e.field_id, e]));
      renderChecks();
    }
    notice(`申請を確定できませんでした（${data ? data.message : status}）。`, "warn");
    setStatus("");
    renderButtons();
    return;
  }
  send({ type: "form_close", form_id: template.id, submitted: true });
  // The personal data leaves the page: only the receipt number and the link stay.
  resetForm();
  panel.result = data;
  $("forms-fields").replaceChildren();
  $("forms-select").value = "";
  $("forms-receipt").textContent = data.receipt_number;
  $("forms-pdf").href = data.pdf_url;
  $("forms-result").hidden = false;
  setStatus("申請を受け付けました");
  renderButtons();
}

// ---------------------------------------------------------------------------------------
// The call
// ---------------------------------------------------------------------------------------

document.addEventListener("ekichika:call", (event) => {
  const again = panel.lastSessionId === event.detail.sessionId;
  panel.call = { sessionId: event.detail.sessionId };
  panel.lastSessionId = event.detail.sessionId;
  panel.open = false;
  if (!again) {
    resetForm();
    panel.card = null;
    $("forms-fields").replaceChildren();
  }
  $("forms-panel").hidden = false;
  $("forms-panel").dataset.call = "live";
  loadForms(event.detail.sessionId);
  renderButtons();
});

document.addEventListener("ekichika:channel", (event) => {
  if (!panel.call || event.detail.sessionId !== panel.call.sessionId) return;
  panel.open = event.detail.open;
  renderButtons();
});

document.addEventListener("ekichika:peer-data", (event) => {
  if (!panel.call || event.detail.sessionId !== panel.call.sessionId) return;
  onPeerData(event.detail.msg);
});

document.addEventListener("ekichika:call-ended", (event) => {
  if (!panel.call || event.detail.sessionId !== panel.call.sessionId) return;
  panel.call = null;
  panel.open = false;
  panel.card = null;
  $("forms-panel").dataset.call = "ended";
  if (!panel.signature) {
    // Nothing left to submit: the values leave the page (the draft is purged later).
    const result = panel.result;
    resetForm();
    panel.result = result;
    $("forms-fields").replaceChildren();
    $("forms-result").hidden = !result;
    if (!result) $("forms-panel").hidden = true;
  } else {
    setStatus("通話は終了しました。署名済みの申請は確定できます。");
  }
  renderButtons();
});

build();
