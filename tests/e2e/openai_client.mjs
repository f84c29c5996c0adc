// The official OpenAI Node client against a running `prefixd serve`
// (PREFIXD_URL, e.g. http://127.0.0.1:8080): a completion with model = a task
// name, the same streamed, the model list, and an unknown model. Prints one
// JSON object for tests/e2e/test_server.py to check.
import OpenAI from "openai";

const base = process.env.PREFIXD_URL;
if (!base) {
  console.error("set PREFIXD_URL");
  process.exit(2);
}
const client = new OpenAI({
  baseURL: `${base}/v1`,
  apiKey: process.env.PREFIXD_API_KEY || "unused",
  maxRetries: 0,
});
const params = { model: "story", prompt: "there was", max_tokens: 20, temperature: 0 };

const done = await client.completions.create(params);
const completion = {
  model: done.model,
  text: done.choices[0].text,
  finish_reason: done.choices[0].finish_reason,
  usage: done.usage,
};

const stream = await client.completions.create({
  ...params,
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
let chunks = 0;
let usage = null;
for await (const chunk of stream) {
  chunks++;
  for (const c of chunk.choices) text += c.text;
  if (chunk.usage) usage = chunk.usage;
}

const models = [];
for await (const m of client.models.list()) models.push(m.id);

let error = null;
try {
  await client.completions.create({ ...params, model: "no-such-task" });
} catch (e) {
  error = { status: e.status, code: e.code ?? null };
}

console.log(JSON.stringify({ completion, stream: { text, chunks, usage }, models, error }));
