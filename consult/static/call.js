// The consult's video call in the browser: a camera and microphone check, then one
// RTCPeerConnection with the server's media hub (consult/protocol.py): one m-line pair that
// sends this browser's audio and video and receives the first other participant's, and two
// receiving pairs for the others, all BUNDLEd on one transport; the complete SDP goes over
// the signalling WebSocket (the hub does no trickle ICE). The `tracks` message says which
// m-line carries whom. A quality indicator reads getStats() every two seconds (with the
// server's measure of this browser's uplink from its `quality` messages). On a weak link the
// server switches a participant to audio only (`media-mode`; the page stops sending video
// and says so) and back; anyone can switch by hand. A dropped socket or a failed peer
// connection is rejoined with a fresh negotiation (aiortc has no ICE restart), while the
// others see "reconnecting". Recording is offered only when the consult has the patient's
// consent to it, and everyone sees while the call is recorded. The call's data channel
// (consult/datachannel.py) carries vital-sign readings, chat lines and shared images or PDFs:
// the server checks and keeps each in the patient's record before the others see it, and
// its refusals are shown beside the form they came from.
"use strict";
(function () {
  const root = document.getElementById("call");
  if (!root) return;
  const t = JSON.parse(root.dataset.i18n);
  const unitLabels = JSON.parse(root.dataset.units); // UCUM code -> as shown
  const decimals = JSON.parse(root.dataset.decimals); // kind -> places its values are kept to
  const consultId = root.dataset.consult;
  const $ = (id) => document.getElementById(id);
  const receivePairs = 3; // a full room of four: three others
  const state = {
    stream: null,
    pc: null,
    socket: null,
    me: null,
    present: new Map(), // participant id -> {id, displayName, role}
    tracks: new Map(), // mid -> participant id
    receivers: new Map(), // mid -> MediaStreamTrack
    tiles: new Map(), // participant id -> {figure, video, stream}
    joinedAt: null,
    left: false,
    lastStats: null,
    videoSender: null,
    mode: "video", // this browser's media mode, as the server last said
    manual: false, // whether audio only was chosen here
    recording: null, // the server's `recording` message while on
    reconnecting: false,
    retries: 0,
    serverQuality: null,
    consent: root.dataset.recordingConsent === "yes",
    channel: null, // the data channel of the current peer connection
    outbox: [], // {data, id}: what waits for the data channel, by the message it belongs to
    pumping: false,
    resent: 0, // messages sent again after a channel closed before their reply
    pending: new Map(), // our message id -> what we sent, until the server's reply
    seen: new Set(), // "from/type/id" of what is shown: a replay shows nothing twice
  };

  function say(element, text) {
    $(element).textContent = text;
  }

  function format(template, values) {
    return template.replace(/\{(\w+)\}/g, (_, key) => String(values[key] ?? ""));
  }

  // -- the check before joining -----------------------------------------------------------

  async function precheck() {
    say("device-status", t.checking);
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({
        audio: true,
        video: { width: { ideal: 640 }, height: { ideal: 480 } },
      });
    } catch (error) {
      say("device-status", t.noDevices);
      return;
    }
    $("preview").srcObject = state.stream;
    meter(state.stream);
    say("device-status", t.ready);
    $("join").disabled = false;
  }

  function meter(stream) {
    const AudioContextClass = window.AudioContext || window.webkitAudioContext;
    if (!AudioContextClass) return;
    const context = new AudioContextClass();
    const analyser = context.createAnalyser();
    analyser.fftSize = 512;
    context.createMediaStreamSource(stream).connect(analyser);
    const samples = new Uint8Array(analyser.fftSize);
    setInterval(() => {
      analyser.getByteTimeDomainData(samples);
      let peak = 0;
      for (const sample of samples) peak = Math.max(peak, Math.abs(sample - 128) / 128);
      $("mic-level").value = peak;
    }, 100);
  }

  // -- signalling ---------------------------------------------------------------------------

  function notice(text) {
    const element = $("media-notice");
    element.textContent = text;
    element.hidden = !text;
  }

  function nameOf(participantId) {
    if (state.me && participantId === state.me.id) return t.you;
    const other = state.present.get(participantId);
    return other ? other.displayName : participantId;
  }

  function join() {
    $("join").disabled = true;
    $("precheck").hidden = true;
    $("stage").hidden = false;
    $("local").srcObject = state.stream;
    say("call-status", t.connecting);
    connect();
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/consult/${consultId}/ws`);
    state.socket = socket;
    if (state.joinedAt === null) state.joinedAt = performance.now();
    socket.addEventListener("open", () => send({ type: "join" }));
    socket.addEventListener("message", (event) => receive(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      if (state.socket !== socket) return;
      closePeer();
      if (event.code === 4403) {
        // Refused (no longer the consult's participant, or the consult is over).
        state.left = true;
        say("call-status", t.failed);
      } else if (!state.left) reconnect();
    });
  }

  // A dropped line: join afresh, backing off to five seconds between tries; the server keeps
  // our place for its grace period, and the others see us as reconnecting meanwhile.
  function reconnect() {
    state.reconnecting = true;
    say("call-status", t.reconnecting);
    const wait = Math.min(5000, 500 * 2 ** state.retries);
    state.retries += 1;
    setTimeout(() => {
      if (!state.left) connect();
    }, wait);
  }

  function send(message) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify(message));
    }
  }

  async function receive(message) {
    switch (message.type) {
      case "joined":
        state.me = message.participant;
        state.present.clear();
        for (const other of message.participants) state.present.set(other.id, other);
        renderPresence();
        await negotiate(message.iceServers || []);
        break;
      case "answer":
        await state.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
        say(
          "call-status",
          state.reconnecting ? t.reconnected : state.present.size ? t.connected : t.waiting,
        );
        state.reconnecting = false;
        state.retries = 0;
        break;
      case "tracks":
        state.tracks = new Map(message.tracks.map((track) => [track.mid, track.participantId]));
        renderTiles();
        break;
      case "presence":
        {
          const name = { name: message.participant.displayName };
          if (message.event === "joined") {
            state.present.set(message.participant.id, message.participant);
            say("call-status", format(t.joinedNow, name));
          } else if (message.event === "reconnecting") {
            say("call-status", format(t.otherReconnecting, name));
          } else if (message.event === "reconnected") {
            state.present.set(message.participant.id, message.participant);
            say("call-status", format(t.otherReconnected, name));
          } else {
            state.present.delete(message.participant.id);
            say("call-status", format(t.leftNow, name));
          }
          const tile = state.tiles.get(message.participant.id);
          if (tile) tile.figure.classList.toggle("reconnecting", message.event === "reconnecting");
        }
        renderPresence();
        renderTiles();
        break;
      case "media-mode":
        await mediaMode(message);
        break;
      case "quality":
        state.serverQuality = message;
        break;
      case "recording":
        state.recording = message.state === "on" ? message : null;
        if (typeof message.consent === "boolean") consentOnFile(message.consent);
        if (message.reason === "consent-withdrawn") notice(t.consentWithdrawn);
        $("recording").hidden = !state.recording;
        $("record").textContent = state.recording ? t.recordStop : t.recordStart;
        $("record").disabled = !state.consent && !state.recording;
        break;
      case "error":
        say("call-status", t.errors[message.code] || message.message);
        if (message.code === "media-failed" && state.pc) await negotiate(state.iceServers || []);
        break;
      case "bye":
        state.left = true;
        say("call-status", format(t.ended, { reason: message.reason }));
        closePeer();
        break;
    }
  }

  // -- media ----------------------------------------------------------------------------------

  function waitForGathering(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (pc.iceGatheringState === "complete") {
          pc.removeEventListener("icegatheringstatechange", check);
          resolve();
        }
      };
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  async function negotiate(iceServers) {
    closePeer();
    state.iceServers = iceServers;
    const pc = new RTCPeerConnection({ iceServers, bundlePolicy: "max-bundle" });
    state.pc = pc;
    const [audio] = state.stream.getAudioTracks();
    const [video] = state.stream.getVideoTracks();
    pc.addTransceiver(audio, { direction: "sendrecv", streams: [state.stream] });
    state.videoSender = pc.addTransceiver(video, {
      direction: "sendrecv",
      streams: [state.stream],
    }).sender;
    if (state.mode === "audio-only") await state.videoSender.replaceTrack(null);
    for (let n = 1; n < receivePairs; n += 1) {
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.addTransceiver("video", { direction: "recvonly" });
    }
    openChannel(pc);
    pc.addEventListener("track", (event) => {
      state.receivers.set(event.transceiver.mid, event.track);
      renderTiles();
    });
    pc.addEventListener("connectionstatechange", () => {
      // The media path failed while signalling still stands: negotiate afresh.
      if (pc.connectionState === "failed" && state.pc === pc && !state.left) {
        state.reconnecting = true;
        say("call-status", t.reconnecting);
        negotiate(state.iceServers || []).catch(() => say("call-status", t.failed));
      }
    });
    await pc.setLocalDescription(await pc.createOffer());
    await waitForGathering(pc);
    send({ type: "offer", sdp: pc.localDescription.sdp });
  }

  function closePeer() {
    if (state.pc) {
      state.pc.close();
      state.pc = null;
    }
    channelLost(state.channel);
    state.receivers.clear();
  }

  function renderTiles() {
    const wanted = new Map();
    for (const [mid, participantId] of state.tracks) {
      const track = state.receivers.get(mid);
      if (!track || !state.present.has(participantId)) continue;
      if (!wanted.has(participantId)) wanted.set(participantId, []);
      wanted.get(participantId).push(track);
    }
    for (const [participantId, tile] of state.tiles) {
      if (!wanted.has(participantId)) {
        tile.figure.remove();
        state.tiles.delete(participantId);
      }
    }
    for (const [participantId, tracks] of wanted) {
      let tile = state.tiles.get(participantId);
      if (!tile) {
        const figure = document.createElement("figure");
        figure.className = "tile";
        figure.dataset.participant = participantId;
        const video = document.createElement("video");
        video.autoplay = true;
        video.playsInline = true;
        const caption = document.createElement("figcaption");
        caption.textContent = state.present.get(participantId).displayName;
        figure.append(video, caption);
        $("tiles").append(figure);
        tile = { figure, video, stream: new MediaStream() };
        video.srcObject = tile.stream;
        state.tiles.set(participantId, tile);
      }
      for (const old of tile.stream.getTracks()) {
        if (!tracks.includes(old)) tile.stream.removeTrack(old);
      }
      for (const track of tracks) {
        if (!tile.stream.getTracks().includes(track)) tile.stream.addTrack(track);
      }
      tile.video.play().catch(() => {});
    }
  }

  function renderPresence() {
    const list = $("presence");
    list.replaceChildren();
    for (const participant of state.present.values()) {
      const item = document.createElement("li");
      item.textContent = participant.displayName;
      item.dataset.participant = participant.id;
      list.append(item);
    }
  }

  // -- weak links and recording --------------------------------------------------------------

  async function mediaMode(message) {
    const mine = state.me && message.participantId === state.me.id;
    const audioOnly = message.mode === "audio-only";
    const name = { name: nameOf(message.participantId) };
    if (mine) {
      state.mode = message.mode;
      const [video] = state.stream.getVideoTracks();
      if (state.videoSender) await state.videoSender.replaceTrack(audioOnly ? null : video);
      const button = $("media-mode");
      button.textContent = audioOnly ? t.videoAgain : t.audioOnly;
      button.setAttribute("aria-pressed", String(audioOnly));
      root.dataset.mode = message.mode;
    }
    let text;
    if (!audioOnly) text = mine ? t.videoBackMe : format(t.videoBackOther, name);
    else if (message.reason === "manual") text = format(t.audioOnlyChosen, name);
    else text = mine ? t.audioOnlyMe : format(t.audioOnlyOther, name);
    notice(text);
    const tile = state.tiles.get(message.participantId);
    if (tile) tile.figure.classList.toggle("audio-only", audioOnly);
  }

  function switchMode() {
    state.manual = state.mode !== "audio-only";
    send({ type: "media-mode", mode: state.manual ? "audio-only" : "video" });
  }

  function consentOnFile(yes) {
    // The patient's clinic recorded or withdrew the consent during the call.
    state.consent = yes;
    const label = $("recording-consent");
    label.dataset.consent = yes ? "yes" : "no";
    label.textContent = yes ? t.consentYes : t.consentNo;
  }

  function record() {
    if (!state.consent) return;
    send({ type: "recording", action: state.recording ? "stop" : "start" });
  }

  // -- the call's data channel: readings, chat and files ---------------------------------------

  const CHUNK_BYTES = 16 * 1024; // consult.datachannel.CHUNK_BYTES
  const HIGH_WATER = 1024 * 1024; // wait for the channel to drain past this

  function newId(prefix) {
    const random = Math.random().toString(36).slice(2, 10);
    return `${prefix}-${Date.now().toString(36)}-${random}`;
  }

  function openChannel(pc) {
    const channel = pc.createDataChannel("consult", { ordered: true });
    channel.binaryType = "arraybuffer";
    channel.bufferedAmountLowThreshold = HIGH_WATER / 4;
    state.channel = channel;
    channel.addEventListener("open", () => {
      if (state.channel === channel) pump();
    });
    channel.addEventListener("close", () => channelLost(channel));
    channel.addEventListener("message", (event) => {
      if (typeof event.data === "string") dataMessage(JSON.parse(event.data));
    });
  }

  // What was sent on a channel and not yet answered may not have arrived (a file cut off
  // halfway cannot be finished on another channel): when the channel goes, everything
  // waiting for its reply is sent again, whole, on the next one, in the order it was first
  // sent. The server keeps each message id once, so a repeat of one that did arrive is only
  // answered with what was kept. After MAX_SENDS tries a message is given up, and said so.
  const MAX_SENDS = 3;

  function channelLost(channel) {
    if (!channel || state.channel !== channel) return;
    state.channel = null;
    const again = [];
    for (const [id, sent] of state.pending) {
      if (!sent.started) continue; // never left: it is still in the outbox, whole
      sent.started = false;
      sent.sends += 1;
      if (sent.sends >= MAX_SENDS) {
        state.pending.delete(id);
        gaveUp(sent);
        continue;
      }
      state.resent += 1;
      again.push(...sent.items.map((data) => ({ data, id })));
    }
    const resending = new Set(again.map((item) => item.id));
    state.outbox = [...again, ...state.outbox.filter((item) => !resending.has(item.id))];
  }

  function dataSend(message, sent, items = [JSON.stringify(message)]) {
    state.pending.set(message.id, { ...sent, message, items, sends: 0, started: false });
    state.outbox.push(...items.map((data) => ({ data, id: message.id })));
    pump();
  }

  // Sends what waits while the channel is open, pausing while its buffer is full; what is
  // left waits for the next channel (after a reconnection).
  async function pump() {
    if (state.pumping) return;
    state.pumping = true;
    try {
      while (state.outbox.length) {
        const channel = state.channel;
        if (!channel || channel.readyState !== "open") break;
        if (channel.bufferedAmount > HIGH_WATER) {
          await new Promise((resolve) => {
            channel.addEventListener("bufferedamountlow", resolve, { once: true });
            channel.addEventListener("close", resolve, { once: true });
          });
          continue;
        }
        const item = state.outbox.shift();
        const sent = state.pending.get(item.id);
        if (sent) sent.started = true;
        channel.send(item.data);
      }
    } finally {
      state.pumping = false;
    }
  }

  function dataMessage(message) {
    switch (message.type) {
      case "stored":
        stored(message);
        break;
      case "error":
        refused(message);
        break;
      case "reading":
      case "chat":
      case "file":
        {
          const key = `${message.from.id}/${message.type}/${message.id}`;
          if (state.seen.has(key)) return;
          state.seen.add(key);
          if (message.type === "reading") showReading(message, message.from, message.observation);
          else if (message.type === "chat") showChat(message, message.from, message.communication);
          else showFile(message, message.from, message.document);
        }
        break;
    }
  }

  function stored(message) {
    const sent = state.pending.get(message.id);
    if (!sent) return;
    state.pending.delete(message.id);
    const mine = state.me || { id: "", displayName: t.you };
    const key = `${mine.id}/${sent.message.type}/${message.id}`;
    if (state.seen.has(key)) return;
    state.seen.add(key);
    if (sent.message.type === "reading") {
      say("reading-status", t.kept);
      showReading(sent.message, mine, message.resource);
    } else if (sent.message.type === "chat") {
      sent.element.classList.remove("pending");
      sent.element.dataset.communication = message.resource;
    } else {
      say("file-status", t.kept);
      showFile(sent.message, mine, message.resource, sent.blob);
    }
  }

  function refused(message) {
    const sent = message.id ? state.pending.get(message.id) : null;
    if (!sent) {
      say("call-status", message.message);
      return;
    }
    state.pending.delete(message.id);
    const type = sent.message.type;
    if (type === "reading") {
      say("reading-status", "");
      const kind = sent.message.kind;
      const label =
        message.field === "value" ? t.kinds[kind] : t.fields[message.field] || message.field;
      readingError(kind, message.field, refusal(message, label));
    } else if (type === "chat") {
      sent.element.remove();
      showError("chat-error", refusal(message, ""));
    } else {
      say("file-status", "");
      showError("file-error", format(t.fileRefused, { message: refusal(message, "") }));
    }
  }

  // The server's refusal in the page's language, by its code (and field): its own words
  // (English, for the logs and the Python client) only for a refusal the page does not know.
  function refusal(message, label) {
    const text = t.refusals[`${message.code}:${message.field}`] || t.refusals[message.code];
    if (!text) return message.message;
    return format(text, { field: label, limit: t.maxFileMiB });
  }

  function gaveUp(sent) {
    const type = sent.message.type;
    if (type === "reading") {
      say("reading-status", "");
      showError("reading-error", t.notSent);
    } else if (type === "chat") {
      sent.element.remove();
      showError("chat-error", t.notSent);
    } else {
      say("file-status", "");
      showError("file-error", format(t.fileRefused, { message: t.notSent }));
    }
  }

  function showError(element, text) {
    $(element).textContent = text;
    $(element).hidden = !text;
  }

  function when(time) {
    const moment = time ? new Date(time) : new Date();
    return moment.toLocaleTimeString(document.documentElement.lang || undefined, {
      hour: "2-digit",
      minute: "2-digit",
    });
  }

  function byline(from) {
    const name = document.createElement("span");
    name.className = "from";
    name.textContent = state.me && from.id === state.me.id ? t.you : from.displayName;
    return name;
  }

  function showReading(reading, from, observation) {
    const item = document.createElement("li");
    item.dataset.kind = reading.kind;
    item.dataset.from = from.id;
    item.dataset.observation = observation;
    // As kept, to the kind's places (38.0 ℃, not 38 ℃); a number the page does not know
    // the places of is shown as it came.
    const places = decimals[reading.kind];
    const shown = (value) => (places === undefined ? String(value) : Number(value).toFixed(places));
    const values =
      reading.kind === "blood-pressure"
        ? `${shown(reading.systolic)}/${shown(reading.diastolic)}`
        : shown(reading.value);
    const what = document.createElement("span");
    what.className = "value";
    what.textContent = `${t.kinds[reading.kind] || reading.kind} ${values} ${
      unitLabels[reading.unit] || reading.unit
    }`;
    const time = document.createElement("time");
    time.textContent = when(reading.time);
    item.append(what, " · ", byline(from), " · ", time);
    if (reading.unusual && reading.unusual.length) {
      item.classList.add("unusual");
      const warning = document.createElement("span");
      warning.className = "field-warning";
      warning.textContent = ` ${t.unusual}`;
      item.append(warning);
    }
    $("readings").prepend(item);
  }

  function showChat(line, from, communication) {
    const item = document.createElement("li");
    item.dataset.from = from.id;
    if (communication) item.dataset.communication = communication;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = line.text;
    const time = document.createElement("time");
    time.textContent = when(line.sent);
    item.append(byline(from), "：", text, " ", time);
    $("chat-log").append(item);
    return item;
  }

  function showFile(file, from, document_, blob = null) {
    const item = document.createElement("li");
    item.dataset.from = from.id;
    item.dataset.document = document_;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = file.name;
    item.append(byline(from), "：", name);
    $("shared").prepend(item);
    // The file itself comes from the record, as the viewer's own access allows.
    const content = blob ? Promise.resolve(blob) : fromRecord(document_);
    content
      .then((data) => {
        const url = URL.createObjectURL(data);
        if (data.type.startsWith("image/")) {
          const image = document.createElement("img");
          image.src = url;
          image.alt = file.name;
          item.append(image);
        } else {
          const link = document.createElement("a");
          link.href = url;
          link.download = file.name;
          link.textContent = t.openFile;
          item.append(" ", link);
        }
      })
      .catch((error) => {
        item.append(` (${error.message})`);
      });
  }

  async function fromRecord(reference) {
    const response = await fetch(`/fhir/${reference}`, {
      headers: { Accept: "application/fhir+json" },
      credentials: "same-origin",
    });
    if (!response.ok) throw new Error(String(response.status));
    const attachment = (await response.json()).content[0].attachment;
    const bytes = Uint8Array.from(atob(attachment.data), (c) => c.charCodeAt(0));
    return new Blob([bytes], { type: attachment.contentType });
  }

  function chooseKind() {
    const kind = $("reading-kind").value;
    for (const fieldset of root.querySelectorAll("fieldset.reading-kind")) {
      const chosen = fieldset.dataset.kind === kind;
      fieldset.hidden = !chosen;
      fieldset.disabled = !chosen;
    }
    clearReadingError();
  }

  function clearReadingError() {
    showError("reading-error", "");
    for (const input of root.querySelectorAll("fieldset.reading-kind input")) {
      input.removeAttribute("aria-invalid");
      input.removeAttribute("aria-describedby");
    }
  }

  function readingError(kind, field, text) {
    showError("reading-error", text);
    const input = $(`reading-${kind}-${field}`);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", "reading-error");
      input.focus();
    }
  }

  function sendReading(event) {
    event.preventDefault();
    clearReadingError();
    const kind = $("reading-kind").value;
    const fieldset = root.querySelector(`fieldset.reading-kind[data-kind="${kind}"]`);
    const message = { type: "reading", id: newId("r"), kind };
    for (const input of fieldset.querySelectorAll("input[data-field]")) {
      const typed = input.value.trim().replace(/[，,]/g, ".");
      const number = Number(typed);
      if (!typed || !Number.isFinite(number)) {
        readingError(kind, input.dataset.field, t.enterNumber);
        return;
      }
      message[input.dataset.field] = number;
    }
    const unit = fieldset.querySelector("[data-unit]");
    message.unit = unit.tagName === "SELECT" ? unit.value : unit.dataset.value;
    say("reading-status", t.sending);
    dataSend(message, {});
    for (const input of fieldset.querySelectorAll("input[data-field]")) input.value = "";
  }

  function sendChat(event) {
    event.preventDefault();
    showError("chat-error", "");
    const text = $("chat-text").value.trim();
    if (!text) return;
    const message = { type: "chat", id: newId("c"), text };
    const element = showChat(message, state.me || { id: "", displayName: t.you }, null);
    element.classList.add("pending");
    state.seen.add(`${state.me ? state.me.id : ""}/chat/${message.id}`);
    dataSend(message, { element });
    $("chat-text").value = "";
  }

  async function shareFile(event) {
    event.preventDefault();
    showError("file-error", "");
    const file = $("share-file").files[0];
    if (!file) {
      showError("file-error", t.chooseFile);
      return;
    }
    const data = new Uint8Array(await file.arrayBuffer());
    const message = {
      type: "file",
      id: newId("f"),
      name: file.name,
      size: data.byteLength,
      contentType: file.type || null,
      description: null,
    };
    say("file-status", t.sending);
    const items = [JSON.stringify(message)];
    for (let start = 0; start < data.byteLength; start += CHUNK_BYTES) {
      items.push(data.slice(start, start + CHUNK_BYTES));
    }
    items.push(JSON.stringify({ type: "file-end", id: message.id }));
    dataSend(message, { blob: file }, items);
    $("share-file").value = "";
  }

  // -- controls ---------------------------------------------------------------------------

  function toggle(kind, button, offText, onText) {
    const tracks = kind === "audio" ? state.stream.getAudioTracks() : state.stream.getVideoTracks();
    const enabled = !tracks.every((track) => !track.enabled);
    for (const track of tracks) track.enabled = !enabled;
    button.textContent = enabled ? onText : offText;
    button.setAttribute("aria-pressed", String(enabled));
  }

  function leave() {
    state.left = true;
    send({ type: "leave" });
    closePeer();
    if (state.socket) state.socket.close();
    if (state.stream) for (const track of state.stream.getTracks()) track.stop();
    say("call-status", t.left);
    $("tiles").hidden = true;
  }

  // -- quality --------------------------------------------------------------------------------

  async function quality() {
    if (!state.pc) return;
    const report = await state.pc.getStats();
    let rtt = null;
    let received = 0;
    let lost = 0;
    let fps = 0;
    report.forEach((stat) => {
      if (stat.type === "candidate-pair" && stat.state === "succeeded" && stat.nominated) {
        rtt = stat.currentRoundTripTime ?? rtt;
      }
      if (stat.type === "inbound-rtp") {
        received += stat.packetsReceived || 0;
        lost += Math.max(0, stat.packetsLost || 0);
        if (stat.kind === "video") fps = Math.max(fps, stat.framesPerSecond || 0);
      }
    });
    const previous = state.lastStats || { received: 0, lost: 0 };
    state.lastStats = { received, lost };
    const newReceived = received - previous.received;
    const newLost = lost - previous.lost;
    let lossRate = newReceived + newLost > 0 ? newLost / (newReceived + newLost) : 0;
    // The server measures what this browser sends it; the worse of the two ways counts.
    const uplink = state.serverQuality && state.serverQuality.uplink;
    if (uplink && uplink.lossPercent !== null) {
      lossRate = Math.max(lossRate, uplink.lossPercent / 100);
    }
    if (rtt === null && state.serverQuality && state.serverQuality.rttMs !== null) {
      rtt = state.serverQuality.rttMs / 1000;
    }
    const rttMs = rtt === null ? 0 : Math.round(rtt * 1000);
    let level = "good";
    if (rttMs > 600 || lossRate > 0.08) level = "poor";
    else if (rttMs > 300 || lossRate > 0.02) level = "fair";
    const indicator = $("quality");
    indicator.dataset.level = level;
    indicator.textContent = `${t[level]} · ${format(t.details, {
      rtt: rttMs,
      loss: (lossRate * 100).toFixed(1),
      fps: Math.round(fps),
    })}`;
  }

  // -- what tests and support staff can read ----------------------------------------------

  window.consultCall = {
    participants: () => [...state.present.keys()],
    me: () => (state.me ? state.me.id : null),
    async remoteStats() {
      const byParticipant = {};
      if (!state.pc) return byParticipant;
      const report = await state.pc.getStats();
      report.forEach((stat) => {
        if (stat.type !== "inbound-rtp" || !stat.mid) return;
        const participantId = state.tracks.get(stat.mid);
        if (!participantId) return;
        const entry = (byParticipant[participantId] ||= {});
        if (stat.kind === "video") {
          entry.framesDecoded = (entry.framesDecoded || 0) + (stat.framesDecoded || 0);
          entry.firstFrameMs = entry.firstFrameMs ?? null;
        } else {
          entry.totalAudioEnergy = (entry.totalAudioEnergy || 0) + (stat.totalAudioEnergy || 0);
          entry.audioLevel = Math.max(entry.audioLevel || 0, stat.audioLevel || 0);
        }
      });
      return byParticipant;
    },
    async sentStats() {
      const sent = { keyFramesEncoded: 0, pliCount: 0, framesEncoded: 0 };
      if (!state.pc) return sent;
      const report = await state.pc.getStats();
      report.forEach((stat) => {
        if (stat.type === "outbound-rtp" && stat.kind === "video") {
          sent.keyFramesEncoded += stat.keyFramesEncoded || 0;
          sent.pliCount += stat.pliCount || 0;
          sent.framesEncoded += stat.framesEncoded || 0;
        }
      });
      return sent;
    },
    quality: () => $("quality").dataset.level || null,
    joinedAt: () => state.joinedAt,
    mode: () => state.mode,
    notice: () => $("media-notice").textContent,
    recording: () => (state.recording ? state.recording.document || "on" : null),
    reconnecting: () => state.reconnecting,
    dropSignalling: () => state.socket && state.socket.close(),
    dataChannel: () => (state.channel ? state.channel.readyState : null),
    // Sends what waits on a new media connection, as after a failed one.
    renegotiate: () => negotiate(state.iceServers || []),
    resent: () => state.resent,
    waiting: () => state.pending.size,
  };

  $("join").addEventListener("click", join);
  $("mute").addEventListener("click", (event) => toggle("audio", event.target, t.mute, t.unmute));
  $("camera").addEventListener("click", (event) =>
    toggle("video", event.target, t.cameraOff, t.cameraOn),
  );
  $("leave").addEventListener("click", leave);
  $("media-mode").addEventListener("click", switchMode);
  $("record").addEventListener("click", record);
  $("reading-kind").addEventListener("change", chooseKind);
  $("reading-form").addEventListener("submit", sendReading);
  $("chat-form").addEventListener("submit", sendChat);
  $("file-form").addEventListener("submit", (event) => {
    shareFile(event).catch((error) => showError("file-error", error.message));
  });
  setInterval(() => quality().catch(() => {}), 2000);
  precheck();
})();
