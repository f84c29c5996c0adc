// The official OpenAI Node client against the fine-tuning API of a running
// `prefixd serve` (PREFIXD_URL): files.create with a stream (the SDK's own
// multipart/form-data), retrieve, list, a bad file refused, a job created
// with the prefix method, cancelled, its events, the job list paged by the
// SDK (limit 1: it follows `after`), and the file deleted. TRAIN_PATH and
// BAD_PATH name the files. Prints one JSON object for test_training.py.
//
// MODE=api (test_finetune_api.py): OpenAI's supervised method with its
// hyperparameters, a job run to the end, its checkpoints
// (fineTuning.jobs.checkpoints.list) and its result files' contents
// (files.content). TRAIN_PATH and VALID_PATH name the files.
import fs from "node:fs";
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

if (process.env.MODE === "api") {
  const train = await client.files.create({ file: fs.createReadStream(process.env.TRAIN_PATH), purpose: "fine-tune" });
  const valid = await client.files.create({ file: fs.createReadStream(process.env.VALID_PATH), purpose: "fine-tune" });
  const created = await client.fineTuning.jobs.create({
    model: "stories260K",
    training_file: train.id,
    validation_file: valid.id,
    suffix: "spark",
    seed: 5,
    method: {
      type: "supervised",
      supervised: { hyperparameters: { n_epochs: 5, batch_size: 4, learning_rate_multiplier: 2 } },
    },
  });
  let job = created;
  const deadline = Date.now() + 1000 * Number(process.env.TRAIN_TIMEOUT || 240);
  while (!["succeeded", "failed", "cancelled"].includes(job.status) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    job = await client.fineTuning.jobs.retrieve(created.id);
  }
  const checkpoints = [];
  for await (const c of client.fineTuning.jobs.checkpoints.list(job.id)) checkpoints.push(c);
  const results = [];
  for (const id of job.result_files) results.push(await (await client.files.content(id)).text());
  console.log(JSON.stringify({ created, job, checkpoints, results }));
  process.exit(0);
}

const file = await client.files.create({
  file: fs.createReadStream(process.env.TRAIN_PATH),
  purpose: "fine-tune",
});
const retrieved = await client.files.retrieve(file.id);
const files = [];
for await (const f of client.files.list()) files.push(f.id);

let bad = null;
try {
  await client.files.create({ file: fs.createReadStream(process.env.BAD_PATH), purpose: "fine-tune" });
} catch (e) {
  bad = { status: e.status, message: e.message, param: e.param ?? null };
}

const job = await client.fineTuning.jobs.create({
  model: "stories260K",
  training_file: file.id,
  suffix: "node-task",
  seed: 3,
  hyperparameters: { n_epochs: 50 },
  method: { type: "prefix", prefix: { hyperparameters: { num_virtual_tokens: 4 } } },
});
const cancelled = await client.fineTuning.jobs.cancel(job.id);
const again = await client.fineTuning.jobs.retrieve(job.id);
const events = [];
for await (const e of client.fineTuning.jobs.listEvents(job.id)) events.push(e.message);
const jobs = [];
for await (const j of client.fineTuning.jobs.list({ limit: 1 })) jobs.push(j.id);
const deleted = await client.files.delete(file.id);

console.log(
  JSON.stringify({
    file,
    retrieved,
    files,
    bad,
    job: { id: job.id, status: job.status, suffix: job.user_provided_suffix, method: job.method },
    cancelled: cancelled.status,
    again: again.status,
    events,
    jobs,
    deleted,
  }),
);
