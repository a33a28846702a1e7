//! The `gateway` binary: runs [`gateway::run`] until SIGTERM.

use std::process::ExitCode;

use gateway::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    bootstrap::service::main(
        "gateway",
        "cavlo gateway: the WebSocket endpoint browsers connect to",
        gateway::readiness,
        |client, config: Config, shutdown| async move {
            let listener = tokio::net::TcpListener::bind(config.gateway.listen).await?;
            gateway::run(listener, client, config.gateway, shutdown).await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        },
    )
    .await
}
