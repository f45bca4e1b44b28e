//! Tensor names: Hugging Face's, NVIDIA's and older variants, and our module paths.
//!
//! Every checkpoint name is first brought to the *canonical* Hugging Face form of a task model
//! (`bert.encoder.layer.3.attention.self.query.weight`, `cls.predictions.bias`, `qa_outputs.weight`)
//! and then mapped onto the module path of our structs (`bert.encoder.layers.3.attention.query.weight`).
//! LayerNorm `weight`/`bias` become burn's `gamma`/`beta`; burn-store's PyTorch adapter transposes
//! Linear weights (`[out, in]` to `[in, out]`) when the tensors are applied.

/// Canonical prefixes outside the encoder layers and the module paths they map to.
const TOP_LEVEL: &[(&str, &str)] = &[
    (
        "bert.embeddings.word_embeddings",
        "bert.embeddings.word_embeddings",
    ),
    (
        "bert.embeddings.position_embeddings",
        "bert.embeddings.position_embeddings",
    ),
    (
        "bert.embeddings.token_type_embeddings",
        "bert.embeddings.token_type_embeddings",
    ),
    ("bert.embeddings.LayerNorm", "bert.embeddings.layer_norm"),
    ("bert.pooler.dense", "bert.pooler.dense"),
    ("cls.predictions.transform.dense", "mlm.transform"),
    (
        "cls.predictions.transform.LayerNorm",
        "mlm.transform_layer_norm",
    ),
    ("cls.seq_relationship", "nsp"),
    ("qa_outputs", "qa_outputs"),
    ("classifier", "classifier"),
];

/// Prefixes inside `bert.encoder.layer.{i}` and their module paths inside `bert.encoder.layers.{i}`.
const IN_LAYER: &[(&str, &str)] = &[
    ("attention.self.query", "attention.query"),
    ("attention.self.key", "attention.key"),
    ("attention.self.value", "attention.value"),
    ("attention.output.dense", "attention.output"),
    ("attention.output.LayerNorm", "attention_layer_norm"),
    ("intermediate.dense", "intermediate"),
    ("output.dense", "output"),
    ("output.LayerNorm", "output_layer_norm"),
];

/// The MLM decoder bias, a parameter directly under `cls.predictions`.
pub const MLM_BIAS_NAME: &str = "cls.predictions.bias";
const MLM_BIAS: (&str, &str) = (MLM_BIAS_NAME, "mlm.bias");

const HF_LAYER_PREFIX: &str = "bert.encoder.layer.";
const MODULE_LAYER_PREFIX: &str = "bert.encoder.layers.";

/// What a stored name means once canonicalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredName {
    /// A parameter of the model, under its canonical Hugging Face name.
    Parameter(String),
    /// The decoder weight tied to the word embeddings: never loaded separately.
    TiedDecoderWeight,
    /// `cls.predictions.decoder.bias`, which Hugging Face ties to `cls.predictions.bias`.
    DecoderBias,
    /// A non-parameter buffer such as `position_ids`.
    Buffer,
}

/// Brings a stored name to the canonical Hugging Face form: strips `module.` (DDP) prefixes,
/// renames NVIDIA's `dense_act` to `dense` and old `LayerNorm.gamma/beta` to `weight/bias`,
/// and puts bare `BertModel` names (`embeddings.`, `encoder.`, `pooler.`) under `bert.`.
pub fn canonical_name(stored: &str) -> StoredName {
    let mut name = stored;
    while let Some(rest) = name.strip_prefix("module.") {
        name = rest;
    }
    let mut name = name.replace(".dense_act.", ".dense.");
    for (old, new) in [
        (".LayerNorm.gamma", ".LayerNorm.weight"),
        (".LayerNorm.beta", ".LayerNorm.bias"),
    ] {
        if let Some(stem) = name.strip_suffix(old) {
            name = format!("{stem}{new}");
        }
    }
    if ["embeddings.", "encoder.", "pooler."]
        .iter()
        .any(|prefix| name.starts_with(prefix))
    {
        name = format!("bert.{name}");
    }
    match name.as_str() {
        "cls.predictions.decoder.weight" => StoredName::TiedDecoderWeight,
        "cls.predictions.decoder.bias" => StoredName::DecoderBias,
        n if n.ends_with("position_ids") => StoredName::Buffer,
        _ => StoredName::Parameter(name),
    }
}

/// Maps a canonical Hugging Face name to our module path, or `None` for a name no BERT model has.
pub fn hf_to_module_path(hf_name: &str) -> Option<String> {
    if hf_name == MLM_BIAS.0 {
        return Some(MLM_BIAS.1.to_string());
    }
    let (prefix, param) = hf_name.rsplit_once('.')?;
    let param = match (prefix.ends_with("LayerNorm"), param) {
        (true, "weight") => "gamma",
        (true, "bias") => "beta",
        (_, "weight" | "bias") => param,
        _ => return None,
    };
    if let Some(rest) = prefix.strip_prefix(HF_LAYER_PREFIX) {
        let (index, inner) = rest.split_once('.')?;
        index.parse::<usize>().ok()?;
        let (_, ours) = IN_LAYER.iter().find(|(hf, _)| *hf == inner)?;
        return Some(format!("{MODULE_LAYER_PREFIX}{index}.{ours}.{param}"));
    }
    let (_, ours) = TOP_LEVEL.iter().find(|(hf, _)| *hf == prefix)?;
    Some(format!("{ours}.{param}"))
}

