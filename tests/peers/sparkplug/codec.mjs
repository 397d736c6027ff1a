// Encode and decode Sparkplug B payloads with Eclipse Tahu's JavaScript implementation
// (npm sparkplug-payload), so the bridge's decoder and encoder are checked against another
// implementation (tests/unit/test_sparkplug_peer.py).
//
// stdin:  {"encode": [<payload>, ...]}  ->  stdout: {"encoded": ["<base64>", ...]}
//         {"decode": ["<base64>", ...]} ->  stdout: {"decoded": [<payload>, ...]}
// A payload is the object sparkplug-payload's encodePayload() takes ({timestamp, seq, metrics:
// [{name, alias, type: "Int32", value, timestamp, isHistorical, ...}]}). JSON cannot carry
// 64-bit integers or bytes, so {"$long": "<decimal>", "unsigned": true|false} stands for a
// Long and {"$bytes": "<base64>"} for a Buffer, both ways.
import { readFileSync } from "node:fs";
import Long from "long";
import sparkplug from "sparkplug-payload";

const codec = sparkplug.get("spBv1.0");

function fromJson(value) {
  if (Array.isArray(value)) return value.map(fromJson);
  if (value !== null && typeof value === "object") {
    if ("$long" in value) return Long.fromString(value.$long, Boolean(value.unsigned));
    if ("$bytes" in value) return Buffer.from(value.$bytes, "base64");
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fromJson(v)]));
  }
  return value;
}

function toJson(value) {
  if (Long.isLong(value)) return { $long: value.toString(), unsigned: value.unsigned };
  if (value instanceof Uint8Array) return { $bytes: Buffer.from(value).toString("base64") };
  if (Array.isArray(value)) return value.map(toJson);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v)]));
  }
  return value;
}

const request = JSON.parse(readFileSync(0, "utf8"));
const out = {};
if (request.encode) {
  out.encoded = request.encode.map((p) =>
    Buffer.from(codec.encodePayload(fromJson(p))).toString("base64"),
  );
}
if (request.decode) {
  out.decoded = request.decode.map((b) => toJson(codec.decodePayload(Buffer.from(b, "base64"))));
}
process.stdout.write(JSON.stringify(out) + "\n");
