#!/usr/bin/env node
// A corral worker in Node.js, written from docs/protocol.md alone. No npm dependencies.
//
//   corral.open_pool(corral.Command(["node", "examples/node_worker/worker.js"]), size=2)
//
// Codec: json. Handlers: echo(x), add(a, b), fail(msg) (throws), sleep(seconds) (async).
"use strict";

const fs = require("fs");

const PROTOCOL = 1;
const DEFAULT_MAX_FRAME = 64 * 1024 * 1024;
const EXIT_PROTOCOL_ERROR = 4;

// --- handlers ------------------------------------------------------------------------
const handlers = {
  echo: (x) => x,
  add: (a, b) => a + b,
  fail: (msg) => {
    throw new Error(String(msg));
  },
  sleep: (seconds) =>
    new Promise((resolve) => setTimeout(() => resolve(seconds), seconds * 1000)),
};

// --- channel protection: stdout carries frames only (§1) -----------------------------
for (const name of ["log", "info", "debug", "dir", "table"]) {
  console[name] = (...args) => console.error(...args);
}

function log(message) {
  process.stderr.write(`node worker ${process.pid}: ${message}\n`);
}

function die(code, message) {
  if (message) log(message);
  process.exit(code);
}

// --- framing (§2) ----------------------------------------------------------------------
let maxFrame = DEFAULT_MAX_FRAME;

function writeAll(fd, buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (err) {
      if (err.code === "EAGAIN") continue; // a non-blocking pipe: retry
      if (err.code === "EPIPE") process.exit(0); // the parent is gone (§7)
      throw err;
    }
  }
}

function writeFrame(payload) {
  const frame = Buffer.allocUnsafe(4 + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  payload.copy(frame, 4);
  writeAll(1, frame);
}

function send(message) {
  writeFrame(Buffer.from(JSON.stringify(message), "utf8"));
}

// Incremental decoder: a list of chunks plus a byte count (no quadratic concatenation).
let chunks = [];
let buffered = 0;

function takeBytes(n) {
  const out = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, buffered);
  chunks = out.length > n ? [out.subarray(n)] : [];
  buffered -= n;
  return out.subarray(0, n);
}

function peekHeader() {
  if (chunks[0].length >= 4) return chunks[0].readUInt32BE(0);
  const joined = Buffer.concat(chunks, buffered);
  chunks = [joined];
  return joined.readUInt32BE(0);
}

function nextFrames(data) {
  chunks.push(data);
  buffered += data.length;
  const frames = [];
  while (buffered >= 4) {
    const n = peekHeader();
    if (n > maxFrame) {
      die(EXIT_PROTOCOL_ERROR, `frame length ${n} exceeds max_frame ${maxFrame}`);
    }
    if (buffered < 4 + n) break;
    takeBytes(4);
    frames.push(Buffer.from(takeBytes(n))); // copy: detach from the shared chunk
  }
  return frames;
}

// --- messages (§3-§6) -------------------------------------------------------------------
let welcomed = false;
const queue = [];
let current = null; // {id} of the call in progress, or null

function errorInfo(err) {
  const isError = err instanceof Error;
  return {
    type: isError ? err.name || "Error" : typeof err,
    message: isError ? err.message : String(err),
    traceback: isError && err.stack ? String(err.stack) : "",
  };
}

function reply(message) {
  let data;
  try {
    data = Buffer.from(JSON.stringify(message), "utf8");
  } catch (err) {
    const typeName = message[2] === null ? "null" : typeof message[2];
    data = null;
    message = [
      "error",
      message[1],
      { type: "EncodeError", message: `cannot encode a result of type ${typeName}: ${err.message}`, traceback: "" },
    ];
  }
  if (data === null || data.length > maxFrame) {
    if (data !== null) {
      message = [
        "error",
        message[1],
        { type: "EncodeError", message: `the encoded result (${data.length} bytes) exceeds max_frame (${maxFrame})`, traceback: "" },
      ];
    }
    data = Buffer.from(JSON.stringify(message), "utf8");
  }
  writeFrame(data);
}

