//! The `moderator` binary: runs [`moderator::run`] until SIGTERM.

use std::process::ExitCode;

use moderator::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    bootstrap::service::main(
        "moderator",
        "cavlo moderator: checks, rate-limits and sanitizes client events and stores chat",
        moderator::readiness,
        |client, config: Config, shutdown| moderator::run(client, config.moderator, shutdown),
    )
    .await
}
