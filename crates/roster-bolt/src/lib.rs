//! bbolt database files: the format of etcd's backend and of every etcd
//! snapshot, written and read from the format's definition.
//!
//! Roster keeps its own log and snapshots; it speaks bbolt only at the
//! border, to hand data to etcd's tools and to take theirs. So this crate
//! does exactly two things, each in one pass:
//! - [`Writer`] builds a fresh, compact file from buckets given in key
//!   order: leaves first, then the branch levels over them, then the root
//!   bucket, the freelist (empty) and the two meta pages.
//! - [`Reader`] walks a file's buckets in key order, reading page by page
//!   with positional reads, so a large snapshot is never held in memory.
//!   Every offset is checked against its page and the file before use:
//!   snapshots come from outside and are treated as hostile.
//!
//! Why not a crate: the Rust ports of bbolt are whole databases (mmap,
//! transactions, `unsafe`) with heavy dependency trees, and none is proven
//! against etcd's reader. Writing a read-only file and walking one needs a
//! few hundred lines.
//!
//! Layout facts (all integers little-endian, as bbolt writes them on every
//! platform etcd supports):
//! - a page starts with `id u64, flags u16, count u16, overflow u32`;
//!   `overflow` more pages follow when a node does not fit one page;
//! - flags: branch 0x01, leaf 0x02, meta 0x04, freelist 0x10;
//! - a leaf element is `flags u32, pos u32, ksize u32, vsize u32`, a branch
//!   element `pos u32, ksize u32, pgid u64`; `pos` counts from the element
//!   itself to its key, and the value follows the key;
//! - a leaf element with flag 0x01 is a bucket: its value is
//!   `root u64, sequence u64`, followed by an inline leaf page when
//!   `root == 0`;
//! - pages 0 and 1 hold the meta: `magic u32 (0xED0CDAED), version u32 (2),
//!   page_size u32, flags u32, root bucket (root u64, sequence u64),
//!   freelist u64, pgid u64 (high water mark), txid u64, checksum u64`, the
//!   checksum being FNV-1a 64 of the fields before it. The valid meta with
//!   the higher txid wins.

mod reader;
mod writer;

pub use reader::Reader;
pub use writer::Writer;

/// The page size Roster writes: Linux's, which is what etcd uses.
pub const PAGE_SIZE: usize = 4096;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;
const BUCKET_LEAF: u32 = 0x01;
/// Bytes of the meta that the checksum covers.
const META_SUMMED: usize = 56;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("I/O error")]
    Io(#[from] std::io::Error),
    #[error("not a bbolt database: {0}")]
    NotBolt(String),
    #[error("corrupt bbolt database: {0}")]
    Corrupt(String),
    #[error("keys of bucket {bucket:?} are not in strictly increasing order")]
    Unsorted { bucket: String },
    #[error("bucket {0:?} was written twice")]
    DuplicateBucket(String),
    #[error("nested buckets are not supported (in bucket {0:?})")]
    Nested(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// FNV-1a, 64 bits: the meta page's checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn name(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv1a64_matches_published_vectors() {
        assert_eq!(super::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
