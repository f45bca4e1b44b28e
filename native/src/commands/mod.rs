//! One module per subcommand.

pub mod convert;
pub mod embed;
pub mod encode;
pub mod info;
pub mod tokenize;
