//! The gRPC codec of every generated client and server: prost, with small
//! starting buffers.
//!
//! tonic's own default reserves 8 KiB to encode and 8 KiB to decode for
//! each call, for as long as the call lives. A registry holds two streams
//! per registered instance (its lease keepalive and its watch), each in both
//! directions, so at 10,000 instances those mostly empty buffers alone
//! would be over 300 MiB. The buffers still grow to whatever a message needs.

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Bytes reserved up front per call and direction; etcd's stream messages
/// (keepalives, watch requests, most events) fit in it.
const START_BUFFER: usize = 512;
/// tonic's default: a streaming response yields a batch after this much.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffers() -> BufferSettings {
    BufferSettings::new(START_BUFFER, YIELD_THRESHOLD)
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
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(buffers())
    }
}
