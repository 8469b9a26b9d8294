//! The fedseg coordinator: schedules jobs of stages over sites, aggregates their model
//! updates and keeps the record of everything in sled. It never sees an image, and it does
//! not depend on burn: models are named f32 tensors in safetensors files.

pub mod admin;
pub mod blobs;
pub mod config;
pub mod early;
pub mod engine;
pub mod held;
pub mod http;
pub mod pki;
pub mod plan;
pub mod records;
pub mod report;
pub mod server;
pub mod service;
pub mod simulate;
pub mod store;
pub mod strategy;
pub mod tensors;
pub mod tls;
pub mod update_check;