function handshake(frame) {
  let welcome;
  try {
    welcome = JSON.parse(frame.toString("utf8"));
  } catch (err) {
    die(EXIT_PROTOCOL_ERROR, `bad welcome: ${err.message}`);
  }
  if (welcome === null || typeof welcome !== "object" || welcome.t !== "welcome") {
    die(EXIT_PROTOCOL_ERROR, "bad handshake: expected a welcome object");
  }
  if (welcome.codec !== "json") {
    die(EXIT_PROTOCOL_ERROR, `bad handshake: unsupported codec ${JSON.stringify(welcome.codec)}`);
  }
  if (welcome.max_frame !== undefined) {
    if (!Number.isInteger(welcome.max_frame) || welcome.max_frame < 1024) {
      die(EXIT_PROTOCOL_ERROR, "bad handshake: invalid max_frame");
    }
    maxFrame = welcome.max_frame;
  }
  welcomed = true;
  send(["ready", 0, { pid: process.pid }]);
}

function pump() {
  while (current === null && queue.length > 0) {
    const frame = queue.shift();
    let msg;
    try {
      msg = JSON.parse(frame.toString("utf8"));
    } catch (err) {
      die(EXIT_PROTOCOL_ERROR, `undecodable frame: ${err.message}`);
    }
    const kind = Array.isArray(msg) ? msg[0] : undefined;
    if (kind === "shutdown") die(0);
    const id = Array.isArray(msg) ? msg[1] : undefined;
    if (!Number.isInteger(id)) {
      die(EXIT_PROTOCOL_ERROR, `malformed request without an id: ${frame.toString("utf8").slice(0, 200)}`);
    }
    if (kind === "ping" && msg.length === 2) {
      reply(["pong", id]);
    } else if (kind === "call" && msg.length === 4 && Array.isArray(msg[3])) {
      const name = msg[2];
      const fn = typeof name === "string" && Object.hasOwn(handlers, name) ? handlers[name] : null;
      if (fn === null) {
        reply(["error", id, { type: "UnknownHandler", message: `no handler named ${JSON.stringify(name)}`, traceback: "" }]);
        continue;
      }
      let result;
      try {
        result = fn(...msg[3]);
      } catch (err) {
        reply(["error", id, errorInfo(err)]);
        continue;
      }
      if (result instanceof Promise) {
        const call = { id };
        current = call;
        result.then(
          (value) => finish(call, ["ok", id, value === undefined ? null : value]),
          (err) => finish(call, ["error", id, errorInfo(err)]),
        );
        return; // strictly one request at a time (§5)
      }
      reply(["ok", id, result === undefined ? null : result]);
    } else {
      reply(["error", id, { type: "ProtocolError", message: `malformed or unknown request: ${frame.toString("utf8").slice(0, 200)}`, traceback: "" }]);
    }
  }
}

function finish(call, message) {
  if (current !== call) return; // cancelled meanwhile: the result is dropped
  current = null;
  reply(message);
  pump();
}

// SIGINT: cancel the call in progress, ignore it when idle (§6).
process.on("SIGINT", () => {
  if (current !== null) {
    const { id } = current;
    current = null;
    reply(["cancelled", id]);
    pump();
  }
});

// --- main ---------------------------------------------------------------------------
send({
  t: "hello",
  protocol: PROTOCOL,
  pid: process.pid,
  codecs: ["json"],
  runtime: `node/${process.versions.node}`,
  capabilities: ["call", "ping", "cancel"],
});

process.stdin.on("data", (data) => {
  for (const frame of nextFrames(data)) {
    if (!welcomed) handshake(frame);
    else queue.push(frame);
  }
  pump();
});
process.stdin.on("end", () => process.exit(0)); // EOF: exit at once (§7)
process.stdin.on("error", () => process.exit(0));
