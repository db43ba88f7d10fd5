// Node `ws` client against a WebSocket echo server (tether's /echo).
//
//   node ws_client.js URL [--deflate] [--threshold N]
//
// Runs a fixed sequence (text, binary, fragmented text and binary, 16 MiB
// binary, ping/pong, close with a code) and prints one JSON line of results
// on stdout. Every step has a deadline; on failure it prints
// {"ok": false, "error": ...} and exits 1.
'use strict';

const crypto = require('crypto');
const WebSocket = require('ws');

const args = process.argv.slice(2);
const url = args[0];
const deflate = args.includes('--deflate');
const ti = args.indexOf('--threshold');
const threshold = ti >= 0 ? Number(args[ti + 1]) : 1024;
const closeCode = 4001;
const closeReason = 'node says bye';

const results = { ok: false, url, deflate, steps: [] };
const overall = setTimeout(() => fail(new Error('overall deadline (45 s) passed')), 45000);

function fail(err) {
  results.ok = false;
  results.error = String(err && err.stack ? err.stack : err);
  process.stdout.write(JSON.stringify(results) + '\n');
  process.exit(1);
}

function sha256(buf) {
  return crypto.createHash('sha256').update(buf).digest('hex');
}

function withDeadline(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

// Queue of received messages: next() resolves with {data, isBinary}.
function messageQueue(ws) {
  const queue = [];
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    const m = { data, isBinary };
    if (waiters.length) waiters.shift().resolve(m);
    else queue.push(m);
  });
  ws.on('close', (code) => {
    while (waiters.length) waiters.shift().reject(new Error(`closed (${code}) while waiting`));
  });
  return (what) =>
    withDeadline(
      new Promise((resolve, reject) => {
        if (queue.length) resolve(queue.shift());
        else waiters.push({ resolve, reject });
      }),
      20000,
      what,
    );
}

function sendAsync(ws, data, opts) {
  return new Promise((resolve, reject) => ws.send(data, opts || {}, (err) => (err ? reject(err) : resolve())));
}

async function main() {
  const ws = new WebSocket(url, {
    perMessageDeflate: deflate ? { threshold } : false,
    handshakeTimeout: 10000,
    maxPayload: 64 * 1024 * 1024,
  });
  ws.on('error', (e) => fail(e));
  const next = messageQueue(ws);
  const closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  await withDeadline(new Promise((resolve) => ws.once('open', resolve)), 10000, 'open');
  results.extensions = ws.extensions;
  results.protocol = ws.protocol;

  // Text, including multi-byte characters and a compressible one.
  const texts = ['hello from node', '', 'héllo wörld ✓ 🚀', 'abc'.repeat(5000)];
  let textOk = true;
  for (const t of texts) {
    await sendAsync(ws, t);
    const m = await next('text echo');
    if (m.isBinary || m.data.toString('utf8') !== t) textOk = false;
  }
  results.text = textOk;
  results.steps.push('text');

  // Binary.
  const bins = [Buffer.from([0, 1, 2, 255]), crypto.randomBytes(70000), Buffer.alloc(100000, 7)];
  let binOk = true;
  for (const b of bins) {
    await sendAsync(ws, b, { binary: true });
    const m = await next('binary echo');
    if (!m.isBinary || !Buffer.from(m.data).equals(b)) binOk = false;
  }
  results.binary = binOk;
  results.steps.push('binary');

  // Fragmented text: fragments split inside a 4-byte code point.
  const fullText = 'frag😀ment'.repeat(300);
  const raw = Buffer.from(fullText, 'utf8');
  const cuts = [0, 5, 6, 1000, raw.length - 1, raw.length];
  for (let i = 0; i + 1 < cuts.length; i++) {
    const last = i + 2 === cuts.length;
    await sendAsync(ws, raw.subarray(cuts[i], cuts[i + 1]), { binary: false, fin: last });
  }
  let m = await next('fragmented text echo');
  results.fragmented_text = !m.isBinary && m.data.toString('utf8') === fullText;
  // Fragmented binary with a ping in between fragments.
  const parts = [crypto.randomBytes(10), Buffer.alloc(0), crypto.randomBytes(40000), Buffer.alloc(5000, 1)];
  const pongMid = new Promise((resolve) => ws.once('pong', (d) => resolve(d.toString())));
  for (let i = 0; i < parts.length; i++) {
    await sendAsync(ws, parts[i], { binary: true, fin: i === parts.length - 1 });
    if (i === 1) ws.ping('mid-message');
  }
  m = await next('fragmented binary echo');
  results.fragmented_binary = m.isBinary && Buffer.from(m.data).equals(Buffer.concat(parts));
  results.pong_between_fragments = (await withDeadline(pongMid, 10000, 'pong between fragments')) === 'mid-message';
  results.steps.push('fragmented');

  // 16 MiB binary (tether's default --ws-max-message).
  const big = Buffer.concat([crypto.randomBytes(8 << 20), Buffer.alloc(8 << 20, 'z')]);
  await sendAsync(ws, big, { binary: true });
  m = await next('16 MiB echo');
  results.big_len = m.data.length;
  results.big = m.isBinary && sha256(Buffer.from(m.data)) === sha256(big);
  results.steps.push('16MiB');

  // Ping -> pong with the same payload.
  const pong = new Promise((resolve) => ws.once('pong', (d) => resolve(d.toString())));
  ws.ping('node-ping');
  results.pong = await withDeadline(pong, 10000, 'pong');
  results.steps.push('ping');

  // Close with a code and reason: the server echoes the code.
  ws.close(closeCode, closeReason);
  const c = await withDeadline(closed, 10000, 'close');
  results.close_code = c.code;
  results.close_reason = c.reason;
  results.steps.push('close');

  results.ok = true;
  clearTimeout(overall);
  process.stdout.write(JSON.stringify(results) + '\n');
}

main().catch(fail);
