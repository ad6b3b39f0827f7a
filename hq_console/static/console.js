// The HQ staff page: availability, the waiting queue, ringing offers and the video call.
//
// The browser is the answering WebRTC peer: the booth creates the offer after CallStarted,
// the page answers with all its ICE candidates in the SDP (it waits for gathering to
// complete, so it never needs to trickle). Messages sent to the signaling server follow
// protocol.schema.json, channel "staff_to_server".
//
// The booth also opens a data channel ("ekichika") in its offer; the page receives it with
// ondatachannel and uses it for the My Number card read (channel "peer_data" of the schema):
// the card's 4 basic facts come only this way, peer to peer, never through signaling, and
// are shown in the card panel until the call ends (nothing is stored).

import {
  ErrorBox,
  SignalingClient,
  fetchMe,
  formatClock,
  formatDuration,
  languageName,
  renderConnectionBanner,
} from "./staff-signaling.js";

const STATE_LABELS = {
  offline: "オフライン",
  available: "受付中",
  ringing: "呼出中",
  in_call: "通話中",
  wrap_up: "後処理",
  away: "離席",
};

const WITHDRAW_TEXT = {
  cancelled: "利用者が呼び出しを取り消しました。",
  timeout: "時間内に応答がなかったため、呼び出しを終了しました。",
  declined: "呼び出しを辞退しました。",
  booth_lost: "ブースとの接続が切れたため、呼び出しを終了しました。",
  taken: "他の職員が応答しました。",
};

const END_TEXT = {
  hangup_booth: "利用者が通話を終了しました。",
  hangup_staff: "通話を終了しました。",
  booth_lost: "ブースとの接続が切れたため、通話が終了しました。",
  staff_lost: "この画面とサーバーの接続が切れたため、通話が終了しました。",
  media_failed: "映像・音声の接続ができなかったため、通話が終了しました。",
  server_restart: "サーバーの再起動により通話が終了しました。",
};

const RECEIVE_ONLY_NOTICE = "カメラ・マイクが使えないため、受信のみで通話しています";
const AUDIO_ONLY_NOTICE = "カメラが使えないため、音声のみで通話しています";
const ICE_GATHERING_LIMIT_MS = 3000;
const MEDIA_PERMISSION_LIMIT_MS = 20000;

const DATA_CHANNEL_LABEL = "ekichika";

const READER_TEXT = {
  ready: "カードリーダー：カードなし",
  card_present: "カードリーダー：カードあり",
  busy: "カードリーダー：読み取り中",
  offline: "カードリーダー：接続されていません",
  error: "カードリーダー：エラー",
  none: "カードリーダー：なし",
};

const CARD_STAGE_TEXT = {
  waiting_for_card: () => "利用者にカードを置いてもらっています…",
  waiting_for_pin: (tries) =>
    tries == null
      ? "利用者が暗証番号を入力しています…"
      : `利用者が暗証番号を入力しています…（残り ${tries} 回）`,
  reading: () => "カードを読み取っています…",
};

const SEX_TEXT = { male: "男", female: "女", other: "その他", unknown: "不明" };

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------
// Page state, exposed read-only for tests and support staff: window.ekichika
// ---------------------------------------------------------------------------------------

const page = {
  me: null,
  state: "offline",
  connection: "connecting",
  departments: new Map(), // code → name_ja
  queue: [],
  offer: null, // {id, msg, receivedAt, deadline}
  session: null, // the call in progress, see startCall
  wrapUpSessionId: null,
  lastError: null,
  pendingMedia: null, // getUserMedia started at the 応答 click
  client: null,
  peerDataSent: [], // data channel frames this page sent (requests only, no personal data)
  cardRequests: 0,
};

window.ekichika = {
  get state() {
    return page.state;
  },
  get connection() {
    return page.connection;
  },
  get pc() {
    return page.session ? page.session.pc : null;
  },
  get sessionId() {
    return page.session ? page.session.id : null;
  },
  get mediaMode() {
    return page.session ? page.session.mediaMode : null;
  },
  /** Of the current peer connection: 0, then one more per renegotiation after a drop. */
  get generation() {
    return page.session ? page.session.generation : null;
  },
  get lastError() {
    return page.lastError;
  },
  get queue() {
    return page.queue;
  },
  /** Frames sent on the data channel in this page's life (card requests; for checks). */
  get peerDataSent() {
    return page.peerDataSent.slice();
  },
  get dataChannel() {
    return page.session && page.session.channel ? page.session.channel.readyState : null;
  },
  /** Send one PeerData frame in the current call (the print panel uses it). */
  sendPeerData(message) {
    return page.session ? sendPeer(page.session, message) : false;
  },
  get peerBufferedAmount() {
    return page.session && page.session.channel ? page.session.channel.bufferedAmount : 0;
  },
  /** Frames decoded so far from the booth's main video (0 when not in a call). */
  async framesDecoded() {
    const pc = page.session && page.session.pc;
    if (!pc) return 0;
    const stats = await pc.getStats();
    let best = 0;
    stats.forEach((report) => {
      if (report.type === "inbound-rtp" && report.kind === "video") {
        best = Math.max(best, report.framesDecoded || 0);
      }
    });
    return best;
  },
};

