// The document still viewer of the HQ console (書画カメラの静止画).
//
// 書類を撮影 sends still_request on the call's data channel (channel "peer_data" of
// protocol.schema.json). The booth answers every still — asked for here or by the resident
// on the kiosk — with still_offer (size, SHA-256, picture size), or still_failed. When the
// offer carries "relay", the page downloads the sealed still from the console's still relay
// (GET /api/sessions/{id}/stills/relay/{token}) and opens it with the offer's AES-GCM key;
// otherwise binary frames follow (16 bytes of still_id, a 4-byte big-endian offset, the
// data) and still_done. A second offer for the same still (the booth's fallback after a
// failed relay upload) switches to the frames. The page checks size and SHA-256 with
// crypto.subtle and only then shows the JPEG. The still lives in this page's memory only: 破棄 drops it, 保存 sends it to the
// console server, which stores it with the call session (POST /api/sessions/{id}/stills).
// console.js tells this module about the call with "ekichika:*" events on document and
// sends frames for it with window.ekichika.sendPeerData.

const ID_BYTES = 16; // shared.protocol.STILL_ID_BYTES
const HEADER_BYTES = ID_BYTES + 4; // shared.protocol.STILL_CHUNK_HEADER
const SEAL_TAG_BYTES = 16; // shared.security.SEAL_TAG_BYTES (AES-GCM tag)
const CORRUPT = "画像が壊れています。もう一度撮影してください";
const ZOOM_MIN = 0.25;
const ZOOM_MAX = 8;
const ZOOM_STEP = 1.25;

const $ = (id) => document.getElementById(id);

const viewer = {
  call: null, // {sessionId, ...} from ekichika:call
  sessionId: null, // the session the shown still belongs to (kept in wrap-up)
  open: false,
  requests: 0,
  incoming: null, // {offer, bytes: Uint8Array, received}
  still: null, // {offer, blob, url, sessionId, savedId}
  view: { zoom: 1, rotation: 0, x: 0, y: 0 },
  status: "",
  drag: null,
};

// For tests and support staff: the still as this page holds it (no picture data).
window.ekichikaStill = {
  get still() {
    const s = viewer.still;
    if (!s) return null;
    const img = $("still-image");
    return {
      stillId: s.offer.still_id,
      origin: s.offer.origin,
      size: s.offer.size,
      sha256: s.offer.sha256,
      width: s.offer.width,
      height: s.offer.height,
      naturalWidth: img ? img.naturalWidth : 0,
      naturalHeight: img ? img.naturalHeight : 0,
      savedId: s.savedId,
      relayed: Boolean(s.offer.relay),
    };
  },
  get view() {
    return { ...viewer.view };
  },
  get receiving() {
    return viewer.incoming !== null;
  },
};

function send(message) {
  return Boolean(window.ekichika && window.ekichika.sendPeerData(message));
}

