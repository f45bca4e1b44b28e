// Times one question answered at sequence length 384 in headless Chromium: bert-web (its CPU path
// and WebGPU) and the transformers.js anchor (ONNX Runtime Web, wasm and WebGPU) on the same
// model, in the same browser, in one run. Prints JSON lines and the ratios.
//
//   node run.mjs WEB_URL ANCHOR_URL CASE_JSON OUT_JSON
const { chromium } = await import(new URL("../../web/node_modules/playwright-core/index.mjs", import.meta.url));
import fs from "node:fs";

const [webUrl, anchorUrl, casePath, outPath] = process.argv.slice(2);
const testCase = JSON.parse(fs.readFileSync(casePath, "utf8"));
const WEBGPU_RUNS = Number(process.env.WEBGPU_RUNS || 3);
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic", "--enable-unsafe-webgpu"],
});
const results = [];

async function bertWeb(backend, warmup, runs) {
  const page = await browser.newPage();
  await page.goto(`${webUrl}?model=bench-model/${backend === "cpu" ? "&backend=cpu" : ""}`);
  await page.waitForSelector('#model-status[data-state="ready"]', { timeout: 300_000 });
  await page.fill("#context", testCase.context);
  await page.fill("#question", testCase.question);
  const times = [];
  // PROFILE=1: V8's sampling profiler over the timed runs, self time per function (wasm functions
  // by their name-section names, so build without wasm-opt's stripping to read them).
  const profiler = process.env.PROFILE === "1" && backend === "cpu" ? await page.context().newCDPSession(page) : null;
  if (profiler) { await profiler.send("Profiler.enable"); await profiler.send("Profiler.setSamplingInterval", { interval: 200 }); }
  for (let i = 0; i < warmup + runs; i++) {
    if (profiler && i === warmup) await profiler.send("Profiler.start");
    await page.evaluate(() => document.querySelector("#answer-ms")?.remove());
    await page.click("#ask");
    await page.waitForSelector("#answer-ms", { timeout: 1_800_000 });
    const ms = Number(await page.textContent("#answer-ms"));
    if (i >= warmup) times.push(ms);
  }
  if (profiler) printProfile((await profiler.send("Profiler.stop")).profile);
  const result = { name: `bert-web ${backend}`, backend: await page.textContent("#backend"), times_ms: times, median_ms: median(times), answer: await page.textContent("#answer-text") };
  console.log(JSON.stringify(result));
  results.push(result);
  await page.close();
  return result;
}

function printProfile(profile) {
  const self = new Map();
  for (const node of profile.nodes) {
    const name = node.callFrame.functionName || `(${node.callFrame.url || "anonymous"})`;
    self.set(name, (self.get(name) || 0) + (node.hitCount || 0));
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  for (const [name, hits] of [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 40)) {
    console.log(`${(100 * hits / total).toFixed(1).padStart(5)}%  ${name.slice(0, 160)}`);
  }
}

async function anchor(device, warmup, runs) {
  const page = await browser.newPage();
  await page.goto(`${anchorUrl}bench.html?device=${device}&warmup=${warmup}&runs=${runs}`);
  await page.waitForFunction(() => window.__result !== undefined, null, { timeout: 1_800_000, polling: 500 });
  const r = await page.evaluate(() => window.__result);
  const result = { name: `transformers.js ${device}`, median_ms: r.median_ms, times_ms: r.times_ms, error: r.error, adapter: r.adapter, versions: { tjs: r.tjs_version, ort: r.ort_web_version } };
  console.log(JSON.stringify(result));
  results.push(result);
  await page.close();
  return result;
}

const ours = { cpu: await bertWeb("cpu", 2, 10) };
const theirs = { wasm: await anchor("wasm", 2, 10) };
if (process.env.SKIP_WEBGPU !== "1") {
  ours.webgpu = await bertWeb("auto", 1, WEBGPU_RUNS);
  theirs.webgpu = await anchor("webgpu", 1, WEBGPU_RUNS);
}
const ratios = {
  "cpu: transformers.js wasm / bert-web cpu (>1: bert-web faster)": theirs.wasm.median_ms / ours.cpu.median_ms,
};
if (ours.webgpu) ratios["webgpu: transformers.js / bert-web (>1: bert-web faster)"] = theirs.webgpu.median_ms / ours.webgpu.median_ms;
console.log(JSON.stringify({ ratios, tokens: testCase.tokens, chromium: browser.version() }));
fs.writeFileSync(outPath, JSON.stringify({ results, ratios, tokens: testCase.tokens, chromium: browser.version() }, null, 2));
await browser.close();
