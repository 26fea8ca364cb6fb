// The consult page: its state, live. The server says when the consult changes (a
// WebSocket on /consult/ID/events); the page then reloads, so what it shows and offers is
// always the server's own rendering of the new state.
"use strict";
(function () {
  const root = document.getElementById("consult");
  if (!root) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  let retry = 1000;
  function listen() {
    const socket = new WebSocket(`${scheme}//${location.host}/consult/${root.dataset.consult}/events`);
    socket.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      retry = 1000;
      if (message.consult && message.consult.state !== root.dataset.state) {
        location.reload();
      } else if (message.events && message.events.length) {
        location.reload();
      }
    });
    socket.addEventListener("close", () => {
      setTimeout(listen, retry);
      retry = Math.min(retry * 2, 30000);
    });
  }
  listen();
})();
