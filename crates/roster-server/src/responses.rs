//! Server-streaming responses that a task feeds through a bounded queue.
//!
//! The queue holds boxed items: tokio's channel allocates its slots 32 at a
//! time, up front, and a registry keeps two streams open per registered
//! instance (keepalive and watch). An unboxed `Result<_, Status>` slot is
//! some 200 bytes, so each idle stream would hold about 6 KiB for nothing.

use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

/// What a streaming method returns to tonic.
pub(crate) type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The feeding half; the stream ends when it is dropped.
pub(crate) struct Feed<T>(mpsc::Sender<Box<Result<T, Status>>>);

/// The client went away: tonic dropped the stream.
#[derive(Debug)]
pub(crate) struct Gone;

/// A queue of `capacity` responses and the stream tonic sends them from.
pub(crate) fn queue<T: Send + 'static>(capacity: usize) -> (Feed<T>, Responses<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    (Feed(tx), Box::pin(ReceiverStream::new(rx).map(|item| *item)))
}

// === impl Feed ===

impl<T> Feed<T> {
    /// Waits for room, then queues `item`.
    pub(crate) async fn send(&self, item: Result<T, Status>) -> Result<(), Gone> {
        self.0.send(Box::new(item)).await.map_err(|_| Gone)
    }

    /// Queues `item` if there is room now; drops it otherwise.
    pub(crate) fn try_send(&self, item: Result<T, Status>) -> Result<(), Gone> {
        self.0.try_send(Box::new(item)).map_err(|_| Gone)
    }

    /// Resolves once the client has gone away.
    pub(crate) async fn closed(&self) {
        self.0.closed().await
    }
}
