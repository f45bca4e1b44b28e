//! One module per subcommand.

pub mod convert;
pub mod encode;
pub mod info;
pub mod tokenize;
