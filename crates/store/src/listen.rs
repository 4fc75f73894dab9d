//! Change notifications: a replica's wake-up call, never its source of truth.
//!
//! Every committed write on Postgres notifies [`changes_channel`](crate::changes_channel) with
//! its last seq. A [`ChangeListener`] LISTENs on it over a connection of its own. Notifications
//! are lost while that connection is down (and one may be lost when a wait for it is cancelled),
//! so a follower treats them as hints: it reads the changes themselves with
//! [`Store::changes_since`], after every reconnect ([`Notice::Reconnected`]) and on an interval
//! anyway. A dead TCP link can leave a wait pending for ever; [`ChangeListener::heartbeat`] is
//! the round trip a follower runs under a timeout to find that out and rebuild the listener.
//!
//! SQLite has no notifications and serves one process: [`Store::listen`] refuses it.

use sqlx::postgres::PgListener;

use super::{Backend, Result, Store, StoreError};

/// The heartbeat's statement: `pg_stat_activity.query` shows it (or the `LISTEN`) for a
/// replica's listening session.
pub const HEARTBEAT_SQL: &str = "SELECT 1 AS notellm_listener_heartbeat";

/// What a listener heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A write committed; its last seq.
    Committed(i64),
    /// The connection dropped and is being re-established: notifications sent meanwhile are
    /// lost, so the changes must be read from the store.
    Reconnected,
}

/// A LISTEN on the store's change channel.
pub struct ChangeListener {
    inner: PgListener,
}

impl std::fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeListener").finish_non_exhaustive()
    }
}

impl Store {
    /// Starts listening for committed writes (Postgres only). Notifications of writes that
    /// commit after this returns are delivered; read what committed before with
    /// [`Store::changes_since`].
    pub async fn listen(&self) -> Result<ChangeListener> {
        self.health.fail_fast()?;
        match &self.backend {
            Backend::Postgres(pg) => {
                let mut inner = PgListener::connect_with(pg.pool()).await?;
                inner.listen(pg.channel()).await?;
                Ok(ChangeListener { inner })
            }
            Backend::Sqlite(_) => Err(StoreError::Config(
                "change notifications need the shared Postgres store; the embedded SQLite store serves one \
                 process"
                    .into(),
            )),
        }
    }
}

impl ChangeListener {
    /// Waits for the next notification or a lost connection. A payload that is not a seq (no
    /// writer of this project sends one) is reported as [`Notice::Reconnected`]: a reason to
    /// read the store, like any doubt.
    pub async fn next(&mut self) -> Result<Notice> {
        match self.inner.try_recv().await? {
            Some(n) => Ok(n.payload().trim().parse().map(Notice::Committed).unwrap_or(Notice::Reconnected)),
            None => Ok(Notice::Reconnected),
        }
    }

    /// A round trip over the listening connection (reconnecting it first if it dropped): run
    /// it under a timeout to detect a silent dead link. Its statement, [`HEARTBEAT_SQL`], names
    /// the listening sessions in `pg_stat_activity` (with their `LISTEN`).
    pub async fn heartbeat(&mut self) -> Result<()> {
        sqlx::query(HEARTBEAT_SQL).execute(&mut self.inner).await?;
        Ok(())
    }
}
