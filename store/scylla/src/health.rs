//! The Scylla store's health probe: a write round-trip on a row of this process's own in the
//! `settings` table (`health:<random>`, with a TTL), at the configured consistency.

use crate::error::OpError;
use crate::store::Inner;

/// How long a probe row lives when the process stops probing (every probe rewrites it).
const PROBE_TTL_SECS: u32 = 600;

impl Inner {
    /// Writes a fresh value into this process's probe row and reads it back (the default
    /// execution profile: configured consistency, request timeout). Unprepared: a probe a
    /// second at most does not need a prepared statement.
    pub(crate) async fn probe(&self) -> Result<(), OpError> {
        let ks = &self.cfg.keyspace;
        let setting = format!("health:{:016x}", self.token_seed);
        let value = crate::store::now_ms();
        let insert = format!(
            "INSERT INTO {ks}.settings (setting, int_value) VALUES (?, ?) USING TTL {PROBE_TTL_SECS}"
        );
        self.session.query_unpaged(insert, (&setting, value)).await?;
        let select = format!("SELECT int_value FROM {ks}.settings WHERE setting = ?");
        let rows = self.session.query_unpaged(select, (&setting,)).await?.into_rows_result()?;
        let read = rows.maybe_first_row::<(Option<i64>,)>()?.and_then(|(v,)| v);
        if read == Some(value) {
            Ok(())
        } else {
            Err(OpError::Probe(format!("health probe wrote {value}, read back {read:?}")))
        }
    }
}
