#!/usr/bin/env node
// A corral worker in Node.js, written from docs/protocol.md (protocol 1.1). No npm
// dependencies.
//
//   corral.open_pool(corral.Command(["node", "examples/node_worker/worker.js"]), size=2)
//
// Codec: json. Capabilities: call, ping, cancel, pipeline, kwargs, stream, progress,
// withdraw.
// Handlers: echo(x), add(a, b), fail(msg) (throws), sleep(seconds) (async),
// greet(name, opts) (keyword arguments), work(steps) (reports progress),
// count(n), tokens(text), slow_count(n, delay), fail_after(n, msg) (streams: generators).
"use strict";

const fs = require("fs");
const { AsyncLocalStorage } = require("async_hooks");

const PROTOCOL = 1;
const DEFAULT_MAX_FRAME = 64 * 1024 * 1024;
const MAX_FRAME_LIMIT = 2 ** 32 - 1;
const EXIT_INIT_FAILED = 3;
const EXIT_PROTOCOL_ERROR = 4;
const CAPABILITIES = ["call", "ping", "cancel", "pipeline", "kwargs", "stream", "progress", "withdraw"];

const delay = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

// --- handlers ------------------------------------------------------------------------
// A call's keyword arguments (a non-empty JSON object) arrive as ONE extra last argument.
// A stream request calls a handler that returns an iterable or async iterable (a
// generator function, an async generator function, or a function returning an array...).
// progress(fraction, text) reports on the running request; requestId() names it.
const handlers = {
  echo: (x) => x,
  add: (a, b) => a + b,
  fail: (msg) => {
    throw new Error(String(msg));
  },
  sleep: async (seconds) => {
    await delay(seconds);
    return seconds;
  },
  greet: (name, opts) => `${opts?.greeting ?? "hello"} ${name}`,
  work: async (steps) => {
    for (let k = 1; k <= steps; k++) {
      await delay(0.01);
      progress(k / steps, `step ${k}`);
    }
    return steps;
  },
  count: function* (n) {
    try {
      for (let i = 0; i < n; i++) yield i;
    } finally {
      process.stderr.write("count finally\n");
    }
  },
  tokens: async function* (text) {
    const words = String(text).split(/\s+/).filter(Boolean);
    for (const word of words) {
      await delay(0.001);
      yield word;
    }
    return words.length; // a generator's return value is the stream's final result
  },
  fail_after: function* (n, msg) {
    for (let i = 0; i < n; i++) yield i;
    throw new Error(String(msg));
  },
  slow_count: async function* (n, seconds) {
    const id = requestId();
    try {
      for (let i = 0; i < n; i++) {
        yield i;
        await delay(seconds);
      }
    } finally {
      process.stderr.write(`slow_count finally ${id}\n`);
    }
  },
};

// Start-up work, run after the welcome and before `ready` (its progress has id 0). It
// gets the welcome's `init_args`. A throw is reported as ["error", 0, info], exit 3.
async function init() {
  const steps = Number.parseInt(process.env.CORRAL_NODE_INIT_STEPS ?? "0", 10) || 0;
  for (let k = 1; k <= steps; k++) {
    await delay(0.01);
    progress(k / steps, `step ${k}`);
  }
}

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
  writeAll(1, frame); // header and payload in one write
}

// JSON.stringify writes doubles in their shortest round-trip form; NaN and Infinity
// become null, -0 becomes 0. It writes a lone surrogate as an escape (\udXXX; a pair
// as the character itself), which protocol §4 forbids: such a value cannot be encoded.
const LONE_SURROGATE = /(?<!\\)(?:\\\\)*\\u[dD][89a-fA-F][0-9a-fA-F]{2}/;

function encode(message) {
  const text = JSON.stringify(message);
  if (LONE_SURROGATE.test(text)) throw new Error("a string holds a lone surrogate (not UTF-8)");
  return Buffer.from(text, "utf8");
}

