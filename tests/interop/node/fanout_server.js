// Node `ws` fan-out reference server for `scripts/bench` (the fanout
// scenario): the push protocol of `tether serve`'s `/ws` reduced to what
// `tether bench fanout` speaks, written as the ws README's broadcast
// example does it (`client.send(data)` for every open client of a channel,
// the message serialized once).
//
//   node fanout_server.js [--host 127.0.0.1] [--port 8080]
//
// Client -> server (JSON text frames): {"type":"subscribe","channel":"c"},
// {"type":"publish","channel":"c","data":...}. Server -> client:
// {"type":"subscribed","channel":"c","offset":L} (L: the latest offset),
// {"type":"message","channel":"c","offset":N,"data":...} to every
// subscriber, {"type":"published","channel":"c","offset":N} to the
// publisher, {"type":"error","message":"..."} for a bad command.
// permessage-deflate off (ws's server default). Prints
// "listening on http://HOST:PORT" on stderr; exits on SIGTERM or SIGINT.
'use strict';

const WebSocket = require('ws');

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
};
const host = arg('--host', '127.0.0.1');
const port = Number(arg('--port', '8080'));

// channel name -> { offset, subscribers: Set<WebSocket> }
const channels = new Map();
const channel = (name) => {
  let c = channels.get(name);
  if (!c) {
    c = { offset: 0, subscribers: new Set() };
    channels.set(name, c);
  }
  return c;
};

const wss = new WebSocket.WebSocketServer({ host, port, path: '/ws', perMessageDeflate: false });

wss.on('listening', () => process.stderr.write(`listening on http://${host}:${wss.address().port}\n`));

wss.on('connection', (ws, req) => {
  req.socket.setNoDelay(true);
  const subscribed = new Set();
  ws.on('message', (raw, isBinary) => {
    let cmd;
    try {
      if (isBinary) throw new Error('commands are JSON text frames');
      cmd = JSON.parse(raw.toString());
      if (typeof cmd.channel !== 'string') throw new Error('no channel');
    } catch (e) {
      ws.send(JSON.stringify({ type: 'error', message: String(e.message) }));
      return;
    }
    const c = channel(cmd.channel);
    if (cmd.type === 'subscribe') {
      if (subscribed.has(cmd.channel)) {
        ws.send(JSON.stringify({ type: 'error', message: 'already subscribed' }));
        return;
      }
      subscribed.add(cmd.channel);
      c.subscribers.add(ws);
      ws.send(JSON.stringify({ type: 'subscribed', channel: cmd.channel, offset: c.offset }));
    } else if (cmd.type === 'publish') {
      c.offset += 1;
      const message = JSON.stringify({ type: 'message', channel: cmd.channel, offset: c.offset, data: cmd.data });
      for (const client of c.subscribers) {
        if (client.readyState === WebSocket.OPEN) client.send(message);
      }
      ws.send(JSON.stringify({ type: 'published', channel: cmd.channel, offset: c.offset }));
    } else {
      ws.send(JSON.stringify({ type: 'error', message: `unknown type ${JSON.stringify(cmd.type)}` }));
    }
  });
  ws.on('close', () => {
    for (const name of subscribed) {
      const c = channels.get(name);
      if (c) c.subscribers.delete(ws);
    }
  });
  ws.on('error', () => {});
});

const stop = () => {
  wss.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
