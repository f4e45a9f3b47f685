//! Signed remote model updates (issue 15): manifests and chunks over MQTT,
//! verified, staged in `state_dir/models/{name}/`, swapped in, watched on
//! probation and rolled back on trouble.

// Not wired into the daemon yet: the updates agent (the lead's branch)
// is the user of these.
#![allow(dead_code)]

pub mod download;
pub mod probation;
pub mod store;
