//! The store's contract, asked of both backends alike: an embedded SQLite
//! file and a real PostgreSQL server that the test starts.

mod common;

use std::sync::Arc;

use common::services::PostgresServer;
use yrelay::store::{self, NewUpdate, NewVersion, Store};
use yrelay::vocab::LogCursor;
use yrelay_protocol::DocAddress;

fn addr(doc: &str) -> DocAddress {
    DocAddress::parse("space", doc).unwrap()
}

fn update(doc: &str, bytes: &[u8], at: i64, cursor: Option<(u64, u64)>) -> NewUpdate {
    NewUpdate {
        addr: addr(doc),
        data: Arc::from(bytes),
        log_cursor: cursor.map(|(ms, seq)| LogCursor { ms, seq }),
        timestamp_ms: at,
        editor: Some(Arc::from("ed")),
    }
}

/// Every question of the contract, asked of `store`.
async fn contract(store: Arc<dyn Store>) {
    let name = store.name();
    store.ping().await.unwrap();
    assert!(store.load(&addr("a")).await.unwrap().is_none(), "{name}");

    // Appends create the document and keep its metadata.
    let batch = [
        update("a", b"one", 1_000, Some((1, 0))),
        update("b", b"bee", 1_500, None),
        update("a", b"two!", 2_000, Some((2, 5))),
    ];
    store.append(&batch).await.unwrap();
    let a = store.load(&addr("a")).await.unwrap().unwrap();
    assert_eq!(a.snapshot, None, "{name}");
    let bytes: Vec<_> = a.updates.iter().map(|(_, u)| u.clone()).collect();
    assert_eq!(bytes, [b"one".to_vec(), b"two!".to_vec()], "{name}");
    assert_eq!(a.log_cursor, Some(LogCursor { ms: 2, seq: 5 }), "{name}");
    assert_eq!(a.meta.created_at, 1_000, "{name}");
    assert_eq!(a.meta.updated_at, 2_000, "{name}");
    assert_eq!(a.meta.size, 7, "{name}");
    assert!(!a.meta.blocked, "{name}");
    assert_eq!(
        store.log_cursor(&addr("a")).await.unwrap(),
        a.log_cursor,
        "{name}"
    );
    let ids: Vec<i64> = a.updates.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{name}: ids ascend");

    // Listing, all and changed after a moment.
    let all: Vec<_> = store.list("space", None).await.unwrap();
    let mut docs: Vec<_> = all.iter().map(|m| m.doc.as_str()).collect();
    docs.sort();
    assert_eq!(docs, ["a", "b"], "{name}");
    let later = store.list("space", Some(1_800)).await.unwrap();
    assert_eq!(later.len(), 1, "{name}");
    assert_eq!(later[0].doc, "a", "{name}");
    assert!(store.list("elsewhere", None).await.unwrap().is_empty());

    // Pages: by id, searched (any case, in ids and titles; LIKE's own
    // characters are plain), from the last one shown.
    let page = |search: &'static str, from: &'static str, limit| {
        let store = store.clone();
        async move {
            let docs = store.page("space", search, from, limit).await.unwrap();
            docs.into_iter().map(|m| m.doc).collect::<Vec<_>>()
        }
    };
    assert_eq!(page("", "", 1).await, ["a"], "{name}");
    assert_eq!(page("", "a", 10).await, ["b"], "{name}");
    assert_eq!(page("B", "", 10).await, ["b"], "{name}");
    assert_eq!(page("%", "", 10).await, Vec::<String>::new(), "{name}");
    store
        .update_meta(&addr("a"), Some("Harbour Map"), None)
        .await
        .unwrap();
    assert_eq!(page("harbour", "", 10).await, ["a"], "{name}: titles too");
    let spaces = store.spaces("SPA", "", 10).await.unwrap();
    assert_eq!(spaces.len(), 1, "{name}");
    assert_eq!(
        (
            spaces[0].space.as_str(),
            spaces[0].docs,
            spaces[0].updated_at
        ),
        ("space", 2, 2_000),
        "{name}"
    );
    assert!(
        store.spaces("", "space", 10).await.unwrap().is_empty(),
        "{name}: after the last"
    );
    assert!(
        store.spaces("_", "", 10).await.unwrap().is_empty(),
        "{name}: `_` is plain"
    );

    // Compaction candidates, then a compaction that removes only what it
    // merged: an update appended meanwhile stays.
    let busy = store.compaction_candidates(2, 0, 10).await.unwrap();
    assert_eq!(busy, [addr("a")], "{name}: two pending updates");
    let idle = store.compaction_candidates(100, 1_600, 10).await.unwrap();
    assert_eq!(idle, [addr("b")], "{name}: quiet since before 1600");
    store
        .append(&[update("a", b"late", 3_000, Some((3, 0)))])
        .await
        .unwrap();
    store.compact(&addr("a"), b"snapshot", &ids).await.unwrap();
    let a = store.load(&addr("a")).await.unwrap().unwrap();
    assert_eq!(a.snapshot.as_deref(), Some(&b"snapshot"[..]), "{name}");
    let left: Vec<_> = a.updates.iter().map(|(_, u)| u.clone()).collect();
    assert_eq!(left, [b"late".to_vec()], "{name}");
    assert_eq!(a.log_cursor, Some(LogCursor { ms: 3, seq: 0 }), "{name}");
    assert_eq!(a.meta.size, 8 + 4, "{name}: the snapshot and what is left");
    // An append dated earlier does not move `updated_at` back.
    store
        .append(&[update("a", b"old", 2_500, None)])
        .await
        .unwrap();
    let meta = store.meta(&addr("a")).await.unwrap().unwrap();
    assert_eq!(meta.updated_at, 3_000, "{name}");
    assert_eq!(
        store.log_cursor(&addr("a")).await.unwrap(),
        Some(LogCursor { ms: 3, seq: 0 }),
        "{name}: an update from no log keeps the cursor"
    );

    // History: the merged updates moved, with time and editor; versions.
    let all = store.changes(&addr("a"), 0, i64::MAX).await.unwrap();
    let times: Vec<i64> = all.iter().map(|c| c.timestamp_ms).collect();
    assert_eq!(
        times,
        [1_000, 2_000, 2_500, 3_000],
        "{name}: moved and appended"
    );
    assert!(
        all.iter().all(|c| c.editor.as_deref() == Some("ed")),
        "{name}"
    );
    let early = store.changes(&addr("a"), 0, 2_000).await.unwrap();
    assert_eq!(early.len(), 2, "{name}");
    let compacted = NewVersion {
        state: b"snapshot",
        timestamp_ms: 3_100,
        label: None,
        compacted: true,
        unless_within_ms: Some(1_000),
    };
    let v1 = store
        .add_version(&addr("a"), compacted)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v1.editors, ["ed"], "{name}");
    let again = NewVersion {
        timestamp_ms: 3_200,
        ..compacted
    };
    assert!(
        store
            .add_version(&addr("a"), again)
            .await
            .unwrap()
            .is_none(),
        "{name}: too soon"
    );
    let labelled = NewVersion {
        state: b"now",
        timestamp_ms: 3_300,
        label: Some("mine"),
        compacted: false,
        unless_within_ms: None,
    };
    let v2 = store
        .add_version(&addr("a"), labelled)
        .await
        .unwrap()
        .unwrap();
    assert!(v2.editors.is_empty(), "{name}: nothing written since v1");
    let listed: Vec<i64> = store
        .versions(&addr("a"))
        .await
        .unwrap()
        .iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(listed, [v2.id, v1.id], "{name}: newest first");
    let (at, state) = store.version_at(&addr("a"), 3_250).await.unwrap().unwrap();
    assert_eq!(
        (at.id, state.as_slice()),
        (v1.id, &b"snapshot"[..]),
        "{name}"
    );
    assert!(store.version_at(&addr("a"), 3_000).await.unwrap().is_none());
    assert_eq!(
        store.version(&addr("a"), v2.id).await.unwrap().unwrap().1,
        b"now"
    );
    // Pruning: the history v1 holds, older than the window, goes; the
    // newest version before the window stays.
    let pruned = store.prune(3_150, 3_200, false).await.unwrap();
    assert_eq!(pruned.changes, 2, "{name}: the two merged updates");
    assert_eq!(
        pruned.versions, 0,
        "{name}: v1 is what the window builds on"
    );
    let left = store.changes(&addr("a"), 0, i64::MAX).await.unwrap();
    assert_eq!(left.len(), 2, "{name}: the appended ones stay");
    let pruned = store.prune(3_400, 3_400, false).await.unwrap();
    assert_eq!(
        pruned.versions, 1,
        "{name}: v1, older than v2 before the window"
    );

    // Metadata changes.
    let meta = store
        .update_meta(&addr("a"), Some("Title"), Some(true))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(meta.title.as_deref(), Some("Title"), "{name}");
    assert!(meta.blocked, "{name}");
    let meta = store
        .update_meta(&addr("a"), None, Some(false))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(meta.title.as_deref(), Some("Title"), "{name}: kept");
    assert!(!meta.blocked, "{name}");
    assert!(store.meta(&addr("a")).await.unwrap().is_some());
    assert!(
        store
            .update_meta(&addr("nope"), Some("x"), None)
            .await
            .unwrap()
            .is_none()
    );

    // The trash: out of metadata and listings, kept, and back again.
    assert!(store.trash(&addr("b"), 4_500).await.unwrap(), "{name}");
    assert!(
        !store.trash(&addr("b"), 4_600).await.unwrap(),
        "{name}: once"
    );
    assert!(store.meta(&addr("b")).await.unwrap().is_none(), "{name}");
    let listed = store.list("space", None).await.unwrap();
    assert!(listed.iter().all(|m| m.doc != "b"), "{name}");
    assert_eq!(store.trashed_at(&addr("b")).await.unwrap(), Some(4_500));
    let trash = store.trash_list("space").await.unwrap();
    assert_eq!(trash.len(), 1, "{name}");
    assert_eq!(trash[0].trashed_at, Some(4_500), "{name}");
    assert_eq!(store.expired_trash(4_501, 10).await.unwrap(), [addr("b")]);
    assert!(store.expired_trash(4_500, 10).await.unwrap().is_empty());
    assert!(
        store.load(&addr("b")).await.unwrap().is_some(),
        "{name}: kept"
    );
    assert!(store.untrash(&addr("b")).await.unwrap(), "{name}");
    assert!(!store.untrash(&addr("b")).await.unwrap(), "{name}: once");
    assert!(store.meta(&addr("b")).await.unwrap().is_some(), "{name}");

    // Creation happens once.
    assert!(store.create(&addr("c"), b"imported", 4_000).await.unwrap());
    assert!(!store.create(&addr("c"), b"again", 4_001).await.unwrap());
    let c = store.load(&addr("c")).await.unwrap().unwrap();
    assert_eq!(c.snapshot.as_deref(), Some(&b"imported"[..]), "{name}");

    // Deletion removes everything and leaves a tombstone.
    assert_eq!(store.deleted_at(&addr("c")).await.unwrap(), None);
    assert!(store.delete(&addr("c"), 5_000).await.unwrap());
    assert!(!store.delete(&addr("c"), 5_001).await.unwrap(), "{name}");
    assert!(store.load(&addr("c")).await.unwrap().is_none(), "{name}");
    assert!(store.meta(&addr("c")).await.unwrap().is_none(), "{name}");
    // The tombstone holds the latest deletion (a document only in the log
    // may be deleted again).
    assert_eq!(store.deleted_at(&addr("c")).await.unwrap(), Some(5_001));
    let listed: Vec<_> = store.list("space", None).await.unwrap();
    assert!(listed.iter().all(|m| m.doc != "c"), "{name}");
}

#[tokio::test]
async fn sqlite_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("y.db").display());
    contract(store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_keeps_the_store_contract() {
    let postgres = PostgresServer::start().await;
    contract(store::open(&postgres.url()).await.unwrap()).await;
}

/// Transactions that read before they write (a version reads the newest
/// one first) run while others commit writes: on SQLite such a transaction
/// begun as a reader could not become a writer ("database is locked", at
/// once, whatever the busy timeout: schemathesis hit it on `POST
/// .../versions`). Every write transaction now takes the write lock first.
#[tokio::test]
async fn sqlite_writes_that_read_first_never_find_the_database_locked() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("y.db").display());
    let store = store::open(&url).await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..100i64 {
                    let doc = format!("d{}", i % 3);
                    if t % 2 == 0 {
                        let version = NewVersion {
                            state: &[0, 0],
                            timestamp_ms: i,
                            label: None,
                            compacted: false,
                            unless_within_ms: None,
                        };
                        store.add_version(&addr(&doc), version).await?;
                    } else {
                        store.append(&[update(&doc, &[0, 0], i, None)]).await?;
                    }
                }
                Ok::<_, store::StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}
