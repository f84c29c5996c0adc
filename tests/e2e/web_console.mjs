// web_console.mjs — drives the web console (GET /) in Debian's headless
// Chromium through puppeteer-core, against a real `prefixd serve` started by
// test_web.py with an admin key and a user key. Checks, in order:
//   1. the page loads with the admin key in sessionStorage and logs no
//      console error, failed request or uncaught exception;
//   2. the task table equals GET /v1/prefixes;
//   3. a playground completion (two tasks side by side, greedy) streams
//      (the output grows in several steps) and equals the API's answer;
//   4. a fine-tuning job created from the page shows its loss chart gaining
//      points while it runs, ending with exactly the job's metrics events;
//   5. the load pane draws its four charts from /metrics;
//   6. admin actions (build a task, delete it, list jobs) fail without a
//      key (401) and with the user key (403), and succeed with the admin key.
// Screenshots go to OUT_DIR. Prints one line per check; exits 1 on failure.
//
//   node web_console.mjs BASE_URL ADMIN_KEY USER_KEY TRAIN.jsonl VALID.jsonl OUT_DIR
import puppeteer from "puppeteer-core";
import assert from "node:assert/strict";
import path from "node:path";

const [base, adminKey, userKey, trainFile, validFile, outDir] = process.argv.slice(2);
const KEY = "prefixd.apiKey";

