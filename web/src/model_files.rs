//! Which file of a model folder is which, for files dropped on the page or fetched from a URL:
//! the configuration, the safetensors weights and the tokenizer, by their usual names.

use bert_core::pretrained::ModelBytes;

/// Where each file of a model folder is looked for, in order of preference, relative to the
/// folder's URL.
pub const CONFIG_NAMES: [&str; 2] = ["config.json", "bert_config.json"];
/// Weight files the browser reads (PyTorch pickles are for the CLI: `bert-native convert`).
pub const WEIGHT_NAMES: [&str; 1] = ["model.safetensors"];
/// Tokenizer files, preferred first.
pub const TOKENIZER_NAMES: [&str; 2] = ["tokenizer.json", "vocab.txt"];

/// Picks the configuration, weights and tokenizer among named files (e.g. dropped on the page).
/// Weights are any `*.safetensors`; other files are ignored. The error says what is missing.
pub fn model_bytes(files: Vec<(String, Vec<u8>)>) -> Result<ModelBytes, String> {
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    let rank = |name: &str, candidates: &[&str]| candidates.iter().position(|c| *c == name);
    let best = |candidates: &[&str]| {
        names
            .iter()
            .enumerate()
            .filter_map(|(index, name)| rank(name, candidates).map(|r| (r, index)))
            .min()
            .map(|(_, index)| index)
    };
    let config = best(&CONFIG_NAMES);
    let tokenizer = best(&TOKENIZER_NAMES);
    let weights = names.iter().position(|name| name.ends_with(".safetensors"));
    if names
        .iter()
        .any(|name| name.ends_with(".bin") || name.ends_with(".pt"))
        && weights.is_none()
    {
        return Err(
            "PyTorch checkpoints (.bin, .pt) are not read in the browser: convert them with \
             `bert-native convert --model DIR --output OUT` and drop OUT's files"
                .into(),
        );
    }
    let missing: Vec<&str> = [
        (
            config.is_none(),
            "a configuration (config.json or bert_config.json)",
        ),
        (weights.is_none(), "weights (*.safetensors)"),
        (
            tokenizer.is_none(),
            "a vocabulary (tokenizer.json or vocab.txt)",
        ),
    ]
    .into_iter()
    .filter_map(|(absent, what)| absent.then_some(what))
    .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing {} among the files given ({})",
            missing.join(", "),
            names.join(", ")
        ));
    }
    let mut files: Vec<Option<(String, Vec<u8>)>> = files.into_iter().map(Some).collect();
    let mut take = |index: Option<usize>| {
        index
            .and_then(|i| files[i].take())
            .expect("checked present above")
    };
    Ok(ModelBytes {
        config: take(config),
        weights: take(weights),
        tokenizer: take(tokenizer),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> (String, Vec<u8>) {
        (name.to_string(), name.as_bytes().to_vec())
    }

    #[test]
    fn picks_each_role_preferring_tokenizer_json() {
        let bytes = model_bytes(vec![
            file("vocab.txt"),
            file("README.md"),
            file("model-f16.safetensors"),
            file("tokenizer.json"),
            file("config.json"),
        ])
        .unwrap();
        assert_eq!(bytes.config.0, "config.json");
        assert_eq!(bytes.weights.0, "model-f16.safetensors");
        assert_eq!(bytes.tokenizer.0, "tokenizer.json");
        assert_eq!(bytes.tokenizer.1, b"tokenizer.json");
    }

    #[test]
    fn says_what_is_missing_and_refuses_pickles() {
        let error = model_bytes(vec![file("config.json")]).unwrap_err();
        assert!(error.contains("weights (*.safetensors)"), "{error}");
        assert!(error.contains("a vocabulary"), "{error}");
        let error = model_bytes(vec![
            file("config.json"),
            file("vocab.txt"),
            file("pytorch_model.bin"),
        ])
        .unwrap_err();
        assert!(error.contains("bert-native convert"), "{error}");
    }
}
