//! Pretraining data, the logic of `bertPrep.py` and `create_pretraining_data.py`: text cleaning and
//! sentence segmentation ([`text`]), shard planning ([`sharding`]), masked-LM / next-sentence
//! instance creation ([`instances`]), the NVIDIA shard layout with its validation ([`shard`]) and
//! the order in which training reads shards ([`reader`]).
//! Reading and writing files (HDF5, XML dumps) is the job of the binaries.

pub mod instances;
pub mod reader;
pub mod rng;
pub mod shard;
pub mod sharding;
pub mod synthetic;
pub mod text;

pub use instances::{
    create_training_instances, Document, InstanceConfig, TrainingInstance, VocabInfo,
};
pub use reader::{DataPosition, SampleOrder};
pub use rng::{PrepRng, RngState};
pub use shard::ShardArrays;
pub use sharding::{plan_shards, ShardId, ShardingError};
