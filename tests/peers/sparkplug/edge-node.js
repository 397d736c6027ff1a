// A live Sparkplug B edge node written by someone else: Eclipse Tahu's JavaScript client
// (npm sparkplug-client, which encodes with sparkplug-payload and talks MQTT with mqtt.js),
// driven by the end-to-end tests (tests/integration/test_sparkplug_peer.py, through
// tests/support/sparkplug_edge.py).
//
// argv[2]: the node as JSON:
//   {"port": 1883, "group": "plant", "node": "e1", "start_ms": <first timestamp>,
//    "qos": 0, "will_qos": 1, "client_id": "...",
//    "metrics": [{"name": "Env/Temp", "type": "Double"}, ...],          // the node's own
//    "devices": {"pump": [{"name": "Level", "type": "Int16"}, ...], ...}}
// stdin: one command a line, run in order; each ends with {"done": <do>} on stdout:
//   {"do": "birth", "reverse": false}  NBIRTH, then a DBIRTH per device: names, aliases, values
//   {"do": "data", "count": 3, "interval_ms": 100}
//                                      count rounds of NDATA + DDATA per device, aliases only,
//                                      interval_ms apart (default: back to back)
//   {"do": "skip_seq", "count": 1}     the next message's seq jumps (messages "lost")
//   {"do": "stop"}                     NDEATH (explicit), MQTT DISCONNECT, exit 0
//   {"do": "vanish"}                   exit without DISCONNECT: the broker sends the Will NDEATH
// stdout: JSON lines. {"connected": n} at each MQTT connect; {"published": {"device": <device
// id or null for the node>, "metric": <name>, "value": v, "timestamp": ms, "alias": a,
// "type": "NDATA"}} for every value published (the tests' oracle); {"done": ...} per command.
//
// What sparkplug-client 3.2.4 does by itself (documented in docs/guide/sparkplug.md):
// - it always connects with clean session (clean: true overrides mqttOptions);
// - it publishes NBIRTH/DBIRTH/NDATA/DDATA/NDEATH with QoS 0 (client.publish without options)
//   and sets its Will (the NDEATH) at QoS 0, where Sparkplug 3.0 asks QoS 1 for the Will;
// - bdSeq is 0 and never incremented (the Will's bdSeq is fixed when the client is built);
// - seq: publishNodeBirth resets it to 0, every publish takes the next, wrapping 255 → 0; the
//   client exposes it as a property, which is how "skip_seq" makes a gap;
// - it emits "birth" on every (re)connect and leaves publishing the BIRTHs to the application;
// - sparkplug-payload writes the datatype in every metric, DATA too (aliases only = no name).
// The "qos" and "will_qos" options below change the first two through the client's own mqtt.js
// client (a wrapper on its publish; the Will's options on their way into mqtt.connect), because a
// QoS 0 message for a subscriber that is offline is dropped by the broker by MQTT design.
import { createRequire } from "node:module";
import readline from "node:readline";
import sparkplug from "sparkplug-client";

const require = createRequire(import.meta.url);
const mqtt = require("mqtt"); // the module object sparkplug-client calls connect() on

const cfg = JSON.parse(process.argv[2]);
const qos = cfg.qos ?? 0;
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

// The Will is built into the CONNECT packet inside newClient(): change its QoS on the way in.
const connect = mqtt.connect;
mqtt.connect = (url, options) =>
  connect(url, cfg.will_qos === undefined ? options : { ...options, will: { ...options.will, qos: cfg.will_qos } });

const client = sparkplug.newClient({
  serverUrl: `mqtt://127.0.0.1:${cfg.port}`,
  username: cfg.username ?? "",
  password: cfg.password ?? "",
  groupId: cfg.group,
  edgeNode: cfg.node,
  clientId: cfg.client_id ?? `tahu-${cfg.group}-${cfg.node}`,
  publishDeath: true,
  version: "spBv1.0",
  keepalive: 5,
  mqttOptions: { reconnectPeriod: 200 },
});

