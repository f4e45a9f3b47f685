//! Exit statuses, the same for every subcommand (README, "Exit statuses").

/// A runtime failure: `run` lost something it needs, `status` reached no
/// broker or heard nothing in time.
pub const FAILURE: u8 = 1;
/// Bad usage (clap's usage errors exit with this too), config or model.
pub const BAD_INPUT: u8 = 2;
/// No runtime library could be loaded.
pub const NO_RUNTIME: u8 = 3;