function hex(bytes) {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------------------------------
// Building the panel
// ---------------------------------------------------------------------------------------

function build() {
  const section = $("still-panel");
  section.innerHTML = `
    <div class="still-head">
      <h3>書類の静止画 <span class="en" lang="en">Document still</span></h3>
      <button type="button" id="still-take" class="still-take" disabled>書類を撮影 <span class="en" lang="en">Take still</span></button>
      <span id="still-status" class="still-status" role="status"></span>
    </div>
    <div id="still-viewer" class="still-viewer" hidden>
      <div class="still-tools">
        <button type="button" id="still-zoom-in" title="拡大">拡大 <span class="en" lang="en">+</span></button>
        <button type="button" id="still-zoom-out" title="縮小">縮小 <span class="en" lang="en">−</span></button>
        <button type="button" id="still-rotate" title="90°回転">回転 <span class="en" lang="en">90°</span></button>
        <button type="button" id="still-fit">全体表示 <span class="en" lang="en">Fit</span></button>
        <span class="still-tools-gap"></span>
        <button type="button" id="still-save" class="primary">保存 <span class="en" lang="en">Save</span></button>
        <button type="button" id="still-discard">破棄 <span class="en" lang="en">Discard</span></button>
      </div>
      <div id="still-stage" class="still-stage">
        <img id="still-image" alt="書類の静止画" draggable="false">
      </div>
      <p id="still-meta" class="still-meta"></p>
    </div>`;
  $("still-take").addEventListener("click", takeStill);
  $("still-zoom-in").addEventListener("click", () => zoomBy(ZOOM_STEP));
  $("still-zoom-out").addEventListener("click", () => zoomBy(1 / ZOOM_STEP));
  $("still-rotate").addEventListener("click", rotate);
  $("still-fit").addEventListener("click", resetView);
  $("still-save").addEventListener("click", () => {
    save().catch((err) => setStatus(`保存できませんでした: ${err.message || err}`, "error"));
  });
  $("still-discard").addEventListener("click", discard);
  const stage = $("still-stage");
  stage.addEventListener("wheel", onWheel, { passive: false });
  stage.addEventListener("pointerdown", onPointerDown);
  stage.addEventListener("pointermove", onPointerMove);
  stage.addEventListener("pointerup", onPointerUp);
  stage.addEventListener("pointercancel", onPointerUp);
}

function setStatus(text, kind = "info") {
  viewer.status = text;
  const box = $("still-status");
  box.textContent = text;
  box.dataset.kind = kind;
}

function render() {
  const live = viewer.call !== null && viewer.open;
  $("still-take").disabled = !live || viewer.incoming !== null;
  $("still-panel").hidden = viewer.call === null && viewer.still === null && !viewer.status;
  const still = viewer.still;
  $("still-viewer").hidden = still === null;
  if (still) {
    $("still-save").disabled = still.savedId !== null;
    const who = still.offer.origin === "resident" ? "利用者が撮影" : "職員が撮影";
    const kb = Math.round(still.offer.size / 1024);
    $("still-meta").textContent = `${who} ・ ${still.offer.width}×${still.offer.height} ・ ${kb} KB`;
  }
  applyView();
}

// ---------------------------------------------------------------------------------------
// Receiving a still
// ---------------------------------------------------------------------------------------

function takeStill() {
  if (!viewer.call) return;
  viewer.requests += 1;
  const requestId = `still-${Date.now().toString(36)}-${viewer.requests}`;
  if (send({ type: "still_request", request_id: requestId })) {
    setStatus("撮影しています…");
    $("still-take").disabled = true;
  }
}

function onOffer(offer) {
  if (viewer.still && viewer.still.offer.still_id === offer.still_id) return; // already here
  const previous = viewer.incoming;
  if (previous && previous.abort) previous.abort.abort();
  const incoming = { offer, bytes: new Uint8Array(offer.size), received: 0, broken: false };
  viewer.incoming = incoming;
  setStatus(offer.origin === "resident" ? "利用者が撮影した画像を受信しています…" : "受信しています…");
  render();
  if (offer.relay && viewer.call) {
    fetchRelayed(incoming, viewer.call.sessionId).catch((err) => {
      if (viewer.incoming !== incoming || (err && err.name === "AbortError")) return;
      if (err instanceof SealError) {
        viewer.incoming = null;
        setStatus(`${CORRUPT} (${err.message})`, "error");
        render();
        return;
      }
      // The booth sends the still again on the data channel when its upload fails.
      setStatus("中継での受信に失敗しました。データ接続で受け取り直しています…");
    });
  }
}

class SealError extends Error {}

function unb64url(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
}

// Download the sealed still from the console's still relay and open it with the offer's key.
async function fetchRelayed(incoming, sessionId) {
  const offer = incoming.offer;
  incoming.abort = new AbortController();
  const url = `/api/sessions/${encodeURIComponent(sessionId)}/stills/relay/${offer.relay.token}`;
  const response = await fetch(url, {
    credentials: "same-origin",
    cache: "no-store",
    signal: incoming.abort.signal,
  });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const total = offer.size + SEAL_TAG_BYTES;
  const sealed = new Uint8Array(total);
  let received = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (received + value.length > total) throw new SealError("長さが違います");
    sealed.set(value, received);
    received += value.length;
    if (viewer.incoming === incoming) {
      setStatus(`受信しています… ${Math.floor((100 * received) / total)}%`);
    }
  }
  if (received !== total) throw new Error("download ended early");
  let plain;
  try {
    const key = await crypto.subtle.importKey("raw", unb64url(offer.relay.key), "AES-GCM", false, [
      "decrypt",
    ]);
    const iv = unb64url(offer.relay.nonce);
    plain = new Uint8Array(await crypto.subtle.decrypt({ name: "AES-GCM", iv }, key, sealed));
  } catch {
    throw new SealError("暗号を解けません");
  }
  if (viewer.incoming !== incoming) return;
  incoming.abort = null;
  if (plain.length !== offer.size) throw new SealError("長さが違います");
  incoming.bytes = plain;
  incoming.received = plain.length;
  await onDone({ still_id: offer.still_id });
}

