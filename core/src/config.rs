//! The model's hyper-parameters, read from Hugging Face `config.json` or NVIDIA `bert_config.json`.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The non-linearity of the feed-forward block and of the MLM transform (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HiddenAct {
    /// Exact GELU, `x * 0.5 * (1 + erf(x / sqrt(2)))`; NVIDIA's `bias_gelu` is the same function.
    #[serde(rename = "gelu", alias = "bias_gelu")]
    Gelu,
    /// The tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// `max(0, x)`.
    #[serde(rename = "relu")]
    Relu,
}

/// BERT hyper-parameters, with the field names of Hugging Face's `BertConfig`.
///
/// NVIDIA's `bert_config.json` uses the same names without `layer_norm_eps`, which then defaults
/// to the recipe's 1e-12.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Rows of the word-embedding matrix (and columns of the MLM logits).
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; `hidden_size` must be a multiple of it.
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Feed-forward non-linearity.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: HiddenAct,
    /// Dropout on embeddings and on every residual branch (training only).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (training only).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Longest sequence the position embeddings cover.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Number of segment (token type) ids.
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Standard deviation of the normal initialisation.
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Id of the `[PAD]` token.
    #[serde(default)]
    pub pad_token_id: u32,
    /// Only `absolute` position embeddings exist in BERT; anything else is refused.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
}

