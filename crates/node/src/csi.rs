//! Generated CSI v1 types and services (proto/csi.proto, spec v1.12, Identity and Node only).
#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

tonic::include_proto!("csi.v1");
