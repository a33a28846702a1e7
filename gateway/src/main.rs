//! The `gateway` binary: runs [`gateway::run`] until SIGTERM.

use std::process::ExitCode;

use gateway::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    bootstrap::service::main(
        "gateway",
        "cavlo gateway: the WebSocket endpoint browsers connect to",
        gateway::readiness,
        // The gateway serves its own /ready on its port once it listens.
        |client, config: Config, shutdown, started: bootstrap::health::Started, metrics| async move {
            started.set();
            let listener = tokio::net::TcpListener::bind(config.gateway.listen).await?;
            gateway::run(listener, client, config.gateway, metrics, shutdown).await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        },
    )
    .await
}
