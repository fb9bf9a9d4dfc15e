//! Server-streaming responses that a task feeds through a bounded queue.
//!
//! The queue holds boxed items: tokio's channel allocates its slots 32 at a
//! time, up front, and a registry keeps two streams open per registered
//! instance (keepalive and watch). An unboxed `Result<_, Status>` slot is
//! some 200 bytes, so each idle stream would hold about 6 KiB for nothing.

use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

/// What a streaming method returns to tonic.
pub(crate) type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A queued response and its share of the queue's byte budget, given back
/// when tonic takes the response. One box, so a slot stays a pointer.
type Queued<T> = Box<(Result<T, Status>, Option<OwnedSemaphorePermit>)>;

/// The feeding half; the stream ends when it is dropped.
pub(crate) struct Feed<T> {
    tx: mpsc::Sender<Queued<T>>,
    /// Bytes that may wait in the queue, for [`Feed::send_sized`].
    budget: Option<(Arc<Semaphore>, u32)>,
}

/// The client went away: tonic dropped the stream.
#[derive(Debug)]
pub(crate) struct Gone;

/// A queue of `capacity` responses and the stream tonic sends them from.
pub(crate) fn queue<T: Send + 'static>(capacity: usize) -> (Feed<T>, Responses<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    (Feed { tx, budget: None }, Box::pin(ReceiverStream::new(rx).map(|q: Queued<T>| q.0)))
}

/// As [`queue`], also bounded to `bytes` of responses waiting, so that a
/// client that reads slowly holds a bounded amount of memory whatever the
/// size of its responses. A response larger than the budget waits for an
/// empty queue, then goes alone.
pub(crate) fn queue_with_bytes<T: Send + 'static>(capacity: usize, bytes: u32) -> (Feed<T>, Responses<T>) {
    let (mut feed, rx) = queue(capacity);
    feed.budget = Some((Arc::new(Semaphore::new(bytes as usize)), bytes));
    (feed, rx)
}

// === impl Feed ===

impl<T> Feed<T> {
    /// Waits for room, then queues `item`.
    pub(crate) async fn send(&self, item: Result<T, Status>) -> Result<(), Gone> {
        self.tx.send(Box::new((item, None))).await.map_err(|_| Gone)
    }

    /// As [`Feed::send`], and waits until `bytes` fit in the byte budget.
    pub(crate) async fn send_sized(&self, item: Result<T, Status>, bytes: usize) -> Result<(), Gone> {
        let permit = match &self.budget {
            Some((sem, max)) => {
                let n = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, *max);
                Some(sem.clone().acquire_many_owned(n).await.map_err(|_| Gone)?)
            }
            None => None,
        };
        self.tx.send(Box::new((item, permit))).await.map_err(|_| Gone)
    }

    /// Queues `item` if there is room now; drops it otherwise.
    pub(crate) fn try_send(&self, item: Result<T, Status>) -> Result<(), Gone> {
        self.tx.try_send(Box::new((item, None))).map_err(|_| Gone)
    }

    /// Resolves once the client has gone away.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A client that does not read holds at most the byte budget of
    /// responses, however few of them that is.
    #[tokio::test]
    async fn a_byte_budget_holds_back_sends_until_the_stream_is_read() {
        let (feed, mut rx) = queue_with_bytes::<u32>(64, 1000);
        feed.send_sized(Ok(1), 600).await.unwrap();
        let second = feed.send_sized(Ok(2), 600);
        tokio::pin!(second);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut second).await.is_err(), "over budget: waits");
        assert_eq!(rx.next().await.unwrap().unwrap(), 1);
        second.await.unwrap();
        // Larger than the whole budget: goes alone once the queue is empty.
        let big = feed.send_sized(Ok(3), 5000);
        tokio::pin!(big);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut big).await.is_err());
        assert_eq!(rx.next().await.unwrap().unwrap(), 2);
        big.await.unwrap();
        assert_eq!(rx.next().await.unwrap().unwrap(), 3);
    }
}
