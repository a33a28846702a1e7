//! Starts a whole cavlo system for a test: a real nats-server with JetStream
//! in a container, and history, moderators and gateways in-process, each
//! with its own NATS connection as if it were its own process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bootstrap::config::Secret;
use bootstrap::metrics::Metrics;
use futures_util::{SinkExt, StreamExt};
use gateway::config::GatewayConfig;
use history::config::HistoryConfig;
use jsonwebtoken::{EncodingKey, Header};
use moderator::config::ModeratorConfig;
use schemas::client::{ChatMessage, ClientFrame, ErrorFrame, IceServers, ServerFrame, SignalKind};
use schemas::code::ErrorCode;
use schemas::event::RoomState;
use schemas::id::{ConnId, RoomId, Seq};
use schemas::subject;
use serde_json::{Value, json};
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::link::Link;

/// Names the NATS image to test against; unset, the local image is used.
pub const NATS_IMAGE_VAR: &str = "CAVLO_TEST_NATS_IMAGE";

/// The NATS image: `CAVLO_TEST_NATS_IMAGE`, or else the one
/// `scripts/nats-image.sh` builds from the PyPI wheel (or finds already
/// built), so a plain `cargo test` needs no registry.
fn nats_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Ok(image) = std::env::var(NATS_IMAGE_VAR) {
            return image;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/nats-image.sh");
        let output = std::process::Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("bash runs");
        assert!(
            output.status.success(),
            "{} failed; set {NATS_IMAGE_VAR} to use another image",
            script.display()
        );
        String::from_utf8(output.stdout)
            .expect("an image name is text")
            .trim()
            .to_owned()
    })
}

/// HS256 secret the test gateways accept.
pub const SECRET: &str = "test-secret-not-for-production";

/// How long a test waits for an expected frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a socket must stay silent before what it received is taken as
/// all there is.
pub const QUIET: Duration = Duration::from_millis(500);

/// Services' request timeout in tests: short, so "unavailable" paths finish fast.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The path of a service binary (`gateway`, `moderator`, `history`) of this
/// workspace, for tests that kill or stop a real process. Cargo builds a
/// package's binaries only for that package's own integration tests, so the
/// first call builds them, with the profile this test was built with.
pub fn service_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // The test binary sits in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("the test binary has a path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary sits in <target>/<profile>/deps")
            .to_owned();
        let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--bins", "--profile", &profile])
            .args(["-p", "gateway", "-p", "moderator", "-p", "history"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the service binaries failed");
        profile_dir
    });
    dir.join(name)
}

/// A `signal` frame; the server fills in who sent it.
pub fn signal(room: &RoomId, to: &ConnId, kind: SignalKind, data: Value) -> ClientFrame {
    ClientFrame::Signal {
        room: room.clone(),
        to: to.clone(),
        kind,
        data,
        from: None,
        user: None,
    }
}

/// What an `ack` says.
#[derive(Debug, PartialEq)]
pub struct Ack {
    pub seq: Option<Seq>,
    /// The stored text, present when sanitizing changed it.
    pub text: Option<String>,
}

/// A nats-server container.
pub struct Nats {
    pub container: ContainerAsync<GenericImage>,
    pub url: String,
    /// Its client port on this host, for a [`Link`] to forward to.
    pub addr: SocketAddr,
    /// The HTTP monitoring endpoint (`/subsz`, `/connz`, …).
    pub monitor: SocketAddr,
    /// Whether it runs compose's configuration, with one user per service.
    pub with_users: bool,
    /// Whether its client port on this host is fixed, so that it can be
    /// stopped and started again with its clients finding it.
    restartable: bool,
}

/// The users of `docker/nats/nats.conf`, with the passwords the tests give
/// them (compose's come from `.env`).
pub const NATS_USERS: [(&str, &str); 4] = [
    ("gateway", "gatewaytestpass"),
    ("moderator", "moderatortestpass"),
    ("history", "historytestpass"),
    ("archiver", "archivertestpass"),
];

/// The in-container port of the NATS monitoring endpoint.
const MONITOR_PORT: u16 = 8222;

/// What every room's delivery subject starts with (see `subject::room_deliveries`).
const ROOM_DELIVERY_PREFIX: &str = "cavlo.deliver.";

