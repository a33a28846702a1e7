//! `loadgen`: speaks the cavlo protocol over real WebSockets against running
//! gateways, through `cavlo_client`. Bounded in time and count, and meant
//! for loopback only.
//!
//! * `smoke`: an end-to-end check through each gateway ([`smoke`]).
//! * `fanout`: rooms of clients sending chat; throughput, latency and
//!   correctness ([`fanout`], accounting in [`ledger`] and [`latency`]).
//! * `connections`: many idle connections; what they cost ([`connections`]).
//! * `token`: a development token, signed as loadgen signs its users'.
//!
//! [`connect`] is how each of them connects, and to what.

mod connect;
mod connections;
mod fanout;
mod latency;
mod ledger;
mod smoke;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};

/// Drive a running cavlo system over real WebSockets (loopback only).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// HS256 secret the gateways accept, to sign test users' tokens.
    /// Required; given before or after the command.
    #[arg(
        long,
        env = "CAVLO_GATEWAY__AUTH__HS256_SECRET",
        hide_env_values = true,
        global = true
    )]
    secret: Option<String>,
    /// Print the report as JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
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
    /// Rooms of clients all sending chat; fails if anything is lost,
    /// duplicated or reordered.
    Fanout(FanoutArgs),
    /// Many idle authenticated connections to one gateway.
    Connections(ConnectionsArgs),
    /// Print an HS256 token for user NAME (also its display name), valid
    /// for an hour, signed with --secret: for development and scripts.
    Token {
        /// The user's id and display name.
        name: String,
    },
}

#[derive(Args)]
struct FanoutArgs {
    /// Gateway WebSocket URLs; clients are spread over them.
    #[arg(long = "gateway", required = true)]
    gateways: Vec<String>,
    /// Number of rooms.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Clients per room.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Total chat messages per second; 0 sends as fast as acks allow.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Seconds of sending (at most 600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    duration: u64,
    /// Seconds to keep receiving after sending stops.
    #[arg(long, default_value_t = 2)]
    drain: u64,
    /// Ride out faults as a real client does: reconnect to the next
    /// gateway, rejoin with `since`, resend what was not acked, retry
    /// `unavailable`.
    #[arg(long)]
    resume: bool,
    /// The share of sent messages that must be acked for the run to
    /// pass. Without `--resume` a refused message is not resent, so a
    /// run meant to overload cavlo can lower this.
    #[arg(long, default_value_t = 1.0)]
    min_acked: f64,
    /// Rooms with a slow consumer: their first client stops reading for
    /// `--slow-pause` seconds, 5 s into sending, with a small receive
    /// buffer. The run fails unless the gateway closes each with 4100
    /// and no other connection (needs `--resume`).
    #[arg(long, default_value_t = 0, requires = "resume")]
    slow: usize,
    /// Seconds a slow consumer stops reading: long enough for the
    /// gateway's write timeout (10 s by default) to pass after its
    /// socket buffers filled, short enough to read the close frame
    /// within the same timeout after that.
    #[arg(long, default_value_t = 20)]
    slow_pause: u64,
    /// Where slow consumers connect first instead: a gateway container's
    /// own address on a private Docker network (ws://172.x.y.z:8080/ws),
    /// since Docker's port proxy buffers what they do not read. Later
    /// reconnects use the `--gateway`s.
    #[arg(long, requires = "slow")]
    slow_gateway: Option<String>,
    /// With `--resume`, seconds a message may go unanswered before the
    /// client takes its connection for dead and reconnects, as the SDK
    /// does. 0 never does: the gateway must close a connection it cannot
    /// serve, and a client's own timer would hide one that fails to.
    #[arg(long, default_value_t = 8)]
    silence_timeout: u64,
}

