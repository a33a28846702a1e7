//! End-to-end behaviour of a whole cavlo system against a real NATS.

mod auth;
mod chat;
mod failure;
mod harness;
mod moderation;
mod protocol;
