//! End-to-end behaviour of a whole cavlo system against a real NATS.

mod archiving;
mod auth;
mod chat;
mod cluster;
mod discovery;
mod env_example;
mod failure;
mod harness;
mod hub;
mod media;
mod metrics;
mod moderation;
mod ordering;
mod permissions;
mod presence;
mod protocol;
mod rust_client;
mod signaling;
