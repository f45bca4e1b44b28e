//! # bert-web
//!
//! The browser app (Leptos, client-side, built by `trunk`): SQuAD question answering and small
//! fine-tuning with `bert-core`'s own code on WebGPU, or on burn's CPU backend where the browser
//! has no WebGPU. One wasm module is both the page ([`app`]) and its training Web Worker
//! ([`worker`]).
//!
//! Only [`model_files`] and [`protocol`] are plain Rust (tested natively); the rest exists on
//! `wasm32` only.

pub mod model_files;
pub mod protocol;

#[cfg(target_arch = "wasm32")]
pub mod app;
#[cfg(target_arch = "wasm32")]
pub mod engine;
#[cfg(target_arch = "wasm32")]
pub mod fetch;
#[cfg(target_arch = "wasm32")]
pub mod worker;

/// Starts the page in a window, or the training worker in a Web Worker.
#[cfg(target_arch = "wasm32")]
pub fn start() {
    console_error_panic_hook::set_once();
    if web_sys::window().is_some() {
        app::mount();
    } else {
        worker::listen();
    }
}

/// Outside a browser there is nothing to start.
#[cfg(not(target_arch = "wasm32"))]
pub fn start() {
    eprintln!("bert-web runs in a browser: `trunk serve` in web/ (see the README)");
}
