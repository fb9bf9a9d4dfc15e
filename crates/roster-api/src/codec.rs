//! The gRPC codec of every generated client and server: prost, with small
//! starting buffers, and big messages coded with the runtime worker handed
//! over. Also [`decode_grpc_message`], for code that reads grpc-message
//! itself.
//!
//! tonic's own default reserves 8 KiB to encode and 8 KiB to decode for
//! each call, for as long as the call lives. A registry holds two streams
//! per registered instance (its lease keepalive and its watch), each in both
//! directions, so at 10,000 instances those mostly empty buffers alone
//! would be over 300 MiB. The buffers still grow to whatever a message needs.
//!
//! A message is coded in one go inside its connection's task: a range over
//! 100,000 keys is some 30 MB, tens of milliseconds of CPU in one poll. On a
//! two-worker runtime, two such ranges held every worker, and a small put
//! arriving meanwhile waited for them. Messages of [`HEAVY_MESSAGE`] bytes
//! or more are therefore coded inside [`heavy`], which hands the worker's
//! other tasks to another thread first.

use bytes::Buf;
use prost::Message;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Bytes reserved up front per call and direction; etcd's stream messages
/// (keepalives, watch requests, most events) fit in it.
const START_BUFFER: usize = 512;
/// tonic's default: a streaming response yields a batch after this much.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffers() -> BufferSettings {
    BufferSettings::new(START_BUFFER, YIELD_THRESHOLD)
}

/// Messages this large are coded inside [`heavy`].
pub const HEAVY_MESSAGE: usize = 1 << 20;

/// Runs `f`, which takes long without awaiting, so that it holds up no
/// other task: on a multi-thread tokio runtime the worker's queued tasks
/// go to another thread first (`block_in_place`); anywhere else (a
/// current-thread runtime, no runtime) `f` just runs.
pub fn heavy<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// `application/grpc+proto` for message types `T` out and `U` in.
#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProtoEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProtoEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(PhantomData)
    }
}

/// Encodes `T` with prost; see the module doc for big messages.
#[derive(Debug)]
pub struct ProtoEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for ProtoEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let len = item.encoded_len();
        let mut encode = || {
            buf.reserve(len);
            item.encode(buf).map_err(|e| Status::internal(format!("encoding a message: {e}")))
        };
        if len >= HEAVY_MESSAGE { heavy(encode) } else { encode() }
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffers()
    }
}

/// Decodes `U` with prost; see the module doc for big messages.
#[derive(Debug)]
pub struct ProtoDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let big = buf.remaining() >= HEAVY_MESSAGE;
        let decode = || U::decode(buf).map(Some).map_err(|e| Status::internal(e.to_string()));
        if big { heavy(decode) } else { decode() }
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffers()
    }
}

/// grpc-message as text: it is percent-encoded UTF-8. A `%` not followed by
/// two hex digits is kept as it is.
pub fn decode_grpc_message(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (s[i], s.get(i + 1).copied().and_then(hex), s.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(decode_grpc_message(b"a%20b%25"), "a b%");
        assert_eq!(decode_grpc_message(b"key is not provided%21"), "key is not provided!");
        assert_eq!(decode_grpc_message(b"100%"), "100%");
        assert_eq!(decode_grpc_message(b"%zz%4"), "%zz%4");
        assert_eq!(decode_grpc_message(b"%C3%A9"), "\u{e9}");
    }

    /// `heavy` must never panic where `block_in_place` would: on a
    /// current-thread runtime (every `#[tokio::test]` by default) or with no
    /// runtime at all.
    #[tokio::test]
    async fn heavy_runs_on_a_current_thread_runtime() {
        assert_eq!(heavy(|| 7), 7);
    }

    #[test]
    fn heavy_runs_without_a_runtime() {
        assert_eq!(heavy(|| 7), 7);
    }

    /// On a multi-thread runtime the worker's other tasks keep running while
    /// `heavy` blocks: a task spawned before it completes during it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn heavy_hands_over_the_worker() {
        // On the only worker (the test body itself runs on another thread).
        let on_worker = tokio::spawn(async {
            let (tx, rx) = std::sync::mpsc::channel();
            let other = tokio::spawn(async move { tx.send(()).unwrap() });
            let waited = heavy(|| rx.recv_timeout(std::time::Duration::from_secs(5)));
            assert!(waited.is_ok(), "the other task never ran while heavy blocked the only worker");
            other.await.unwrap();
        });
        on_worker.await.unwrap();
    }
}