function send(message) {
  writeFrame(encode(message));
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

// Feeds bytes; calls onFrame for each complete frame at once, so a welcome's max_frame
// applies to the very next header.
function feed(data, onFrame) {
  chunks.push(data);
  buffered += data.length;
  while (buffered >= 4) {
    const n = peekHeader();
    if (n > maxFrame) {
      die(EXIT_PROTOCOL_ERROR, `frame length ${n} exceeds max_frame ${maxFrame}`);
    }
    if (buffered < 4 + n) break;
    takeBytes(4);
    onFrame(takeBytes(n));
  }
}

// --- state ----------------------------------------------------------------------------
let welcomed = false;
let ready = false;
let pipelined = false; // welcome "pipeline": true -> SIGINT is ignored
let features = new Set(); // welcome "features": what the parent will use
const queue = []; // parsed requests not started yet, in order
let current = null; // the running request (call, stream or init), or null
const context = new AsyncLocalStorage(); // which request a handler's code belongs to

// --- the handler-facing API ----------------------------------------------------------
// The request the calling code runs for: its async context, else the running one.
function owner() {
  const ctx = context.getStore();
  return ctx === undefined ? current : ctx;
}

// The id of the request being served (0 during init), or null outside of one.
function requestId() {
  const ctx = owner();
  return ctx === null ? null : ctx.id;
}

// Reports progress on the running request (or start-up): fraction a number in [0, 1]
// or null, text a string. Sent only if the parent asked for "progress"; dropped when
// the caller's request is over (an abandoned call that keeps running). Returns whether
// a frame was sent.
function progress(fraction = null, text = "") {
  if (fraction !== null && !(typeof fraction === "number" && fraction >= 0 && fraction <= 1)) {
    throw new RangeError(`progress fraction must be a number in [0, 1] or null, got ${fraction}`);
  }
  const ctx = owner();
  if (ctx === null || ctx !== current || !features.has("progress")) return false;
  const data = encode(["progress", ctx.id, fraction, String(text)]);
  if (data.length > maxFrame) return false;
  writeFrame(data);
  return true;
}

module.exports = { progress, requestId, handlers };

// --- replies ---------------------------------------------------------------------------
function errorInfo(err) {
  const isError = err instanceof Error;
  return {
    type: isError ? err.name || "Error" : typeof err,
    message: isError ? err.message : String(err),
    traceback: isError && err.stack ? String(err.stack) : "",
  };
}

function failure(type, message) {
  return { type, message, traceback: "" };
}

// The encoded message, or the EncodeError reply to send instead.
function encodeOrError(message, what) {
  let data;
  try {
    data = encode(message);
  } catch (err) {
    const value = message[2];
    const typeName = value === null ? "null" : typeof value;
    const text = `cannot encode a ${what} of type ${typeName}: ${err.message}`;
    return { error: failure("EncodeError", text) };
  }
  if (data.length > maxFrame) {
    const text = `the encoded ${what} (${data.length} bytes) exceeds max_frame (${maxFrame})`;
    return { error: failure("EncodeError", text) };
  }
  return { data };
}

function reply(message) {
  const { data, error } = encodeOrError(message, "result");
  writeFrame(data ?? encode(["error", message[1], error]));
}

// The one reply of the running request `req`; ignored if `req` was answered already.
function finish(req, message) {
  if (current !== req) return;
  current = null;
  reply(message);
  pump();
}

// --- requests ---------------------------------------------------------------------------
const MAX_ID = Number.MAX_SAFE_INTEGER; // 2**53 - 1
const isId = (x) => Number.isSafeInteger(x) && x >= 0 && x <= MAX_ID;
const isObject = (x) => x !== null && typeof x === "object" && !Array.isArray(x);
// The kind and id of a request frame that is not valid JSON, if its start shows them.
const READABLE_PREFIX = /^\s*\[\s*"(call|apply|stream|ping)"\s*,\s*(0|[1-9][0-9]*)\s*[,\]]/;
const utf8 = new TextDecoder("utf-8", { fatal: true });

function preview(text) {
  return JSON.stringify(text.length > 200 ? `${text.slice(0, 200)}...` : text);
}

// Every frame after the welcome, as it arrives (so cancel, credit and withdraw act at once).
function onRequestFrame(frame) {
  let text;
  let msg;
  try {
    text = utf8.decode(frame);
    msg = JSON.parse(text);
    if (!Array.isArray(msg)) throw new Error("a request must be a JSON array");
  } catch (err) {
    if (text === undefined) text = frame.toString("utf8");
    const m = READABLE_PREFIX.exec(text);
    const id = m === null ? NaN : Number(m[2]);
    if (!isId(id)) die(EXIT_PROTOCOL_ERROR, `undecodable frame (${err.message}): ${preview(text)}`);
    const info = failure("DecodeError", `undecodable ${m[1]} request: ${err.message}`);
    queue.push({ kind: "reply", id, message: ["error", id, info] });
    return;
  }
  const kind = msg[0];
  if (kind === "shutdown") {
    queue.push({ kind: "shutdown", id: null });
    return;
  }
  const id = msg[1];
  if (!isId(id)) die(EXIT_PROTOCOL_ERROR, `malformed request without an id: ${preview(text)}`);
  if (kind === "cancel") cancel(id);
  else if (kind === "withdraw") withdraw(id);
  else if (kind === "credit") credit(id, msg[2]);
  else queue.push(parseRequest(kind, id, msg, text));
}

function parseRequest(kind, id, msg, text) {
  const [, , name, args, kwargs, window] = msg;
  if (kind === "ping" && msg.length === 2) return { kind, id };
  const callOk = (msg.length === 4 || (msg.length === 5 && isObject(kwargs))) && Array.isArray(args);
  if (kind === "call" && callOk) return { kind, id, name, args, kwargs };
  const streamOk = msg.length === 6 && Array.isArray(args) && isObject(kwargs) && isId(window) && window >= 1;
  if (kind === "stream" && streamOk) return { kind, id, name, args, kwargs, window };
  const info = failure("ProtocolError", `malformed or unknown request: ${preview(text)}`);
  return { kind: "reply", id, message: ["error", id, info] };
}

// The handler's arguments: args, plus the kwargs object as one last argument if non-empty.
function argumentsOf(req) {
  const kwargs = req.kwargs;
  return kwargs !== undefined && Object.keys(kwargs).length > 0 ? [...req.args, kwargs] : req.args;
}

function handlerOf(req) {
  const name = req.name;
  const fn = typeof name === "string" && Object.hasOwn(handlers, name) ? handlers[name] : null;
  if (fn === null) {
    reply(["error", req.id, failure("UnknownHandler", `no handler named ${JSON.stringify(name)}`)]);
  }
  return fn;
}

// Serves queued requests, one at a time, in order (§5). Not reentrant: a request that
// finishes synchronously calls pump() again, and the loop already running carries on.
let pumping = false;

function pump() {
  if (pumping) return;
  pumping = true;
  try {
    while (ready && current === null && queue.length > 0) {
      const req = queue.shift();
      if (req.cancelled) reply(["cancelled", req.id]);
      else if (req.kind === "shutdown") die(0);
      else if (req.kind === "reply") reply(req.message);
      else if (req.kind === "ping") reply(["pong", req.id]);
      else if (req.kind === "call") startCall(req);
      else startStream(req);
    }
  } finally {
    pumping = false;
  }
}

const isThenable = (x) => (typeof x === "object" || typeof x === "function") && typeof x?.then === "function";
const GENERATOR_TAGS = ["[object Generator]", "[object AsyncGenerator]"];
const isGenerator = (x) => GENERATOR_TAGS.includes(Object.prototype.toString.call(x));

function startCall(req) {
  const fn = handlerOf(req);
  if (fn === null) return;
  current = req;
  let result;
  try {
    result = context.run(req, () => fn(...argumentsOf(req)));
  } catch (err) {
    finish(req, ["error", req.id, errorInfo(err)]);
    return;
  }
  if (isGenerator(result)) {
    result.return(); // not started: no code of it runs
    const text = `handler ${JSON.stringify(req.name)} is a generator: use a stream request`;
    const info = failure("TypeError", text);
    finish(req, ["error", req.id, info]);
    return;
  }
  if (isThenable(result)) {
    // Stays current until it settles or is cancelled (then its result is dropped).
    Promise.resolve(result).then(
      (value) => finish(req, ["ok", req.id, value === undefined ? null : value]),
      (err) => finish(req, ["error", req.id, errorInfo(err)]),
    );
    return;
  }
  finish(req, ["ok", req.id, result === undefined ? null : result]);
}

// --- streams (capability "stream") -------------------------------------------------------
const yieldToEventLoop = () => new Promise((resolve) => setImmediate(resolve));

function iteratorOf(value) {
  if (value !== null && value !== undefined) {
    if (typeof value[Symbol.asyncIterator] === "function") {
      return { it: value[Symbol.asyncIterator](), isAsync: true };
    }
    if (typeof value[Symbol.iterator] === "function") {
      return { it: value[Symbol.iterator](), isAsync: false };
    }
  }
  return null;
}

function startStream(req) {
  const fn = handlerOf(req);
  if (fn === null) return;
  Object.assign(req, { credit: req.window, it: null, isAsync: false, stopped: false, stepping: false });
  req.wake = null; // resolves the wait for credit
  current = req;
  runStream(req, fn);
}

async function runStream(s, fn) {
  try {
    let result = context.run(s, () => fn(...argumentsOf(s)));
    if (isThenable(result)) {
      s.stepping = true;
      result = await result; // a handler may also return a Promise of an iterable
      s.stepping = false;
      if (s.stopped) {
        closeQuietly(s, iteratorOf(result)?.it);
        return;
      }
    }
    const iter = iteratorOf(result);
    if (iter === null) {
      const typeName = result === null ? "null" : typeof result;
      const name = JSON.stringify(s.name);
      throw new TypeError(`stream handler ${name} returned a non-iterable ${typeName}`);
    }
    s.it = iter.it;
    s.isAsync = iter.isAsync;
    // The next item is computed before waiting for credit (the handler runs one item
    // ahead of what was sent), so the final reply never waits for credit.
    for (;;) {
      s.stepping = true;
      let step = context.run(s, () => s.it.next());
      if (s.isAsync) step = await step;
      s.stepping = false;
      if (s.stopped) return; // abandoned while the step ran
      if (step.done) {
        finish(s, ["ok", s.id, step.value === undefined ? null : step.value]);
        return;
      }
      const chunk = ["chunk", s.id, step.value === undefined ? null : step.value];
      const { data, error } = encodeOrError(chunk, "chunk");
      if (error !== undefined) {
        s.stopped = true;
        await close(s);
        finish(s, ["error", s.id, error]);
        return;
      }
      while (s.credit === 0 && !s.stopped) await new Promise((resolve) => (s.wake = resolve));
      if (s.stopped) return; // cancelled while waiting: stopStream closes the iterator
      s.credit -= 1;
      writeFrame(data);
      await yieldToEventLoop(); // let stdin (credit, cancel) in between chunks
      if (s.stopped) return;
    }
  } catch (err) {
    s.stepping = false;
    if (!s.stopped) finish(s, ["error", s.id, errorInfo(err)]);
  }
}

// Runs the iterator's return() (a generator's finally), errors logged.
async function close(s) {
  if (s.it === null || typeof s.it.return !== "function") return;
  try {
    await context.run(s, () => s.it.return());
  } catch (err) {
    log(`stream ${s.id}: return() failed: ${err && err.stack ? err.stack : err}`);
  }
}

function closeQuietly(s, it) {
  if (it !== undefined && typeof it.return === "function") {
    s.it = it;
    close(s);
  }
}

function credit(id, n) {
  if (!Number.isSafeInteger(n) || n < 1) {
    log(`ignoring a credit with an invalid count: ${JSON.stringify(n)}`);
    return;
  }
  const s = current;
  if (s === null || s.kind !== "stream" || s.id !== id || s.stopped) return; // stale
  s.credit += n;
  wake(s);
}

function wake(s) {
  const resolve = s.wake;
  s.wake = null;
  if (resolve !== null) resolve();
}

// Stops the running stream: its iterator's return() runs, then ["cancelled", id]. A
// step of an async generator that is running cannot be interrupted: the stream is then
// abandoned at once (like a call) and its return() runs when that step settles.
function stopStream(s) {
  s.stopped = true;
  wake(s);
  if (s.stepping) {
    if (s.it !== null) close(s);
    finish(s, ["cancelled", s.id]);
  } else {
    close(s).then(() => finish(s, ["cancelled", s.id]));
  }
}

// --- cancellation (§5, §6) ---------------------------------------------------------------
function cancel(id) {
  const req = current;
  if (req !== null && req.id === id && req.kind !== "init") {
    if (req.kind === "stream") {
      if (!req.stopped) stopStream(req);
    } else {
      finish(req, ["cancelled", id]); // abandon the call: its result will be dropped
    }
    return;
  }
  const queued = queue.find((r) => r.id === id && !r.cancelled);
  if (queued !== undefined) queued.cancelled = true; // answered "cancelled" in its turn
  // else: answered already (or never sent): ignored
}

// --- withdrawal (capability "withdraw", §5) ----------------------------------------------
// A call or stream still queued is given back at once: answered ["withdrawn", id] ahead
// of the running request's reply, removed from the queue, never run (a pending cancel of
// it is moot: "withdrawn" is its one reply). One that runs, was answered, or is unknown:
// ignored, its own reply comes. Nothing records withdrawn ids, so a later cancel of an
// earlier request still finds it running or queued. Before `ready` nothing but progress
// may go out: a request withdrawn during start-up is answered right after `ready`.
function withdraw(id) {
  const req = queue.find((r) => r.id === id && (r.kind === "call" || r.kind === "stream"));
  if (req === undefined) return;
  req.withdrawn = true;
  if (ready) answerWithdrawals();
}

function answerWithdrawals() {
  for (let i = 0; i < queue.length; ) {
    if (queue[i].withdrawn) reply(["withdrawn", queue.splice(i, 1)[0].id]);
    else i++;
  }
}

// SIGINT: with welcome "pipeline": true the parent names every cancel with a cancel
// request, so the signal is ignored (it may land after the call it meant has finished).
// Otherwise (a 1.0 parent) it cancels whatever runs, and is ignored when idle.
process.on("SIGINT", () => {
  if (pipelined || current === null || current.kind === "init") return;
  cancel(current.id);
});

// --- handshake (§3) ---------------------------------------------------------------------
function handshake(frame) {
  let welcome;
  try {
    welcome = JSON.parse(utf8.decode(frame));
  } catch (err) {
    die(EXIT_PROTOCOL_ERROR, `bad welcome: ${err.message}`);
  }
  if (!isObject(welcome) || welcome.t !== "welcome") {
    die(EXIT_PROTOCOL_ERROR, "bad handshake: expected a welcome object");
  }
  if (welcome.codec !== "json") {
    die(EXIT_PROTOCOL_ERROR, `bad handshake: unsupported codec ${JSON.stringify(welcome.codec)}`);
  }
  if (welcome.max_frame !== undefined) {
    const mf = welcome.max_frame;
    if (!Number.isInteger(mf) || mf < 1024 || mf > MAX_FRAME_LIMIT) {
      die(EXIT_PROTOCOL_ERROR, "bad handshake: invalid max_frame");
    }
    maxFrame = mf;
  }
  const wanted = welcome.features ?? [];
  if (!Array.isArray(wanted) || !wanted.every((f) => typeof f === "string")) {
    die(EXIT_PROTOCOL_ERROR, "bad handshake: features must be a list of strings");
  }
  const initArgs = welcome.init_args ?? [];
  if (!Array.isArray(initArgs)) die(EXIT_PROTOCOL_ERROR, "bad handshake: init_args must be a list");
  features = new Set(wanted);
  pipelined = welcome.pipeline === true;
  welcomed = true;
  startUp(initArgs);
}

async function startUp(initArgs) {
  const req = { kind: "init", id: 0 };
  current = req;
  try {
    await context.run(req, () => init(...initArgs));
  } catch (err) {
    reply(["error", 0, errorInfo(err)]);
    die(EXIT_INIT_FAILED, `init failed: ${err && err.stack ? err.stack : err}`);
  }
  current = null;
  ready = true;
  send(["ready", 0, { pid: process.pid }]);
  answerWithdrawals();
  pump();
}

// --- main ---------------------------------------------------------------------------
send({
  t: "hello",
  protocol: PROTOCOL,
  pid: process.pid,
  codecs: ["json"],
  runtime: `node/${process.versions.node}`,
  capabilities: CAPABILITIES,
});

process.stdin.on("data", (data) => {
  feed(data, (frame) => (welcomed ? onRequestFrame(frame) : handshake(frame)));
  pump();
});
process.stdin.on("end", () => process.exit(0)); // EOF: exit at once (§7)
process.stdin.on("error", () => process.exit(0));
