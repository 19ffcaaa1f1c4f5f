//! containerd-shim-nvidia-v2: a containerd shim v2 over runc that injects NVIDIA GPUs as OCI spec
//! edits (through `gpu-core`) before `runc create`. The binary is a thin adapter: `start` and
//! `delete` are one-shot actions, serve mode runs the ttrpc task service.

#![warn(missing_docs)]

pub mod cgroup;
pub mod delegate;
pub mod delete;
pub mod errors;
pub mod gpu_stage;
pub mod io;
pub mod logging;
pub mod memory;
pub mod publisher;
pub mod reaper;
pub mod runc;
pub mod service;
pub mod settings;
pub mod start;
pub mod suspend;
pub mod task_api;
