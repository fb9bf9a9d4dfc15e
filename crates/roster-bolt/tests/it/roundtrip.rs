//! The writer's files read back exactly, and the reader survives any damage.

use proptest::prelude::*;
use roster_bolt::{Reader, Writer};
use std::collections::BTreeMap;
use std::io::Cursor;

type Buckets = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

fn write(buckets: &Buckets, page_size: usize) -> Vec<u8> {
    let mut w = Writer::with_page_size(Cursor::new(Vec::new()), page_size).unwrap();
    for (name, kvs) in buckets {
        w.bucket(name, kvs.iter()).unwrap();
    }
    let (out, size) = w.finish().unwrap();
    let bytes = out.into_inner();
    assert_eq!(bytes.len() as u64, size, "the file is exactly the pages it counts");
    assert_eq!(size % page_size as u64, 0);
    bytes
}

fn read(bytes: &[u8]) -> roster_bolt::Result<Buckets> {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    let r = Reader::open(f.path())?;
    let mut out = Buckets::new();
    for name in r.buckets()? {
        let mut kvs = BTreeMap::new();
        assert!(r.for_each(&name, |k, v| {
            kvs.insert(k.to_vec(), v.to_vec());
            Ok(())
        })?);
        out.insert(name, kvs);
    }
    Ok(out)
}

fn buckets() -> impl Strategy<Value = Buckets> {
    let value = prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => proptest::collection::vec(any::<u8>(), 3000..6000),
    ];
    let kvs = proptest::collection::btree_map(proptest::collection::vec(any::<u8>(), 0..40), value, 0..200);
    proptest::collection::btree_map(proptest::collection::vec(any::<u8>(), 1..12), kvs, 0..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn what_is_written_reads_back(b in buckets(), big_pages in any::<bool>()) {
        let bytes = write(&b, if big_pages { 16384 } else { 4096 });
        prop_assert_eq!(read(&bytes).unwrap(), b);
    }

    /// A snapshot comes from outside: any byte changed anywhere gives an
    /// error or some reading, never a panic or a hang.
    #[test]
    fn damaged_files_never_panic(b in buckets(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = write(&b, 4096);
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x | 1;
        }
        let _ = read(&bytes);
    }

    #[test]
    fn truncated_files_are_refused(b in buckets(), cut in any::<prop::sample::Index>()) {
        let bytes = write(&b, 4096);
        let keep = cut.index(bytes.len());
        prop_assert!(read(&bytes[..keep]).is_err(), "kept {} of {}", keep, bytes.len());
    }
}

#[test]
fn many_small_keys_make_a_three_level_tree_that_reads_back() {
    let kvs: BTreeMap<Vec<u8>, Vec<u8>> =
        (0u64..200_000).map(|i| (i.to_be_bytes().to_vec(), format!("value-{i}").into_bytes())).collect();
    let b: Buckets = [(b"key".to_vec(), kvs)].into();
    let bytes = write(&b, 4096);
    assert_eq!(read(&bytes).unwrap(), b);
}

#[test]
fn unsorted_keys_are_refused() {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    let err = w.bucket(b"key", [(b"b", b""), (b"a", b"")]).unwrap_err();
    assert!(err.to_string().contains("increasing"), "{err}");
}

#[test]
fn a_file_that_is_not_bolt_is_named_so() {
    let err = read(b"this is not a database, just some text that is long enough to look at").unwrap_err();
    assert!(err.to_string().contains("not a bbolt database"), "{err}");
}
