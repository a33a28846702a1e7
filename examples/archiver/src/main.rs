//! The `archiver` binary: starts the archiver, reports ready, and runs it
//! until SIGTERM.

use std::process::ExitCode;

use archiver::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    bootstrap::service::main(
        "archiver",
        "cavlo archiver: keeps every room's full chat log in append-only files",
        archiver::readiness,
        |client, config: Config, shutdown, started, metrics| async move {
            let archiver = archiver::start(client, config.archiver, &metrics).await?;
            started.set();
            archiver.run(shutdown).await?;
            Ok::<_, archiver::RunError>(())
        },
    )
    .await
}
