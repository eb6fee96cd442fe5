use std::path::PathBuf;

/// Everything the dataplane can fail at.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("netlink {op} failed")]
    Netlink {
        op: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("opening a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("netlink needs a tokio runtime and none is running")]
    NoRuntime,
    #[error("entering network namespace {path}")]
    EnterNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    NoSuchInterface(String),
    #[error("interface {0} has no IPv4 address")]
    NoIpv4(String),
    #[error("no default route; pass --iface or --public-ip")]
    NoDefaultRoute,
    #[error("{0}")]
    Conflict(String),
    #[error("nf_tables: {op} failed")]
    Nftables {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("this kernel has no {0} support")]
    Unsupported(&'static str),
    #[error("{0:?} is not an interface name or IPv4 address")]
    BadSelector(String),
    /// Input the kernel must never see: a bad name, MAC, VLAN id or mode.
    #[error("{0}")]
    Invalid(String),
    /// VLANs need 802.1Q or bridge VLAN filtering in the kernel; Open vSwitch
    /// tags in its own datapath and does without either.
    #[error(
        "this kernel has no {feature} support ({config}): use an Open vSwitch bridge for VLANs"
    )]
    NoVlanSupport {
        feature: &'static str,
        config: &'static str,
    },
    #[error("{0:?} is not an OVSDB address (use unix:PATH)")]
    OvsdbAddress(String),
    #[error("connecting to OVSDB at {address}")]
    OvsdbConnect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("OVSDB connection: {op}")]
    OvsdbIo {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the OVSDB connection to {0} closed")]
    OvsdbClosed(String),
    #[error("OVSDB protocol error: {0}")]
    OvsdbProtocol(String),
    #[error("OVSDB transaction failed: {error}{}", details_suffix(details))]
    OvsdbTransaction { error: String, details: String },
    #[error("no {what} within {timeout:?}")]
    OvsdbTimeout {
        what: String,
        timeout: std::time::Duration,
    },
    #[error("no Open vSwitch bridge named {0}")]
    NoSuchOvsBridge(String),
    #[error("Open vSwitch cannot use port {port}: {error}")]
    OvsInterface { port: String, error: String },
    #[error("{name:?} is not a valid {what} name (1 to 15 characters, no '/' or spaces)")]
    BadOvsName { what: &'static str, name: String },
    #[error("an OVS {0} needs external_ids naming its owner")]
    OvsNoOwner(&'static str),
    #[error("VLAN {0} is out of range (1-4094)")]
    BadVlan(u16),
    #[error("writing {path}")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A step failed, and so did undoing what it had half-made.
    #[error("{failed}; undoing it also failed: {undo}")]
    UndoFailed {
        failed: Box<DataplaneError>,
        undo: Box<DataplaneError>,
    },
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

impl DataplaneError {
    /// This failure, and how undoing what it half-made went.
    pub(crate) fn undone(self, undo: Result<()>) -> DataplaneError {
        match undo {
            Ok(()) => self,
            Err(undo) => DataplaneError::UndoFailed {
                failed: Box::new(self),
                undo: Box::new(undo),
            },
        }
    }
}

/// Runs a dump again when the kernel interrupted it because the table
/// changed meanwhile (EBUSY: another agent task, or anyone, adding a link,
/// an address, a route or a neighbour), as iproute2 does; a few times at most.
pub(crate) async fn redo_interrupted<T, F, Fut>(mut dump: F) -> Result<T, DataplaneError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DataplaneError>>,
{
    let mut tries = 1;
    loop {
        match dump().await {
            Err(DataplaneError::Netlink {
                source: rtnetlink::Error::NetlinkError(ref e),
                ..
            }) if e.raw_code() == -libc::EBUSY && tries < 5 => tries += 1,
            other => return other,
        }
    }
}

/// Maps an rtnetlink failure to the crate's error, naming the operation.
pub(crate) fn netlink_err(op: &'static str) -> impl FnOnce(rtnetlink::Error) -> DataplaneError {
    move |source| DataplaneError::Netlink { op, source }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::num::NonZeroI32;

    use rtnetlink::packet_core::ErrorMessage;

    use super::*;

    fn failed(code: i32) -> DataplaneError {
        let mut message = ErrorMessage::default();
        message.code = NonZeroI32::new(code);
        DataplaneError::Netlink {
            op: "link dump",
            source: rtnetlink::Error::NetlinkError(message),
        }
    }

    #[tokio::test]
    async fn an_interrupted_dump_is_run_again_a_few_times_and_other_errors_are_not() {
        let tries = Cell::new(0);
        let got = redo_interrupted(|| {
            tries.set(tries.get() + 1);
            let n = tries.get();
            async move {
                if n < 3 {
                    Err(failed(-libc::EBUSY))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got.ok(), Some(3));

        tries.set(0);
        let busy = redo_interrupted(|| {
            tries.set(tries.get() + 1);
            async { Err::<(), _>(failed(-libc::EBUSY)) }
        })
        .await;
        assert!(busy.is_err());
        assert_eq!(tries.get(), 5, "gives up after five");

        tries.set(0);
        let other = redo_interrupted(|| {
            tries.set(tries.get() + 1);
            async { Err::<(), _>(failed(-libc::EPERM)) }
        })
        .await;
        assert!(other.is_err());
        assert_eq!(tries.get(), 1);
    }
}
