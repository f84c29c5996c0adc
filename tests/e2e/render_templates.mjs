// The reference side of tests/e2e/test_templates.py: renders every chat
// template in tests/data/templates/ with every conversation of
// tests/data/templates/conversations.json, add_generation_prompt on and off,
// using @huggingface/jinja (the engine of transformers.js). Content-part
// arrays are joined into one string first, as prefixd documents (chat.h).
// The clock is frozen (FIXED_MS) for strftime_now; run with TZ=UTC.
// Prints one JSON object: {"<template>|<conversation>|<agp>": {"prompt"} or {"error"}}.
import { Template } from "@huggingface/jinja";
import fs from "node:fs";
import path from "node:path";

const FIXED_MS = 1722000000000; // 2024-07-26T13:20:00Z
const RealDate = Date;
globalThis.Date = class extends RealDate {
  constructor(...args) {
    super(...(args.length ? args : [FIXED_MS]));
  }
  static now() {
    return FIXED_MS;
  }
};

const dir = process.argv[2];
const spec = JSON.parse(fs.readFileSync(path.join(dir, "conversations.json"), "utf8"));
const names = fs.readdirSync(dir).filter((f) => f.endsWith(".jinja")).sort();

function normalize(messages) {
  return messages.map((m) =>
    Array.isArray(m.content) ? { ...m, content: m.content.map((p) => p.text).join("") } : m,
  );
}

const out = {};
for (const name of names) {
  const source = fs.readFileSync(path.join(dir, name), "utf8");
  let tmpl = null, parseError = null;
  try {
    tmpl = new Template(source);
  } catch (e) {
    parseError = String(e.message || e);
  }
  for (const [conv, c] of Object.entries(spec.conversations)) {
    for (const agp of [true, false]) {
      const key = `${name}|${conv}|${agp}`;
      if (parseError) {
        out[key] = { error: parseError };
        continue;
      }
      const ctx = {
        messages: normalize(c.messages),
        add_generation_prompt: agp,
        bos_token: "<|bos|>",
        eos_token: "<|eos|>",
      };
      if (c.tools) ctx.tools = spec.tools;
      try {
        out[key] = { prompt: tmpl.render(ctx) };
      } catch (e) {
        out[key] = { error: String(e.message || e) };
      }
    }
  }
}
process.stdout.write(JSON.stringify(out));
