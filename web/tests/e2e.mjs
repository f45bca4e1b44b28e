// End-to-end test of the browser app in Debian's headless Chromium (playwright-core, no browser
// download): load the page and its model, ask a question and compare with `bert-native qa`,
// fine-tune a few steps in the worker and check the loss falls, then save the fine-tuned
// weights for the caller to load with bert-native.
//
//   node e2e.mjs URL EXPECTED_JSON OUT_DIR MODEL_DIR SQUAD_JSON
// MODEL_DIR: the served model's folder (dropped on the page as files); SQUAD_JSON: a SQuAD v1.1
// file to upload for training. EXPECTED_JSON: {"question", "context", "answer": bert-native qa's output}. Prints what it saw and
// exits non-zero on any mismatch.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const [url, expectedPath, outDir, modelDir, squadPath] = process.argv.slice(2);
const expected = JSON.parse(fs.readFileSync(expectedPath, "utf8"));
const MINUTE = 60_000;

function check(condition, message) {
  if (!condition) {
    console.error(`FAIL: ${message}`);
    process.exit(1);
  }
  console.log(`ok: ${message}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic", "--enable-unsafe-webgpu",
  ],
});
const external = [];
// One browser profile for every page, so the second page finds the model in the Cache API.
const context = await browser.newContext();

// Opens the page on `query`'s backend, waits for its model, asks the expected question and
// checks the answer against bert-native's. Returns the page and what it saw.
async function answerOn(query) {
  const page = await context.newPage();
  const weightRequests = [];
  page.on("request", (r) => {
    const u = new URL(r.url());
    if (u.pathname.endsWith("model.safetensors")) weightRequests.push(r.url());
    if (!["127.0.0.1", "localhost"].includes(u.hostname) && !["blob:", "data:"].includes(u.protocol)) external.push(r.url());
  });
  page.on("console", (m) => console.log(`  [page] ${m.text()}`));
  page.on("pageerror", (e) => console.log(`  [pageerror] ${e.message}`));
  await page.goto(url + query);
  await page.waitForSelector('#model-status:is([data-state="ready"], [data-state="error"])', { timeout: 5 * MINUTE });
  const status = await page.textContent("#model-status");
  check((await page.getAttribute("#model-status", "data-state")) === "ready", `model loaded: ${status}`);
  const backend = await page.textContent("#backend");
  await page.fill("#context", expected.context);
  await page.fill("#question", expected.question);
  await page.click("#ask");
  await page.waitForSelector("#answer-text, #answer-error", { timeout: 15 * MINUTE });
  const error = await page.$("#answer-error");
  check(!error, `answered on ${backend} without error${error ? ": " + (await error.textContent()) : ""}`);
  const answer = await page.textContent("#answer-text");
  const score = Number(await page.textContent("#answer-score"));
  const ms = Number(await page.textContent("#answer-ms"));
  const highlight = await page.textContent("#answer-highlight");
  const nbest = await page.$$eval("#nbest li", (items) => items.length);
  const seen = { query, backend, answer, score, ms, highlight, nbest, weight_downloads: weightRequests.length };
  console.log(JSON.stringify(seen));
  check(answer === expected.answer.answer, `${backend}: answer ${JSON.stringify(answer)} equals bert-native qa's ${JSON.stringify(expected.answer.answer)}`);
  check(Math.abs(score - expected.answer.score) < 1e-3, `${backend}: score ${score} matches bert-native's ${expected.answer.score.toFixed(4)}`);
  check(highlight === answer, `${backend}: the answer is highlighted at its offsets in the context`);
  check(nbest > 1, `${backend}: n-best list shown (${nbest})`);
  return { page, seen };
}

// Question answering on the automatic choice (WebGPU when Chromium offers an adapter), then on
// the CPU path; both must give bert-native's answer.
const automatic = await answerOn("");
const webgpu = automatic.seen.backend.startsWith("WebGPU");
console.log(webgpu ? `WebGPU ran: ${automatic.seen.backend}` : "no WebGPU adapter: the CPU path ran");
await automatic.page.close();
const { page, seen: cpu } = await answerOn("?backend=cpu");
check(cpu.backend === "CPU (wasm)", "?backend=cpu runs on the CPU (wasm)");

// The same model given as files (what dropping them on the page does).
await page.setInputFiles("#model-files", ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt"].map((f) => path.join(modelDir, f)));
await page.waitForFunction(() => {
  const status = document.querySelector("#model-status");
  return status.dataset.state !== "loading" && status.textContent.includes("from the dropped files");
}, null, { timeout: 5 * MINUTE });
check((await page.getAttribute("#model-status", "data-state")) === "ready", `files loaded: ${await page.textContent("#model-status")}`);
// Wrong files get a clear message naming what is missing.
await page.setInputFiles("#model-files", [path.join(modelDir, "config.json")]);
await page.waitForSelector('#model-status[data-state="error"]', { timeout: MINUTE });
const refusal = await page.textContent("#model-status");
check(refusal.includes("weights (*.safetensors)"), `an incomplete folder is refused: ${refusal}`);
check(automatic.seen.weight_downloads === 1 && cpu.weight_downloads === 0, "the second visit reads the weights from the browser cache, not the server");

// Fine-tuning in the worker, on the CPU path (a software WebGPU adapter trains at minutes per
// step): the loss falls, scores appear, weights download.
await page.click("#tab-train");
await page.fill("#people", process.env.E2E_PEOPLE || "12");
await page.fill("#batch", "4");
await page.fill("#learning-rate", "0.0002");
await page.fill("#max-steps", process.env.E2E_STEPS || "8");
await page.click("#train");
await page.waitForSelector('#train-status:is([data-state="done"], [data-state="error"])', { timeout: 20 * MINUTE });
const trainStatus = await page.textContent("#train-status");
check((await page.getAttribute("#train-status", "data-state")) === "done", `training finished: ${trainStatus}`);
const losses = JSON.parse(await page.getAttribute("#losses", "data-losses"));
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const first = mean(losses.slice(0, 2)), last = mean(losses.slice(-2));
const scores = await page.$$eval(".scores tr[id]", (rows) => rows.map((r) => [r.id, r.querySelector(".em").textContent, r.querySelector(".f1").textContent]));
const workerBackend = await page.textContent("#worker-backend");
console.log(JSON.stringify({ losses, scores, trainStatus, workerBackend }));
check(workerBackend.includes("CPU (wasm)"), `the worker trained on ${workerBackend}`);
check(losses.length >= 4 && losses.every(Number.isFinite), `${losses.length} finite losses`);
check(last < first, `the loss falls: first steps ${first.toFixed(3)}, last steps ${last.toFixed(3)}`);
check(scores.every(([, em, f1]) => em !== "" && f1 !== ""), "held-out EM/F1 shown before and after");

const bytes = await page.evaluate(async () => {
  const href = document.querySelector("#download").href;
  const buffer = await (await fetch(href)).arrayBuffer();
  let binary = "";
  const view = new Uint8Array(buffer);
  for (let i = 0; i < view.length; i += 0x8000) binary += String.fromCharCode(...view.subarray(i, i + 0x8000));
  return btoa(binary);
});
fs.mkdirSync(outDir, { recursive: true });
fs.writeFileSync(path.join(outDir, "model.safetensors"), Buffer.from(bytes, "base64"));
fs.writeFileSync(path.join(outDir, "result.json"), JSON.stringify({ automatic: automatic.seen, cpu, losses, scores, trainStatus, workerBackend }, null, 2));
// An uploaded SQuAD file trains too (a second request to the same worker), and Stop ends a run.
await page.setInputFiles("#squad-file", squadPath);
await page.waitForSelector(".train span", { timeout: MINUTE });
await page.fill("#max-steps", "2");
await page.click("#train");
await page.waitForSelector('#train-status:is([data-state="done"], [data-state="error"])', { timeout: 20 * MINUTE });
const uploadStatus = await page.textContent("#train-status");
check((await page.getAttribute("#train-status", "data-state")) === "done", `training on the uploaded file finished: ${uploadStatus}`);
const uploadLosses = JSON.parse(await page.getAttribute("#losses", "data-losses"));
check(uploadLosses.length === 2, `two steps on the uploaded file (${uploadLosses.length})`);
await page.click("#train");
await page.waitForSelector('#train-status[data-state="running"]', { timeout: MINUTE });
await page.click("#stop");
await page.waitForSelector('#train-status[data-state="stopped"]', { timeout: MINUTE });
check(true, "Stop ends a running training");

check(external.length === 0, `no request left the machine (${external.length})`);
await browser.close();
