//! One pass, bottom up: a bucket's leaves are written as its entries
//! arrive, then each branch level over the level below, until one node is
//! left, which is the bucket's root. Pages 0-2 (meta, meta, freelist) are
//! written last, when the root and the high water mark are known.

use crate::{
    BRANCH, BUCKET_LEAF, ELEMENT, Error, FREELIST, LEAF, MAGIC, META, META_SUMMED, PAGE_HEADER, PAGE_SIZE, Result,
    VERSION, fnv1a64, name,
};
use std::io::{Seek, SeekFrom, Write};

/// The first page a bucket may use: 0 and 1 are meta, 2 the freelist.
const FIRST_DATA_PAGE: u64 = 3;

/// Builds a bbolt file. Give each bucket once, with its keys in strictly
/// increasing byte order, then call [`Writer::finish`].
pub struct Writer<W: Write + Seek> {
    out: W,
    page_size: usize,
    /// The next free page id.
    next: u64,
    /// Top-level buckets written so far: name and root page.
    buckets: Vec<(Vec<u8>, u64)>,
    /// One page's worth of output, reused.
    buf: Vec<u8>,
}

/// A node about to be written: its elements (flags, key length, value
/// length or child page) and their keys and values end to end, so that
/// building a node allocates nothing per element.
#[derive(Default)]
struct Node {
    elements: Vec<(u32, u32, u64)>,
    data: Vec<u8>,
    /// The first key, for the level above.
    first: Vec<u8>,
}

impl Node {
    fn len(&self) -> usize {
        self.elements.len()
    }

    /// Encoded size: header, element table, keys and values.
    fn bytes(&self) -> usize {
        PAGE_HEADER + self.elements.len() * ELEMENT + self.data.len()
    }

    fn push_leaf(&mut self, flags: u32, k: &[u8], v: &[u8]) {
        if self.elements.is_empty() {
            self.first = k.to_vec();
        }
        self.elements.push((flags, k.len() as u32, v.len() as u64));
        self.data.extend_from_slice(k);
        self.data.extend_from_slice(v);
    }

    fn push_branch(&mut self, k: &[u8], child: u64) {
        if self.elements.is_empty() {
            self.first = k.to_vec();
        }
        self.elements.push((0, k.len() as u32, child));
        self.data.extend_from_slice(k);
    }

    fn clear(&mut self) {
        self.elements.clear();
        self.data.clear();
    }
}

impl<W: Write + Seek> Writer<W> {
    /// A writer with Linux's page size, which etcd uses.
    pub fn new(out: W) -> Result<Self> {
        Self::with_page_size(out, PAGE_SIZE)
    }

    /// `page_size` must be a power of two of at least 1 KiB.
    pub fn with_page_size(mut out: W, page_size: usize) -> Result<Self> {
        assert!(page_size.is_power_of_two() && page_size >= 1024, "page size {page_size}");
        out.seek(SeekFrom::Start(FIRST_DATA_PAGE * page_size as u64))?;
        Ok(Writer { out, page_size, next: FIRST_DATA_PAGE, buckets: Vec::new(), buf: Vec::with_capacity(page_size) })
    }

