//! The `moderator` binary: starts a moderator, reports ready, and runs it
//! until SIGTERM.

use std::process::ExitCode;

use moderator::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    bootstrap::service::main(
        "moderator",
        "cavlo moderator: checks, rate-limits and sanitizes client events and stores chat",
        moderator::readiness,
        |client, config: Config, shutdown, started, metrics| async move {
            let moderator = moderator::start(client, config.moderator, &metrics).await?;
            started.set();
            moderator.run(shutdown).await;
            Ok::<_, moderator::RunError>(())
        },
    )
    .await
}
