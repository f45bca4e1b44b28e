//! Getting a model's files into memory: downloaded from a folder URL with progress and kept in
//! the browser's Cache API (a reload reads them from there), or read from files the visitor
//! dropped on the page.

use bert_core::pretrained::ModelBytes;
use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, ReadableStreamDefaultReader, Response};

use crate::engine::describe;
use crate::model_files::{model_bytes, CONFIG_NAMES, TOKENIZER_NAMES, WEIGHT_NAMES};

/// The Cache API store the page keeps models in.
const CACHE_NAME: &str = "bert-rs-models-v1";

/// Bytes received so far and the total when the server says it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    /// Bytes received.
    pub received: u64,
    /// Bytes expected (`Content-Length`), if known.
    pub total: Option<u64>,
    /// Whether the bytes came from the browser's cache.
    pub cached: bool,
}

/// Downloads the model folder at `base` (config, `model.safetensors`, `tokenizer.json` or
/// `vocab.txt`), reporting progress over the weights, from the cache when it holds them.
pub async fn download_model(
    base: &str,
    on_progress: &dyn Fn(&str, Progress),
) -> Result<ModelBytes, String> {
    let base = if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    };
    let cache = open_cache().await;
    let mut files = Vec::new();
    for names in [&CONFIG_NAMES[..], &WEIGHT_NAMES[..], &TOKENIZER_NAMES[..]] {
        let mut found = None;
        for name in names {
            let url = format!("{base}{name}");
            if let Some(bytes) = fetch_file(&url, cache.as_ref(), &|p| on_progress(name, p)).await?
            {
                found = Some((name.to_string(), bytes));
                break;
            }
        }
        match found {
            Some(file) => files.push(file),
            None => {
                return Err(format!(
                    "{base}: none of {} could be downloaded",
                    names.join(", ")
                ))
            }
        }
    }
    model_bytes(files)
}

/// The body of `url`, `None` when the server says 404, from the cache when there.
async fn fetch_file(
    url: &str,
    cache: Option<&Cache>,
    on_progress: &dyn Fn(Progress),
) -> Result<Option<Vec<u8>>, String> {
    if let Some(cache) = cache {
        if let Ok(hit) = JsFuture::from(cache.match_with_str(url)).await {
            if let Ok(response) = hit.dyn_into::<Response>() {
                let bytes = read_body(&response, true, on_progress).await?;
                return Ok(Some(bytes));
            }
        }
    }
    let response: Response = JsFuture::from(global_fetch(url)?)
        .await
        .map_err(|e| format!("{url}: {}", describe(e)))?
        .dyn_into()
        .map_err(|e| format!("{url}: {}", describe(e)))?;
    if response.status() == 404 {
        return Ok(None);
    }
    if !response.ok() {
        return Err(format!("{url}: the server answered {}", response.status()));
    }
    if let Some(cache) = cache {
        if let Ok(copy) = response.clone() {
            // Best effort: a full cache only costs the next visit a download.
            let _ = JsFuture::from(cache.put_with_str(url, &copy)).await;
        }
    }
    Ok(Some(read_body(&response, false, on_progress).await?))
}

fn global_fetch(url: &str) -> Result<js_sys::Promise, String> {
    let fetch = Reflect::get(&js_sys::global(), &"fetch".into())
        .map_err(describe)?
        .dyn_into::<js_sys::Function>()
        .map_err(describe)?;
    Ok(fetch
        .call1(&JsValue::UNDEFINED, &url.into())
        .map_err(describe)?
        .into())
}

async fn open_cache() -> Option<Cache> {
    let caches = Reflect::get(&js_sys::global(), &"caches".into()).ok()?;
    if caches.is_undefined() {
        return None;
    }
    let storage: web_sys::CacheStorage = caches.dyn_into().ok()?;
    JsFuture::from(storage.open(CACHE_NAME))
        .await
        .ok()?
        .dyn_into()
        .ok()
}

/// Reads a response body chunk by chunk, reporting progress.
async fn read_body(
    response: &Response,
    cached: bool,
    on_progress: &dyn Fn(Progress),
) -> Result<Vec<u8>, String> {
    let total = response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok());
    let Some(body) = response.body() else {
        return Ok(Vec::new());
    };
    let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut bytes = Vec::with_capacity(total.unwrap_or(0) as usize);
    loop {
        let chunk = JsFuture::from(reader.read())
            .await
            .map_err(|e| format!("{}: download interrupted: {}", response.url(), describe(e)))?;
        if Reflect::get(&chunk, &"done".into())
            .map(|d| d.is_truthy())
            .unwrap_or(true)
        {
            break;
        }
        let value: Uint8Array = Reflect::get(&chunk, &"value".into())
            .map_err(describe)?
            .unchecked_into();
        bytes.extend(value.to_vec());
        on_progress(Progress {
            received: bytes.len() as u64,
            total,
            cached,
        });
    }
    if let Some(total) = total {
        if bytes.len() as u64 != total {
            return Err(format!(
                "{}: received {} of {total} bytes",
                response.url(),
                bytes.len()
            ));
        }
    }
    Ok(bytes)
}

/// Reads files the visitor dropped or chose.
pub async fn read_files(list: &web_sys::FileList) -> Result<ModelBytes, String> {
    let mut files = Vec::new();
    for index in 0..list.length() {
        let Some(file) = list.get(index) else {
            continue;
        };
        let buffer = JsFuture::from(file.array_buffer())
            .await
            .map_err(|e| format!("{}: {}", file.name(), describe(e)))?;
        files.push((file.name(), Uint8Array::new(&buffer).to_vec()));
    }
    model_bytes(files)
}

/// Reads one chosen file's text (an uploaded SQuAD JSON).
pub async fn read_text(file: &web_sys::File) -> Result<String, String> {
    let text = JsFuture::from(file.text())
        .await
        .map_err(|e| format!("{}: {}", file.name(), describe(e)))?;
    text.as_string()
        .ok_or_else(|| format!("{}: not text", file.name()))
}