    /// Writes one top-level bucket. Keys must be strictly increasing.
    pub fn bucket<K, V>(&mut self, bucket: &[u8], entries: impl IntoIterator<Item = (K, V)>) -> Result<()>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        if self.buckets.iter().any(|(n, _)| n == bucket) {
            return Err(Error::DuplicateBucket(name(bucket)));
        }
        let mut leaf = Node::default();
        // (first key, page) of every node of the level being built.
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut last: Vec<u8> = Vec::new();
        let mut any = false;
        for (k, v) in entries {
            let (k, v) = (k.as_ref(), v.as_ref());
            if any && last.as_slice() >= k {
                return Err(Error::Unsorted { bucket: name(bucket) });
            }
            let size = ELEMENT + k.len() + v.len();
            if leaf.len() > 0 && (leaf.bytes() + size > self.page_size || leaf.len() == usize::from(u16::MAX)) {
                let page = self.write_node(LEAF, &leaf)?;
                level.push((std::mem::take(&mut leaf.first), page));
                leaf.clear();
            }
            leaf.push_leaf(0, k, v);
            last.clear();
            last.extend_from_slice(k);
            any = true;
        }
        if leaf.len() > 0 || level.is_empty() {
            let page = self.write_node(LEAF, &leaf)?;
            level.push((std::mem::take(&mut leaf.first), page));
        }
        while level.len() > 1 {
            level = self.branch_level(level)?;
        }
        self.buckets.push((bucket.to_vec(), level[0].1));
        Ok(())
    }

    /// Writes the branch nodes over `below`; returns the new level.
    fn branch_level(&mut self, below: Vec<(Vec<u8>, u64)>) -> Result<Vec<(Vec<u8>, u64)>> {
        let mut up = Vec::new();
        let mut node = Node::default();
        for (key, page) in below {
            let size = ELEMENT + key.len();
            // At least two children per branch, so every level shrinks.
            if node.len() > 1 && (node.bytes() + size > self.page_size || node.len() == usize::from(u16::MAX)) {
                let id = self.write_node(BRANCH, &node)?;
                up.push((std::mem::take(&mut node.first), id));
                node.clear();
            }
            node.push_branch(&key, page);
        }
        let id = self.write_node(BRANCH, &node)?;
        up.push((std::mem::take(&mut node.first), id));
        Ok(up)
    }

    /// Writes a node at the next page (with overflow pages when it is
    /// bigger than one); returns its page id.
    fn write_node(&mut self, kind: u16, node: &Node) -> Result<u64> {
        let id = self.next;
        let size = node.bytes();
        let pages = size.div_ceil(self.page_size).max(1);
        let overflow = u32::try_from(pages - 1).map_err(|_| Error::Corrupt("node too large".into()))?;
        let count = u16::try_from(node.len()).map_err(|_| Error::Corrupt("too many elements".into()))?;
        let buf = &mut self.buf;
        buf.clear();
        header(buf, id, kind, count, overflow);
        let mut data = PAGE_HEADER + node.len() * ELEMENT;
        for (i, &(flags, klen, v)) in node.elements.iter().enumerate() {
            let pos = (data - (PAGE_HEADER + i * ELEMENT)) as u32;
            if kind == LEAF {
                buf.extend_from_slice(&flags.to_le_bytes());
                buf.extend_from_slice(&pos.to_le_bytes());
                buf.extend_from_slice(&klen.to_le_bytes());
                buf.extend_from_slice(&(v as u32).to_le_bytes());
                data += klen as usize + v as usize;
            } else {
                buf.extend_from_slice(&pos.to_le_bytes());
                buf.extend_from_slice(&klen.to_le_bytes());
                buf.extend_from_slice(&v.to_le_bytes());
                data += klen as usize;
            }
        }
        buf.extend_from_slice(&node.data);
        debug_assert_eq!(buf.len(), size);
        buf.resize(pages * self.page_size, 0);
        self.out.write_all(buf)?;
        self.next += pages as u64;
        Ok(id)
    }

    /// Writes the root bucket, the freelist and the meta pages; returns the
    /// output and the file's size in bytes.
    pub fn finish(mut self) -> Result<(W, u64)> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let mut root = Node::default();
        for (n, page) in &buckets {
            let mut value = [0u8; 16];
            value[..8].copy_from_slice(&page.to_le_bytes());
            root.push_leaf(BUCKET_LEAF, n, &value);
        }
        let root_page = self.write_node(LEAF, &root)?;
        let high_water = self.next;

        let ps = self.page_size;
        let mut page = Vec::with_capacity(ps);
        self.out.seek(SeekFrom::Start(2 * ps as u64))?;
        header(&mut page, 2, FREELIST, 0, 0);
        page.resize(ps, 0);
        self.out.write_all(&page)?;

        for txid in 0..2u64 {
            page.clear();
            header(&mut page, txid, META, 0, 0);
            let start = page.len();
            for v in [MAGIC, VERSION, ps as u32, 0] {
                page.extend_from_slice(&v.to_le_bytes());
            }
            for v in [root_page, 0, 2, high_water, txid] {
                page.extend_from_slice(&v.to_le_bytes());
            }
            let sum = fnv1a64(&page[start..start + META_SUMMED]);
            page.extend_from_slice(&sum.to_le_bytes());
            page.resize(ps, 0);
            self.out.seek(SeekFrom::Start(txid * ps as u64))?;
            self.out.write_all(&page)?;
        }
        self.out.seek(SeekFrom::Start(high_water * ps as u64))?;
        self.out.flush()?;
        Ok((self.out, high_water * ps as u64))
    }
}

fn header(buf: &mut Vec<u8>, id: u64, flags: u16, count: u16, overflow: u32) {
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&flags.to_le_bytes());
    buf.extend_from_slice(&count.to_le_bytes());
    buf.extend_from_slice(&overflow.to_le_bytes());
}
