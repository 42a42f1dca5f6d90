//! Identities the monitor keys its state on: the shared vocabulary of `rds_types`.

pub use rds_types::{MountKey, StormKey, VolumeId};
