//! The browser app's entry point: the page in a window, the training worker in a Web Worker (the
//! same wasm module serves both).

fn main() {
    bert_web::start();
}
