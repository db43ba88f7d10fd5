// Node `ws` echo server for tether's WebSocket client tests.
//
//   node echo_server.js [--deflate]
//
// Listens on 127.0.0.1 with an ephemeral port and prints {"port": N} as its
// first stdout line, then one JSON line per connection:
// {"event": "headers", "extensions_header": "..."} (the answer it sent),
// {"event": "open", "extensions": "...", "offer": "..."} and
// {"event": "close", "code": N}. Echoes every text and binary message with
// its type. With --deflate, permessage-deflate is accepted (threshold 0:
// every message is compressed). Exits on SIGTERM or when stdin closes.
'use strict';

const WebSocket = require('ws');

const deflate = process.argv.includes('--deflate');
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const wss = new WebSocket.WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  perMessageDeflate: deflate ? { threshold: 0 } : false,
  maxPayload: 64 * 1024 * 1024,
});

wss.on('listening', () => out({ port: wss.address().port }));
// The response head: record the negotiated extension with its parameters.
wss.on('headers', (headers) => {
  const ext = headers.find((h) => /^sec-websocket-extensions:/i.test(h));
  out({ event: 'headers', extensions_header: ext ? ext.replace(/^[^:]*:\s*/, '') : '' });
});

wss.on('connection', (ws, req) => {
  out({
    event: 'open',
    extensions: ws.extensions,
    offer: req.headers['sec-websocket-extensions'] || '',
  });
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('close', (code, reason) => out({ event: 'close', code, reason: reason.toString() }));
  ws.on('error', (e) => out({ event: 'error', error: String(e) }));
});

const stop = () => {
  wss.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
// Never outlive a test run by much.
setTimeout(stop, 120000).unref();
