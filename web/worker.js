// The training worker: the page's own wasm module, whose start-up sees no window and listens
// for training requests (web/src/worker.rs).
import init from "./bert-web.js";

await init();
