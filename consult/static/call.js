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
// consent to it, and everyone sees while the call is recorded.
"use strict";
(function () {
  const root = document.getElementById("call");
  if (!root) return;
  const t = JSON.parse(root.dataset.i18n);
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
        $("recording").hidden = !state.recording;
        $("record").textContent = state.recording ? t.recordStop : t.recordStart;
        break;
      case "error":
        say("call-status", message.message);
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

  function record() {
    if (!state.consent) return;
    send({ type: "recording", action: state.recording ? "stop" : "start" });
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
  };

  $("join").addEventListener("click", join);
  $("mute").addEventListener("click", (event) => toggle("audio", event.target, t.mute, t.unmute));
  $("camera").addEventListener("click", (event) =>
    toggle("video", event.target, t.cameraOff, t.cameraOn),
  );
  $("leave").addEventListener("click", leave);
  $("media-mode").addEventListener("click", switchMode);
  $("record").addEventListener("click", record);
  setInterval(() => quality().catch(() => {}), 2000);
  precheck();
})();
