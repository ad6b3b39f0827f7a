// 書かない窓口 on the kiosk: the form the staff member filled, shown over the call screen
// (the call's video stays in the corner), a correction request chosen from a list, and the
// finger signature. The agent's snapshot (screen.form, shared/kiosk_protocol.py KioskForm)
// says what to draw; strokes go to the agent one at a time (form_stroke), 確定 ends them.
"use strict";

(() => {
  const FORM_TEXT = {
    ja: {
      lead_review: "内容をご確認ください。違うところがあれば「訂正をお願いする」を押してください。",
      lead_corrected: (reason) => `職員に訂正をお願いしました（${reason}）。職員が直すまでお待ちください。`,
      correction: "訂正をお願いする",
      sheet_title: "どこが違いますか？",
      sheet_field: (label) => `選んだ項目：${label}`,
      sheet_hint: "違う項目に触れてから選ぶこともできます。",
      sheet_close: "もどる",
      reason_name: "氏名が違う",
      reason_address: "住所が違う",
      reason_birth_date: "生年月日が違う",
      reason_field: "選んだ項目が違う",
      reason_other: "その他（職員に口でお伝えください）",
      empty: "未記入",
      required: "必須",
      sign_lead: "下の枠の中に、指でお名前を書いてください。",
      sign_hint: "ここに署名",
      sign_full: "これ以上は書けません。「書き直す」で最初から書けます。",
      sign_cancel: "やめる",
      sign_clear: "書き直す",
      sign_confirm: "確定",
      signed_title: "職員が確認しています",
      signed_lead: "このままお待ちください。",
      submitted_title: "受け付けました",
      submitted_lead: "ありがとうございました。",
    },
    en: {
      lead_review: "Please check the form. If anything is wrong, press “Ask for a correction”.",
      lead_corrected: (reason) =>
        `You asked the staff member for a correction (${reason}). Please wait while it is fixed.`,
      correction: "Ask for a correction",
      sheet_title: "What is wrong?",
      sheet_field: (label) => `Selected item: ${label}`,
      sheet_hint: "You can also touch the wrong item first.",
      sheet_close: "Back",
      reason_name: "The name is wrong",
      reason_address: "The address is wrong",
      reason_birth_date: "The date of birth is wrong",
      reason_field: "The selected item is wrong",
      reason_other: "Something else (please tell the staff member)",
      empty: "Not filled in",
      required: "Required",
      sign_lead: "Please sign your name with your finger in the box below.",
      sign_hint: "Sign here",
      sign_full: "The box is full. Press “Start again” to sign again.",
      sign_cancel: "Stop",
      sign_clear: "Start again",
      sign_confirm: "Done",
      signed_title: "The staff member is checking",
      signed_lead: "Please wait a moment.",
      submitted_title: "Your application has been received",
      submitted_lead: "Thank you.",
    },
  };
  const REASONS = ["name", "address", "birth_date", "field", "other"];
  const STROKE_POINTS = 300; // per form_stroke message (shared/kiosk_protocol.py)
  const MAX_POINTS = 1500; // per signature (shared/protocol.py FORM_SIGNATURE_MAX_POINTS)
  const MIN_STEP = 0.003; // pad widths between two recorded points

  const $ = (id) => document.getElementById(id);
  const view = {
    form: null, // the last KioskForm
    selected: null, // the field id the resident touched
    pad: { attempt: -1, strokes: [], current: null, pointer: null, started: 0, points: 0 },
  };

  function lang() {
    return window.kiosk ? window.kiosk.language() : "ja";
  }

  function t(key, ...args) {
    const entry = FORM_TEXT[lang()][key] ?? FORM_TEXT.ja[key];
    return typeof entry === "function" ? entry(...args) : entry;
  }

  function send(message) {
    if (window.kiosk) window.kiosk.send(message);
  }

  // ------------------------------------------------------------------ the form

  function labelled(ja, en) {
    // Japanese: the Japanese text. English: English first, the Japanese original below.
    const box = document.createElement("span");
    box.className = "bilingual";
    const main = document.createElement("span");
    main.className = "main";
    main.textContent = lang() === "en" ? en || ja : ja;
    box.append(main);
    if (lang() === "en" && ja && ja !== en) {
      const original = document.createElement("span");
      original.className = "original";
      original.lang = "ja";
      original.textContent = ja;
      box.append(original);
    }
    return box;
  }

  function findItem(fieldId) {
    if (!view.form) return null;
    for (const section of view.form.sections) {
      for (const item of section.items) if (item.field_id === fieldId) return item;
    }
    return null;
  }

  function renderBody(form) {
    const body = $("form-body");
    body.replaceChildren();
    for (const section of form.sections) {
      const block = document.createElement("section");
      block.className = "form-section";
      const title = document.createElement("h3");
      title.append(labelled(section.title_ja, section.title_en));
      block.append(title);
      const list = document.createElement("dl");
      for (const item of section.items) {
        const row = document.createElement("div");
        row.className = "form-row";
        row.dataset.field = item.field_id;
        row.classList.toggle("selected", view.selected === item.field_id);
        row.classList.toggle(
          "flagged",
          form.correction_field_id === item.field_id && form.correction !== null,
        );
        const dt = document.createElement("dt");
        dt.append(labelled(item.label_ja, item.label_en));
        const dd = document.createElement("dd");
        if (item.filled) {
          const ja = item.value_ja;
          const en = item.value_en;
          if (lang() === "en" && en && en !== ja) dd.append(labelled(ja, en));
          else dd.textContent = ja;
        } else {
          dd.className = "empty";
          dd.textContent = item.required ? `${t("empty")}（${t("required")}）` : t("empty");
        }
        row.append(dt, dd);
        list.append(row);
      }
      block.append(list);
      body.append(block);
    }
    if (form.declaration_ja) {
      const declaration = document.createElement("p");
      declaration.className = "form-declaration";
      declaration.append(labelled(form.declaration_ja, form.declaration_en));
      body.append(declaration);
    }
  }

  function reasonText(reason) {
    return t(`reason_${reason}`);
  }

  function render(snapshot) {
    const form = snapshot.screen === "in_call" ? snapshot.form : null;
    const panel = $("form-panel");
    if (!form) {
      view.form = null;
      view.selected = null;
      delete document.body.dataset.form;
      panel.classList.remove("active");
      closeSheet();
      resetPad(-1);
      return;
    }
    const changed =
      !view.form || view.form.form_id !== form.form_id || view.form.revision !== form.revision;
    if (changed) view.selected = null;
    view.form = form;
    document.body.dataset.form = form.stage;
    panel.classList.add("active");
    panel.dataset.stage = form.stage;
    $("form-title").replaceChildren(labelled(form.title_ja, form.title_en));
    $("form-lead").textContent =
      form.stage === "signing"
        ? t("sign_lead")
        : form.stage !== "review"
          ? ""
          : form.correction
            ? t("lead_corrected", reasonText(form.correction))
            : t("lead_review");
    $("form-lead").classList.toggle("sent", form.stage === "review" && Boolean(form.correction));
    renderBody(form);
    $("form-correction").textContent = t("correction");
    $("sign-cancel").textContent = t("sign_cancel");
    $("sign-clear").textContent = t("sign_clear");
    $("sign-confirm").textContent = t("sign_confirm");
    $("form-sign-lead").textContent = t("sign_lead");
    const waiting = form.stage === "submitted" ? "submitted" : "signed";
    $("form-waiting-title").textContent = t(`${waiting}_title`);
    $("form-waiting-lead").textContent = t(`${waiting}_lead`);
    if (form.stage === "signing") {
      if (form.attempt !== view.pad.attempt) resetPad(form.attempt);
      sizePad();
    } else {
      resetPad(-1);
    }
    if (form.stage !== "review" && form.stage !== "signed") closeSheet();
    renderPadState();
  }

  // ------------------------------------------------------------------ corrections

  function openSheet() {
    if (!view.form) return;
    const reasons = $("form-reasons");
    reasons.replaceChildren();
    for (const reason of REASONS) {
      if (reason === "field" && !view.selected) continue;
      const button = document.createElement("button");
      button.className = "big secondary reason";
      button.dataset.reason = reason;
      button.textContent = reasonText(reason);
      reasons.append(button);
    }
    const item = view.selected ? findItem(view.selected) : null;
    $("form-sheet-title").textContent = t("sheet_title");
    $("form-sheet-field").textContent = item
      ? t("sheet_field", lang() === "en" ? item.label_en : item.label_ja)
      : t("sheet_hint");
    $("form-sheet-close").textContent = t("sheet_close");
    $("form-sheet").classList.add("shown");
  }

  function closeSheet() {
    $("form-sheet").classList.remove("shown");
  }

  function chooseReason(reason) {
    const form = view.form;
    if (!form) return;
    const message = { type: "form_correction", revision: form.revision, reason };
    if (view.selected && reason === "field") message.field_id = view.selected;
    send(message);
    closeSheet();
  }

  // ------------------------------------------------------------------ the signature pad

  function resetPad(attempt) {
    const pad = view.pad;
    pad.attempt = attempt;
    pad.strokes = [];
    pad.current = null;
    pad.pointer = null;
    pad.started = 0;
    pad.points = 0;
    const canvas = $("sign-pad");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
  }

  function sizePad() {
    const canvas = $("sign-pad");
    const box = canvas.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    const width = Math.round(box.width * ratio);
    const height = Math.round(box.height * ratio);
    if (width > 0 && height > 0 && (canvas.width !== width || canvas.height !== height)) {
      canvas.width = width;
      canvas.height = height;
      redraw();
    }
  }

  function redraw() {
    const canvas = $("sign-pad");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const all = view.pad.current ? [...view.pad.strokes, view.pad.current] : view.pad.strokes;
    for (const stroke of all) drawStroke(ctx, canvas, stroke);
  }

  function drawStroke(ctx, canvas, stroke) {
    const ratio = window.devicePixelRatio || 1;
    ctx.strokeStyle = "#0a1a33";
    ctx.fillStyle = "#0a1a33";
    ctx.lineWidth = 5 * ratio;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    if (stroke.length === 1) {
      ctx.beginPath();
      ctx.arc(stroke[0].x * canvas.width, stroke[0].y * canvas.height, 3 * ratio, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    ctx.moveTo(stroke[0].x * canvas.width, stroke[0].y * canvas.height);
    for (const p of stroke.slice(1)) ctx.lineTo(p.x * canvas.width, p.y * canvas.height);
    ctx.stroke();
  }

  function padPoint(event) {
    const canvas = $("sign-pad");
    const box = canvas.getBoundingClientRect();
    const clamp = (v) => Math.min(1, Math.max(0, v));
    const round = (v) => Math.round(v * 10000) / 10000;
    const pad = view.pad;
    if (!pad.started) pad.started = event.timeStamp || performance.now();
    return {
      x: round(clamp((event.clientX - box.left) / box.width)),
      y: round(clamp((event.clientY - box.top) / box.height)),
      t: Math.max(0, Math.round((event.timeStamp || performance.now()) - pad.started)),
    };
  }

  function onPointerDown(event) {
    const pad = view.pad;
    if (!view.form || view.form.stage !== "signing" || pad.pointer !== null) return;
    if (pad.points >= MAX_POINTS) return;
    event.preventDefault();
    $("sign-pad").setPointerCapture(event.pointerId);
    pad.pointer = event.pointerId;
    pad.current = [padPoint(event)];
    pad.points += 1;
    redraw();
  }

  function onPointerMove(event) {
    const pad = view.pad;
    if (event.pointerId !== pad.pointer || !pad.current) return;
    event.preventDefault();
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const e of events.length ? events : [event]) {
      if (pad.points >= MAX_POINTS) break;
      const point = padPoint(e);
      const last = pad.current[pad.current.length - 1];
      if (Math.hypot(point.x - last.x, point.y - last.y) < MIN_STEP) continue;
      pad.current.push(point);
      pad.points += 1;
    }
    redraw();
  }

  function onPointerUp(event) {
    const pad = view.pad;
    if (event.pointerId !== pad.pointer || !pad.current) return;
    const stroke = pad.current;
    pad.current = null;
    pad.pointer = null;
    // A long stroke goes as several messages (each a stroke of at most STROKE_POINTS).
    for (let i = 0; i < stroke.length; i += STROKE_POINTS) {
      const points = stroke.slice(i, i + STROKE_POINTS);
      pad.strokes.push(points);
      send({
        type: "form_stroke",
        revision: view.form.revision,
        attempt: pad.attempt,
        points,
      });
    }
    redraw();
    renderPadState();
  }

  function renderPadState() {
    const pad = view.pad;
    $("sign-confirm").disabled = pad.strokes.length === 0;
    $("sign-clear").disabled = pad.strokes.length === 0 && !pad.current;
    const hint = $("sign-pad-hint");
    hint.textContent = pad.points >= MAX_POINTS ? t("sign_full") : t("sign_hint");
    hint.classList.toggle("hidden", pad.strokes.length > 0 && pad.points < MAX_POINTS);
    hint.classList.toggle("full", pad.points >= MAX_POINTS);
  }

  function confirmSignature() {
    const form = view.form;
    const pad = view.pad;
    if (!form || form.stage !== "signing" || pad.strokes.length === 0) return;
    const canvas = $("sign-pad");
    const box = canvas.getBoundingClientRect();
    const ratio = Math.min(10, Math.max(0.2, box.width / box.height));
    send({
      type: "form_sign_confirm",
      revision: form.revision,
      attempt: pad.attempt,
      stroke_count: pad.strokes.length,
      pad_aspect_ratio: Math.round(ratio * 10000) / 10000,
    });
  }

  // ------------------------------------------------------------------ wiring

  document.addEventListener("kiosk:screen", (event) => render(event.detail));
  window.addEventListener("resize", () => {
    if (view.form && view.form.stage === "signing") sizePad();
  });

  document.addEventListener("DOMContentLoaded", () => {
    const canvas = $("sign-pad");
    canvas.addEventListener("pointerdown", onPointerDown);
    canvas.addEventListener("pointermove", onPointerMove);
    canvas.addEventListener("pointerup", onPointerUp);
    canvas.addEventListener("pointercancel", onPointerUp);

    $("form-panel").addEventListener("click", (event) => {
      const form = view.form;
      if (!form) return;
      const reason = event.target.closest(".reason");
      if (reason) {
        chooseReason(reason.dataset.reason);
        return;
      }
      const row = event.target.closest(".form-row");
      if (row && form.stage === "review") {
        view.selected = view.selected === row.dataset.field ? null : row.dataset.field;
        for (const r of document.querySelectorAll(".form-row")) {
          r.classList.toggle("selected", r.dataset.field === view.selected);
        }
        return;
      }
      const action = event.target.closest("[data-form-action]");
      if (!action) return;
      switch (action.dataset.formAction) {
        case "correction":
          openSheet();
          break;
        case "sheet_close":
          closeSheet();
          break;
        case "sign_cancel":
          send({ type: "form_sign_cancel", revision: form.revision });
          break;
        case "sign_clear":
          send({ type: "form_sign_clear", revision: form.revision });
          break;
        case "sign_confirm":
          confirmSignature();
          break;
      }
    });
  });
})();
