//! The gRPC codec of every generated client and server: prost, with small
//! starting buffers. Also [`decode_grpc_message`], for code that reads
//! grpc-message itself.
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
}
