//! `bert-native serve` driven over HTTP on a loopback port: health and metadata, inference equal
//! to `bert-native encode` (JSON and binary tensors, dynamic batching of concurrent requests), the
//! text question-answering endpoint equal to `bert-native qa`, NVIDIA's own `tritonclient`,
//! sentence embeddings equal to `bert-native embed` (ours and OpenAI's endpoint, through the
//! `openai` client), text classification equal to bert-core's pipeline, bad input, a full queue,
//! and SIGTERM with a request in flight.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bert_core::checkpoint::to_safetensors;
use bert_core::model::BertWithHeads;
use bert_core::pipelines::SequenceClassification;
use bert_core::pretrained::ModelFiles;
use bert_tests::{
    arg, fixture, golden_embeddings, max_abs_diff, minilm_dir, read_safetensors, GoldenEmbeddings,
    TempDir,
};
use burn::backend::NdArray;
use serde_json::{json, Value};

/// A repository with `minilm` (encoder), `qa` (MiniLM with the fixture's seeded span head) and
/// `sentiment` (MiniLM with a fresh two-label classifier); returns it and the folder of the
/// weights with heads (for `encode` and `qa`).
fn repository(root: &Path) -> (PathBuf, PathBuf) {
    let minilm = minilm_dir();
    let with_heads = root.join("with-heads");
    std::fs::create_dir_all(&with_heads).unwrap();
    let files = ModelFiles::find(&minilm, None).unwrap();
    let checkpoint = files
        .read_checkpoint(&[fixture("forward/weights/heads.safetensors")])
        .unwrap();
    let config = checkpoint.fit_config(&files.read_config().unwrap());
    let mut heads = checkpoint.heads();
    heads.classifier_labels = Some(2);
    let mut model = BertWithHeads::<NdArray>::new(&config, heads, &Default::default());
    checkpoint.load_into(&mut model).unwrap();
    std::fs::write(
        with_heads.join("model.safetensors"),
        to_safetensors(&model).unwrap(),
    )
    .unwrap();
    for file in ["config.json", "vocab.txt", "tokenizer.json"] {
        std::fs::copy(minilm.join(file), with_heads.join(file)).unwrap();
    }
    let repository = root.join("models");
    for (name, source, settings) in [
        ("minilm", &minilm, json!({"task": "encoder"})),
        (
            "qa",
            &with_heads,
            json!({"task": "question-answering", "max_seq_length": 128, "doc_stride": 64}),
        ),
        (
            "sentiment",
            &with_heads,
            json!({"task": "sequence-classification"}),
        ),
    ] {
        let folder = repository.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        for file in [
            "config.json",
            "model.safetensors",
            "vocab.txt",
            "tokenizer.json",
        ] {
            std::os::unix::fs::symlink(source.join(file), folder.join(file)).unwrap();
        }
        std::fs::write(folder.join("model.json"), settings.to_string()).unwrap();
    }
    (repository, with_heads)
}

/// A running server; killed when dropped.
struct Server {
    child: Child,
    port: u16,
    /// What it printed before it listened.
    startup: Vec<String>,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    fn start(repository: &Path, flags: &[&str]) -> Self {
        Self::spawn(
            Command::new(env!("CARGO_BIN_EXE_bert-native")),
            repository,
            flags,
        )
    }

    /// The server under an address-space limit of `kib` KiB (`ulimit -v`, as batch schedulers
    /// set): an allocation beyond it fails at once instead of being reserved lazily.
    fn start_limited(repository: &Path, flags: &[&str], kib: u64) -> Self {
        let mut shell = Command::new("sh");
        shell.args([
            "-c",
            &format!("ulimit -v {kib} && exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_bert-native"),
        ]);
        Self::spawn(shell, repository, flags)
    }

