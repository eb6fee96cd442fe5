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

/// Maps an rtnetlink failure to the crate's error, naming the operation.
pub(crate) fn netlink_err(op: &'static str) -> impl FnOnce(rtnetlink::Error) -> DataplaneError {
    move |source| DataplaneError::Netlink { op, source }
}
