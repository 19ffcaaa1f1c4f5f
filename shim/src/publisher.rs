//! Events to containerd over ttrpc (`TTRPC_ADDRESS`). One task drains one queue in order and retries
//! a failed event in place, reconnecting each time, for up to [`RETRY_FOR`]: a containerd restart
//! delays events but never loses or reorders them (the crate's publisher requeues at the back,
//! which can put TaskExit before TaskStart).

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

/// How long one event is retried before it is given up on: long enough to outlast a containerd
/// restart (the daemon re-reads every bundle before it serves events again), bounded so a
/// containerd that is gone for good does not hold the queue forever.
pub const RETRY_FOR: Duration = Duration::from_secs(60);
/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

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
                let first = tokio::time::Instant::now();
                let mut backoff = Duration::from_millis(50);
                loop {
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
                                tracing::warn!(
                                    "publishing {}: {e}; reconnecting",
                                    req.envelope.topic
                                );
                                client = None;
                            }
                        }
                    }
                    if first.elapsed() >= RETRY_FOR {
                        tracing::error!(
                            "dropping event {}: containerd did not take it for {}s",
                            req.envelope.topic,
                            RETRY_FOR.as_secs()
                        );
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        });
        Self { tx, namespace }
    }

    /// A publisher whose events go to the returned channel as (topic, encoded event), in order:
    /// for tests of the task service's event order without containerd.
    pub fn sink(namespace: String) -> (Self, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
        let (out, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                match item {
                    Item::Flush(done) => {
                        let _ = done.send(());
                    }
                    Item::Event(req) => {
                        let value = req
                            .envelope
                            .event
                            .as_ref()
                            .map(|a| a.value.clone())
                            .unwrap_or_default();
                        let _ = out.send((req.envelope.topic.clone(), value));
                    }
                }
            }
        });
        (Self { tx, namespace }, events)
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

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::api::Empty;
    use containerd_shim_protos::events::task::TaskExit;
    use containerd_shim_protos::shim_async::{create_events, Events};
    use containerd_shim_protos::ttrpc::r#async::{Server, TtrpcContext};
    use std::sync::Arc;

    /// containerd's events service, reduced to a channel of topics.
    struct Sink(mpsc::UnboundedSender<String>);

    #[async_trait::async_trait]
    impl Events for Sink {
        async fn forward(
            &self,
            _: &TtrpcContext,
            req: ForwardRequest,
        ) -> containerd_shim_protos::ttrpc::Result<Empty> {
            let _ = self.0.send(req.envelope.topic.clone());
            Ok(Empty::new())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn events_queued_while_containerd_is_down_arrive_in_order_once_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ttrpc.sock");
        let publisher = Publisher::start(Some(sock.display().to_string()), "ns".into());
        let mut exit = TaskExit::new();
        exit.container_id = "c".into();
        publisher.publish("/tasks/start", &exit);
        publisher.publish("/tasks/exit", &exit);
        // containerd stays away longer than a few quick retries would cover.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut server = Server::new()
            .bind(&format!("unix://{}", sock.display()))
            .unwrap()
            .register_service(create_events(Arc::new(Sink(tx))));
        server.start().await.unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            let topic = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("events arrive once containerd is back")
                .expect("sink open");
            got.push(topic);
        }
        assert_eq!(got, ["/tasks/start", "/tasks/exit"]);
        let _ = server.shutdown().await;
    }
}
