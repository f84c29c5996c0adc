// The official OpenAI Node client's chat calls against a running `prefixd
// serve` (PREFIXD_URL): plain, streamed (with usage), n > 1, with a task, and
// response_format json_object refused. Prints one JSON object for
// tests/e2e/test_chat.py to check.
import OpenAI from "openai";

const base = process.env.PREFIXD_URL;
if (!base) {
  console.error("set PREFIXD_URL");
  process.exit(2);
}
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
const messages = [
  { role: "system", content: "You tell stories." },
  { role: "user", content: "Tell me about a dog." },
];
const params = { model: process.env.PREFIXD_BASE, messages, max_tokens: 16, temperature: 0 };

const plain = await client.chat.completions.create(params);

const stream = await client.chat.completions.create({
  ...params,
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let role = null;
let finish = null;
let usage = null;
for await (const chunk of stream) {
  for (const c of chunk.choices) {
    if (c.delta.role) role = c.delta.role;
    if (c.delta.content) text += c.delta.content;
    if (c.finish_reason) finish = c.finish_reason;
  }
  if (chunk.usage) usage = chunk.usage;
}

const many = await client.chat.completions.create({
  ...params,
  n: 3,
  temperature: 1,
  seed: 11,
  max_completion_tokens: 8,
});

const task = await client.chat.completions.create({ ...params, model: process.env.PREFIXD_TASK });

let error = null;
try {
  await client.chat.completions.create({ ...params, response_format: { type: "json_object" } });
} catch (e) {
  error = { status: e.status, param: e.param ?? null, code: e.code ?? null };
}

console.log(JSON.stringify({
  plain: { object: plain.object, message: plain.choices[0].message,
           finish: plain.choices[0].finish_reason, usage: plain.usage },
  stream: { text, role, finish, usage },
  many: many.choices.map((c) => ({ index: c.index, content: c.message.content })),
  task: { model: task.model, content: task.choices[0].message.content },
  error,
}));
