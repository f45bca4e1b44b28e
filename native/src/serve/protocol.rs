//! The KServe v2 / Triton inference protocol over HTTP: JSON tensors, and Triton's binary tensor
//! extension (a JSON header of `Inference-Header-Content-Length` bytes, then raw little-endian
//! tensor data).

use bert_core::model::TokenBatch;
use bert_core::BertConfig;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::repository::HostOutput;

/// The header that gives the JSON part's length in binary requests and responses.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The inputs every model accepts, all INT64 `[-1, -1]`.
pub const INPUT_NAMES: [&str; 3] = ["input_ids", "token_type_ids", "attention_mask"];

/// A request the client got wrong (answered with 400 and the message).
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest(pub String);

fn bad(message: impl Into<String>) -> BadRequest {
    BadRequest(message.into())
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestOutput>>,
}

#[derive(Debug, Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// A decoded inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    /// The request id, echoed back.
    pub id: Option<String>,
    /// The token rows, validated against the model's configuration.
    pub batch: TokenBatch,
    /// Outputs to return, each with whether it goes as binary data.
    pub outputs: Vec<(String, bool)>,
}

/// Decodes an infer request body (`header_length`: the binary extension's JSON length) for a
/// model with `config` whose outputs are `output_names`.
pub fn parse_infer(
    body: &[u8],
    header_length: Option<usize>,
    config: &BertConfig,
    output_names: &[&str],
) -> Result<Inference, BadRequest> {
    let (json_part, mut binary) = match header_length {
        Some(length) if length <= body.len() => body.split_at(length),
        Some(length) => {
            return Err(bad(format!(
                "Inference-Header-Content-Length is {length} but the body has only {} bytes",
                body.len()
            )))
        }
        None => (body, &[][..]),
    };
    let request: InferRequest = serde_json::from_slice(json_part)
        .map_err(|e| bad(format!("not a valid inference request: {e}")))?;
    let mut rows: [Option<(Vec<i64>, [usize; 2])>; 3] = [None, None, None];
    for input in &request.inputs {
        let Some(slot) = INPUT_NAMES.iter().position(|n| *n == input.name) else {
            return Err(bad(format!(
                "unknown input {:?}: the inputs are {}",
                input.name,
                INPUT_NAMES.join(", ")
            )));
        };
        if rows[slot].is_some() {
            return Err(bad(format!("input {:?} given twice", input.name)));
        }
        let shape = match input.shape[..] {
            [batch, seq] if batch > 0 && seq > 0 => [batch as usize, seq as usize],
            _ => {
                return Err(bad(format!(
                    "input {:?} has shape {:?}: expected [batch, sequence], both at least 1",
                    input.name, input.shape
                )))
            }
        };
        let width = match input.datatype.as_str() {
            "INT64" => 8,
            "INT32" => 4,
            other => {
                return Err(bad(format!(
                    "input {:?} has datatype {other}: expected INT64 (or INT32)",
                    input.name
                )))
            }
        };
        // The declared shape only sizes what is checked against the values actually sent.
        let too_many = || {
            bad(format!(
                "input {:?} declares shape {:?}: too many values for one request",
                input.name, input.shape
            ))
        };
        let count = shape[0].checked_mul(shape[1]).ok_or_else(too_many)?;
        let values = match input.parameters.get("binary_data_size") {
            Some(size) => {
                let size = size.as_u64().ok_or_else(|| {
                    bad(format!(
                        "input {:?}: binary_data_size is not a number",
                        input.name
                    ))
                })? as usize;
                if Some(size) != count.checked_mul(width) || size > binary.len() {
                    return Err(bad(format!(
                        "input {:?}: binary_data_size {size} does not match shape {:?} of {} ({} bytes left in the body)",
                        input.name, input.shape, input.datatype, binary.len()
                    )));
                }
                let (bytes, rest) = binary.split_at(size);
                binary = rest;
                bytes
                    .chunks_exact(width)
                    .map(|chunk| match width {
                        8 => i64::from_le_bytes(chunk.try_into().expect("8 bytes")),
                        _ => i64::from(i32::from_le_bytes(chunk.try_into().expect("4 bytes"))),
                    })
                    .collect()
            }
            None => {
                let data = input
                    .data
                    .as_ref()
                    .ok_or_else(|| bad(format!("input {:?} has no data", input.name)))?;
                let mut values = Vec::new();
                flatten_integers(data, &mut values)
                    .map_err(|e| bad(format!("input {:?}: {e}", input.name)))?;
                if values.len() != count {
                    return Err(bad(format!(
                        "input {:?} has {} values but shape {:?} needs {count}",
                        input.name,
                        values.len(),
                        input.shape
                    )));
                }
                values
            }
        };
        rows[slot] = Some((values, shape));
    }
    let [ids, types, mask] = rows;
    let (ids, shape) = ids.ok_or_else(|| bad("input \"input_ids\" is required"))?;
    let to_rows = |name: &str, input: Option<(Vec<i64>, [usize; 2])>| {
        input
            .map(|(values, other)| {
                if other != shape {
                    Err(bad(format!(
                        "input {name:?} has shape {other:?} but input_ids {shape:?}"
                    )))
                } else {
                    Ok(values.chunks(shape[1]).map(<[i64]>::to_vec).collect())
                }
            })
            .transpose()
    };
    let batch = TokenBatch {
        input_ids: ids.chunks(shape[1]).map(<[i64]>::to_vec).collect(),
        token_type_ids: to_rows("token_type_ids", types)?,
        attention_mask: to_rows("attention_mask", mask)?,
    };
    batch.validate(config).map_err(|e| bad(e.to_string()))?;

    let binary_by_default = request
        .parameters
        .get("binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let outputs = match &request.outputs {
        Some(requested) if !requested.is_empty() => requested
            .iter()
            .map(|output| {
                if !output_names.contains(&output.name.as_str()) {
                    return Err(bad(format!(
                        "unknown output {:?}: this model's outputs are {}",
                        output.name,
                        output_names.join(", ")
                    )));
                }
                let binary = output
                    .parameters
                    .get("binary_data")
                    .and_then(Value::as_bool)
                    .unwrap_or(binary_by_default);
                Ok((output.name.clone(), binary))
            })
            .collect::<Result<_, _>>()?,
        _ => output_names
            .iter()
            .map(|name| (name.to_string(), binary_by_default))
            .collect(),
    };
    Ok(Inference {
        id: request.id,
        batch,
        outputs,
    })
}

