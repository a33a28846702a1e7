//! The `gateway` binary: binds the listener and runs [`gateway::run`] until SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use gateway::config::Config;

/// cavlo gateway: the WebSocket endpoint browsers connect to.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    common: bootstrap::Cli,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    bootstrap::service::main(
        cli.common.config.as_deref(),
        "cavlo-gateway",
        |client, config: Config, shutdown| async move {
            let listener = tokio::net::TcpListener::bind(config.gateway.listen).await?;
            gateway::run(listener, client, config.gateway, shutdown).await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        },
    )
    .await
}