const pending = [];
const publish = client.client.publish.bind(client.client);
client.client.publish = (topic, payload, options, callback) => {
  pending.push(
    new Promise((resolve, reject) =>
      publish(topic, payload, { qos, ...(options || {}) }, (err) => {
        if (callback) callback(err);
        if (err) reject(err);
        else resolve();
      }),
    ),
  );
};

// Every metric of the node, in one alias space (aliases are unique per edge node).
const all = [];
for (const m of cfg.metrics || []) all.push({ device: null, ...m });
for (const [device, metrics] of Object.entries(cfg.devices || {})) {
  for (const m of metrics) all.push({ device, ...m });
}
let aliasOf = new Map(all.map((m, i) => [m, i + 1]));
let counter = 0;
let ms = cfg.start_ms ?? Date.now() - 600000;

// A distinct value per metric and round, exact in its type (Float: x.5 fits a float32).
function nextValue(type) {
  counter += 1;
  switch (type.toUpperCase()) {
    case "INT8":
      return -(counter % 100);
    case "INT16":
    case "INT32":
      return counter % 2 ? -counter : counter;
    case "UINT8":
      return counter % 200;
    case "UINT16":
    case "UINT32":
      return counter;
    case "FLOAT":
      return counter + 0.5;
    default: // Double
      return counter + 0.25;
  }
}

function metricsOf(device, withNames) {
  const out = [];
  for (const m of all.filter((m) => m.device === device)) {
    const value = nextValue(m.type);
    const alias = aliasOf.get(m);
    out.push(withNames ? { name: m.name, alias, type: m.type, value } : { alias, type: m.type, value });
    say({ published: { device, metric: m.name, value, timestamp: ms, alias } });
  }
  return out;
}

const devices = Object.keys(cfg.devices || {});

function birth(cmd) {
  if (cmd.reverse) {
    // New aliases: handed out backwards, so every old alias now names another metric.
    aliasOf = new Map(all.map((m, i) => [m, all.length - i + (cmd.offset ?? 0)]));
  }
  ms += 1000;
  client.publishNodeBirth({ timestamp: ms, metrics: metricsOf(null, true) });
  for (const d of devices) client.publishDeviceBirth(d, { timestamp: ms, metrics: metricsOf(d, true) });
}

function data() {
  ms += 1000;
  if (all.some((m) => m.device === null)) {
    client.publishNodeData({ timestamp: ms, metrics: metricsOf(null, false) });
  }
  for (const d of devices) client.publishDeviceData(d, { timestamp: ms, metrics: metricsOf(d, false) });
}

async function flush() {
  const waiting = pending.splice(0);
  await Promise.all(waiting);
}

let connects = 0;
client.on("connect", () => {
  connects += 1;
  say({ connected: connects });
});
client.on("error", (err) => {
  process.stderr.write(`sparkplug-client error: ${err}\n`);
  process.exit(2);
});

const commands = [];
let busy = false;
async function drain() {
  if (busy) return;
  busy = true;
  while (commands.length) {
    const cmd = commands.shift();
    if (cmd.do === "birth") birth(cmd);
    else if (cmd.do === "data") {
      for (let i = 0; i < (cmd.count ?? 1); i++) {
        if (i > 0 && cmd.interval_ms) await new Promise((r) => setTimeout(r, cmd.interval_ms));
        data();
      }
    }
    else if (cmd.do === "skip_seq") client.seq += cmd.count ?? 1;
    else if (cmd.do === "stop") {
      const ended = new Promise((resolve) => client.client.once("end", resolve));
      client.stop(); // NDEATH (publishDeath), then a clean DISCONNECT once it is sent
      await flush();
      await ended;
      say({ done: cmd.do });
      process.exit(0);
    } else if (cmd.do === "vanish") {
      await flush();
      say({ done: cmd.do });
      process.exit(0); // the socket closes without DISCONNECT: the Will goes out
    } else throw new Error(`unknown command ${JSON.stringify(cmd)}`);
    await flush();
    say({ done: cmd.do });
  }
  busy = false;
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  commands.push(JSON.parse(line));
  drain().catch((err) => {
    process.stderr.write(`${err.stack}\n`);
    process.exit(1);
  });
});