/// Maps one of our module paths back to its Hugging Face name (LayerNorm `gamma`/`beta`, or the
/// `weight`/`bias` burn-store's PyTorch adapter renames them to, become `weight`/`bias`).
pub fn module_path_to_hf(path: &str) -> Option<String> {
    if path == MLM_BIAS.1 {
        return Some(MLM_BIAS.0.to_string());
    }
    let (prefix, param) = path.rsplit_once('.')?;
    let param = match param {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    };
    if let Some(rest) = prefix.strip_prefix(MODULE_LAYER_PREFIX) {
        let (index, inner) = rest.split_once('.')?;
        let (hf, _) = IN_LAYER.iter().find(|(_, ours)| *ours == inner)?;
        return Some(format!("{HF_LAYER_PREFIX}{index}.{hf}.{param}"));
    }
    let (hf, _) = TOP_LEVEL.iter().find(|(_, ours)| *ours == prefix)?;
    Some(format!("{hf}.{param}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter(stored: &str) -> String {
        match canonical_name(stored) {
            StoredName::Parameter(name) => name,
            other => panic!("{stored} canonicalised to {other:?}"),
        }
    }

    #[test]
    fn canonicalises_hugging_face_nvidia_and_legacy_names() {
        let expected = "bert.encoder.layer.0.intermediate.dense.weight";
        assert_eq!(
            parameter("bert.encoder.layer.0.intermediate.dense.weight"),
            expected
        );
        assert_eq!(
            parameter("encoder.layer.0.intermediate.dense.weight"),
            expected
        );
        assert_eq!(
            parameter("module.bert.encoder.layer.0.intermediate.dense_act.weight"),
            expected
        );
        assert_eq!(
            parameter("bert.pooler.dense_act.bias"),
            "bert.pooler.dense.bias"
        );
        assert_eq!(
            parameter("cls.predictions.transform.dense_act.weight"),
            "cls.predictions.transform.dense.weight"
        );
        assert_eq!(
            parameter("bert.embeddings.LayerNorm.gamma"),
            "bert.embeddings.LayerNorm.weight"
        );
        assert_eq!(
            parameter("embeddings.LayerNorm.beta"),
            "bert.embeddings.LayerNorm.bias"
        );
        assert_eq!(
            canonical_name("cls.predictions.decoder.weight"),
            StoredName::TiedDecoderWeight
        );
        assert_eq!(
            canonical_name("module.cls.predictions.decoder.bias"),
            StoredName::DecoderBias
        );
        assert_eq!(
            canonical_name("embeddings.position_ids"),
            StoredName::Buffer
        );
    }

    #[test]
    fn every_parameter_name_maps_both_ways() {
        let names = [
            "bert.embeddings.word_embeddings.weight",
            "bert.embeddings.LayerNorm.bias",
            "bert.encoder.layer.11.attention.self.key.bias",
            "bert.encoder.layer.0.attention.output.LayerNorm.weight",
            "bert.encoder.layer.2.output.dense.weight",
            "bert.pooler.dense.weight",
            "cls.predictions.bias",
            "cls.predictions.transform.LayerNorm.weight",
            "cls.seq_relationship.weight",
            "qa_outputs.bias",
            "classifier.weight",
        ];
        for name in names {
            let path = hf_to_module_path(name).unwrap_or_else(|| panic!("{name} has no path"));
            assert_eq!(
                module_path_to_hf(&path).as_deref(),
                Some(name),
                "via {path}"
            );
        }
        assert_eq!(
            hf_to_module_path("bert.encoder.layer.11.attention.self.key.bias").unwrap(),
            "bert.encoder.layers.11.attention.key.bias"
        );
        assert_eq!(
            hf_to_module_path("bert.embeddings.LayerNorm.weight").unwrap(),
            "bert.embeddings.layer_norm.gamma"
        );
        assert_eq!(
            module_path_to_hf("bert.encoder.layers.1.output_layer_norm.gamma").unwrap(),
            "bert.encoder.layer.1.output.LayerNorm.weight"
        );
    }

    #[test]
    fn foreign_names_have_no_module_path() {
        for name in [
            "bert.encoder.layer.x.output.dense.weight",
            "bert.encoder.layer.0.crossattention.self.query.weight",
            "lm_head.weight",
            "bert.embeddings.word_embeddings.scale",
        ] {
            assert_eq!(hf_to_module_path(name), None, "{name}");
        }
    }
}