/// How long [`System::finish`] waits for everything to be released.
const LEAK_TIMEOUT: Duration = Duration::from_secs(10);

impl Nats {
    pub async fn start() -> Nats {
        Self::launch(false, false).await
    }

    /// NATS whose client port on this host is fixed, so that it can be
    /// stopped and started again ([`Nats::stop`], [`Nats::start_again`]).
    pub async fn start_restartable() -> Nats {
        Self::launch(false, true).await
    }

    /// NATS as compose runs it (`docker/nats/nats.conf`): every service has
    /// its own user, allowed only what that service needs.
    pub async fn start_with_users() -> Nats {
        Self::launch(true, false).await
    }

    async fn launch(with_users: bool, restartable: bool) -> Nats {
        let image = nats_image();
        let (name, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
        let request = GenericImage::new(name, tag)
            .with_exposed_port(ContainerPort::Tcp(4222))
            .with_exposed_port(ContainerPort::Tcp(MONITOR_PORT))
            .with_wait_for(WaitFor::message_on_stderr("Server is ready"));
        // Docker maps random host ports at every start; the services keep
        // the URL they were given, so a restartable server keeps its ports.
        let request = if restartable {
            request
                .with_mapped_port(free_port(), ContainerPort::Tcp(4222))
                .with_mapped_port(free_port(), ContainerPort::Tcp(MONITOR_PORT))
        } else {
            ContainerRequest::from(request)
        };
        let request = if with_users {
            let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker/nats/nats.conf");
            let mut request = request
                .with_mount(testcontainers::core::Mount::bind_mount(
                    conf.canonicalize()
                        .expect("docker/nats/nats.conf exists")
                        .display()
                        .to_string(),
                    "/etc/nats/nats.conf",
                ))
                .with_env_var("CAVLO_NATS_SYNC_INTERVAL", "2m")
                // nats.conf names the server after $HOSTNAME; Docker's random
                // one (hex digits) can parse as a number and fail the file.
                .with_hostname("nats-test")
                .with_cmd(["-c", "/etc/nats/nats.conf"]);
            for (user, password) in NATS_USERS {
                let var = format!("CAVLO_NATS_{}_PASSWORD", user.to_uppercase());
                request = request.with_env_var(var, password);
            }
            request
        } else {
            request.with_cmd(["--jetstream", "--store_dir", "/data", "-m", "8222"])
        };
        let container = request.start().await.unwrap_or_else(|err| {
            panic!("cannot start NATS image {image} (set {NATS_IMAGE_VAR}): {err}")
        });
        let port = container
            .get_host_port_ipv4(4222)
            .await
            .expect("NATS port is mapped");
        let monitor = container
            .get_host_port_ipv4(MONITOR_PORT)
            .await
            .expect("NATS monitoring port is mapped");
        Nats {
            container,
            url: format!("nats://127.0.0.1:{port}"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            monitor: SocketAddr::from(([127, 0, 0, 1], monitor)),
            with_users,
            restartable,
        }
    }

    /// Stops the server as `docker stop` does: it shuts down and every
    /// client's connection drops. Its data stays for [`Nats::start_again`].
    pub async fn stop(&self) {
        self.container.stop().await.expect("stop NATS");
    }

    /// Starts a stopped server again on the same data and client port, and
    /// waits until its JetStream answers.
    pub async fn start_again(&self) {
        assert!(self.restartable, "start NATS with `restartable` first");
        self.container.start().await.expect("start NATS");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = async {
                let client = async_nats::connect(&self.url).await.ok()?;
                async_nats::jetstream::new(client)
                    .query_account()
                    .await
                    .ok()
            };
            if tokio::time::timeout(Duration::from_secs(2), ready)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "NATS did not come back within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many subscriptions the server has on exactly `subject`.
    pub async fn subscribers_of(&self, subject: &str) -> usize {
        let subsz = get_json(self.monitor, "/subsz?subs=1&limit=100000").await;
        subsz["subscriptions_list"]
            .as_array()
            .map(|subs| subs.iter().filter(|sub| sub["subject"] == subject).count())
            .unwrap_or_default()
    }

    /// Subjects of the server's subscriptions that deliver a room
    /// (`cavlo.deliver.…`), from its monitoring endpoint.
    pub async fn room_subscriptions(&self) -> Vec<String> {
        let subsz = get_json(self.monitor, "/subsz?subs=1&limit=100000").await;
        let list = subsz["subscriptions_list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        list.iter()
            .filter_map(|sub| sub["subject"].as_str())
            .filter(|subject| subject.starts_with(ROOM_DELIVERY_PREFIX))
            .map(str::to_owned)
            .collect()
    }

    /// A connection for the test itself; with users, as the moderator,
    /// which may read the rooms bucket the leak check looks at.
    pub async fn connect(&self) -> async_nats::Client {
        self.connect_as(self.with_users.then_some("moderator"))
            .await
    }

    /// A connection as `user` of [`NATS_USERS`], or without a user.
    pub async fn connect_as(&self, user: Option<&str>) -> async_nats::Client {
        self.connect_to(&self.url, user).await
    }

    /// A connection as `user` through `link`, which the test can cut.
    pub async fn connect_via(&self, link: &Link, user: Option<&str>) -> async_nats::Client {
        self.connect_to(&link.url(), user).await
    }

    async fn connect_to(&self, url: &str, user: Option<&str>) -> async_nats::Client {
        let password = user.map(|user| {
            let (_, password) = NATS_USERS
                .iter()
                .find(|(name, _)| *name == user)
                .expect("a user of nats.conf");
            Secret((*password).to_owned())
        });
        let config = bootstrap::nats::NatsConfig {
            url: url.to_owned(),
            request_timeout: REQUEST_TIMEOUT,
            user: user.map(str::to_owned),
            password,
            ..Default::default()
        };
        bootstrap::nats::connect(&config, "cavlo-test")
            .await
            .expect("connect to NATS")
    }
}

/// What to start.
pub struct Options {
    pub gateways: usize,
    pub moderators: usize,
    /// Run NATS as compose does, each service as its own user.
    pub nats_users: bool,
    /// Let the test stop and start NATS again ([`Nats::stop`]).
    pub restartable_nats: bool,
    pub gateway: GatewayConfig,
    pub moderator: ModeratorConfig,
    pub history: HistoryConfig,
}

impl Default for Options {
    fn default() -> Self {
        let mut gateway = GatewayConfig::default();
        gateway.auth.hs256_secret = Some(Secret(SECRET.into()));
        // Short, so stopping a system with clients still connected does not
        // wait the default 10 s.
        gateway.drain_timeout = Duration::from_secs(1);
        Self {
            gateways: 2,
            moderators: 2,
            nats_users: false,
            restartable_nats: false,
            gateway,
            moderator: ModeratorConfig::default(),
            history: HistoryConfig::default(),
        }
    }
}

impl Options {
    /// One gateway, otherwise the defaults: the common test system.
    pub fn one_gateway() -> Self {
        Self {
            gateways: 1,
            ..Self::default()
        }
    }
}

/// A running system; dropping it stops the services and the container.
pub struct System {
    pub nats: Nats,
    pub gateways: Vec<SocketAddr>,
    /// Stops the gateways, which tell the moderators about closed connections.
    stop_gateways: CancellationToken,
    /// Each gateway's own stop (children of `stop_gateways`).
    gateway_stops: Vec<CancellationToken>,
    /// Each gateway's link to NATS, which [`System::cut_gateway`] cuts.
    gateway_links: Vec<Link>,
    gateway_tasks: Vec<JoinHandle<()>>,
    /// Stops moderators and history, after the gateways.
    stop_backend: CancellationToken,
    /// The moderators' tasks; [`System::kill_moderator`] aborts one.
    moderators: Vec<JoinHandle<()>>,
    moderator_config: ModeratorConfig,
    moderator_user: Option<&'static str>,
    /// History, apart from the other services so a test can stop and
    /// restart it: its own stop (a child of `stop_backend`) and task.
    history: Option<(CancellationToken, JoinHandle<()>)>,
    history_config: HistoryConfig,
    history_user: Option<&'static str>,
    /// Each gateway's metrics, in start order.
    pub gateway_metrics: Vec<Metrics>,
    /// Each moderator's metrics, in start order (killed ones included).
    pub moderator_metrics: Vec<Metrics>,
    /// The running history's metrics.
    pub history_metrics: Metrics,
}

impl System {
    pub async fn start(options: Options) -> System {
        // RUST_LOG=debug shows the services' logs for a failing test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let nats = match (options.nats_users, options.restartable_nats) {
            (true, _) => Nats::start_with_users().await,
            (false, true) => Nats::start_restartable().await,
            (false, false) => Nats::start().await,
        };
        let as_user = |user: &'static str| options.nats_users.then_some(user);
        let (stop_gateways, stop_backend) = (CancellationToken::new(), CancellationToken::new());
        let mut moderators = Vec::new();

        let history_user = as_user("history");
        let (history, history_metrics) =
            Self::spawn_history(&nats, history_user, &options.history, &stop_backend).await;
        let history = Some(history);
        let mut moderator_metrics = Vec::new();
        let moderator_user = as_user("moderator");
        for _ in 0..options.moderators {
            let (moderator, metrics) =
                Self::spawn_moderator(&nats, moderator_user, &options.moderator, &stop_backend)
                    .await;
            moderators.push(moderator);
            moderator_metrics.push(metrics);
        }
        let (mut gateways, mut gateway_tasks, mut gateway_stops, mut gateway_metrics) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut gateway_links = Vec::new();
        for _ in 0..options.gateways {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            gateways.push(listener.local_addr().unwrap());
            let stop = stop_gateways.child_token();
            gateway_stops.push(stop.clone());
            let link = Link::open(nats.addr).await;
            let (client, config) = (
                nats.connect_via(&link, as_user("gateway")).await,
                options.gateway.clone(),
            );
            gateway_links.push(link);
            let metrics = Metrics::new(&client);
            gateway_metrics.push(metrics.clone());
            gateway_tasks.push(tokio::spawn(async move {
                gateway::run(listener, client, config, metrics, stop.cancelled_owned())
                    .await
                    .expect("gateway runs");
            }));
        }
        System {
            nats,
            gateways,
            stop_gateways,
            gateway_stops,
            gateway_links,
            gateway_tasks,
            stop_backend,
            moderators,
            moderator_config: options.moderator,
            moderator_user,
            history,
            history_config: options.history,
            history_user,
            gateway_metrics,
            moderator_metrics,
            history_metrics,
        }
    }

    async fn spawn_moderator(
        nats: &Nats,
        user: Option<&str>,
        config: &ModeratorConfig,
        stop_backend: &CancellationToken,
    ) -> (JoinHandle<()>, Metrics) {
        let client = nats.connect_as(user).await;
        let metrics = Metrics::new(&client);
        let moderator = moderator::start(client, config.clone(), &metrics)
            .await
            .expect("moderator starts");
        let task = tokio::spawn(moderator.run(stop_backend.clone().cancelled_owned()));
        (task, metrics)
    }

    /// Starts stopping gateway `index`, as SIGTERM does: it drains, then
    /// closes what is left. Returns at once; [`System::finish`] and
    /// [`System::shutdown`] wait for it.
    pub fn stop_gateway(&self, index: usize) {
        self.gateway_stops[index].cancel();
    }

    /// Cuts gateway `index` off NATS until [`System::restore_gateway`]:
    /// its connection drops and everything published meanwhile misses it.
    pub fn cut_gateway(&self, index: usize) {
        self.gateway_links[index].cut();
    }

    /// Lets gateway `index` reconnect to NATS.
    pub fn restore_gateway(&self, index: usize) {
        self.gateway_links[index].restore();
    }

    /// Starts one more moderator; it answers requests when this returns.
    pub async fn start_moderator(&mut self) {
        let (moderator, metrics) = Self::spawn_moderator(
            &self.nats,
            self.moderator_user,
            &self.moderator_config,
            &self.stop_backend,
        )
        .await;
        self.moderators.push(moderator);
        self.moderator_metrics.push(metrics);
    }

    /// Kills moderator `index` (in start order), as a crash would: nothing
    /// it held is finished or handed over. Returns once NATS has dropped its
    /// subscriptions, as it does at once when a process dies.
    pub async fn kill_moderator(&mut self, index: usize) {
        let before = self.nats.subscribers_of(subject::MODERATE).await;
        let task = self.moderators.remove(index);
        task.abort();
        let _ = task.await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.nats.subscribers_of(subject::MODERATE).await >= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the killed moderator still subscribes after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn spawn_history(
        nats: &Nats,
        user: Option<&str>,
        config: &HistoryConfig,
        stop_backend: &CancellationToken,
    ) -> ((CancellationToken, JoinHandle<()>), Metrics) {
        let client = nats.connect_as(user).await;
        let metrics = Metrics::new(&client);
        let history = history::start(client, config.clone(), &metrics)
            .await
            .expect("history starts");
        let stop = stop_backend.child_token();
        let task = tokio::spawn(history.run(stop.clone().cancelled_owned()));
        ((stop, task), metrics)
    }

    /// Stops history alone, as a crash or a redeploy would.
    pub async fn stop_history(&mut self) {
        if let Some((stop, task)) = self.history.take() {
            stop.cancel();
            task.await.expect("history stops cleanly");
        }
    }

    /// Starts history again after [`System::stop_history`].
    pub async fn start_history(&mut self) {
        let (history, metrics) = Self::spawn_history(
            &self.nats,
            self.history_user,
            &self.history_config,
            &self.stop_backend,
        )
        .await;
        self.history = Some(history);
        self.history_metrics = metrics;
    }

    /// A system with one gateway and otherwise default settings.
    pub async fn one_gateway() -> System {
        System::start(Options::one_gateway()).await
    }

    /// Ends a scenario whose clients are closed or dropped: waits until
    /// nothing is left behind, then shuts down. Left behind would be a
    /// connection or room on a gateway (each connection is one task, so
    /// this counts tasks too), a room subscription in NATS, or a member in
    /// the rooms bucket. Fails naming what is left after `LEAK_TIMEOUT`;
    /// departures are asynchronous, hence the wait.
    pub async fn finish(self) {
        let deadline = tokio::time::Instant::now() + LEAK_TIMEOUT;
        let js = async_nats::jetstream::new(self.nats.connect().await);
        loop {
            let leaks = self.leaks(&js).await;
            if leaks.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "left behind after {LEAK_TIMEOUT:?}: {leaks:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.shutdown().await;
    }

    /// What is still held, as readable lines; empty when nothing is.
    async fn leaks(&self, js: &async_nats::jetstream::Context) -> Vec<String> {
        let mut leaks = Vec::new();
        let running = self
            .gateways
            .iter()
            .zip(&self.gateway_stops)
            .filter(|(_, stop)| !stop.is_cancelled());
        for (gateway, _) in running {
            let health = get_json(*gateway, "/health").await;
            for what in ["connections", "rooms"] {
                if health[what] != 0 {
                    leaks.push(format!("gateway {gateway}: {what} = {}", health[what]));
                }
            }
        }
        for subject in self.nats.room_subscriptions().await {
            leaks.push(format!("NATS subscription {subject}"));
        }
        if let Ok(rooms) = js.get_key_value(subject::ROOMS_BUCKET).await {
            // Listed from the stream's info rather than with `keys()`, which
            // makes a consumer: no service's NATS user may, and with users
            // the check runs as the moderator.
            let prefix = format!("$KV.{}.", subject::ROOMS_BUCKET);
            let mut subjects = rooms
                .stream
                .info_with_subjects(format!("{prefix}>"))
                .await
                .expect("list room keys");
            while let Some(subject) = subjects.next().await {
                let (subject, _) = subject.expect("room key");
                let key = subject.trim_start_matches(&prefix).to_owned();
                let Some(entry) = rooms.get(&key).await.expect("read room") else {
                    continue;
                };
                let state: RoomState = schemas::event::decode(&entry).expect("room state");
                if !state.members.is_empty() {
                    leaks.push(format!("room {key}: {} members", state.members.len()));
                }
            }
        }
        leaks
    }

    /// Stops the gateways, then the other services, and waits for them all.
    pub async fn shutdown(mut self) {
        self.stop_gateways.cancel();
        join_all(&mut self.gateway_tasks).await;
        self.stop_backend.cancel();
        join_all(&mut self.moderators).await;
        if let Some((_, task)) = self.history.take() {
            let _ = task.await;
        }
    }
}

async fn join_all(tasks: &mut Vec<JoinHandle<()>>) {
    for task in tasks.drain(..) {
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("service stops in time")
            .expect("service task did not panic");
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop_gateways.cancel();
        self.stop_backend.cancel();
    }
}

/// A signed HS256 token for `sub` with `claims` merged in.
pub fn token_with(sub: &str, claims: serde_json::Value) -> String {
    let mut body = json!({"sub": sub, "name": sub.to_uppercase(), "exp": now() + 3600});
    body.as_object_mut()
        .unwrap()
        .extend(claims.as_object().cloned().unwrap_or_default());
    jsonwebtoken::encode(
        &Header::default(),
        &body,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn token(sub: &str) -> String {
    token_with(sub, json!({}))
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A unique room name, so tests never see each other's messages.
pub fn room(label: &str) -> RoomId {
    RoomId(format!("{label}-{}", nuid::next()))
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A `joined` frame's contents.
#[derive(Debug)]
pub struct Joined {
    pub members: Vec<schemas::client::Member>,
    pub history: Vec<ChatMessage>,
    pub last_seq: Seq,
    pub truncated: bool,
}

/// A WebSocket client speaking the cavlo protocol.
pub struct Client {
    ws: Socket,
    pub conn_id: schemas::id::ConnId,
    /// Seconds until its token expires, as `welcome` said.
    pub expires_in: u64,
    /// The ICE servers `welcome` gave.
    pub ice: IceServers,
    /// Frames read while looking for another one, returned by `recv` first.
    pending: std::collections::VecDeque<ServerFrame>,
    /// Presence frames, kept apart so tests about other frames can ignore
    /// them; read with `next_presence`.
    presence: std::collections::VecDeque<ServerFrame>,
}

impl Client {
    /// Opens a socket without authenticating.
    pub async fn open(addr: SocketAddr) -> Socket {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("ws connects");
        ws
    }

    /// Connects and authenticates as `user`, with a socket receive buffer
    /// of `bytes`: a client that stops reading then fills the gateway's
    /// queue for it at once.
    pub async fn connect_with_receive_buffer(addr: SocketAddr, user: &str, bytes: u32) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("receive buffer");
        let stream = socket.connect(addr).await.expect("tcp connects");
        let (ws, _) = tokio_tungstenite::client_async(
            format!("ws://{addr}/ws"),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        )
        .await
        .expect("ws connects");
        Self::authenticate(Self::from_socket(ws), &token(user)).await
    }

    /// Connects and authenticates as `user`.
    pub async fn connect(addr: SocketAddr, user: &str) -> Client {
        Self::connect_with(addr, &token(user)).await
    }

    pub async fn connect_with(addr: SocketAddr, token: &str) -> Client {
        Self::authenticate(Self::from_socket(Self::open(addr).await), token).await
    }

    async fn authenticate(mut client: Client, token: &str) -> Client {
        client
            .send(&ClientFrame::Auth {
                token: token.into(),
            })
            .await;
        match client.recv().await {
            ServerFrame::Welcome {
                conn_id,
                expires_in,
                ice,
                ..
            } => {
                client.conn_id = conn_id;
                client.expires_in = expires_in;
                client.ice = ice;
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        client
    }

    pub fn from_socket(ws: Socket) -> Client {
        Client {
            ws,
            conn_id: "".into(),
            expires_in: 0,
            ice: IceServers::default(),
            pending: Default::default(),
            presence: Default::default(),
        }
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        self.send_raw(&serde_json::to_string(frame).unwrap()).await;
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_message(
        &mut self,
        message: Message,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(message).await
    }

    /// The next frame other than presence, failing the test after [`FRAME_TIMEOUT`].
    pub async fn recv(&mut self) -> ServerFrame {
        if let Some(frame) = self.pending.pop_front() {
            return frame;
        }
        loop {
            match self.read().await {
                frame @ ServerFrame::Presence { .. } => self.presence.push_back(frame),
                frame => return frame,
            }
        }
    }

    /// The next presence frame.
    pub async fn next_presence(&mut self) -> ServerFrame {
        loop {
            if let Some(frame) = self.presence.pop_front() {
                return frame;
            }
            let frame = self.read().await;
            match frame {
                ServerFrame::Presence { .. } => return frame,
                other => self.pending.push_back(other),
            }
        }
    }

    /// Presence frames not yet read, once the socket has been quiet for
    /// [`QUIET`]: a frame still on its way is counted, not missed.
    pub async fn unread_presence(&mut self) -> usize {
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(QUIET, self.ws.next()).await {
            if let Message::Text(text) = msg {
                match serde_json::from_str(&text).expect("server frames parse") {
                    frame @ ServerFrame::Presence { .. } => self.presence.push_back(frame),
                    frame => self.pending.push_back(frame),
                }
            }
        }
        self.presence.len()
    }

    /// The next frame off the socket.
    async fn read(&mut self) -> ServerFrame {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("socket closed while waiting for a frame")
                .expect("socket error while waiting for a frame");
            match msg {
                Message::Text(text) => {
                    return serde_json::from_str(&text).expect("server frames parse");
                }
                Message::Close(frame) => {
                    panic!("socket closed while waiting for a frame: {frame:?}")
                }
                _ => continue,
            }
        }
    }

    /// Reads for `duration`, as a browser tab does, answering the gateway's
    /// pings; frames that arrive are kept for later `recv`s.
    pub async fn read_for(&mut self, duration: Duration) {
        let until = tokio::time::Instant::now() + duration;
        while let Ok(Some(msg)) = tokio::time::timeout_at(until, self.ws.next()).await {
            if let Message::Text(text) = msg.expect("socket error while reading") {
                match serde_json::from_str(&text).expect("server frames parse") {
                    frame @ ServerFrame::Presence { .. } => self.presence.push_back(frame),
                    frame => self.pending.push_back(frame),
                }
            }
        }
    }

    /// Reads until the server closes the socket: the seqs of the chat frames
    /// still on their way, in order, and the close code.
    pub async fn chats_until_close(&mut self) -> (Vec<Seq>, u16) {
        let mut seqs = Vec::new();
        loop {
            match self.recv_or_close().await {
                Ok(ServerFrame::Chat(chat)) => seqs.push(chat.seq),
                Ok(_) => {}
                Err(code) => return (seqs, code),
            }
        }
    }

    /// Waits for the server to close the socket; returns the close code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
                Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
                Some(Ok(Message::Text(text))) => panic!("expected close, got {text}"),
                Some(Ok(_)) => continue,
                Some(Err(err)) => panic!("socket error instead of close: {err}"),
            }
        }
    }

    /// Joins and returns the `joined` frame's backlog, last seq and truncated flag.
    pub async fn join(
        &mut self,
        room: &RoomId,
        since: Option<Seq>,
    ) -> (Vec<ChatMessage>, Seq, bool) {
        match self.try_join(room, since).await {
            Ok(joined) => (joined.history, joined.last_seq, joined.truncated),
            Err(error) => panic!("expected joined {room}, got {error:?}"),
        }
    }

    /// Joins and returns the `joined` frame, or the error.
    pub async fn try_join(
        &mut self,
        room: &RoomId,
        since: Option<Seq>,
    ) -> Result<Joined, ErrorFrame> {
        self.send(&ClientFrame::Join {
            room: room.clone(),
            since,
            replaces: None,
        })
        .await;
        self.join_reply(room).await
    }

    /// Waits for the answer to a join already sent.
    pub async fn join_reply(&mut self, room: &RoomId) -> Result<Joined, ErrorFrame> {
        match self.recv().await {
            ServerFrame::Joined {
                room: joined,
                members,
                history,
                last_seq,
                truncated,
            } if joined == *room => Ok(Joined {
                members,
                history,
                last_seq,
                truncated,
            }),
            ServerFrame::Error(error) if error.room.as_ref() == Some(room) => Err(error),
            other => panic!("expected the answer to joining {room}, got {other:?}"),
        }
    }

    /// Sends a chat and waits for the reply to it (ack or error), collecting
    /// any chat deliveries that arrive first.
    pub async fn chat(
        &mut self,
        room: &RoomId,
        id: &str,
        text: &str,
    ) -> Result<Option<Seq>, ErrorFrame> {
        self.chat_acked(room, id, text).await.map(|ack| ack.seq)
    }

    /// Like [`Client::chat`], returning the whole ack.
    pub async fn chat_acked(
        &mut self,
        room: &RoomId,
        id: &str,
        text: &str,
    ) -> Result<Ack, ErrorFrame> {
        self.send(&ClientFrame::Chat {
            room: room.clone(),
            id: id.into(),
            text: text.into(),
        })
        .await;
        self.ack_of(id).await
    }

    /// Waits for the ack or error about client message `id`; deliveries that
    /// arrive first are kept for later `recv`s.
    async fn ack_of(&mut self, id: &str) -> Result<Ack, ErrorFrame> {
        let mut skipped = Vec::new();
        let reply = loop {
            match self.recv().await {
                ServerFrame::Ack {
                    id: acked,
                    seq,
                    text,
                    ..
                } if acked.as_str() == id => break Ok(Ack { seq, text }),
                ServerFrame::Error(error)
                    if error.id.as_ref().is_some_and(|e| e.as_str() == id) =>
                {
                    break Err(error);
                }
                other => skipped.push(other),
            }
        };
        for frame in skipped.into_iter().rev() {
            self.pending.push_front(frame);
        }
        reply
    }

    /// The next chat delivery, failing on any other frame.
    pub async fn next_chat(&mut self) -> ChatMessage {
        match self.recv().await {
            ServerFrame::Chat(chat) => chat,
            other => panic!("expected chat, got {other:?}"),
        }
    }

    /// The next error frame, failing on any other frame.
    pub async fn next_error(&mut self) -> ErrorFrame {
        match self.recv().await {
            ServerFrame::Error(error) => error,
            other => panic!("expected error, got {other:?}"),
        }
    }

    /// Checks the connection is still usable: ping gets pong.
    pub async fn assert_alive(&mut self) {
        self.send(&ClientFrame::Ping {}).await;
        assert_eq!(self.recv().await, ServerFrame::Pong);
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Asserts the error's code, naming the case on failure.
pub fn assert_code(error: &ErrorFrame, code: ErrorCode, case: &str) {
    assert_eq!(error.code, code, "{case}: {error:?}");
}

impl Client {
    /// The code of the server's close frame, read from the TCP stream
    /// without answering anything on the way: for a client that stopped
    /// answering pings (tungstenite would answer the queued pings, and that
    /// write hits the socket the server has closed).
    pub async fn close_code_unanswered(mut self) -> u16 {
        use tokio::io::AsyncReadExt;
        let MaybeTlsStream::Plain(tcp) = self.ws.get_mut() else {
            panic!("tests connect over plain TCP");
        };
        loop {
            let mut head = [0u8; 2];
            tokio::time::timeout(FRAME_TIMEOUT, tcp.read_exact(&mut head))
                .await
                .expect("timed out waiting for a frame")
                .expect("a frame header");
            let len = match head[1] & 0x7f {
                126 => {
                    let mut len = [0u8; 2];
                    tcp.read_exact(&mut len).await.expect("a length");
                    usize::from(u16::from_be_bytes(len))
                }
                127 => {
                    let mut len = [0u8; 8];
                    tcp.read_exact(&mut len).await.expect("a length");
                    usize::try_from(u64::from_be_bytes(len)).expect("a length that fits")
                }
                len => usize::from(len),
            };
            let mut payload = vec![0u8; len];
            tcp.read_exact(&mut payload).await.expect("a frame payload");
            // Opcode 8: close, its payload starting with the code.
            if head[0] & 0x0f == 8 {
                assert!(payload.len() >= 2, "a close frame without a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }

    /// The next frame, or the close code if the server closes first.
    pub async fn recv_or_close(&mut self) -> Result<ServerFrame, u16> {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("timed out");
            match msg {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text).expect("server frames parse"));
                }
                Some(Ok(Message::Close(Some(frame)))) => return Err(frame.code.into()),
                Some(Ok(_)) => continue,
                other => panic!("socket ended without a close code: {other:?}"),
            }
        }
    }
}

/// A port free on this host's loopback now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// GETs `path` from a gateway and parses the JSON body.
pub async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http(addr, "GET", path, "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a JSON body")
}

/// One HTTP/1.1 request to a gateway: (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // HTTP/1.0, so that no server answers with a chunked body.
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}