fn flatten_integers(value: &Value, out: &mut Vec<i64>) -> Result<(), String> {
    match value {
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| flatten_integers(item, out)),
        Value::Number(number) => {
            out.push(
                number
                    .as_i64()
                    .ok_or_else(|| format!("{number} is not an integer"))?,
            );
            Ok(())
        }
        other => Err(format!("{other} is not an integer")),
    }
}

/// An encoded response: the body and, for binary outputs, the JSON part's length.
#[derive(Debug)]
pub struct EncodedResponse {
    /// The body.
    pub body: Vec<u8>,
    /// `Some(length)` when binary data follows the JSON.
    pub header_length: Option<usize>,
}

/// Encodes the outputs of one request as an infer response: the `requested` outputs (name, as
/// binary data), echoing the request's `id`.
pub fn encode_response(
    model_name: &str,
    id: Option<&str>,
    requested: &[(String, bool)],
    outputs: &[HostOutput],
) -> EncodedResponse {
    let mut binary = Vec::new();
    let entries: Vec<Value> = requested
        .iter()
        .filter_map(|(name, as_binary)| {
            let output = outputs.iter().find(|o| o.name == name)?;
            let mut entry = json!({
                "name": name,
                "datatype": "FP32",
                "shape": output.shape,
            });
            if *as_binary {
                let size = output.data.len() * 4;
                binary.extend(output.data.iter().flat_map(|v| v.to_le_bytes()));
                entry["parameters"] = json!({ "binary_data_size": size });
            } else {
                entry["data"] = json!(output.data);
            }
            Some(entry)
        })
        .collect();
    let mut response = json!({
        "model_name": model_name,
        "model_version": "1",
        "outputs": entries,
    });
    if let Some(id) = id {
        response["id"] = json!(id);
    }
    let mut body = serde_json::to_vec(&response).expect("JSON values serialise");
    if binary.is_empty() {
        EncodedResponse {
            body,
            header_length: None,
        }
    } else {
        let header_length = body.len();
        body.extend(binary);
        EncodedResponse {
            body,
            header_length: Some(header_length),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BertConfig {
        BertConfig {
            vocab_size: 100,
            max_position_embeddings: 16,
            ..BertConfig::base()
        }
    }

    const OUTPUTS: [&str; 2] = ["start_logits", "end_logits"];

    #[test]
    fn json_and_binary_inputs_decode_to_the_same_rows() {
        let body = json!({"id": "7", "inputs": [
            {"name": "input_ids", "shape": [2, 3], "datatype": "INT64", "data": [[1, 5, 2], [1, 6, 2]]},
            {"name": "attention_mask", "shape": [2, 3], "datatype": "INT64", "data": [1, 1, 1, 1, 1, 0]}
        ]});
        let parsed = parse_infer(body.to_string().as_bytes(), None, &config(), &OUTPUTS).unwrap();
        assert_eq!(parsed.batch.input_ids, vec![vec![1, 5, 2], vec![1, 6, 2]]);
        assert_eq!(parsed.outputs.len(), 2);

        let header = json!({"id": "7", "inputs": [
            {"name": "input_ids", "shape": [2, 3], "datatype": "INT32", "parameters": {"binary_data_size": 24}},
            {"name": "attention_mask", "shape": [2, 3], "datatype": "INT64", "data": [1, 1, 1, 1, 1, 0]}
        ], "outputs": [{"name": "end_logits", "parameters": {"binary_data": true}}]})
        .to_string();
        let mut body = header.clone().into_bytes();
        for id in [1i32, 5, 2, 1, 6, 2] {
            body.extend(id.to_le_bytes());
        }
        let binary = parse_infer(&body, Some(header.len()), &config(), &OUTPUTS).unwrap();
        assert_eq!(binary.batch, parsed.batch);
        assert_eq!(binary.outputs, vec![("end_logits".to_string(), true)]);

        let outputs = [HostOutput {
            name: "end_logits",
            shape: vec![2, 3],
            data: vec![0.5; 6],
        }];
        let response = encode_response("qa", binary.id.as_deref(), &binary.outputs, &outputs);
        let length = response.header_length.unwrap();
        assert_eq!(response.body.len(), length + 24);
        let head: Value = serde_json::from_slice(&response.body[..length]).unwrap();
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 24);
        assert_eq!(head["id"], "7");
    }

    #[test]
    fn malformed_requests_name_the_problem() {
        let cases = [
            (json!({"inputs": []}), "input_ids"),
            (
                json!({"inputs": [{"name": "ids", "shape": [1, 1], "datatype": "INT64", "data": [1]}]}),
                "unknown input",
            ),
            (
                json!({"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}),
                "FP32",
            ),
            (
                json!({"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2]}]}),
                "needs 3",
            ),
            (
                json!({"inputs": [{"name": "input_ids", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]}]}),
                "[batch, sequence]",
            ),
            (
                json!({"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 500]}]}),
                "500",
            ),
            (
                json!({"inputs": [{"name": "input_ids", "shape": [1, 20], "datatype": "INT64", "data": vec![1; 20]}]}),
                "16",
            ),
            (
                json!({"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, "a"]}]}),
                "integer",
            ),
            (
                json!({"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [1]}], "outputs": [{"name": "logits"}]}),
                "unknown output",
            ),
        ];
        for (body, expected) in cases {
            let error =
                parse_infer(body.to_string().as_bytes(), None, &config(), &OUTPUTS).unwrap_err();
            assert!(error.0.contains(expected), "{body}: {}", error.0);
        }
        let error = parse_infer(b"{not json", None, &config(), &OUTPUTS).unwrap_err();
        assert!(
            error.0.contains("not a valid inference request"),
            "{}",
            error.0
        );
        let error = parse_infer(b"{}", Some(10), &config(), &OUTPUTS).unwrap_err();
        assert!(
            error.0.contains("Inference-Header-Content-Length"),
            "{}",
            error.0
        );
    }

    /// A declared shape is checked against the values actually sent before anything is sized
    /// by it: 2^40 elements (8 TiB of INT64) with three values, or a shape whose element count
    /// overflows, are refused, never allocated.
    #[test]
    fn a_declared_shape_never_sizes_an_allocation() {
        let huge = 1i64 << 20;
        let cases = [
            (json!([huge, huge]), json!([1, 2, 3]), "needs"),
            (json!([i64::MAX, i64::MAX]), json!([1]), "too many values"),
            (json!([i64::MAX / 2, 3]), json!([1]), "needs"),
            (json!([i64::MAX / 2, 5]), json!([1]), "too many values"),
        ];
        for (shape, data, expected) in cases {
            let body = json!({"inputs": [{"name": "input_ids", "shape": shape, "datatype": "INT64", "data": data}]});
            let error =
                parse_infer(body.to_string().as_bytes(), None, &config(), &OUTPUTS).unwrap_err();
            assert!(error.0.contains(expected), "{body}: {}", error.0);
        }
        for (shape, size) in [
            (json!([huge, huge]), json!(24)),
            (json!([huge, huge]), json!(1u64 << 43)),
            (json!([i64::MAX, i64::MAX]), json!(8)),
        ] {
            let header = json!({"inputs": [{"name": "input_ids", "shape": shape, "datatype": "INT64", "parameters": {"binary_data_size": size}}]}).to_string();
            let mut body = header.clone().into_bytes();
            body.extend([0u8; 24]);
            let error = parse_infer(&body, Some(header.len()), &config(), &OUTPUTS).unwrap_err();
            assert!(
                error.0.contains("binary_data_size") || error.0.contains("too many values"),
                "{header}: {}",
                error.0
            );
        }
    }
}
