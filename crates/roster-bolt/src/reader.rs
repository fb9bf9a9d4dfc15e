//! Walks a bbolt file's buckets in key order with positional reads.
//! Everything read is checked before use: page ids against the high water
//! mark and the file, element offsets against their node, the depth of the
//! tree against a bound, and key order across the walk, so a damaged or
//! hostile file gives an error, never a panic or a loop.

use crate::{
    BRANCH, BUCKET_LEAF, ELEMENT, Error, LEAF, MAGIC, META, META_SUMMED, PAGE_HEADER, Result, VERSION, fnv1a64, name,
};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What a walk calls for each entry: (page id, key, value).
type Visit<'a> = dyn FnMut(u32, &[u8], &[u8]) -> Result<()> + 'a;

/// Deeper than any real tree (a tree of 4 KiB pages that deep would hold
/// more keys than there are bytes on any disk), so a cycle ends here.
const MAX_DEPTH: usize = 64;

/// An open bbolt file.
pub struct Reader {
    file: File,
    page_size: usize,
    root: u64,
    high_water: u64,
    txid: u64,
}

/// Where one node's bytes come from: a page of the file, or a bucket's
/// inline page.
enum Node {
    Page(Vec<u8>),
    Inline(Vec<u8>),
}

impl Node {
    fn bytes(&self) -> &[u8] {
        match self {
            Node::Page(b) | Node::Inline(b) => b,
        }
    }
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut first = vec![0u8; 4096.min(len as usize)];
        file.read_exact_at(&mut first, 0)?;
        // Meta 0 names the page size; when it is damaged, try the sizes
        // bbolt can have been built with for meta 1.
        let mut metas = Vec::new();
        if let Ok(m) = parse_meta(&first) {
            metas.push(m);
        }
        let sizes: Vec<usize> = match metas.first() {
            Some(m) => vec![m.page_size],
            None => (10..=16).map(|s| 1usize << s).collect(),
        };
        for ps in sizes {
            if len >= 2 * ps as u64 {
                let mut buf = vec![0u8; ps];
                file.read_exact_at(&mut buf, ps as u64)?;
                if let Ok(m) = parse_meta(&buf)
                    && m.page_size == ps
                {
                    metas.push(m);
                    break;
                }
            }
        }
        let Some(meta) = metas.into_iter().max_by_key(|m| m.txid) else {
            return Err(Error::NotBolt(format!("{}: no valid meta page", path.display())));
        };
        if len < meta.high_water * meta.page_size as u64 {
            return Err(Error::Corrupt(format!(
                "{}: the file has {len} bytes but its meta page counts {} pages of {} bytes (truncated?)",
                path.display(),
                meta.high_water,
                meta.page_size
            )));
        }
        if meta.root >= meta.high_water || meta.root < 2 {
            return Err(Error::Corrupt(format!("root bucket page {} is out of bounds", meta.root)));
        }
        Ok(Reader { file, page_size: meta.page_size, root: meta.root, high_water: meta.high_water, txid: meta.txid })
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Bytes the database uses: its high water mark in pages.
    pub fn size(&self) -> u64 {
        self.high_water * self.page_size as u64
    }

    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// Names of the top-level buckets, in order.
    pub fn buckets(&self) -> Result<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        self.walk(Node::Page(self.page(self.root)?), 0, "<root>", &mut |flags, k, _| {
            if flags & BUCKET_LEAF == 0 {
                return Err(Error::Corrupt(format!("the root bucket holds a plain key {:?}", name(k))));
            }
            names.push(k.to_vec());
            Ok(())
        })?;
        Ok(names)
    }

    /// Calls `f` with every key and value of a top-level bucket, in key
    /// order; returns false when there is no such bucket.
    pub fn for_each(&self, bucket: &[u8], mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<bool> {
        let mut header = None;
        self.walk(Node::Page(self.page(self.root)?), 0, "<root>", &mut |flags, k, v| {
            if k == bucket && flags & BUCKET_LEAF != 0 {
                header = Some(v.to_vec());
            }
            Ok(())
        })?;
        let Some(v) = header else { return Ok(false) };
        let label = name(bucket);
        let node = self.bucket_root(&v, &label)?;
        let mut last: Option<Vec<u8>> = None;
        self.walk(node, 0, &label, &mut |flags, k, v| {
            if flags & BUCKET_LEAF != 0 {
                return Err(Error::Nested(label.clone()));
            }
            if last.as_deref().is_some_and(|l| l >= k) {
                return Err(Error::Corrupt(format!("keys of bucket {label:?} are out of order")));
            }
            last = Some(k.to_vec());
            f(k, v)
        })?;
        Ok(true)
    }

    /// The root node of a bucket from its header in the parent's leaf.
    fn bucket_root(&self, v: &[u8], label: &str) -> Result<Node> {
        if v.len() < 16 {
            return Err(Error::Corrupt(format!("bucket {label:?} has a {}-byte header", v.len())));
        }
        let root = u64::from_le_bytes(v[..8].try_into().unwrap());
        if root == 0 {
            let page = &v[16..];
            if page.len() < PAGE_HEADER {
                return Err(Error::Corrupt(format!("bucket {label:?} has a truncated inline page")));
            }
            return Ok(Node::Inline(page.to_vec()));
        }
        Ok(Node::Page(self.page(root)?))
    }

    /// Reads page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>> {
        if id < 2 || id >= self.high_water {
            return Err(Error::Corrupt(format!("page {id} is out of bounds (high water mark {})", self.high_water)));
        }
        let ps = self.page_size as u64;
        let mut buf = vec![0u8; self.page_size];
        self.file.read_exact_at(&mut buf, id * ps)?;
        let got = u64::from_le_bytes(buf[..8].try_into().unwrap());
        if got != id {
            return Err(Error::Corrupt(format!("page {id} says it is page {got}")));
        }
        let overflow = u64::from(u32::from_le_bytes(buf[12..16].try_into().unwrap()));
        if overflow > 0 {
            if id + overflow >= self.high_water {
                return Err(Error::Corrupt(format!("page {id} overflows past the high water mark")));
            }
            buf.resize(((overflow + 1) * ps) as usize, 0);
            self.file.read_exact_at(&mut buf[self.page_size..], (id + 1) * ps)?;
        }
        Ok(buf)
    }

    /// Visits the leaf elements under `node` in order as (flags, key, value).
    fn walk(&self, node: Node, depth: usize, label: &str, f: &mut Visit<'_>) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::Corrupt(format!("bucket {label:?} is deeper than {MAX_DEPTH} levels (a cycle?)")));
        }
        let inline = matches!(node, Node::Inline(_));
        let b = node.bytes();
        let flags = u16::from_le_bytes([b[8], b[9]]);
        let count = usize::from(u16::from_le_bytes([b[10], b[11]]));
        let corrupt = |what: &str| Error::Corrupt(format!("bucket {label:?}: {what}"));
        if PAGE_HEADER + count * ELEMENT > b.len() {
            return Err(corrupt("element table runs past its page"));
        }
        let field = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let slice = |at: usize, len: usize| -> Result<&[u8]> {
            at.checked_add(len)
                .filter(|end| *end <= b.len())
                .map(|end| &b[at..end])
                .ok_or_else(|| corrupt("element runs past its page"))
        };
        match flags {
            LEAF => {
                for i in 0..count {
                    let e = PAGE_HEADER + i * ELEMENT;
                    let (eflags, pos, ksize, vsize) = (field(e) as u32, field(e + 4), field(e + 8), field(e + 12));
                    let k = slice(e + pos, ksize)?;
                    let v = slice(e + pos + ksize, vsize)?;
                    f(eflags, k, v)?;
                }
                Ok(())
            }
            BRANCH if !inline => {
                for i in 0..count {
                    let e = PAGE_HEADER + i * ELEMENT;
                    let child = u64::from_le_bytes(b[e + 8..e + 16].try_into().unwrap());
                    self.walk(Node::Page(self.page(child)?), depth + 1, label, f)?;
                }
                Ok(())
            }
            other => Err(corrupt(&format!("page of type {other:#x} where a leaf or branch belongs"))),
        }
    }
}

struct Meta {
    page_size: usize,
    root: u64,
    high_water: u64,
    txid: u64,
}

fn parse_meta(page: &[u8]) -> Result<Meta, String> {
    if page.len() < PAGE_HEADER + META_SUMMED + 8 {
        return Err("short".into());
    }
    let flags = u16::from_le_bytes([page[8], page[9]]);
    let m = &page[PAGE_HEADER..];
    let u32_at = |at: usize| u32::from_le_bytes(m[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(m[at..at + 8].try_into().unwrap());
    if flags != META || u32_at(0) != MAGIC {
        return Err("no magic".into());
    }
    if u32_at(4) != VERSION {
        return Err(format!("version {}", u32_at(4)));
    }
    if u64_at(56) != fnv1a64(&m[..META_SUMMED]) {
        return Err("checksum".into());
    }
    let page_size = u32_at(8) as usize;
    if !page_size.is_power_of_two() || !(512..=1 << 16).contains(&page_size) {
        return Err(format!("page size {page_size}"));
    }
    Ok(Meta { page_size, root: u64_at(16), high_water: u64_at(40), txid: u64_at(48) })
}
