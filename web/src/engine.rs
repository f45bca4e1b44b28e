//! Where the model runs: WebGPU through burn's wgpu backend when the browser offers an adapter,
//! else burn's Flex CPU backend compiled to wasm with SIMD, running bert-core's fused kernels
//! (on one thread: the page is not cross-origin isolated). Works in the page and in a worker.

use bert_core::pipelines::QuestionAnswering;
use bert_core::pretrained::ModelBytes;
use bert_core::squad::{Answer, AnswerConfig, FeatureConfig};
use burn::backend::wgpu::{graphics::WebGpu, init_setup_async, WgpuDevice};
use burn::backend::{Flex, Wgpu};
use js_sys::{Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::protocol::BackendChoice;

/// A compute device chosen for this browser.
#[derive(Debug, Clone)]
pub enum Device {
    /// A WebGPU adapter.
    WebGpu {
        /// burn's handle on it.
        device: WgpuDevice,
        /// The adapter's description.
        adapter: String,
    },
    /// The CPU, in wasm.
    Cpu {
        /// Why WebGPU is not used.
        reason: String,
    },
}

impl Device {
    /// What to show the visitor.
    pub fn label(&self) -> String {
        match self {
            Self::WebGpu { adapter, .. } => format!("WebGPU: {adapter}"),
            Self::Cpu { .. } => "CPU (wasm)".into(),
        }
    }
}

/// Chooses the device: WebGPU when allowed and an adapter is offered, else the CPU (with the
/// reason). Starting burn's WebGPU runtime happens once per page or worker.
pub async fn select(choice: BackendChoice) -> Device {
    if choice == BackendChoice::Cpu {
        return Device::Cpu {
            reason: "the CPU was asked for".into(),
        };
    }
    match webgpu_adapter().await {
        Ok(adapter) => {
            let device = WgpuDevice::default();
            init_setup_async::<WebGpu>(&device, Default::default()).await;
            Device::WebGpu { device, adapter }
        }
        Err(reason) => Device::Cpu { reason },
    }
}

/// The description of the adapter `navigator.gpu.requestAdapter()` offers, or why there is none.
async fn webgpu_adapter() -> Result<String, String> {
    let navigator = Reflect::get(&js_sys::global(), &"navigator".into()).map_err(describe)?;
    let gpu = Reflect::get(&navigator, &"gpu".into()).map_err(describe)?;
    if gpu.is_undefined() || gpu.is_null() {
        return Err("this browser has no WebGPU (navigator.gpu is absent)".into());
    }
    let request = Reflect::get(&gpu, &"requestAdapter".into())
        .map_err(describe)?
        .dyn_into::<js_sys::Function>()
        .map_err(describe)?;
    let promise: Promise = request.call0(&gpu).map_err(describe)?.into();
    let adapter = JsFuture::from(promise).await.map_err(describe)?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err("WebGPU offers no adapter".into());
    }
    let info = Reflect::get(&adapter, &"info".into()).unwrap_or(JsValue::UNDEFINED);
    let field = |name: &str| {
        Reflect::get(&info, &name.into())
            .ok()
            .and_then(|v| v.as_string())
            .filter(|s| !s.is_empty())
    };
    let parts: Vec<String> = ["vendor", "architecture", "description"]
        .iter()
        .filter_map(|name| field(name))
        .collect();
    Ok(if parts.is_empty() {
        "unnamed adapter".into()
    } else {
        parts.join(" ")
    })
}

/// A JavaScript error as text.
pub fn describe(value: JsValue) -> String {
    value
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| value.as_string())
        .unwrap_or_else(|| format!("{value:?}"))
}

/// A question-answering model on the chosen device.
pub enum QaEngine {
    /// On WebGPU.
    WebGpu(Box<QuestionAnswering<Wgpu>>),
    /// On the CPU.
    Cpu(Box<QuestionAnswering<Flex>>),
}

impl QaEngine {
    /// Loads `files` (which must hold a question-answering head) on `device`.
    pub fn load(files: &ModelBytes, device: &Device) -> Result<Self, String> {
        Ok(match device {
            Device::WebGpu { device, .. } => Self::WebGpu(Box::new(
                QuestionAnswering::from_bytes(files, device).map_err(|e| e.to_string())?,
            )),
            Device::Cpu { .. } => Self::Cpu(Box::new(
                QuestionAnswering::from_bytes(files, &Default::default())
                    .map_err(|e| e.to_string())?,
            )),
        })
    }

    /// The model's configuration: layers, width, vocabulary.
    pub fn describe(&self) -> String {
        let config = match self {
            Self::WebGpu(pipeline) => pipeline.config(),
            Self::Cpu(pipeline) => pipeline.config(),
        };
        format!(
            "{} layers, hidden {}, {} heads, vocabulary {}",
            config.num_hidden_layers,
            config.hidden_size,
            config.num_attention_heads,
            config.vocab_size
        )
    }

    /// The n-best answers to `question` from `context` (any length), best first.
    pub async fn answer(
        &self,
        question: &str,
        context: &str,
        features: FeatureConfig,
        answers: AnswerConfig,
    ) -> Result<Vec<Answer>, String> {
        let answered = match self {
            Self::WebGpu(pipeline) => {
                pipeline
                    .answer_with_async(question, context, &features, &answers)
                    .await
            }
            Self::Cpu(pipeline) => {
                pipeline
                    .answer_with_async(question, context, &features, &answers)
                    .await
            }
        };
        answered.map_err(|e| e.to_string())
    }
}