fn default_hidden_act() -> HiddenAct {
    HiddenAct::Gelu
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_position_embeddings() -> usize {
    512
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_position_embedding_type() -> String {
    "absolute".to_string()
}

impl BertConfig {
    /// BERT-base: 12 layers, 768 hidden, 12 heads, 3072 feed-forward, uncased vocabulary.
    pub fn base() -> Self {
        Self::preset(12, 768, 12, 3072)
    }

    /// BERT-large: 24 layers, 1024 hidden, 16 heads, 4096 feed-forward, uncased vocabulary.
    pub fn large() -> Self {
        Self::preset(24, 1024, 16, 4096)
    }

    fn preset(layers: usize, hidden: usize, heads: usize, intermediate: usize) -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: intermediate,
            hidden_act: HiddenAct::Gelu,
            hidden_dropout_prob: default_dropout(),
            attention_probs_dropout_prob: default_dropout(),
            max_position_embeddings: default_max_position_embeddings(),
            type_vocab_size: default_type_vocab_size(),
            initializer_range: default_initializer_range(),
            layer_norm_eps: default_layer_norm_eps(),
            pad_token_id: 0,
            position_embedding_type: default_position_embedding_type(),
        }
    }

    /// A preset by name: `base` or `large`.
    pub fn from_preset(name: &str) -> Result<Self, ConfigError> {
        match name {
            "base" => Ok(Self::base()),
            "large" => Ok(Self::large()),
            other => Err(ConfigError::UnknownPreset(other.to_string())),
        }
    }

    /// Parses a Hugging Face `config.json` or NVIDIA `bert_config.json` and validates it.
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_json::from_str(json).map_err(ConfigError::Json)?;
        config.validate()?;
        Ok(config)
    }

    /// The Hugging Face `config.json` for this configuration, so `transformers` loads what we save.
    pub fn to_hf_json(&self, architecture: &str) -> String {
        self.to_hf_json_with_labels(architecture, &[])
    }

    /// [`Self::to_hf_json`] naming a classifier's classes (`id2label` and `label2id`, as Hugging
    /// Face writes them; read back by the text-classification pipeline). No names, no fields.
    pub fn to_hf_json_with_labels(&self, architecture: &str, labels: &[&str]) -> String {
        let mut value = serde_json::to_value(self).expect("BertConfig serializes to JSON");
        let object = value.as_object_mut().expect("BertConfig is a JSON object");
        object.insert("model_type".into(), "bert".into());
        object.insert("architectures".into(), serde_json::json!([architecture]));
        if !labels.is_empty() {
            let id2label: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .enumerate()
                .map(|(id, label)| (id.to_string(), (*label).into()))
                .collect();
            let label2id: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .enumerate()
                .map(|(id, label)| (label.to_string(), id.into()))
                .collect();
            object.insert("id2label".into(), id2label.into());
            object.insert("label2id".into(), label2id.into());
        }
        serde_json::to_string_pretty(&value).expect("JSON value serializes")
    }

    /// NVIDIA pads the vocabulary to a multiple of 8 so the embedding and decoder matmuls map onto
    /// tensor cores; this returns the configuration with `vocab_size` rounded up to `multiple`.
    pub fn with_vocab_padded_to_multiple_of(mut self, multiple: usize) -> Self {
        self.vocab_size = self.vocab_size.div_ceil(multiple) * multiple;
        self
    }

    /// Width of one attention head.
    pub fn attention_head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the invariants the model relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be positive")));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ConfigError::Invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.position_embedding_type != "absolute" {
            return Err(ConfigError::Invalid(format!(
                "position_embedding_type {:?} is not supported (BERT uses \"absolute\")",
                self.position_embedding_type
            )));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(ConfigError::Invalid(format!("{name} {p} is not in [0, 1)")));
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(ConfigError::Invalid(format!(
                "layer_norm_eps {} must be positive",
                self.layer_norm_eps
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_papers_table() {
        let base = BertConfig::base();
        assert_eq!(
            (
                base.num_hidden_layers,
                base.hidden_size,
                base.num_attention_heads
            ),
            (12, 768, 12)
        );
        assert_eq!(base.intermediate_size, 3072);
        let large = BertConfig::large();
        assert_eq!(
            (
                large.num_hidden_layers,
                large.hidden_size,
                large.num_attention_heads
            ),
            (24, 1024, 16)
        );
        assert_eq!(large.intermediate_size, 4096);
        assert_eq!(large.max_position_embeddings, 512);
        assert_eq!(large.type_vocab_size, 2);
        assert_eq!(large.layer_norm_eps, 1e-12);
    }

    #[test]
    fn reads_nvidia_bert_config_without_layer_norm_eps() {
        let json = r#"{"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": 1024, "initializer_range": 0.02,
            "intermediate_size": 4096, "max_position_embeddings": 512, "num_attention_heads": 16,
            "num_hidden_layers": 24, "type_vocab_size": 2, "vocab_size": 30522}"#;
        let config = BertConfig::from_json(json).unwrap();
        assert_eq!(config, BertConfig::large());
    }

    #[test]
    fn nvidia_vocab_padding_rounds_up_to_eight() {
        assert_eq!(
            BertConfig::base()
                .with_vocab_padded_to_multiple_of(8)
                .vocab_size,
            30528
        );
        let already = BertConfig {
            vocab_size: 30528,
            ..BertConfig::base()
        };
        assert_eq!(
            already.with_vocab_padded_to_multiple_of(8).vocab_size,
            30528
        );
    }

    #[test]
    fn refuses_inconsistent_configs() {
        let bad_heads = r#"{"vocab_size": 10, "hidden_size": 30, "num_hidden_layers": 1,
            "num_attention_heads": 4, "intermediate_size": 8}"#;
        assert!(matches!(
            BertConfig::from_json(bad_heads),
            Err(ConfigError::Invalid(message)) if message.contains("num_attention_heads")
        ));
        let bad_act = r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 8, "hidden_act": "swishy"}"#;
        assert!(matches!(
            BertConfig::from_json(bad_act),
            Err(ConfigError::Json(_))
        ));
        let relative = r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 8,
            "position_embedding_type": "relative_key"}"#;
        assert!(BertConfig::from_json(relative).is_err());
    }

    #[test]
    fn hf_json_round_trips() {
        let config = BertConfig::base();
        let json = config.to_hf_json("BertForPreTraining");
        assert!(json.contains("\"model_type\": \"bert\""));
        assert_eq!(BertConfig::from_json(&json).unwrap(), config);
    }
}
