//! The `history` binary: runs [`history::run`] until SIGTERM.

use std::process::ExitCode;

use history::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    bootstrap::service::main(
        "history",
        "cavlo history: owns the chat stream and answers backlog queries",
        history::readiness,
        |client, config: Config, shutdown| history::run(client, config.history, shutdown),
    )
    .await
}
