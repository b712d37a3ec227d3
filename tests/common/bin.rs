//! The `glowd` binary that cargo built for these tests.
use std::process::Command;

/// A `Command` for the `glowd` under test (`CARGO_BIN_EXE_glowd`), with nothing set: callers add the arguments,
/// environment and stdio they need.
pub fn glowd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_glowd"))
}