const errorBox = new ErrorBox($("error-box"));

function send(message) {
  if (!page.client || !page.client.send(message)) {
    showNotice("サーバーに接続されていないため、操作を送信できませんでした。", "warn");
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// Ring tone: generated with WebAudio (two-note chime, repeated), no audio file
// ---------------------------------------------------------------------------------------

class Ringer {
  constructor() {
    this.ctx = null;
    this.timer = null;
  }

  /** Creates/resumes the AudioContext; call from a click so that autoplay rules allow it. */
  unlock() {
    try {
      if (!this.ctx) this.ctx = new AudioContext();
      if (this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
    } catch {
      this.ctx = null;
    }
  }

  start() {
    this.unlock();
    if (!this.ctx || this.timer) return;
    const chime = () => {
      const ctx = this.ctx;
      const t0 = ctx.currentTime + 0.01;
      [784, 1047, 784, 1047].forEach((freq, i) => {
        const osc = ctx.createOscillator();
        const gain = ctx.createGain();
        const at = t0 + i * 0.22;
        osc.type = "sine";
        osc.frequency.value = freq;
        gain.gain.setValueAtTime(0.0001, at);
        gain.gain.exponentialRampToValueAtTime(0.25, at + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, at + 0.2);
        osc.connect(gain).connect(ctx.destination);
        osc.start(at);
        osc.stop(at + 0.21);
      });
    };
    chime();
    this.timer = setInterval(chime, 2000);
    document.body.dataset.ringing = "true";
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    delete document.body.dataset.ringing;
  }
}

const ringer = new Ringer();

// ---------------------------------------------------------------------------------------
// Rendering helpers
// ---------------------------------------------------------------------------------------

function departmentName(code) {
  return page.departments.get(code) || code;
}

let noticeTimer = null;
function showNotice(text, kind = "info") {
  const el = $("notice");
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    el.hidden = true;
  }, 10000);
}

function setState(state, reason) {
  page.state = state;
  document.body.dataset.state = state;
  $("state-label").textContent = STATE_LABELS[state] || state;
  $("state-label").dataset.state = state;
  renderToggle();
  if (reason) showNotice(reason, "warn");
  if (state !== "wrap_up" && page.wrapUpSessionId && state !== "in_call") {
    hideWrapUp();
  }
}

function renderToggle() {
  const button = $("toggle-available");
  const connected = page.connection === "connected";
  // While ringing, in a call or in wrap-up the state is the server's; no toggle to show.
  button.hidden = ["ringing", "in_call", "wrap_up"].includes(page.state);
  if (page.state === "available") {
    button.textContent = "離席";
    button.className = "away-button";
    button.disabled = !connected;
  } else {
    button.textContent = "受付開始";
    button.className = "primary";
    button.disabled = !connected || !(page.state === "away" || page.state === "offline");
  }
}

function renderQueue() {
  const body = $("queue-body");
  body.replaceChildren();
  for (const entry of page.queue) {
    const row = document.createElement("tr");
    row.dataset.requestId = entry.request_id;
    if (page.me && entry.offered_to === page.me.staff_id) row.className = "offered";
    const cells = [
      entry.booth.name,
      entry.booth.site_name,
      departmentName(entry.department),
      languageName(entry.language),
    ];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      row.append(td);
    }
    const wait = document.createElement("td");
    wait.className = "waiting";
    wait.dataset.since = entry.requested_at;
    row.append(wait);
    body.append(row);
  }
  $("queue-count").textContent = String(page.queue.length);
  $("queue-empty").hidden = page.queue.length > 0;
  $("queue-table").hidden = page.queue.length === 0;
  tick();
}

function tick() {
  const now = Date.now();
  for (const cell of document.querySelectorAll("td.waiting[data-since]")) {
    cell.textContent = formatDuration((now - Date.parse(cell.dataset.since)) / 1000);
  }
  if (page.offer) {
    const left = Math.max(0, (page.offer.deadline - performance.now()) / 1000);
    $("ring-countdown").textContent = String(Math.ceil(left));
    $("ring-bar").style.width = `${(100 * left) / page.offer.msg.ring_timeout_s}%`;
    if (left <= 0) ringer.stop();
  }
  if (page.session) {
    $("call-elapsed").textContent = formatClock((Date.now() - page.session.startedAt) / 1000);
  }
}