    fn spawn(mut command: Command, repository: &Path, flags: &[&str]) -> Self {
        let mut child = command
            .args([
                "serve",
                "--model-repository",
                arg(repository),
                "--http-port",
                "0",
            ])
            .args(flags)
            .stderr(Stdio::piped())
            .spawn()
            .expect("bert-native runs");
        let (lines, stderr) = mpsc::channel();
        let reader = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut startup = Vec::new();
        let port = loop {
            let line = stderr
                .recv_timeout(Duration::from_secs(120))
                .expect("the server starts");
            if let Some(address) = line.split("http://").nth(1) {
                let address = address.split_whitespace().next().unwrap();
                break address.rsplit(':').next().unwrap().parse().unwrap();
            }
            startup.push(line);
        };
        Self {
            child,
            port,
            startup,
            stderr,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, headers (lower-case names) and body.
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 exchange over a fresh connection.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = unchunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn unchunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap().trim(), 16)
            .unwrap();
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw = &raw[line_end + 4 + size..];
    }
}

fn post_json(port: u16, path: &str, body: &Value) -> Reply {
    http(port, "POST", path, &[], body.to_string().as_bytes())
}

fn infer_body(rows: &[Vec<i64>]) -> Value {
    let shape = [rows.len(), rows[0].len()];
    json!({"id": "r", "inputs": [
        {"name": "input_ids", "shape": shape, "datatype": "INT64", "data": rows},
        {"name": "attention_mask", "shape": shape, "datatype": "INT64", "data": vec![vec![1; shape[1]]; shape[0]]},
    ]})
}

fn output<'a>(reply: &'a Value, name: &str) -> &'a Value {
    reply["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {reply}"))
}

fn floats(value: &Value) -> Vec<f32> {
    let mut out = Vec::new();
    fn walk(value: &Value, out: &mut Vec<f32>) {
        match value {
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            other => out.push(other.as_f64().unwrap() as f32),
        }
    }
    walk(value, &mut out);
    out
}

