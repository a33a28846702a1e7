//! `loadgen`: speaks the cavlo protocol against running gateways.
//!
//! * `smoke`: an end-to-end check through each gateway; exits non-zero on
//!   the first failed step.

mod client;
mod smoke;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Drive a running cavlo system over real WebSockets (loopback only).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// HS256 secret the gateways accept, to sign test users' tokens.
    #[arg(
        long,
        env = "CAVLO_GATEWAY__AUTH__HS256_SECRET",
        hide_env_values = true
    )]
    secret: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check chat, presence, signaling and history through every gateway.
    Smoke {
        /// Gateway WebSocket URLs, e.g. ws://127.0.0.1:8080/ws (repeat for each).
        #[arg(long = "gateway", required = true)]
        gateways: Vec<String>,
        /// NATS URL; with the gateway user's password, also checks that NATS
        /// refuses a gateway publishing to a room directly.
        #[arg(long)]
        nats_url: Option<String>,
        /// The gateways' NATS user.
        #[arg(long, default_value = "gateway")]
        nats_user: String,
        /// The gateways' NATS password.
        #[arg(long, env = "CAVLO_NATS_GATEWAY_PASSWORD", hide_env_values = true)]
        nats_password: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let minter = token::Minter::new(&cli.secret);
    let result = match cli.command {
        Command::Smoke {
            gateways,
            nats_url,
            nats_user,
            nats_password,
        } => {
            let nats = nats_url
                .zip(nats_password)
                .map(|(url, password)| smoke::GatewayNats {
                    url,
                    user: nats_user,
                    password,
                });
            smoke::run(&gateways, &minter, nats).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("smoke: FAILED at {err}");
            ExitCode::FAILURE
        }
    }
}