// ---------------------------------------------------------------------------------------
// Offers
// ---------------------------------------------------------------------------------------

function onOffer(msg) {
  page.offer = { id: msg.offer_id, msg, deadline: performance.now() + msg.ring_timeout_s * 1000 };
  $("ring-booth").textContent = msg.booth.name;
  $("ring-site").textContent = msg.booth.site_name;
  $("ring-department").textContent = departmentName(msg.department);
  $("ring-language").textContent = languageName(msg.language);
  $("accept").disabled = false;
  $("decline").disabled = false;
  $("ring-panel").hidden = false;
  $("ring-panel").dataset.offerId = msg.offer_id;
  ringer.start();
  tick();
}

function hideOffer() {
  page.offer = null;
  ringer.stop();
  $("ring-panel").hidden = true;
}

function onOfferWithdrawn(msg) {
  if (!page.offer || page.offer.id !== msg.offer_id) return;
  hideOffer();
  releasePendingMedia();
  showNotice(WITHDRAW_TEXT[msg.reason] || "呼び出しは終了しました。", "info");
}

function acceptOffer() {
  if (!page.offer) return;
  ringer.stop();
  $("accept").disabled = true;
  $("decline").disabled = true;
  // Ask for the camera now: the click allows the permission prompt and saves time.
  if (!page.pendingMedia) page.pendingMedia = acquireMedia();
  send({ type: "accept", offer_id: page.offer.id });
}

function declineOffer() {
  if (!page.offer) return;
  const offerId = page.offer.id;
  hideOffer();
  send({ type: "decline", offer_id: offerId });
}

// ---------------------------------------------------------------------------------------
// Media
// ---------------------------------------------------------------------------------------

function withTimeout(promise, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("timeout")), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

async function tryGetUserMedia(constraints) {
  const request = navigator.mediaDevices.getUserMedia(constraints);
  try {
    return await withTimeout(request, MEDIA_PERMISSION_LIMIT_MS);
  } catch (err) {
    // A permission prompt answered after we gave up: release what it grants.
    request.then((late) => late.getTracks().forEach((t) => t.stop())).catch(() => {});
    throw err;
  }
}

/** {stream, mode}: mode "full", "audio-only" or "receive-only". Never rejects. */
async function acquireMedia() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return { stream: null, mode: "receive-only" };
  }
  try {
    const stream = await tryGetUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true },
      video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } },
    });
    return { stream, mode: stream.getVideoTracks().length ? "full" : "audio-only" };
  } catch {
    // fall through: maybe there is a microphone but no camera
  }
  try {
    const stream = await tryGetUserMedia({ audio: true });
    return { stream, mode: "audio-only" };
  } catch {
    return { stream: null, mode: "receive-only" };
  }
}

function releasePendingMedia() {
  const pending = page.pendingMedia;
  page.pendingMedia = null;
  if (pending) pending.then(({ stream }) => stopStream(stream));
}

function stopStream(stream) {
  if (stream) stream.getTracks().forEach((t) => t.stop());
}

function iceServersFor(servers) {
  return (servers || []).map((s) => {
    const out = { urls: s.urls };
    if (s.username != null) out.username = s.username;
    if (s.credential != null) out.credential = s.credential;
    return out;
  });
}