function onBinary(data) {
  const incoming = viewer.incoming;
  if (!incoming || data.byteLength < HEADER_BYTES) return;
  const frame = new Uint8Array(data);
  if (hex(frame.subarray(0, ID_BYTES)) !== incoming.offer.still_id) return;
  const offset = new DataView(data, ID_BYTES, 4).getUint32(0, false);
  const piece = frame.subarray(HEADER_BYTES);
  if (offset + piece.length > incoming.bytes.length) {
    incoming.broken = true; // longer than announced
    return;
  }
  incoming.bytes.set(piece, offset);
  incoming.received += piece.length;
  const percent = Math.floor((100 * incoming.received) / incoming.offer.size);
  setStatus(`受信しています… ${percent}%`);
}

async function onDone(msg) {
  const incoming = viewer.incoming;
  if (!incoming || incoming.offer.still_id !== msg.still_id) return;
  viewer.incoming = null;
  const offer = incoming.offer;
  let ok = !incoming.broken && incoming.received === offer.size;
  if (ok) {
    const digest = await crypto.subtle.digest("SHA-256", incoming.bytes);
    ok = hex(new Uint8Array(digest)) === offer.sha256;
  }
  if (!ok) {
    setStatus(CORRUPT, "error");
    render();
    return;
  }
  dropStill();
  const blob = new Blob([incoming.bytes], { type: offer.mime || "image/jpeg" });
  viewer.still = {
    offer,
    blob,
    url: URL.createObjectURL(blob),
    sessionId: viewer.call ? viewer.call.sessionId : viewer.sessionId,
    savedId: null,
  };
  viewer.view = { zoom: 1, rotation: 0, x: 0, y: 0 };
  const img = $("still-image");
  img.src = viewer.still.url;
  try {
    await img.decode();
  } catch {
    dropStill();
    setStatus(CORRUPT, "error");
    render();
    return;
  }
  setStatus(offer.origin === "resident" ? "利用者が書類を撮影しました" : "撮影しました");
  render();
}

function onFailed(msg) {
  viewer.incoming = null;
  setStatus(msg.message || "撮影できませんでした。", "error");
  render();
}

function dropStill() {
  if (viewer.still) URL.revokeObjectURL(viewer.still.url);
  viewer.still = null;
  const img = $("still-image");
  if (img) img.removeAttribute("src");
}

function discard() {
  dropStill();
  setStatus("破棄しました");
  render();
}

// ---------------------------------------------------------------------------------------
// Zoom, pan, rotate
// ---------------------------------------------------------------------------------------

function applyView() {
  const img = $("still-image");
  if (!img) return;
  const v = viewer.view;
  // A quarter turn swaps the picture's sides: shrink it so that it still fits the stage.
  let fit = 1;
  const stage = $("still-stage");
  if (v.rotation % 180 !== 0 && img.naturalWidth && stage.clientWidth && stage.clientHeight) {
    const box = Math.min(stage.clientWidth / img.naturalWidth, stage.clientHeight / img.naturalHeight);
    const w = img.naturalWidth * box;
    const h = img.naturalHeight * box;
    fit = Math.min(stage.clientWidth / h, stage.clientHeight / w);
  }
  img.style.transform =
    `translate(${v.x}px, ${v.y}px) rotate(${v.rotation}deg) scale(${v.zoom * fit})`;
  img.dataset.zoom = String(v.zoom);
  img.dataset.rotation = String(v.rotation);
}

function zoomBy(factor) {
  const v = viewer.view;
  const zoom = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, v.zoom * factor));
  const applied = zoom / v.zoom;
  v.x *= applied;
  v.y *= applied;
  v.zoom = zoom;
  applyView();
}