#[derive(Args)]
struct ConnectionsArgs {
    /// The gateway's WebSocket URL.
    #[arg(long)]
    gateway: String,
    /// Connections to open (at most 200 000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    count: u64,
    /// Connections opened per second at most.
    #[arg(long, default_value_t = 2000.0)]
    ramp: f64,
    /// Source addresses 127.0.0.1..=127.0.0.N, each with its own ephemeral ports.
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Seconds to hold the connections open (at most 600).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    hold: u64,
    /// The gateway's process id, to report its memory per connection.
    #[arg(long)]
    gateway_pid: Option<u32>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Clap cannot require a global option itself.
    let Some(secret) = cli.secret else {
        Cli::command()
            .error(
                ErrorKind::MissingRequiredArgument,
                "the following required arguments were not provided:\n  --secret <SECRET>",
            )
            .exit()
    };
    let secret = secret.into_bytes();
    match cli.command {
        Command::Smoke {
            gateways,
            nats_url,
            nats_user,
            nats_password,
        } => smoke(&secret, &gateways, nats_url, nats_user, nats_password).await,
        Command::Fanout(args) => fanout(&secret, cli.json, args).await,
        Command::Connections(args) => connections(&secret, cli.json, args).await,
        Command::Token { name } => {
            println!("{}", connect::token(&secret, &name));
            ExitCode::SUCCESS
        }
    }
}

async fn smoke(
    secret: &[u8],
    gateways: &[String],
    nats_url: Option<String>,
    nats_user: String,
    nats_password: Option<String>,
) -> ExitCode {
    // Asked for and impossible is a failure, not a check skipped.
    let nats = match (nats_url, nats_password) {
        (Some(url), Some(password)) => Some(smoke::GatewayNats {
            url,
            user: nats_user,
            password,
        }),
        (Some(_), None) => {
            eprintln!(
                "smoke: FAILED: --nats-url needs the gateway user's password \
                 (--nats-password or CAVLO_NATS_GATEWAY_PASSWORD)"
            );
            return ExitCode::FAILURE;
        }
        (None, _) => None,
    };
    match smoke::run(gateways, secret, nats).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("smoke: FAILED at {err}");
            ExitCode::FAILURE
        }
    }
}

async fn fanout(secret: &[u8], json: bool, args: FanoutArgs) -> ExitCode {
    let plan = fanout::Plan {
        gateways: args.gateways,
        rooms: args.rooms,
        clients_per_room: args.clients,
        rate: args.rate,
        size: args.size,
        duration: Duration::from_secs(args.duration),
        drain: Duration::from_secs(args.drain),
        resume: args.resume,
        slow: args.slow.min(args.rooms),
        slow_pause: Duration::from_secs(args.slow_pause),
        slow_gateway: args.slow_gateway,
        silence_timeout: (args.silence_timeout > 0)
            .then(|| Duration::from_secs(args.silence_timeout)),
    };
    let progress = Arc::new(fanout::Progress::default());
    let ticker = tokio::spawn(show_progress(progress.clone(), |p: &fanout::Progress| {
        format!(
            "sent {} acked {} delivered {}",
            p.sent.load(Ordering::Relaxed),
            p.acked.load(Ordering::Relaxed),
            p.delivered.load(Ordering::Relaxed)
        )
    }));
    let result = fanout::run(&plan, secret, progress).await;
    ticker.abort();
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            eprintln!("fanout: {err}");
            return ExitCode::FAILURE;
        }
    };
    print_report(json, &report);
    match report.verdict(&plan, args.min_acked) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("fanout: failed: {failure}");
            ExitCode::FAILURE
        }
    }
}

async fn connections(secret: &[u8], json: bool, args: ConnectionsArgs) -> ExitCode {
    let plan = connections::Plan {
        gateway: args.gateway,
        count: args.count as usize,
        ramp: args.ramp,
        sources: args.sources,
        hold: Duration::from_secs(args.hold),
        gateway_pid: args.gateway_pid,
    };
    let progress = Arc::new(connections::Progress::default());
    let ticker = tokio::spawn(show_progress(
        progress.clone(),
        |p: &connections::Progress| {
            format!(
                "opened {} failed {}",
                p.opened.load(Ordering::Relaxed),
                p.failed.load(Ordering::Relaxed)
            )
        },
    ));
    let report = connections::run(&plan, secret, progress).await;
    ticker.abort();
    print_report(json, &report);
    if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints a progress line to stderr every second.
async fn show_progress<P>(progress: Arc<P>, line: impl Fn(&P) -> String) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        eprint!("\r{}   ", line(&progress));
    }
}

/// Ends the progress line, then prints the report to stdout: as JSON, or
/// as text.
fn print_report<R: serde::Serialize + std::fmt::Display>(json: bool, report: &R) {
    eprintln!();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("reports serialize")
        );
    } else {
        println!("{report}");
    }
}
