//! cavlo's wire formats, in one place.
//!
//! Every service speaks through these types, so a frame, an event or a subject
//! is defined exactly once:
//!
//! * [`client`]: the JSON protocol between browsers and gateways
//!   ([`ClientFrame`](client::ClientFrame) in, [`ServerFrame`](client::ServerFrame) out).
//! * [`event`]: internal events between services, encoded as MessagePack.
//! * [`call`]: the events between gateways and media nodes that place a
//!   room's call and join connections to it (MessagePack too).
//! * [`subject`]: every NATS subject, with who publishes and who listens.
//! * [`code`]: error codes and WebSocket close codes a client can see.
//! * [`id`]: the newtype ids (`RoomId`, `ConnId`, `Seq`, …).
//! * [`text`]: which characters of user text may reach other users.
//! * [`token`]: the claims of a client's JWT, and HS256 signing.
//! * [`time`]: wall-clock time as the wire carries it.

pub mod call;
pub mod client;
pub mod code;
pub mod event;
pub mod id;
pub mod subject;
pub mod text;
pub mod time;
pub mod token;