function rotate() {
  viewer.view.rotation = (viewer.view.rotation + 90) % 360;
  viewer.view.x = 0;
  viewer.view.y = 0;
  applyView();
}

function resetView() {
  viewer.view = { zoom: 1, rotation: viewer.view.rotation, x: 0, y: 0 };
  applyView();
}

function onWheel(event) {
  if (!viewer.still) return;
  event.preventDefault();
  zoomBy(event.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP);
}

function onPointerDown(event) {
  if (!viewer.still || event.button !== 0) return;
  viewer.drag = { id: event.pointerId, x: event.clientX, y: event.clientY };
  event.currentTarget.setPointerCapture(event.pointerId);
  event.currentTarget.classList.add("dragging");
}

function onPointerMove(event) {
  const drag = viewer.drag;
  if (!drag || drag.id !== event.pointerId) return;
  viewer.view.x += event.clientX - drag.x;
  viewer.view.y += event.clientY - drag.y;
  drag.x = event.clientX;
  drag.y = event.clientY;
  applyView();
}

function onPointerUp(event) {
  if (!viewer.drag || viewer.drag.id !== event.pointerId) return;
  viewer.drag = null;
  event.currentTarget.classList.remove("dragging");
}

// ---------------------------------------------------------------------------------------
// 保存: the still goes to the console server, stored with the call session
// ---------------------------------------------------------------------------------------

async function save() {
  const still = viewer.still;
  if (!still || still.savedId !== null || !still.sessionId) return;
  $("still-save").disabled = true;
  setStatus("保存しています…");
  const response = await fetch(`/api/sessions/${encodeURIComponent(still.sessionId)}/stills`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": still.offer.mime || "image/jpeg", "X-Still-SHA256": still.offer.sha256 },
    body: still.blob,
  });
  if (!response.ok) {
    $("still-save").disabled = false;
    let message = `${response.status}`;
    try {
      message = (await response.json()).message || message;
    } catch {
      // not JSON
    }
    throw new Error(message);
  }
  const body = await response.json();
  if (viewer.still === still) still.savedId = body.id;
  setStatus("保存しました", "ok");
  render();
}

// ---------------------------------------------------------------------------------------
// From the booth and from console.js
// ---------------------------------------------------------------------------------------

document.addEventListener("ekichika:call", (event) => {
  const again = viewer.sessionId === event.detail.sessionId;
  viewer.call = event.detail;
  viewer.open = false;
  if (!again) {
    dropStill();
    viewer.incoming = null;
    setStatus("");
  }
  viewer.sessionId = event.detail.sessionId;
  $("still-panel").dataset.call = "live";
  render();
});

document.addEventListener("ekichika:channel", (event) => {
  if (!viewer.call || event.detail.sessionId !== viewer.call.sessionId) return;
  viewer.open = event.detail.open;
  if (!viewer.open && viewer.incoming) {
    viewer.incoming = null;
    setStatus("データ接続が切れたため、画像を受信できませんでした。", "error");
  }
  render();
});

document.addEventListener("ekichika:peer-data", (event) => {
  if (!viewer.call || event.detail.sessionId !== viewer.call.sessionId) return;
  const msg = event.detail.msg;
  if (msg.type === "still_offer") onOffer(msg);
  else if (msg.type === "still_done") {
    onDone(msg).catch((err) => setStatus(`${CORRUPT} (${err.message || err})`, "error"));
  } else if (msg.type === "still_failed") onFailed(msg);
});

document.addEventListener("ekichika:peer-binary", (event) => {
  if (!viewer.call || event.detail.sessionId !== viewer.call.sessionId) return;
  onBinary(event.detail.data);
});

document.addEventListener("ekichika:call-ended", (event) => {
  if (!viewer.call || event.detail.sessionId !== viewer.call.sessionId) return;
  viewer.call = null;
  viewer.open = false;
  if (viewer.incoming && viewer.incoming.abort) viewer.incoming.abort.abort();
  viewer.incoming = null;
  $("still-panel").dataset.call = "ended";
  render();
});

window.addEventListener("resize", applyView);

build();
render();
