//! # bert-core
//!
//! A backend-generic BERT (the model of NVIDIA's "BERT for PyTorch" recipe) on [burn]: the
//! encoder and its task heads, Hugging Face / NVIDIA checkpoints in and out, and WordPiece
//! tokenization. It has no native-only dependency and builds for `wasm32-unknown-unknown`.
//!
//! Encode a sentence with a freshly initialised (tiny) model on the CPU backend:
//!
//! ```
//! use bert_core::model::BertModel;
//! use bert_core::tokenizer::BertTokenizer;
//! use bert_core::BertConfig;
//! use burn::backend::NdArray;
//!
//! let vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\n";
//! let tokenizer = BertTokenizer::from_vocab(vocab, true)?;
//! let config = BertConfig {
//!     vocab_size: tokenizer.vocab_size(),
//!     hidden_size: 32,
//!     num_hidden_layers: 2,
//!     num_attention_heads: 4,
//!     intermediate_size: 64,
//!     ..BertConfig::base()
//! };
//! let device = Default::default();
//! let model = BertModel::<NdArray>::new(&config, true, &device);
//!
//! let encoding = tokenizer.encode("Hello world", None, None)?;
//! let input = tokenizer.batch(&[encoding], None).to_input(&config, &device)?;
//! let output = model.forward(input);
//! assert_eq!(output.sequence_output.dims(), [1, 4, 32]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Sentence embeddings of a sentence-transformers folder (all-MiniLM-L6-v2, say), the vectors
//! sentence-transformers' `encode` gives, in five lines ([`pipelines`]):
//!
//! ```no_run
//! use bert_core::pipelines::SentenceEmbeddings;
//! use burn::backend::flex::{Flex, FlexDevice};
//!
//! let model = SentenceEmbeddings::<Flex>::from_folder("all-MiniLM-L6-v2", &FlexDevice)?;
//! let vectors = model.embed(&["A man is eating food.", "A man is eating pasta."])?.vectors;
//! let cosine: f32 = vectors[0].iter().zip(&vectors[1]).map(|(a, b)| a * b).sum();
//! # Ok::<(), bert_core::error::PipelineError>(())
//! ```
//!
//! The other pipelines read as briefly: [`pipelines::QuestionAnswering`] (`answer(question,
//! context)`), [`pipelines::SequenceClassification`] (`classify(&texts)`, classes named by
//! `id2label`) and [`pipelines::FillMask`]:
//!
//! ```no_run
//! use bert_core::pipelines::FillMask;
//! use burn::backend::flex::{Flex, FlexDevice};
//!
//! let model = FillMask::<Flex>::from_folder("bert-base-uncased", &FlexDevice)?;
//! let best = &model.fill(&["Paris is the [MASK] of France."])?.fillers[0][0][0];
//! println!("{} ({:.2})", best.sequence, best.score);
//! # Ok::<(), bert_core::error::PipelineError>(())
//! ```
//!
//! Each pipeline also loads from files already in memory (`from_bytes` with a
//! [`pretrained::ModelBytes`]: what a browser downloads), and `QuestionAnswering::from_model` wraps
//! a model loaded any other way.
//!
//! A real checkpoint is loaded with [`pretrained::ModelFiles`] and [`pretrained::load_model`], or
//! with [`checkpoint::Checkpoint`] into any of the [`model`] types.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distributed;
pub mod error;
pub mod finetune;
pub mod glue;
pub mod io;
pub mod model;
pub mod optim;
pub mod pipelines;
pub mod pretrained;
pub mod pretraining;
pub mod squad;
pub mod tokenizer;
pub mod train;

pub use config::BertConfig;
