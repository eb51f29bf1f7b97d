//! The scanner against updates built with yrs and bytes built by hand.

use super::*;
use crate::update::check_update;
use yrs::{Any, Array, Doc, Map, ReadTxn, StateVector, Text, Transact, XmlFragment};

/// One item of client 1 at clock 0 in root array "a", with `content`
/// (`kind` and its encoding), and an empty delete set.
fn item_update(kind: u8, content: &[u8]) -> Vec<u8> {
    let mut bytes = vec![1, 1, 1, 0, kind, 1, 1, b'a'];
    bytes.extend_from_slice(content);
    bytes.push(0);
    bytes
}

/// An `Any` array nested `depth` deep around a null.
fn nested_any(depth: usize) -> Vec<u8> {
    let mut content = vec![1];
    for _ in 0..depth {
        content.extend_from_slice(&[117, 1]);
    }
    content.push(126);
    content
}

#[test]
fn deep_values_are_refused_before_yrs_sees_them() {
    // ~14 KB, 7,000 levels: recursive decoding would overflow the stack.
    let deep = item_update(8, &nested_any(7000));
    assert_eq!(scan_update(&deep), Err(ScanError::TooDeep));
    assert!(check_update(deep).is_err());
    let shallow = item_update(8, &nested_any(MAX_VALUE_DEPTH - 1));
    assert_eq!(scan_update(&shallow).map(|s| s.structs), Ok(1));
    assert!(check_update(shallow).is_ok());

    let json = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let mut content = vec![1, 0x90, 0x27];
    content.extend_from_slice(json.as_bytes());
    assert_eq!(
        scan_update(&item_update(2, &content)),
        Err(ScanError::TooDeep)
    );
}

#[test]
fn type_refs_and_content_kinds_yjs_does_not_know_are_refused() {
    for type_ref in [7u8, 9, 15] {
        let update = item_update(7, &[type_ref]);
        assert_eq!(
            scan_update(&update),
            Err(ScanError::UnknownTypeRef(type_ref.into()))
        );
    }
    assert_eq!(
        scan_update(&item_update(7, &[5, 1, b'h'])),
        Err(ScanError::Unsupported("Y.XmlHook"))
    );
    for type_ref in [0u8, 1, 2, 4, 6] {
        assert!(
            check_update(item_update(7, &[type_ref])).is_ok(),
            "{type_ref}"
        );
    }
    assert_eq!(
        scan_update(&item_update(11, &[])),
        Err(ScanError::UnknownContent(11))
    );
    // A subdocument whose options are not an object (yjs reads
    // `opts.shouldLoad` and throws on null).
    assert_eq!(
        scan_update(&item_update(9, &[1, b'g', 126])),
        Err(ScanError::BadDocOptions)
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Deep and wide values: refused exactly past the bound, whatever
    /// the shape, and never by overflowing the stack.
    #[test]
    fn deep_and_wide_values_are_bounded(
        depth in 0usize..600,
        width in 0usize..64,
        as_object in proptest::prelude::any::<bool>(),
    ) {
        let mut content = vec![1];
        for _ in 0..depth {
            if as_object {
                content.extend_from_slice(&[118, 1, 1, b'k']);
            } else {
                content.extend_from_slice(&[117, 1]);
            }
        }
        content.push(117);
        content.push(width as u8);
        content.extend(std::iter::repeat_n(125u8, width).flat_map(|t| [t, 1]));
        let update = item_update(8, &content);
        let scanned = scan_update(&update);
        if depth + 1 > MAX_VALUE_DEPTH {
            proptest::prop_assert_eq!(scanned, Err(ScanError::TooDeep));
        } else {
            proptest::prop_assert_eq!(scanned.map(|s| s.structs), Ok(1));
            proptest::prop_assert!(check_update(update).is_ok());
        }
    }
}

#[test]
fn counts_larger_than_the_update_are_refused() {
    // 2^32 clients announced in a 7-byte update.
    assert_eq!(
        scan_update(&[0x80, 0x80, 0x80, 0x80, 0x10, 0, 0]),
        Err(ScanError::CountTooLarge)
    );
    assert_eq!(
        scan_update(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
        Err(ScanError::IntegerOutOfRange)
    );
}

#[test]
fn what_yrs_writes_for_every_content_kind_passes() {
    let doc = Doc::with_client_id(7);
    let text = doc.get_or_insert_text("text");
    let map = doc.get_or_insert_map("map");
    let array = doc.get_or_insert_array("array");
    let frag = doc.get_or_insert_xml_fragment("xml");
    {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "héllo wörld");
        text.format(&mut txn, 0, 3, [("bold".into(), Any::Bool(true))].into());
        text.remove_range(&mut txn, 1, 2);
        map.insert(&mut txn, "n", 1.5);
        map.insert(&mut txn, "big", i64::MAX);
        map.insert(&mut txn, "bytes", Any::Buffer(vec![1u8, 2, 3].into()));
        map.insert(&mut txn, "nested", yrs::MapPrelim::default());
        array.push_back(&mut txn, Any::from(vec![Any::Null, Any::Undefined]));
        array.push_back(&mut txn, yrs::ArrayPrelim::default());
        array.remove(&mut txn, 0);
        frag.push_back(&mut txn, yrs::XmlElementPrelim::empty("p"));
        frag.push_back(&mut txn, yrs::XmlTextPrelim::new("x"));
    }
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let shape = scan_update(&update).unwrap();
    assert!(shape.types >= 4, "{shape:?}");
    assert!(shape.deletes >= 1, "{shape:?}");
}
