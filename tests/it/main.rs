//! Integration tests: the real broker binary on loopback ports with a temp sled dir, mock
//! backends from `fixtures/mockllm`, real HTTP clients. One test binary (link time).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod docs;
mod gateway;
mod harness;
mod health;
mod ops;
mod persistence;
mod push;
mod resume;
mod security;
mod sessions;
mod startup;
mod wsclient;
