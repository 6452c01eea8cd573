//! Changes to shared state, pushed to every process using the store: the one mechanism by which
//! replicas learn of sessions, revocations and agents (and, later, whatever else they share)
//! within milliseconds, without polling.
//!
//! On PostgreSQL a change is a `NOTIFY` on one channel, sent after the transaction that made it;
//! each subscriber holds a `LISTEN` connection. Notifications are not stored: a subscriber that
//! loses its connection is told so ([`Feed::Lost`]) and must not trust what it holds until it
//! has read the state again (it is told when it may, [`Feed::Resumed`]). On SQLite (one node)
//! changes are passed within the process.

use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use crate::{Backend, Store, StoreError};

/// The PostgreSQL channel changes are sent on.
pub const CHANNEL: &str = "ztinfra_changes";

/// One change: what kind of thing changed (`topic`), and which (`key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub topic: String,
    pub key: String,
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    Change(Change),
    /// The feed was interrupted: changes may have been missed.
    Lost,
    /// The feed works again (after [`Feed::Lost`]): state read from now on is current, and
    /// every later change will arrive.
    Resumed,
}

/// The process-local feed (SQLite, and the changes of this process on PostgreSQL too).
#[derive(Debug, Clone)]
pub(crate) struct LocalFeed(broadcast::Sender<Change>);

impl LocalFeed {
    pub(crate) fn new() -> Self {
        Self(broadcast::channel(4096).0)
    }
}

impl Store {
    /// Tells every subscriber (every replica, on PostgreSQL) that `key` of `topic` changed.
    /// Call it after the change is committed.
    pub async fn publish(&self, topic: &str, key: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(..) => {
                let _ = self.local.0.send(Change {
                    topic: topic.to_owned(),
                    key: key.to_owned(),
                });
            }
            Backend::Postgres(pool) => {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(format!("{topic}\n{key}"))
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// The feed of changes, from now on. The task behind it lives as long as the receiver.
    pub async fn subscribe(&self) -> Result<mpsc::Receiver<Feed>, StoreError> {
        let (tx, rx) = mpsc::channel(4096);
        match &self.backend {
            Backend::Sqlite(..) => {
                let mut local = self.local.0.subscribe();
                tokio::spawn(async move {
                    loop {
                        let feed = match local.recv().await {
                            Ok(change) => Feed::Change(change),
                            Err(broadcast::error::RecvError::Lagged(_)) => Feed::Lost,
                            Err(broadcast::error::RecvError::Closed) => return,
                        };
                        let lost = feed == Feed::Lost;
                        if tx.send(feed).await.is_err()
                            || (lost && tx.send(Feed::Resumed).await.is_err())
                        {
                            return;
                        }
                    }
                });
            }
            Backend::Postgres(pool) => {
                let mut first = sqlx::postgres::PgListener::connect_with(pool).await?;
                first.listen(CHANNEL).await?;
                let pool = pool.clone();
                tokio::spawn(async move {
                    // The listener holds one of the pool's connections: it must be dropped for
                    // the pool to close, and none is made again once it is closing.
                    let mut listener = Some(first);
                    while let Some(current) = listener.as_mut() {
                        if let Ok(Some(notification)) = current.try_recv().await {
                            let (topic, key) = notification
                                .payload()
                                .split_once('\n')
                                .unwrap_or((notification.payload(), ""));
                            let change = Change {
                                topic: topic.to_owned(),
                                key: key.to_owned(),
                            };
                            if tx.send(Feed::Change(change)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        listener = None;
                        if pool.is_closed() {
                            // The store is closing: the feed ends, and its receivers see it end.
                            return;
                        }
                        // Lost: say so at once, then listen again on a new connection, and say
                        // when that works.
                        tracing::warn!("the change feed from the store was lost; reconnecting");
                        if tx.send(Feed::Lost).await.is_err() {
                            return;
                        }
                        while listener.is_none() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            if tx.is_closed() || pool.is_closed() {
                                return;
                            }
                            let fresh = async {
                                let mut fresh =
                                    sqlx::postgres::PgListener::connect_with(&pool).await?;
                                fresh.listen(CHANNEL).await?;
                                Ok::<_, sqlx::Error>(fresh)
                            };
                            listener = fresh.await.ok();
                        }
                        tracing::info!("the change feed from the store is back");
                        if tx.send(Feed::Resumed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Location;

    async fn next(rx: &mut mpsc::Receiver<Feed>) -> Feed {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn sqlite_changes_reach_subscribers_of_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).await.unwrap();
        let mut feed = store.subscribe().await.unwrap();
        store.publish("session.revoke", "abc").await.unwrap();
        assert_eq!(
            next(&mut feed).await,
            Feed::Change(Change {
                topic: "session.revoke".into(),
                key: "abc".into()
            })
        );
    }

    #[tokio::test]
    async fn postgres_changes_reach_other_stores_and_a_lost_feed_says_so() {
        let Some(url) = crate::tests::postgres_url() else {
            return;
        };
        let scoped = crate::tests::fresh_schema(&url, "changes").await;
        let one = Store::open(&Location::parse(&scoped).unwrap())
            .await
            .unwrap();
        let two = Store::open(&Location::parse(&scoped).unwrap())
            .await
            .unwrap();
        let mut feed = two.subscribe().await.unwrap();
        one.publish("agent", "triage-bot").await.unwrap();
        assert_eq!(
            next(&mut feed).await,
            Feed::Change(Change {
                topic: "agent".into(),
                key: "triage-bot".into()
            })
        );
        // The listening connection is cut by the server: the subscriber hears of it, then of
        // its return, and changes flow again.
        let Backend::Postgres(pool) = &one.backend else {
            unreachable!()
        };
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        )
        .execute(pool)
        .await
        .unwrap();
        assert_eq!(next(&mut feed).await, Feed::Lost);
        assert_eq!(next(&mut feed).await, Feed::Resumed);
        one.publish("agent", "again").await.unwrap();
        assert_eq!(
            next(&mut feed).await,
            Feed::Change(Change {
                topic: "agent".into(),
                key: "again".into()
            })
        );
    }
}