async function api(method, p, body, key = adminKey) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body) headers["Content-Type"] = "application/json";
  const r = await fetch(base + p, { method, headers, body: body && JSON.stringify(body) });
  const j = await r.json();
  assert.ok(r.ok, `${method} ${p}: ${r.status} ${JSON.stringify(j)}`);
  return j;
}

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  defaultViewport: { width: 1400, height: 900 },
});
let failed = false;
try {
  const page = await browser.newPage();
  const problems = [];     // console errors, failed requests: none allowed until auth checks
  let expectErrors = false;
  page.on("console", (m) => {
    if (m.type() === "error" && !expectErrors) problems.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`uncaught: ${e.message}`));
  page.on("requestfailed", (r) => {
    if (r.failure()?.errorText !== "net::ERR_ABORTED" || !expectErrors)
      problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
  });
  page.on("response", (r) => {
    if (r.status() >= 400 && !expectErrors) problems.push(`HTTP ${r.status()}: ${r.url()}`);
  });
  page.on("dialog", (d) => d.accept());
  await page.evaluateOnNewDocument((k, v) => sessionStorage.setItem(k, v), KEY, adminKey);
  const shot = (name) => page.screenshot({ path: path.join(outDir, `web_${name}.png`), fullPage: true });
  const setValue = (sel, v) => page.$eval(sel, (e, v) => { e.value = v; }, String(v));

  // 1 + 2: load, task table
  const resp = await page.goto(base + "/", { waitUntil: "load" });
  const csp = resp.headers()["content-security-policy"] ?? "";
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe/);
  await page.waitForSelector("body[data-ready='1']", { timeout: 10000 });
  await page.waitForSelector("#tasks-table[data-loaded]", { timeout: 10000 });
  const rows = await page.$$eval("#tasks-table tbody tr", (trs) => trs.map((tr) => {
    const td = [...tr.children].map((c) => c.textContent);
    return { task: tr.dataset.task, source: td[1], P: Number(td[2]), base: td[5],
             used: td[7], acquires: Number(td[8]), resident: td[9] === "yes" };
  }));
  const listed = (await api("GET", "/v1/prefixes")).data.map((p) => (
    { task: p.task, source: p.source, P: p.num_virtual_tokens, base: p.base_fingerprint,
      used: p.last_used_at ? "set" : "never", acquires: p.requests, resident: p.resident }));
  for (const r of rows) if (r.used !== "never") r.used = "set";
  assert.ok(listed.every((p) => /^[0-9a-f]{16}$/.test(p.base)), "base fingerprints listed");
  assert.deepEqual(rows, listed);
  assert.ok(rows.length >= 2, "the test registry has tasks");
  console.log(`tasks: ${rows.map((r) => r.task).join(", ")} equal /v1/prefixes`);
  await shot("tasks");

  // 3: playground, two tasks side by side
  const [taskA, taskB] = [rows[0].task, rows[1].task];
  await page.click("nav button[data-pane='playground']");
  await page.waitForFunction(() => document.querySelectorAll("select[name=model_a] option").length > 2);
  await page.select("select[name=mode]", "completions");
  await page.select("select[name=model_a]", taskA);
  await page.select("select[name=model_b]", taskB);
  await setValue("input[name=max_tokens]", 48);
  await setValue("input[name=temperature]", 0);
  await setValue("#play-form textarea[name=prompt]", "Once upon a time");
  // every distinct length the output shows while it streams
  await page.evaluate(() => {
    window.__lengths = [];
    new MutationObserver(() => window.__lengths.push(document.querySelector("#out-a").textContent.length))
      .observe(document.querySelector("#out-a"), { childList: true, characterData: true, subtree: true });
  });
  const sseTypes = [];
  page.on("response", (r) => {
    if (r.url().endsWith("/v1/completions"))
      sseTypes.push([JSON.parse(r.request().postData()).stream, r.headers()["content-type"]]);
  });
  await page.click("#play-run");
  await page.waitForSelector("#out-a[data-done='1']", { timeout: 20000 });
  await page.waitForSelector("#out-b[data-done='1']", { timeout: 20000 });
  const [outA, outB, lengths, events] = await page.evaluate(() => [
    document.querySelector("#out-a").textContent, document.querySelector("#out-b").textContent,
    window.__lengths, Number(document.querySelector("#out-a").dataset.events)]);
  for (const [task, out] of [[taskA, outA], [taskB, outB]]) {
    const ref = await api("POST", "/v1/completions",
                          { model: task, prompt: "Once upon a time", max_tokens: 48, temperature: 0 });
    assert.equal(out, ref.choices[0].text, `playground output of ${task}`);
  }
  // streamed: two event streams read through a ReadableStream, event by
  // event. The server puts every token ready when it writes into one event
  // and stories260K is fast, so how many events and repaints there are
  // depends on timing: reported, not required.
  const growth = new Set(lengths.filter((n) => n > 0)).size;
  assert.deepEqual(sseTypes, [[true, "text/event-stream"], [true, "text/event-stream"]]);
  assert.ok(events >= 1, `the page applied ${events} stream events`);
  assert.notEqual(outA, outB, "two tasks give different continuations");
  console.log(`playground: ${taskA} and ${taskB} equal the API's greedy answers (${events} stream events, ${growth} repaints)`);
  await shot("playground");

  // 4: fine-tuning job with a live loss chart
  await page.click("nav button[data-pane='jobs']");
  await (await page.$("#job-form input[name=training]")).uploadFile(trainFile);
  await (await page.$("#job-form input[name=validation]")).uploadFile(validFile);
  await setValue("#job-form input[name=suffix]", "webjob");
  await setValue("#job-form input[name=n_epochs]", 6); // long enough (36 steps) for the chart to be seen growing
  await setValue("#job-form input[name=batch_size]", 4);
  await setValue("#job-form input[name=eval_every]", 2);
  await setValue("#job-form input[name=seed]", 7);
  await page.click("#job-form button[type=submit]");
  await page.waitForSelector("#loss-chart[data-status]", { timeout: 20000 });
  const seen = [];  // [train points, status] each time the chart changed
  const t0 = Date.now();
  for (;;) {
    const s = await page.$eval("#loss-chart", (e) => [Number(e.dataset.trainPoints), e.dataset.status]);
    if (!seen.length || seen.at(-1)[0] !== s[0] || seen.at(-1)[1] !== s[1]) seen.push(s);
    if (["succeeded", "failed", "cancelled"].includes(s[1])) break;
    assert.ok(Date.now() - t0 < 300000, `job still ${s[1]} after 300 s`);
    if (s[0] === 2) await shot("jobs_running");
    await new Promise((r) => setTimeout(r, 150));
  }
  const jobId = await page.$eval("#job-detail-id", (e) => e.textContent);
  assert.equal(seen.at(-1)[1], "succeeded", `job ${jobId} ended ${seen.at(-1)[1]}`);
  const whileRunning = seen.filter(([n, st]) => st === "running" && n > 0).map(([n]) => n);
  assert.ok(whileRunning.length >= 2, `the chart gained points while running: ${JSON.stringify(seen)}`);
  // the chart's points are the job's metrics events
  const ev = [];
  let after = "";
  for (;;) {
    const pg = await api("GET", `/v1/fine_tuning/jobs/${jobId}/events?limit=100${after}`);
    ev.push(...pg.data);
    if (!pg.has_more) break;
    after = `&after=${pg.data.at(-1).id}`;
  }
  // one point per step's metrics event (not the final summary), oldest first
  const metrics = ev.filter((e) => e.type === "metrics" && !e.data.final).map((e) => e.data).reverse();
  const trainSteps = new Set(metrics.filter((d) => d.train_loss != null).map((d) => d.step));
  const validSteps = new Set(metrics.filter((d) => d.valid_loss != null).map((d) => d.step));
  const steps = [...new Set(metrics.map((d) => d.step))].sort((a, b) => a - b);
  const at = (s, k) => metrics.filter((d) => d.step === s && d[k] != null).at(-1)?.[k] ?? null;
  const expected = JSON.stringify([steps, steps.map((s) => at(s, "train_loss")), steps.map((s) => at(s, "valid_loss"))]);
  await page.waitForFunction((x) => document.querySelector("#loss-chart").dataset.series === x,
                             { timeout: 5000 }, expected).catch(async () => {
    assert.equal(await page.$eval("#loss-chart", (e) => e.dataset.series), expected, "chart points = events");
  });
  assert.ok(trainSteps.size >= 3 && validSteps.size >= 2, `events: ${trainSteps.size} train, ${validSteps.size} valid`);
  assert.ok(await page.$("#loss-chart canvas"), "the loss chart is drawn");
  console.log(`fine-tuning: ${jobId} chart grew ${JSON.stringify(whileRunning)} while running, ` +
              `ends with ${trainSteps.size} train and ${validSteps.size} valid points = its events`);
  await page.waitForSelector(`#jobs-table tr[data-job='${jobId}'][data-status='succeeded']`, { timeout: 5000 });
  await shot("jobs");

  // 5: load
  await page.click("nav button[data-pane='load']");
  await page.waitForFunction(() => document.querySelectorAll("#pane-load canvas").length >= 4, { timeout: 5000 });
  await new Promise((r) => setTimeout(r, 2500));
  const cards = await page.$$eval("#load-cards .card", (cs) => cs.map((c) => c.textContent));
  assert.ok(cards.some((c) => c.endsWith("running")) && cards.some((c) => c.endsWith("generated tokens/s")), cards.join());
  console.log(`load: ${cards.join(" | ")}`);
  await shot("load");
  assert.deepEqual(problems, [], "no console errors while the page was used with its key");

  // 6: admin actions without a key, with the user key, with the admin key
  expectErrors = true;
  await page.click("nav button[data-pane='tasks']");
  const status = () => page.$eval("#tasks-status", (e) => [e.textContent, e.classList.contains("error")]);
  const useKey = async (k) => {
    await setValue("#api-key", k);
    await page.click("#key-form button[type=submit]");
    await new Promise((r) => setTimeout(r, 200));
  };
  const buildTask = async (name) => {
    await setValue("#prompt-form input[name=task]", name);
    await setValue("#prompt-form input[name=text]", "The cat sat on the mat.");
    await page.click("#prompt-form button[type=submit]");
    await page.waitForFunction(() => !document.querySelector("#tasks-status").textContent.endsWith("…"));
    return status();
  };
  const hasRow = (name) => page.$$eval("#tasks-table tbody tr", (trs, n) => trs.some((t) => t.dataset.task === n), name);
  await page.click("#key-clear");
  let [text, isErr] = await buildTask("webtmp");
  assert.ok(isErr && text.includes("401"), `build without a key: ${text}`);
  await useKey(userKey);
  [text, isErr] = await buildTask("webtmp");
  assert.ok(isErr && text.includes("403"), `build with the user key: ${text}`);
  assert.equal((await api("GET", "/v1/prefixes")).data.some((p) => p.task === "webtmp"), false);
  await useKey(adminKey);
  [text, isErr] = await buildTask("webtmp");
  assert.ok(!isErr && text === "built webtmp", `build with the admin key: ${text}`);
  await page.waitForFunction(() => [...document.querySelectorAll("#tasks-table tbody tr")].some((t) => t.dataset.task === "webtmp"));
  assert.equal((await api("GET", "/v1/prefixes")).data.some((p) => p.task === "webtmp"), true);
  const del = async () => {
    // the table re-renders as the registry refreshes: find and click the
    // button in one in-page step, so the node cannot go stale in between
    const sel = "#tasks-table tr[data-task='webtmp'] button.delete";
    await page.waitForSelector(sel);
    await page.$eval(sel, (b) => b.click());
    await page.waitForFunction(() => /delete|deleted/.test(document.querySelector("#tasks-status").textContent));
    const s = await status();
    await page.evaluate(() => { document.querySelector("#tasks-status").textContent = ""; });
    return s;
  };
  await useKey(userKey);
  [text, isErr] = await del();
  assert.ok(isErr && text.includes("403"), `delete with the user key: ${text}`);
  await page.click("#key-clear");
  await page.waitForSelector("#tasks-status.error");
  [text, isErr] = await status();
  assert.ok(text.includes("401"), `listing without a key: ${text}`);
  await useKey(adminKey);
  await page.waitForFunction(() => document.querySelector("#tasks-table tr[data-task='webtmp']"));
  [text, isErr] = await del();
  assert.ok(!isErr && text === "deleted webtmp", `delete with the admin key: ${text}`);
  assert.equal(await hasRow("webtmp"), false);
  assert.equal((await api("GET", "/v1/prefixes")).data.some((p) => p.task === "webtmp"), false);
  await useKey(userKey);
  await page.click("nav button[data-pane='jobs']");
  await page.waitForFunction(() => document.querySelector("#jobs-status").textContent.includes("403"));
  assert.equal(await page.$$eval("#jobs-table tbody tr", (t) => t.length), 0, "no job shown to a user key");
  assert.equal(await page.$eval("#job-detail", (e) => e.hidden), true);
  console.log("auth: build, delete and job listing fail without a key (401) and with the user key (403), work with the admin key");
  await shot("auth");
} catch (e) {
  failed = true;
  console.error(e.stack ?? String(e));
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
