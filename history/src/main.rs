//! The `history` binary: starts history, reports ready, and runs it until
//! SIGTERM.

use std::process::ExitCode;

use history::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    bootstrap::service::main(
        "history",
        "cavlo history: owns the chat stream and answers backlog queries",
        history::readiness,
        |client, config: Config, shutdown, started, metrics| async move {
            let history = history::start(client, config.history, &metrics).await?;
            started.set();
            history.run(shutdown).await;
            Ok::<_, history::RunError>(())
        },
    )
    .await
}