function waitForIceGathering(pc, limitMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, limitMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

function mediaState(session) {
  const audio = session.stream && session.stream.getAudioTracks()[0];
  const video = session.stream && session.stream.getVideoTracks()[0];
  return {
    type: "media_state",
    audio: audio ? (audio.enabled ? "on" : "muted") : "none",
    video: video ? (video.enabled ? "on" : "off") : "none",
  };
}

function sendMediaState(session) {
  send({ type: "relay", session_id: session.id, payload: mediaState(session) });
}

// ---------------------------------------------------------------------------------------
// The call
// ---------------------------------------------------------------------------------------

function onCallStarted(msg) {
  hideOffer();
  if (msg.role !== "answerer") {
    page.lastError = { code: "out_of_order", message: `unexpected role ${msg.role}` };
    return;
  }
  const current = page.session;
  if (current && current.id === msg.session_id && !current.placeholder) return;
  if (current && current.id === msg.session_id) {
    // The session the welcome named and this page did not know: its media never
    // connected, so the call is set up from here after all.
    page.session = null;
    $("notice").hidden = true;
  } else {
    endCallMedia();
  }
  const session = {
    id: msg.session_id,
    msg,
    startedAt: Date.now(),
    pc: null,
    stream: null,
    mediaMode: null,
    connectedSent: false,
    failedSent: false,
    everConnected: false,
    generation: 0, // of the current peer connection (the booth renegotiates after a drop)
    hangingUp: false,
    remoteStream: new MediaStream(),
    documentStream: new MediaStream(),
    chain: null,
  };
  page.session = session;
  showCallPanel(msg);
  // Relay payloads that arrive before the peer connection exists wait on this chain.
  session.chain = setUpPeer(session).catch((err) => callError(session, err));
}

async function setUpPeer(session) {
  const pending = page.pendingMedia || acquireMedia();
  page.pendingMedia = null;
  const { stream, mode } = await pending;
  if (page.session !== session) {
    stopStream(stream);
    return;
  }
  session.stream = stream;
  session.mediaMode = mode;
  document.body.dataset.media = mode;
  renderLocalMedia(session);

  newPeer(session);
}

function newPeer(session) {
  const pc = new RTCPeerConnection({
    iceServers: iceServersFor(session.msg.ice_servers),
    // ConsoleConfig.ice_relay_only: media only through the call's TURN servers.
    iceTransportPolicy: page.me && page.me.ice_relay_only ? "relay" : "all",
  });
  session.pc = pc;
  pc.addEventListener("track", (event) => {
    if (session.pc === pc) onRemoteTrack(session, event);
  });
  pc.addEventListener("datachannel", (event) => {
    if (session.pc === pc) onDataChannel(session, event.channel);
  });
  pc.addEventListener("connectionstatechange", () => {
    if (session.pc === pc) onConnectionState(session);
  });
  return pc;
}

// The booth lost the media path and offers a fresh connection (a newer generation): close
// the old peer connection and answer with a new one; the session and the camera stay.
function renegotiate(session, generation) {
  const old = session.pc;
  session.generation = generation;
  if (session.channel) session.channel.close();
  session.channel = null;
  $("card-read").disabled = true;
  session.remoteStream = new MediaStream();
  session.documentStream = new MediaStream();
  newPeer(session);
  if (old) old.close();
  showReconnecting(session);
}

function showReconnecting(session) {
  if (page.session !== session) return;
  document.body.dataset.call = "reconnecting";
  const status = $("remote-status");
  status.textContent = "再接続中… ブースとの映像・音声を回復しています";
  status.hidden = false;
  announce("ekichika:reconnecting", { sessionId: session.id, generation: session.generation });
}

function onRemoteTrack(session, event) {
  const track = event.track;
  if (track.kind === "audio") {
    session.remoteStream.addTrack(track);
  } else {
    const videoTransceivers = session.pc
      .getTransceivers()
      .filter((t) => t.receiver.track && t.receiver.track.kind === "video");
    const index = videoTransceivers.indexOf(event.transceiver);
    if (index > 0) {
      // A second video from the booth is the document camera.
      session.documentStream.addTrack(track);
      const doc = $("document-video");
      doc.srcObject = session.documentStream;
      doc.hidden = false;
      doc.play().catch(() => {});
    } else {
      session.remoteStream.addTrack(track);
    }
  }
  const video = $("remote-video");
  if (video.srcObject !== session.remoteStream) video.srcObject = session.remoteStream;
  video.play().catch(() => {});
}

// ---------------------------------------------------------------------------------------
// The data channel and the My Number card panel
// ---------------------------------------------------------------------------------------

function onDataChannel(session, channel) {
  if (channel.label !== DATA_CHANNEL_LABEL || page.session !== session) return;
  session.channel = channel;
  const opened = () => {
    if (page.session === session) $("card-read").disabled = false;
    announce("ekichika:channel", { sessionId: session.id, open: true });
  };
  channel.addEventListener("open", opened);
  channel.addEventListener("close", () => {
    if (page.session === session) $("card-read").disabled = true;
    announce("ekichika:channel", { sessionId: session.id, open: false });
  });
  channel.binaryType = "arraybuffer"; // document stills arrive as binary frames
  channel.addEventListener("message", (event) => {
    if (page.session !== session) return;
    if (event.data instanceof ArrayBuffer) {
      announce("ekichika:peer-binary", { sessionId: session.id, data: event.data });
      return;
    }
    if (typeof event.data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      return;
    }
    onPeerData(session, msg);
  });
  if (channel.readyState === "open") opened();
}

function sendPeer(session, message) {
  const channel = session.channel;
  if (!channel || channel.readyState !== "open") {
    showNotice("ブースとのデータ接続がないため、送信できませんでした。", "warn");
    return false;
  }
  const frame = JSON.stringify(message);
  channel.send(frame);
  page.peerDataSent.push(frame);
  return true;
}

function requestCardRead() {
  const session = page.session;
  if (!session) return;
  page.cardRequests += 1;
  const requestId = `card-${Date.now().toString(36)}-${page.cardRequests}`;
  if (!sendPeer(session, { type: "card_read_request", request_id: requestId })) return;
  session.cardRequestId = requestId;
  clearCardFacts();
  $("card-panel").hidden = false;
  $("card-panel").dataset.state = "requested";
  showCardProgress("ブースに読み取りを依頼しました…");
  $("card-cancel").hidden = false;
}

function cancelCardRead() {
  const session = page.session;
  if (!session || !session.cardRequestId) return;
  sendPeer(session, { type: "card_read_cancel", request_id: session.cardRequestId });
}

function showCardProgress(text) {
  $("card-progress").textContent = text;
  $("card-progress").hidden = false;
  $("card-failure").hidden = true;
}

function clearCardFacts() {
  for (const id of ["card-name", "card-address", "card-birth", "card-sex"]) {
    $(id).textContent = "";
    delete $(id).dataset.value;
  }
  $("card-facts").hidden = true;
  $("card-failure").hidden = true;
  $("card-failure").textContent = "";
  $("card-progress").hidden = true;
  $("card-clear").hidden = true;
  $("card-cancel").hidden = true;
  for (const b of document.querySelectorAll("#card-facts button.copy")) {
    b.textContent = "コピー";
    b.classList.remove("copied");
  }
}

function resetCardPanel() {
  clearCardFacts();
  $("card-reader").textContent = "";
  $("card-read").disabled = true;
  $("card-panel").hidden = true;
  delete $("card-panel").dataset.state;
}

function eraName(date) {
  const eras = [
    ["令和", "2019-05-01"],
    ["平成", "1989-01-08"],
    ["昭和", "1926-12-25"],
    ["大正", "1912-07-30"],
    ["明治", "1868-01-25"],
  ];
  for (const [name, start] of eras) {
    if (date >= start) {
      const year = Number(date.slice(0, 4)) - Number(start.slice(0, 4)) + 1;
      return `${name}${year === 1 ? "元" : year}年`;
    }
  }
  return "";
}

function formatBirthDate(iso) {
  const [y, m, d] = iso.split("-").map(Number);
  const era = eraName(iso);
  return `${y}年${m}月${d}日${era ? `（${era}）` : ""}`;
}

// Other panels (print-panel.js) follow the call through these events on document.
function announce(name, detail) {
  document.dispatchEvent(new CustomEvent(name, { detail }));
}

function onPeerData(session, msg) {
  announce("ekichika:peer-data", { sessionId: session.id, msg });
  const panel = $("card-panel");
  switch (msg.type) {
    case "card_status":
      $("card-reader").textContent = READER_TEXT[msg.reader] || "";
      break;
    case "card_read_progress": {
      if (msg.request_id !== session.cardRequestId) return;
      const stage = CARD_STAGE_TEXT[msg.stage];
      panel.dataset.state = msg.stage;
      showCardProgress(stage ? stage(msg.remaining_tries) : "");
      break;
    }
    case "card_basic_info":
      if (msg.request_id !== session.cardRequestId) return;
      panel.dataset.state = "done";
      $("card-progress").hidden = true;
      $("card-failure").hidden = true;
      $("card-name").textContent = msg.name;
      $("card-address").textContent = msg.address;
      $("card-birth").textContent = formatBirthDate(msg.birth_date);
      $("card-birth").dataset.value = formatBirthDate(msg.birth_date).replace(/（.*$/, "");
      $("card-sex").textContent = SEX_TEXT[msg.sex] || msg.sex;
      $("card-facts").hidden = false;
      $("card-cancel").hidden = true;
      $("card-clear").hidden = false;
      break;
    case "card_read_failed": {
      if (msg.request_id !== session.cardRequestId) return;
      panel.dataset.state = "failed";
      $("card-progress").hidden = true;
      const failure = $("card-failure");
      let text = msg.message || "カードを読み取れませんでした。";
      if (msg.reason === "wrong_pin" && msg.remaining_tries != null) {
        text = `暗証番号が違います（残り ${msg.remaining_tries} 回）。${msg.message.replace(/^暗証番号が違います。/, "")}`;
      }
      failure.textContent = text;
      failure.dataset.reason = msg.reason;
      failure.hidden = false;
      $("card-cancel").hidden = true;
      $("card-clear").hidden = false;
      break;
    }
    default:
      break;
  }
}

async function copyField(button) {
  const source = $(button.dataset.copy);
  const value = source.dataset.value ?? source.textContent;
  try {
    await navigator.clipboard.writeText(value);
    button.textContent = "コピーしました";
    button.classList.add("copied");
    setTimeout(() => {
      button.textContent = "コピー";
      button.classList.remove("copied");
    }, 2000);
  } catch {
    showNotice("コピーできませんでした。ブラウザのクリップボードの許可を確認してください。", "warn");
  }
}

function onConnectionState(session) {
  const pc = session.pc;
  const state = pc.connectionState;
  document.body.dataset.call = state;
  const status = $("remote-status");
  if (state === "connected") {
    status.hidden = true;
    session.everConnected = true;
    announce("ekichika:media", { sessionId: session.id, generation: session.generation });
    if (!session.connectedSent) {
      session.connectedSent = true;
      send({ type: "media_connected", session_id: session.id });
    }
  } else if (session.everConnected && (state === "disconnected" || state === "failed")) {
    // The booth renegotiates a fresh connection (and ends the call if the outage lasts).
    showReconnecting(session);
  } else if (state === "disconnected") {
    status.textContent = "映像・音声が途切れています。回復を待っています…";
    status.hidden = false;
  } else if (state === "failed") {
    status.textContent = "映像・音声の接続に失敗しました。";
    status.hidden = false;
    if (!session.failedSent && page.session === session) {
      session.failedSent = true;
      send({ type: "media_failed", session_id: session.id, detail: "ICE connection failed" });
    }
  }
}

async function applyRemoteSdp(session, payload) {
  const pc = session.pc;
  if (!pc || payload.sdp_type !== "offer") return;
  if ((payload.generation || 0) !== session.generation) return; // superseded meanwhile
  await pc.setRemoteDescription({ type: "offer", sdp: payload.sdp });
  let audio = session.stream ? session.stream.getAudioTracks()[0] : null;
  let video = session.stream ? session.stream.getVideoTracks()[0] : null;
  for (const transceiver of pc.getTransceivers()) {
    const kind = transceiver.receiver.track && transceiver.receiver.track.kind;
    const track = kind === "audio" ? audio : kind === "video" ? video : null;
    if (track) {
      await transceiver.sender.replaceTrack(track);
      if (transceiver.sender.setStreams) transceiver.sender.setStreams(session.stream);
      transceiver.direction = "sendrecv";
      if (kind === "audio") audio = null;
      else video = null;
    } else {
      transceiver.direction = "recvonly";
    }
  }
  const answer = await pc.createAnswer();
  await pc.setLocalDescription(answer);
  await waitForIceGathering(pc, ICE_GATHERING_LIMIT_MS);
  if (page.session !== session) return;
  send({
    type: "relay",
    session_id: session.id,
    payload: {
      type: "sdp",
      sdp_type: "answer",
      sdp: pc.localDescription.sdp,
      generation: payload.generation || 0,
    },
  });
  sendMediaState(session);
}

async function applyRemoteIce(session, payload) {
  const pc = session.pc;
  if (!pc || !payload.candidate) return; // null: end of candidates
  if ((payload.generation || 0) !== session.generation) return; // an old connection's
  const candidate = payload.candidate.startsWith("candidate:")
    ? payload.candidate
    : `candidate:${payload.candidate}`;
  const init = { candidate };
  if (payload.sdp_mid != null) init.sdpMid = payload.sdp_mid;
  if (payload.sdp_mline_index != null) init.sdpMLineIndex = payload.sdp_mline_index;
  if (init.sdpMid == null && init.sdpMLineIndex == null) init.sdpMLineIndex = 0;
  try {
    await pc.addIceCandidate(init);
  } catch (err) {
    console.warn("ICE candidate from the booth was not usable", err);
  }
}

function showRemoteMediaState(payload) {
  const el = $("remote-media-state");
  const parts = [];
  if (payload.audio === "muted") parts.push("利用者のマイクはミュート中です");
  if (payload.audio === "none") parts.push("ブースのマイクが使えません");
  if (payload.video === "off") parts.push("ブースのカメラは停止中です");
  if (payload.video === "none") parts.push("ブースのカメラが使えません");
  el.textContent = parts.join("・");
  el.hidden = parts.length === 0;
}

function onRelay(msg) {
  const session = page.session;
  if (!session || session.id !== msg.session_id) return;
  const payload = msg.payload;
  if (payload.type === "media_state") {
    showRemoteMediaState(payload);
    return;
  }
  const generation = payload.generation || 0;
  if (generation < session.generation) return; // from a connection the booth gave up
  session.chain = session.chain
    .then(() => {
      if (page.session !== session) return undefined;
      if (generation > session.generation) {
        if (payload.type !== "sdp" || payload.sdp_type !== "offer") return undefined;
        renegotiate(session, generation);
      }
      if (payload.type === "sdp") return applyRemoteSdp(session, payload);
      if (payload.type === "ice") return applyRemoteIce(session, payload);
      return undefined;
    })
    .catch((err) => callError(session, err));
}

function callError(session, err) {
  console.error("call setup failed", err);
  page.lastError = { code: "media", message: String(err) };
  if (page.session === session && !session.failedSent) {
    session.failedSent = true;
    send({ type: "media_failed", session_id: session.id, detail: String(err).slice(0, 200) });
  }
}

function showCallPanel(msg) {
  resetCardPanel();
  $("call-booth").textContent = msg.booth.name;
  $("call-site").textContent = msg.booth.site_name;
  $("call-department").textContent = departmentName(msg.department);
  $("call-language").textContent = languageName(msg.language);
  $("call-elapsed").textContent = "0:00";
  $("remote-status").textContent = "ブースの映像を待っています…";
  $("remote-status").hidden = false;
  $("remote-media-state").hidden = true;
  $("media-notice").hidden = true;
  $("hangup").disabled = false;
  $("document-video").hidden = true;
  $("call-panel").hidden = false;
  document.body.dataset.call = "new";
  announce("ekichika:call", {
    sessionId: msg.session_id,
    booth: msg.booth.name,
    site: msg.booth.site_name,
    department: departmentName(msg.department),
  });
}

function renderLocalMedia(session) {
  const local = $("local-video");
  const notice = $("media-notice");
  const hasVideo = Boolean(session.stream && session.stream.getVideoTracks().length);
  const hasAudio = Boolean(session.stream && session.stream.getAudioTracks().length);
  if (hasVideo) {
    local.srcObject = new MediaStream(session.stream.getVideoTracks());
    local.play().catch(() => {});
  } else {
    local.srcObject = null;
  }
  local.hidden = !hasVideo;
  $("local-none").hidden = hasVideo;
  $("mute").disabled = !hasAudio;
  $("camera").disabled = !hasVideo;
  $("mute").textContent = "マイクをミュート";
  $("camera").textContent = "カメラを停止";
  if (session.mediaMode === "receive-only") {
    notice.textContent = RECEIVE_ONLY_NOTICE;
    notice.hidden = false;
  } else if (session.mediaMode === "audio-only") {
    notice.textContent = AUDIO_ONLY_NOTICE;
    notice.hidden = false;
  } else {
    notice.hidden = true;
  }
}

function toggleTrack(kind) {
  const session = page.session;
  if (!session || !session.stream) return;
  const track =
    kind === "audio" ? session.stream.getAudioTracks()[0] : session.stream.getVideoTracks()[0];
  if (!track) return;
  track.enabled = !track.enabled;
  if (kind === "audio") {
    $("mute").textContent = track.enabled ? "マイクをミュート" : "ミュート解除";
    $("mute").classList.toggle("active", !track.enabled);
  } else {
    $("camera").textContent = track.enabled ? "カメラを停止" : "カメラを再開";
    $("camera").classList.toggle("active", !track.enabled);
  }
  sendMediaState(session);
}

function hangUp() {
  const session = page.session;
  if (!session) return;
  if (send({ type: "hang_up", session_id: session.id })) {
    session.hangingUp = true;
    $("hangup").disabled = true;
  }
}

function endCallMedia() {
  const session = page.session;
  page.session = null;
  if (!session) return;
  if (session.pc) session.pc.close();
  stopStream(session.stream);
  $("remote-video").srcObject = null;
  $("local-video").srcObject = null;
  $("document-video").srcObject = null;
  if (session.channel) session.channel.close();
  session.channel = null;
  resetCardPanel(); // the card's facts are not kept after the call
  announce("ekichika:call-ended", { sessionId: session.id });
  $("call-panel").hidden = true;
  delete document.body.dataset.call;
  delete document.body.dataset.media;
}

function onSessionEnded(msg) {
  if (page.session && page.session.id !== msg.session_id) return;
  endCallMedia();
  showWrapUp(msg.session_id, END_TEXT[msg.reason] || "通話が終了しました。");
}

function showWrapUp(sessionId, reasonText) {
  page.wrapUpSessionId = sessionId;
  $("wrapup-reason").textContent = reasonText;
  $("wrapup-note").value = "";
  $("wrapup-done").disabled = false;
  $("wrapup-panel").hidden = false;
  $("wrapup-panel").dataset.sessionId = sessionId;
  $("wrapup-note").focus();
}

function hideWrapUp() {
  page.wrapUpSessionId = null;
  $("wrapup-panel").hidden = true;
}

function finishWrapUp() {
  if (!page.wrapUpSessionId) return;
  const note = $("wrapup-note").value.slice(0, 4000);
  if (send({ type: "wrap_up_done", session_id: page.wrapUpSessionId, note })) {
    $("wrapup-done").disabled = true;
    hideWrapUp();
  }
}

// ---------------------------------------------------------------------------------------
// Signaling messages
// ---------------------------------------------------------------------------------------

function onWelcome(msg) {
  page.departments = new Map(msg.departments.map((d) => [d.code, d.name_ja]));
  $("me-name").textContent = msg.staff.display_name;
  setState(msg.state);
  if (msg.session_id && msg.state === "wrap_up" && page.wrapUpSessionId !== msg.session_id) {
    endCallMedia();
    showWrapUp(msg.session_id, "通話は終了しています。");
  } else if (msg.session_id && msg.state === "in_call") {
    if (!page.session || page.session.id !== msg.session_id) {
      // The page was reloaded during a call: the media cannot be rejoined from here
      // (unless it never connected: then call_started follows and replaces this).
      showNotice("通話中の接続を引き継げませんでした。「終了」で通話を終えてください。", "warn");
      page.session = {
        id: msg.session_id,
        placeholder: true,
        startedAt: Date.now(),
        pc: null,
        stream: null,
        mediaMode: null,
        chain: Promise.resolve(),
      };
      $("call-panel").hidden = false;
      $("hangup").disabled = false;
    }
  } else if (page.session && page.session.id !== msg.session_id) {
    // The call ended while this page was disconnected from signaling.
    const endedId = page.session.id;
    endCallMedia();
    if (msg.state === "wrap_up") showWrapUp(endedId, "接続が切れている間に通話が終了しました。");
  }
  if (page.offer && msg.state !== "ringing") hideOffer();
}

function onMessage(msg) {
  switch (msg.type) {
    case "welcome":
      onWelcome(msg);
      break;
    case "state":
      setState(msg.state, msg.reason);
      if (msg.state !== "ringing" && page.offer && msg.state !== "in_call") hideOffer();
      break;
    case "queue":
      page.queue = msg.entries;
      renderQueue();
      break;
    case "offer":
      onOffer(msg);
      break;
    case "offer_withdrawn":
      onOfferWithdrawn(msg);
      break;
    case "call_started":
      onCallStarted(msg);
      break;
    case "relay":
      onRelay(msg);
      break;
    case "session_ended":
      onSessionEnded(msg);
      break;
    case "service":
      // The node cannot reach the others: what is sent now is handled once it is back.
      $("service-notice").hidden = msg.state !== "degraded";
      document.body.dataset.service = msg.state;
      if (msg.state === "ok") showNotice("サーバー間の連絡が回復しました。", "info");
      break;
    case "error":
      page.lastError = msg;
      errorBox.show(msg);
      if (msg.ref === "accept" && page.offer) {
        hideOffer();
        releasePendingMedia();
      }
      break;
    default:
      break; // booths snapshots etc. are for other pages
  }
}

function onStatus(status, detail) {
  page.connection = status;
  document.body.dataset.connection = status;
  renderConnectionBanner($("banner"), status, page.client, detail);
  if (status !== "connected") {
    hideOffer();
    setState(page.state === "in_call" || page.state === "wrap_up" ? page.state : "offline");
  }
  renderToggle();
}

// ---------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------

async function main() {
  $("toggle-available").addEventListener("click", () => {
    ringer.unlock();
    send({ type: "set_state", state: page.state === "available" ? "away" : "available" });
  });
  $("accept").addEventListener("click", () => {
    ringer.unlock();
    acceptOffer();
  });
  $("decline").addEventListener("click", declineOffer);
  $("hangup").addEventListener("click", hangUp);
  $("mute").addEventListener("click", () => toggleTrack("audio"));
  $("camera").addEventListener("click", () => toggleTrack("video"));
  $("wrapup-done").addEventListener("click", finishWrapUp);
  $("card-read").addEventListener("click", requestCardRead);
  $("card-cancel").addEventListener("click", cancelCardRead);
  $("card-clear").addEventListener("click", clearCardFacts);
  for (const button of document.querySelectorAll("#card-facts button.copy")) {
    button.addEventListener("click", () => copyField(button));
  }
  setInterval(tick, 500);
  renderQueue();

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
