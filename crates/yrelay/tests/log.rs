//! The log's contract, asked of both implementations alike: the in-process
//! log and the Redis Streams log (its Lua scripts) on a real Redis server
//! that the test starts.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::services::RedisServer;
use yrelay::log::{self, EntryKind, Log, Origin};
use yrelay_protocol::DocAddress;

fn addr(doc: &str) -> DocAddress {
    DocAddress::parse("space", doc).unwrap()
}

const WAIT: Duration = Duration::from_secs(10);

/// Every question of the contract, asked of `log`.
async fn contract(log: Arc<dyn Log>) {
    let name = log.name();
    log.ping().await.unwrap();
    let a = addr("a");
    assert!(log.read(&a, None).await.unwrap().unwrap().is_empty());

    // Subscribe before appending: every entry arrives, in cursor order, with
    // its origin and editor; awareness arrives too but is never read back.
    let mut feed = log.subscribe(&a).await.unwrap();
    let origin = Some(Origin {
        instance: 7,
        connection: 9,
    });
    let first = log
        .append_update(&a, Arc::from(&b"one"[..]), origin, Some(Arc::from("ann")))
        .await
        .unwrap();
    let second = log
        .append_update(&a, Arc::from(&b"two"[..]), None, None)
        .await
        .unwrap();
    assert!(first.cursor < second.cursor, "{name}: cursors ascend");
    log.publish(&a, EntryKind::Awareness, Arc::from(&b"here"[..]), origin)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let entry = tokio::time::timeout(WAIT, feed.recv()).await.unwrap();
        got.push(entry.expect("the feed stays open"));
    }
    assert_eq!(&*got[0].payload, b"one", "{name}");
    assert_eq!(got[0].origin, origin, "{name}");
    assert_eq!(got[0].editor.as_deref(), Some("ann"), "{name}");
    assert_eq!(got[0].cursor, first.cursor, "{name}");
    assert_eq!(&*got[1].payload, b"two", "{name}");
    assert_eq!(got[2].kind, EntryKind::Awareness, "{name}");
    assert_eq!(got[2].cursor, None, "{name}");

    // Reading after a cursor; trimming; a trimmed cursor is not readable.
    let all = log.read(&a, None).await.unwrap().unwrap();
    assert_eq!(all.len(), 2, "{name}: awareness is not read back");
    let after = log.read(&a, first.cursor).await.unwrap().unwrap();
    assert_eq!(after.len(), 1, "{name}");
    assert_eq!(&*after[0].payload, b"two", "{name}");
    log.trim(&a, second.cursor.unwrap()).await.unwrap();
    let rest = log.read(&a, second.cursor).await.unwrap();
    assert!(rest.is_some_and(|r| r.is_empty()), "{name}: nothing after");
    assert!(
        log.read(&a, first.cursor).await.unwrap().is_none(),
        "{name}: trimmed away"
    );

    // Another document is another log; deleting one leaves the other. (The
    // in-process log keeps entries only of documents someone follows.)
    let b = addr("b");
    let _following = log.subscribe(&b).await.unwrap();
    log.append_update(&b, Arc::from(&b"bee"[..]), None, None)
        .await
        .unwrap();
    log.delete(&a).await.unwrap();
    assert_eq!(log.read(&b, None).await.unwrap().unwrap().len(), 1);

    // Compactors' coordination: a lease is one holder's until released.
    let coordination = log.coordination();
    let ttl = Duration::from_secs(30);
    assert!(coordination.try_lease(&b, "one", ttl).await.unwrap());
    assert!(
        coordination.try_lease(&b, "one", ttl).await.unwrap(),
        "renewed"
    );
    let exclusive = !coordination.try_lease(&b, "two", ttl).await.unwrap();
    coordination.release_lease(&b, "one").await.unwrap();
    assert!(coordination.try_lease(&b, "two", ttl).await.unwrap());
    // The backlog lists what the store may not have, until it is cleared
    // with the cursor the store holds.
    let backlog = coordination.backlog(10).await.unwrap();
    if log.is_durable() {
        assert!(exclusive, "{name}: a lease is exclusive");
        assert!(backlog.contains(&b), "{name}: {backlog:?}");
        let held = log.read(&b, None).await.unwrap().unwrap();
        coordination
            .clear_backlog(&b, held.last().and_then(|e| e.cursor))
            .await
            .unwrap();
        assert!(!coordination.backlog(10).await.unwrap().contains(&b));
    } else {
        assert!(
            backlog.is_empty(),
            "{name}: the store precedes every append"
        );
    }
}

#[tokio::test]
async fn the_local_log_keeps_the_log_contract() {
    contract(log::open("local", 100, 0, 1).await.unwrap()).await;
}

#[tokio::test]
async fn the_redis_log_keeps_the_log_contract() {
    let redis = RedisServer::start().await;
    contract(log::open(&redis.url(), 100, 0, 1).await.unwrap()).await;
}
