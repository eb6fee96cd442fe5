//! The connection to Open vSwitch, for the ovs driver, the OVS bridges of
//! named networks, `tartan attach` and `tartan reset`.

use std::sync::Arc;

use anyhow::{Context, Result};
use tartan_dataplane::{DataplaneError, Ovsdb};

/// A connection to OVSDB made on first use (OVS may not be there at all,
/// and then only what needs it fails), and again after it broke.
pub struct OvsdbHandle {
    address: String,
    connection: tokio::sync::Mutex<Option<Arc<Ovsdb>>>,
}

impl OvsdbHandle {
    pub fn new(address: String) -> OvsdbHandle {
        OvsdbHandle {
            address,
            connection: tokio::sync::Mutex::default(),
        }
    }

    /// The connection, made now if there is none.
    pub async fn get(&self) -> Result<Arc<Ovsdb>> {
        let mut connection = self.connection.lock().await;
        if let Some(ovsdb) = &*connection {
            return Ok(ovsdb.clone());
        }
        let ovsdb = Arc::new(Ovsdb::connect(&self.address).await.with_context(|| {
            format!(
                "Open vSwitch is needed and its database is not reachable at {} (agent flag --ovsdb)",
                self.address
            )
        })?);
        *connection = Some(ovsdb.clone());
        Ok(ovsdb)
    }

    /// Drops a connection that broke, so that the next use makes a new one.
    pub async fn check<T>(&self, result: tartan_dataplane::Result<T>) -> Result<T> {
        if let Err(DataplaneError::OvsdbClosed(_) | DataplaneError::OvsdbIo { .. }) = &result {
            *self.connection.lock().await = None;
        }
        Ok(result?)
    }
}
