//! Integration tests: the real broker binary on loopback ports with a temp sled dir, mock
//! backends from `fixtures/mockllm`, real HTTP clients. One test binary (link time).
// Test helpers may stop a test with a panic and print what they saw.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod admin;
mod backup;
mod cloud;
mod deploy;
mod docs;
mod fields;
mod gateway;
mod harness;
mod health;
mod limits;
mod ops;
mod persistence;
mod promtool;
mod push;
mod reconnect;
mod resume;
mod routing;
mod security;
mod sessions;
mod startup;
mod storage;
mod threads;
mod wsclient;
mod wsconn;