fn bert_native(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_bert-native"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bert-native {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `bert-native encode` on `rows`: every output by name.
fn encode(dir: &Path, model: &Path, rows: &[Vec<i64>]) -> HashMap<String, Vec<f32>> {
    let input = dir.join("batch.json");
    let out = dir.join("encoded.safetensors");
    std::fs::write(
        &input,
        json!({"input_ids": rows, "attention_mask": vec![vec![1; rows[0].len()]; rows.len()]})
            .to_string(),
    )
    .unwrap();
    bert_native(&[
        "encode",
        "--model",
        arg(model),
        "--input",
        arg(&input),
        "--output",
        arg(&out),
    ]);
    read_safetensors(&out)
        .into_iter()
        .map(|(name, tensor)| (name, tensor.f32))
        .collect()
}

fn assert_close(what: &str, actual: &[f32], expected: &[f32]) {
    let (diff, at) = max_abs_diff(actual, expected);
    assert!(diff < 1e-4, "{what}: max difference {diff} at {at}");
}

const SHORT: [i64; 4] = [101, 7592, 2088, 102];
const LONG: [i64; 7] = [101, 1996, 4248, 2829, 4419, 2001, 102];

#[test]
fn serves_like_encode_and_qa_batches_requests_and_speaks_to_the_triton_client() {
    let tmp = TempDir::new("main");
    let (repository, with_heads) = repository(&tmp.0);
    let server = Server::start(
        &repository,
        &["--max-batch-size", "8", "--max-queue-delay-ms", "300"],
    );
    let port = server.port;
    // Each model ran twice (which packs its weights) before the server listened.
    for model in ["minilm", "qa", "sentiment"] {
        let announced = format!("model {model}: loaded and warmed up (");
        assert!(
            server.startup.iter().any(|l| l.starts_with(&announced)),
            "{:?}",
            server.startup
        );
    }

    assert_eq!(http(port, "GET", "/v2/health/live", &[], b"").status, 200);
    assert_eq!(http(port, "GET", "/v2/health/ready", &[], b"").status, 200);
    assert_eq!(
        http(port, "GET", "/v2", &[], b"").json()["name"],
        "bert-native"
    );
    assert_eq!(
        http(port, "GET", "/v2/models/qa/ready", &[], b"").status,
        200
    );
    let metadata = http(port, "GET", "/v2/models/qa", &[], b"").json();
    let names = |key: &str| -> Vec<String> {
        metadata[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("inputs"),
        ["input_ids", "token_type_ids", "attention_mask"]
    );
    assert_eq!(names("outputs"), ["start_logits", "end_logits"]);
    assert_eq!(metadata["inputs"][0]["datatype"], "INT64");
    assert_eq!(metadata["inputs"][0]["shape"], json!([-1, -1]));
    let missing = http(port, "GET", "/v2/models/nope", &[], b"");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("minilm"));

    // Two requests of different lengths at once: one padded batch, each gets its own rows back,
    // equal to `encode` on that request alone.
    let requests: Vec<Vec<Vec<i64>>> =
        vec![vec![SHORT.to_vec()], vec![LONG.to_vec(), LONG.to_vec()]];
    let handles: Vec<_> = requests
        .iter()
        .map(|rows| {
            let body = infer_body(rows);
            std::thread::spawn(move || post_json(port, "/v2/models/minilm/infer", &body))
        })
        .collect();
    let replies: Vec<Reply> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (rows, reply) in requests.iter().zip(&replies) {
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let reply = reply.json();
        assert_eq!(reply["id"], "r");
        let hidden = output(&reply, "last_hidden_state");
        assert_eq!(hidden["shape"], json!([rows.len(), rows[0].len(), 384]));
        let expected = encode(&tmp.0, &minilm_dir(), rows);
        assert_close(
            "last_hidden_state",
            &floats(&hidden["data"]),
            &expected["last_hidden_state"],
        );
    }
    let metrics = String::from_utf8(http(port, "GET", "/metrics", &[], b"").body).unwrap();
    assert!(
        metrics.contains("nv_inference_exec_count{model=\"minilm\"} 1\n")
            && metrics.contains("nv_inference_count{model=\"minilm\"} 3\n")
            && metrics.contains("nv_inference_request_success{model=\"minilm\"} 2\n"),
        "the two requests ran as one batch of three rows:\n{metrics}"
    );

    // Task heads, against `encode` on the same weights.
    let rows = vec![LONG.to_vec()];
    let expected = encode(&tmp.0, &with_heads, &rows);
    let qa = post_json(port, "/v2/models/qa/infer", &infer_body(&rows)).json();
    assert_close(
        "start_logits",
        &floats(&output(&qa, "start_logits")["data"]),
        &expected["start_logits"],
    );
    assert_close(
        "end_logits",
        &floats(&output(&qa, "end_logits")["data"]),
        &expected["end_logits"],
    );
    let sentiment = post_json(port, "/v2/models/sentiment/infer", &infer_body(&rows)).json();
    assert_close(
        "logits",
        &floats(&output(&sentiment, "logits")["data"]),
        &expected["classifier_logits"],
    );

    // Binary tensors (Triton's extension), by hand: INT32 ids in, FP32 logits out.
    let header =
        json!({"inputs": [{"name": "input_ids", "shape": [1, LONG.len()], "datatype": "INT32",
        "parameters": {"binary_data_size": LONG.len() * 4}}],
        "outputs": [{"name": "end_logits", "parameters": {"binary_data": true}}]})
        .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(LONG.iter().flat_map(|&id| (id as i32).to_le_bytes()));
    let reply = http(
        port,
        "POST",
        "/v2/models/qa/infer",
        &[("Inference-Header-Content-Length", header.len().to_string())],
        &body,
    );
    assert_eq!(reply.status, 200);
    let length: usize = reply.headers["inference-header-content-length"]
        .parse()
        .unwrap();
    let end_logits: Vec<f32> = reply.body[length..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_close("binary end_logits", &end_logits, &expected["end_logits"]);

    // NVIDIA's client library, unchanged.
    let report = python_client(
        "triton_client.py",
        &[&format!("127.0.0.1:{port}"), "qa", &json!(rows).to_string()],
    );
    assert_eq!(report["live"], true);
    assert_eq!(report["model_ready"], true);
    assert_eq!(report["metadata"]["outputs"][1]["name"], "end_logits");
    assert_eq!(report["binary_id"], "interop");
    for key in ["binary", "json", "default"] {
        for name in ["start_logits", "end_logits"] {
            assert_close(
                &format!("tritonclient {key} {name}"),
                &floats(&report[key][name]),
                &expected[name],
            );
        }
    }

    // Text in, answer out: the same answer as `bert-native qa`, over a context of several windows.
    let context = format!(
        "{}Kalor founded the city of Brennt in 1887, by the river Osk. {}",
        "The weather was mild and nothing else of note happened. ".repeat(12),
        "Later the town grew slowly. ".repeat(12)
    );
    let question = "Who founded Brennt?";
    let served = post_json(
        port,
        "/v2/models/qa/qa",
        &json!({"question": question, "context": context, "n_best": 3}),
    );
    assert_eq!(
        served.status,
        200,
        "{}",
        String::from_utf8_lossy(&served.body)
    );
    let served = served.json();
    let cli = bert_native(&[
        "qa",
        "--model",
        arg(&with_heads),
        "--question",
        question,
        "--context",
        &context,
        "--max-seq-length",
        "128",
        "--doc-stride",
        "64",
        "--n-best",
        "3",
    ]);
    let cli: Value =
        serde_json::from_str(String::from_utf8_lossy(&cli.stdout).lines().last().unwrap()).unwrap();
    for key in ["answer", "start", "end"] {
        assert_eq!(served[key], cli[key], "{key}: {served} vs {cli}");
    }
    assert_eq!(served["n_best"].as_array().unwrap().len(), 3);

    // Text classification: the pipeline's classes (bert-core's SequenceClassification, tested
    // against Hugging Face's), for texts and pairs, concurrent requests batched together.
    let pipeline =
        SequenceClassification::<NdArray>::from_folder(&with_heads, &Default::default()).unwrap();
    let texts = [
        "A fine day.",
        "The river rose over the old stone bridge at dawn.",
    ];
    let pairs = [
        ("He left.", "He went away."),
        ("Rain.", "The sun is out today."),
    ];
    let expected = [
        pipeline.classify(&texts).unwrap().scores,
        pipeline.classify_pairs(&pairs).unwrap().scores,
    ];
    let bodies = [json!({ "texts": texts }), json!({ "pairs": pairs })];
    let replies: Vec<Reply> = std::thread::scope(|scope| {
        let threads: Vec<_> = bodies
            .iter()
            .map(|body| scope.spawn(move || post_json(port, "/v2/models/sentiment/classify", body)))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (reply, expected) in replies.iter().zip(&expected) {
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let results = reply.json()["results"].clone();
        let results = results.as_array().unwrap();
        assert_eq!(results.len(), expected.len(), "one result per input");
        for (served, expected) in results.iter().zip(expected) {
            let served = served.as_array().unwrap();
            assert_eq!(served.len(), expected.len(), "every class");
            for (class, expected) in served.iter().zip(expected) {
                assert_eq!(class["label"], expected.label.as_str());
                assert_eq!(class["index"], expected.index);
                let score = class["score"].as_f64().unwrap() as f32;
                assert!(
                    (score - expected.score).abs() < 1e-5,
                    "{class} vs {expected:?}"
                );
            }
        }
    }
    assert_eq!(expected[0][0].len(), 2);
    assert!(
        expected[0][0].iter().any(|c| c.label == "LABEL_1"),
        "no id2label: HF's names"
    );

    // One client asking in turn: its requests wait for company (the 300 ms delay) until three
    // model runs in a row found none; then each runs at once.
    let mut waits = Vec::new();
    for _ in 0..4 {
        let before = queued_us(port, "minilm");
        let reply = post_json(
            port,
            "/v2/models/minilm/infer",
            &infer_body(&[SHORT.to_vec()]),
        );
        assert_eq!(reply.status, 200);
        waits.push(queued_us(port, "minilm") - before);
    }
    assert!(
        waits[..3].iter().all(|&us| us >= 300_000) && waits[3] < 150_000,
        "queued microseconds of four requests in turn: {waits:?}"
    );
}

/// The time `model`'s requests have spent queued, in microseconds, from `/metrics`.
fn queued_us(port: u16, model: &str) -> u64 {
    let metrics = String::from_utf8(http(port, "GET", "/metrics", &[], b"").body).unwrap();
    let name = format!("nv_inference_queue_duration_us{{model=\"{model}\"}} ");
    let line = metrics
        .lines()
        .find_map(|line| line.strip_prefix(&name[..]));
    line.expect("the queue duration metric").parse().unwrap()
}

#[test]
fn bad_requests_get_a_400_naming_the_problem_and_the_worker_lives_on() {
    let tmp = TempDir::new("bad");
    let (repository, _) = repository(&tmp.0);
    let server = Server::start(&repository, &["--max-queue-delay-ms", "0"]);
    let port = server.port;
    let ids = |data: Value, shape: Value, datatype: &str| json!({"inputs": [{"name": "input_ids", "shape": shape, "datatype": datatype, "data": data}]});
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("/v2/models/minilm/infer", b"{\"inputs\": [".to_vec(), "not a valid inference request"),
        ("/v2/models/minilm/infer", json!({"inputs": []}).to_string().into_bytes(), "input_ids"),
        ("/v2/models/minilm/infer", json!({"inputs": [{"name": "tokens", "shape": [1, 1], "datatype": "INT64", "data": [1]}]}).to_string().into_bytes(), "unknown input"),
        ("/v2/models/minilm/infer", ids(json!([1, 2]), json!([1, 3]), "INT64").to_string().into_bytes(), "needs 3"),
        ("/v2/models/minilm/infer", ids(json!([1.5]), json!([1, 1]), "FP32").to_string().into_bytes(), "FP32"),
        ("/v2/models/minilm/infer", ids(json!([101, 40000]), json!([1, 2]), "INT64").to_string().into_bytes(), "40000"),
        ("/v2/models/minilm/infer", ids(json!(vec![101; 600]), json!([1, 600]), "INT64").to_string().into_bytes(), "512"),
        ("/v2/models/minilm/infer", ids(json!([]), json!([0, 0]), "INT64").to_string().into_bytes(), "at least 1"),
        ("/v2/models/qa/qa", json!({"question": "Who?"}).to_string().into_bytes(), "context"),
        ("/v2/models/minilm/qa", json!({"question": "Who?", "context": "Kalor."}).to_string().into_bytes(), "encoder"),
        ("/v2/models/qa/classify", json!({"texts": ["Kalor."]}).to_string().into_bytes(), "not sequence-classification"),
        ("/v2/models/sentiment/classify", json!({"texts": []}).to_string().into_bytes(), "non-empty list"),
        ("/v2/models/sentiment/classify", json!({"texts": ["a"], "pairs": [["a", "b"]]}).to_string().into_bytes(), "not both"),
        ("/v2/models/sentiment/classify", json!({"pairs": [["a"]]}).to_string().into_bytes(), "expected"),
    ];
    for (path, body, expected) in cases {
        let reply = http(port, "POST", path, &[], &body);
        assert_eq!(
            reply.status,
            400,
            "{path} {}",
            String::from_utf8_lossy(&body)
        );
        let message = reply.json()["error"].as_str().unwrap().to_string();
        assert!(
            message.contains(expected),
            "{path}: {message:?} should mention {expected:?}"
        );
    }
    let reply = http(
        port,
        "POST",
        "/v2/models/minilm/infer",
        &[("Inference-Header-Content-Length", "999".into())],
        b"{}",
    );
    assert_eq!(reply.status, 400);
    assert_eq!(
        http(port, "POST", "/v2/models/nope/infer", &[], b"{}").status,
        404
    );
    let ok = post_json(
        port,
        "/v2/models/minilm/infer",
        &infer_body(&[SHORT.to_vec()]),
    );
    assert_eq!(ok.status, 200, "the worker still answers");
}

/// A declared shape is checked against the values sent before it sizes anything: under an
/// address-space limit, a request declaring 2^40 INT64 values (8 TiB) with three of them used to
/// abort the whole server ("memory allocation of 8796093022208 bytes failed").
#[test]
fn a_huge_declared_shape_gets_a_400_under_an_address_space_limit() {
    let tmp = TempDir::new("declared-shape");
    let (repository, _) = repository(&tmp.0);
    let server = Server::start_limited(&repository, &["--max-queue-delay-ms", "0"], 4 << 20);
    let port = server.port;
    let huge = 1i64 << 20;
    let body = json!({"inputs": [{"name": "input_ids", "shape": [huge, huge], "datatype": "INT64", "data": [101, 2000, 102]}]});
    let reply = post_json(port, "/v2/models/minilm/infer", &body);
    assert_eq!(
        reply.status,
        400,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(reply.json()["error"].as_str().unwrap().contains("needs"));
    // Binary data against a shape whose byte count overflows.
    let header = json!({"inputs": [{"name": "input_ids", "shape": [i64::MAX, i64::MAX], "datatype": "INT64", "parameters": {"binary_data_size": 24}}]}).to_string();
    let mut binary = header.clone().into_bytes();
    binary.extend([0u8; 24]);
    let reply = http(
        port,
        "POST",
        "/v2/models/minilm/infer",
        &[("Inference-Header-Content-Length", header.len().to_string())],
        &binary,
    );
    assert_eq!(
        reply.status,
        400,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let ok = post_json(
        port,
        "/v2/models/minilm/infer",
        &infer_body(&[SHORT.to_vec()]),
    );
    assert_eq!(ok.status, 200, "the server lives on");
}

#[test]
fn a_full_queue_answers_503_at_once_and_sigterm_finishes_requests_in_flight() {
    let tmp = TempDir::new("queue");
    let (repository, _) = repository(&tmp.0);
    let mut server = Server::start(
        &repository,
        &[
            "--max-queue-size",
            "1",
            "--max-batch-size",
            "1",
            "--max-queue-delay-ms",
            "0",
        ],
    );
    let port = server.port;
    let slow = infer_body(&vec![vec![101; 384]; 4]);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let body = slow.clone();
            std::thread::spawn(move || post_json(port, "/v2/models/minilm/infer", &body).status)
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&503) && statuses.contains(&200),
        "{statuses:?}"
    );
    let metrics = String::from_utf8(http(port, "GET", "/metrics", &[], b"").body).unwrap();
    let rejected = statuses.iter().filter(|s| **s == 503).count();
    assert!(
        metrics.contains(&format!(
            "bert_inference_request_rejected{{model=\"minilm\"}} {rejected}\n"
        )),
        "{metrics}"
    );

    // SIGTERM while a request computes: it is answered, then the server exits cleanly.
    let in_flight = std::thread::spawn(move || post_json(port, "/v2/models/minilm/infer", &slow));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let reply = in_flight.join().unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        output(&reply.json(), "last_hidden_state")["shape"],
        json!([4, 384, 384])
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
    let said: Vec<String> = server.stderr.try_iter().collect();
    assert!(said.iter().any(|l| l == "stopped"), "{said:?}");
}

/// Slow-loris clients: with every connection taken by one trickling its headers, one that sent
/// half a body and stopped, and one that never speaks, a fourth client waits (the connection cap),
/// each of them is closed after the request timeout, and the fourth is then served. Then three
/// clients that never read their (large) responses: their writes stall, they are closed, and the
/// next client is served.
#[test]
fn slow_and_abandoned_clients_time_out_and_never_hold_the_server() {
    let tmp = TempDir::new("slow-clients");
    let (repository, _) = repository(&tmp.0);
    let server = Server::start(
        &repository,
        &["--request-timeout-s", "2", "--max-connections", "3"],
    );
    let port = server.port;
    let connect = move || {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream
    };
    let started = Instant::now();
    let (connected, all_connected) = mpsc::channel();
    // Sends `head` at once and `trickle` a byte every 300 ms, then reads until the server closes.
    let client = |head: &str, trickle: &str| {
        let (head, trickle) = (head.as_bytes().to_vec(), trickle.as_bytes().to_vec());
        let connected = connected.clone();
        std::thread::spawn(move || {
            let mut stream = connect();
            stream.write_all(&head).unwrap();
            connected.send(()).unwrap();
            for byte in trickle {
                std::thread::sleep(Duration::from_millis(300));
                if stream.write_all(&[byte]).is_err() {
                    break;
                }
            }
            let mut reply = Vec::new();
            let _ = stream.read_to_end(&mut reply);
            (
                started.elapsed(),
                String::from_utf8_lossy(&reply).into_owned(),
            )
        })
    };
    let trickled_headers = client(
        "",
        "GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
    );
    let half_a_body = client(
        "POST /v2/models/minilm/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"inputs\": [",
        "",
    );
    let silent = client("", "");
    for _ in 0..3 {
        all_connected.recv().unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let waiting = http(port, "GET", "/v2/health/ready", &[], b"");
    let served_after = started.elapsed();

    assert_eq!(waiting.status, 200);
    assert!(
        served_after >= Duration::from_millis(1500),
        "the fourth client got a connection before any of the three closed ({served_after:?})"
    );
    for (what, handle) in [
        ("trickled headers", trickled_headers),
        ("half a body", half_a_body),
        ("silent", silent),
    ] {
        let (closed_after, reply) = handle.join().unwrap();
        assert!(
            closed_after < Duration::from_secs(10),
            "{what}: held for {closed_after:?}"
        );
        if what == "half a body" {
            assert!(
                reply.starts_with("HTTP/1.1 408")
                    && reply.contains("did not arrive within 2 s")
                    && reply.to_ascii_lowercase().contains("connection: close"),
                "{reply}"
            );
        }
    }

    // About 14 MB of JSON each, more than the sockets buffer: the writes stall on a full window.
    let large = serde_json::to_vec(&infer_body(&vec![vec![101; 384]; 8])).unwrap();
    let never_reading: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = connect();
            let head = format!(
                "POST /v2/models/minilm/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
                large.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&large).unwrap();
            stream
        })
        .collect();
    let reply = post_json(
        port,
        "/v2/models/minilm/infer",
        &infer_body(&[vec![101, 102]]),
    );
    assert_eq!(reply.status, 200);
    drop(never_reading);

    // A body over the limit (2 MiB) is refused, and the answer says that the connection closes:
    // a kept-alive client must not write its next request into it.
    let mut stream = connect();
    let body = vec![b'x'; (2 << 20) + 1];
    let head = format!(
        "POST /v2/models/minilm/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 413")
            && reply.to_ascii_lowercase().contains("connection: close"),
        "{reply}"
    );
}

#[test]
fn serves_sentence_embeddings_to_the_openai_client_as_the_cli_computes_them() {
    let tmp = TempDir::new("embeddings");
    let minilm = minilm_dir();
    let repository = tmp.path("models");
    // The sentence-transformers folder as published, and the same weights as a plain encoder.
    for (name, task) in [("embedder", "sentence-embeddings"), ("minilm", "encoder")] {
        let folder = repository.join(name);
        std::fs::create_dir_all(folder.join("1_Pooling")).unwrap();
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "vocab.txt",
            "modules.json",
            "sentence_bert_config.json",
            "1_Pooling/config.json",
        ] {
            std::os::unix::fs::symlink(minilm.join(file), folder.join(file)).unwrap();
        }
        std::fs::write(
            folder.join("model.json"),
            json!({ "task": task }).to_string(),
        )
        .unwrap();
    }
    let GoldenEmbeddings {
        sentences,
        embeddings: expected,
        ..
    } = golden_embeddings();

    // What the CLI writes for these texts.
    let texts_file = tmp.path("texts.txt");
    std::fs::write(&texts_file, sentences.join("\n")).unwrap();
    let jsonl = tmp.path("cli.jsonl");
    let output = bert_native(&[
        "embed",
        "--model",
        arg(&minilm),
        "--input",
        arg(&texts_file),
        "--output",
        arg(&jsonl),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let cli: Vec<Vec<f32>> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|line| floats(&serde_json::from_str::<Value>(line).unwrap()["embedding"]))
        .collect();
    for (i, (ours, theirs)) in cli.iter().zip(&expected).enumerate() {
        assert_close(
            &format!("CLI sentence {i} vs sentence-transformers"),
            ours,
            theirs,
        );
    }

    let server = Server::start(&repository, &["--max-batch-size", "16"]);
    let port = server.port;
    let metadata = http(port, "GET", "/v2/models/embedder", &[], b"").json();
    assert_eq!(metadata["platform"], "bert-native/sentence-embeddings");
    assert_eq!(metadata["outputs"][0]["name"], "sentence_embedding");

    // Our endpoint: the CLI's vectors, the token counts, the cut text.
    let body = json!({ "texts": sentences }).to_string();
    let reply = http(
        port,
        "POST",
        "/v2/models/embedder/embed",
        &[],
        body.as_bytes(),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let reply = reply.json();
    for (i, (served, cli)) in reply["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&cli)
        .enumerate()
    {
        let (diff, _) = max_abs_diff(&floats(served), cli);
        assert!(diff <= 1e-6, "/embed sentence {i}: {diff} from the CLI");
    }
    assert_eq!(reply["truncated"], json!([7]));
    assert_eq!(reply["tokens"][7], 256);
    for (path, body, status) in [
        ("/v2/models/embedder/embed", json!({ "texts": [] }), 400),
        ("/v2/models/minilm/embed", json!({ "texts": ["a"] }), 400),
        ("/v2/models/nobody/embed", json!({ "texts": ["a"] }), 404),
        (
            "/v1/embeddings",
            json!({ "model": "embedder", "input": [[1, 2]] }),
            400,
        ),
    ] {
        let reply = http(port, "POST", path, &[], body.to_string().as_bytes());
        assert_eq!(reply.status, status, "{path} {body}");
    }

    // KServe v2 inference on token ids: the pooled vector of the same tokens.
    let ids = json!({
        "inputs": [{"name": "input_ids", "shape": [1, 4], "datatype": "INT64", "data": SHORT}]
    });
    let reply = http(
        port,
        "POST",
        "/v2/models/embedder/infer",
        &[],
        ids.to_string().as_bytes(),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let infer = floats(&reply.json()["outputs"][0]["data"]);
    let hello = json!({ "texts": ["hello world"] }).to_string();
    let reply = http(
        port,
        "POST",
        "/v2/models/embedder/embed",
        &[],
        hello.as_bytes(),
    )
    .json();
    let (diff, _) = max_abs_diff(&infer, &floats(&reply["embeddings"][0]));
    assert!(
        diff <= 1e-6,
        "infer vs embed of [CLS] hello world [SEP]: {diff}"
    );

    // OpenAI's own client, unchanged.
    let report = python_client(
        "openai_client.py",
        &[
            &format!("127.0.0.1:{port}"),
            "embedder",
            "minilm",
            &json!(sentences).to_string(),
        ],
    );
    for key in ["default", "float"] {
        for (i, (got, cli)) in report[key].as_array().unwrap().iter().zip(&cli).enumerate() {
            let (diff, _) = max_abs_diff(&floats(got), cli);
            assert!(
                diff <= 1e-6,
                "openai {key} sentence {i}: {diff} from the CLI"
            );
        }
    }
    assert_eq!(
        report["indices"],
        json!((0..sentences.len()).collect::<Vec<_>>())
    );
    let (diff, _) = max_abs_diff(&floats(&report["single"]), &cli[0]);
    assert!(diff <= 1e-6, "openai single text: {diff}");
    assert_eq!(report["model"], "embedder");
    let tokens: u64 = reply_tokens(port, &sentences);
    assert_eq!(report["usage"]["prompt_tokens"], tokens);
    let errors = &report["errors"];
    assert_eq!(
        errors["not_embedding"]["class"], "BadRequestError",
        "{errors}"
    );
    assert_eq!(
        errors["unknown_model"]["class"], "NotFoundError",
        "{errors}"
    );
    assert_eq!(errors["empty_input"]["status"], 400, "{errors}");
    let message = errors["not_embedding"]["message"].as_str().unwrap();
    assert!(
        message.contains("minilm is not a sentence-embeddings model"),
        "{message}"
    );
}

/// Runs `tests/{script}` with `args` in the Python environment of the client libraries
/// (scripts/setup-triton-client.sh) and returns the JSON object it prints.
fn python_client(script: &str, args: &[&str]) -> Value {
    let python = std::env::var_os("BERT_RS_TRITON_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".cache/bert-rs/triton-venv/bin/python")
        });
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup-triton-client.sh",
        python.display()
    );
    let client = Command::new(&python)
        .arg(
            bert_tests::workspace_root()
                .join("native/tests")
                .join(script),
        )
        .args(args)
        .output()
        .unwrap();
    assert!(
        client.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&client.stderr)
    );
    serde_json::from_slice(&client.stdout).unwrap()
}

/// The tokens `/embed` reports for `texts`, summed.
fn reply_tokens(port: u16, texts: &[String]) -> u64 {
    let body = json!({ "texts": texts }).to_string();
    let reply = http(
        port,
        "POST",
        "/v2/models/embedder/embed",
        &[],
        body.as_bytes(),
    )
    .json();
    reply["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum()
}
