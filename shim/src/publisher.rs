//! Events to containerd over ttrpc (`TTRPC_ADDRESS`). One task drains one queue in order and retries
//! a failed event in place, so a reconnect can delay events but never reorder them (the crate's
//! publisher requeues at the back, which can put TaskExit before TaskStart).

use std::time::Duration;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{MessageField, MessageFull};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::ttrpc::context;
use tokio::sync::{mpsc, oneshot};

enum Item {
    Event(ForwardRequest),
    Flush(oneshot::Sender<()>),
}

/// Handle for queueing events.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Item>,
    namespace: String,
}

const ATTEMPTS: u32 = 5;

impl Publisher {
    /// Starts the publishing task. With no address, events are dropped (used by tests of `delete`).
    pub fn start(address: Option<String>, namespace: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
        tokio::spawn(async move {
            let mut client: Option<EventsClient> = None;
            while let Some(item) = rx.recv().await {
                let req = match item {
                    Item::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                    Item::Event(req) => req,
                };
                let Some(addr) = address.as_deref() else {
                    continue;
                };
                for attempt in 0..ATTEMPTS {
                    if client.is_none() {
                        let target = if addr.contains("://") {
                            addr.to_string()
                        } else {
                            format!("unix://{addr}")
                        };
                        match Client::connect(&target).await {
                            Ok(c) => client = Some(EventsClient::new(c)),
                            Err(e) => {
                                tracing::warn!("connecting to containerd events at {addr}: {e}")
                            }
                        }
                    }
                    if let Some(c) = &client {
                        match c.forward(context::with_timeout(5_000_000_000), &req).await {
                            Ok(_) => break,
                            Err(e) => {
                                tracing::warn!("publishing {}: {e}", req.envelope.topic);
                                client = None;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        });
        Self { tx, namespace }
    }

    /// Queues an event.
    pub fn publish<M: MessageFull>(&self, topic: &str, event: &M) {
        let mut any = Any::new();
        any.type_url = M::descriptor().full_name().to_string();
        any.value = event.write_to_bytes().unwrap_or_default();
        let mut env = Envelope::new();
        env.timestamp = MessageField::some(now());
        env.namespace = self.namespace.clone();
        env.topic = topic.to_string();
        env.event = MessageField::some(any);
        let mut req = ForwardRequest::new();
        req.envelope = MessageField::some(env);
        tracing::debug!(topic, "event");
        let _ = self.tx.send(Item::Event(req));
    }

    /// Waits until everything queued so far was sent (or given up on), at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Item::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
    }
}

/// The current time as a protobuf timestamp.
pub fn now() -> containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}
