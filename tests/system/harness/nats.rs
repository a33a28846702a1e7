//! A real nats-server with JetStream, in a container: plain, restartable
//! on the same port, or with compose's per-service users.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use bootstrap::config::Secret;
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

use super::http::get_json;
use super::link::Link;

/// Services' request timeout in tests: short, so "unavailable" paths finish fast.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

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
pub const NATS_USERS: [(&str, &str); 5] = [
    ("gateway", "gatewaytestpass"),
    ("moderator", "moderatortestpass"),
    ("history", "historytestpass"),
    ("archiver", "archivertestpass"),
    ("media", "mediatestpass"),
];

/// The in-container port of the NATS monitoring endpoint.
const MONITOR_PORT: u16 = 8222;

/// What every room's delivery subject starts with (see `subject::room_deliveries`).
const ROOM_DELIVERY_PREFIX: &str = "cavlo.deliver.";

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

/// A port free on this host's loopback now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}
