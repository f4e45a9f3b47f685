//! Remote model updates (`[updates]`): signed manifests and chunks over
//! MQTT, staged in the state dir, validated, swapped in through the reload
//! path, watched on probation and rolled back on trouble.

#![allow(dead_code)]

pub mod manifest;
pub mod verify;
