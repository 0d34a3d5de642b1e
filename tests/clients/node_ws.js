// Node's `ws` (npm's most used WebSocket package; Debian's node-ws) as a client of /ws, run by
// tests/test_websocket.py: node node_ws.js URL [CA_FILE]. It takes the greeting, sends a text
// and a 70,000-byte binary message and checks their echoes, waits for a tick, pings, then
// closes with 4001; it prints what it saw as one JSON object.
"use strict";
const fs = require("fs");
const WebSocket = require("ws");

const [url, ca] = process.argv.slice(2);
const binary = Buffer.alloc(70000, 0xa5);
const seen = { greeting: null, text: null, binary: null, ticks: 0, pong: null, close: null, extensions: null };
const ws = new WebSocket(url, ca ? { ca: fs.readFileSync(ca) } : {});
let pinged = false;
const ping = () => { if (!pinged) { pinged = true; ws.ping("node ping"); } };
const timer = setTimeout(() => { finish({ error: "no close within 10 s", seen }, 1); }, 10000);
let finished = false;
const finish = (result, status) => {
  if (finished) return;
  finished = true;
  clearTimeout(timer);
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exitCode = status;
};

ws.on("open", () => { seen.extensions = ws.extensions; });
ws.on("message", (data, isBinary) => {
  const text = isBinary ? null : data.toString();
  if (seen.greeting === null) {
    seen.greeting = JSON.parse(text);
    ws.send("héllo from node");
  } else if (text !== null && text.startsWith('{"tick"')) {
    seen.ticks += 1;
    if (seen.binary !== null) ping();
  } else if (seen.text === null) {
    seen.text = text;
    ws.send(binary);
  } else {
    seen.binary = isBinary && Buffer.compare(data, binary) === 0;
    if (seen.ticks > 0) ping();
  }
});
ws.on("pong", (payload) => {
  seen.pong = payload.toString();
  ws.close(4001, "bye from node");
});
ws.on("close", (code, reason) => {
  seen.close = { code, reason: reason.toString() };
  finish(seen, 0);
});
ws.on("error", (error) => { finish({ error: String(error), seen }, 1); ws.terminate(); });
